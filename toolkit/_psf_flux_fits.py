"""PSF fluxes of the measurement step's stamps, and the sub-pixel placement of kernels.

:func:`_psf_fluxes` fits a batch of stamps of one size at once: weighted linear
least squares of the PSF model drawn at the source, after Gauss-Newton
refinement of the position, and SExtractor's SPREAD_MODEL. Kernels are placed on
stamps with sub-pixel Fourier shifts (:func:`_place_all`), also used by the
galaxy-model fits (:mod:`._model_fits`) and forced photometry. Stamp pixels are
``(y, x)`` indexed, 0-based pixel centres; the per-pixel sums are compiled, in
:mod:`._model_fit_kernels`.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft

from ._model_fit_kernels import _paste_all, _psf_normal_equations, _psf_sums
from ._stamps import good_size

_PSF_FIT_ITERATIONS = 2


def _place(kernel: NDArray[np.float64], size: int, cx: float, cy: float) -> NDArray[np.float64]:
    """Put the centred ``kernel`` on a ``size x size`` stamp, centred at ``(cx, cy)``."""
    return _place_all(kernel[None], size, np.array([cx]), np.array([cy]))[0]


def _place_all(
    kernels: NDArray[np.float64],
    size: int,
    cx: NDArray[np.float64],
    cy: NDArray[np.float64],
    transform: NDArray[np.complex128] | None = None,
) -> NDArray[np.float64]:
    """Put centred kernels on ``size x size`` stamps, kernel ``i`` centred at ``(cx[i], cy[i])``.

    The sub-pixel part of each shift is a Fourier phase ramp on the kernel padded
    by a few pixels (``transform`` is that padded kernel's ``rfft2``, when already
    known); whole-pixel positions need no transform.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    n, ksize = kernels.shape[0], kernels.shape[1]
    half = ksize // 2
    padded = _padded_size(ksize)
    pad = (padded - ksize) // 2
    ix, iy = np.floor(cx + 0.5).astype(np.int64), np.floor(cy + 0.5).astype(np.int64)
    dx, dy = cx - ix, cy - iy
    shifted = kernels.copy()
    moved = (dx != 0.0) | (dy != 0.0)
    if moved.any():
        spectra = _padded_transform(kernels[moved], pad) if transform is None else transform[moved]
        ky, kx = _frequencies(padded)
        # The ramp exp(-i (kx dx + ky dy)) is the product of a row and a column
        # ramp: two small complex exponentials rather than one per frequency.
        spectra *= np.exp(-1j * ky * dy[moved, None, None])
        spectra *= np.exp(-1j * kx * dx[moved, None, None])
        whole = sp_fft.irfft2(spectra, s=(padded, padded), overwrite_x=True)
        shifted[moved] = whole[:, pad:-pad, pad:-pad]
    out = np.zeros((n, size, size))
    _paste_all(out, shifted, ix - half, iy - half)
    return out


def _padded_size(ksize: int) -> int:
    """Size of a ``ksize`` kernel padded by the same few pixels on each side for shifting.

    FFT-friendly for the odd sizes PSF models return; an even kernel keeps its
    even size (padded by equal margins), so that its centre stays where it was.
    """
    return ksize + 2 * ((good_size(ksize + 6) - ksize) // 2)


def _padded_transform(kernels: NDArray[np.float64], pad: int) -> NDArray[np.complex128]:
    return np.asarray(sp_fft.rfft2(np.pad(kernels, ((0, 0), (pad, pad), (pad, pad)))))


@functools.lru_cache(maxsize=64)
def _frequencies(size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Angular wavenumbers ``(ky, kx)`` (rad/px) of a ``size x size`` real transform."""
    ky = np.fft.fftfreq(size)[:, None] * 2 * np.pi
    kx = np.fft.rfftfreq(size)[None, :] * 2 * np.pi
    return np.asarray(ky, dtype=np.float64), np.asarray(kx, dtype=np.float64)


_Floats = NDArray[np.float64]


def _psf_fluxes(
    stamps: NDArray[np.float64],
    weights: NDArray[np.float64],
    kernels: NDArray[np.float64],
    centres: NDArray[np.float64],
    *,
    transform: NDArray[np.complex128] | None = None,
) -> tuple[_Floats, _Floats, _Floats, _Floats, _Floats, _Floats, NDArray[np.bool_]]:
    """PSF fluxes of a batch of sources: position refined by Gauss-Newton, then a linear fit.

    Parameters
    ----------
    stamps, weights : numpy.ndarray, shape (n, size, size)
        Each source's image (ADU) and inverse-variance weights (0 on bad pixels).
    kernels : numpy.ndarray, shape (n, k, k)
        The PSF at each source, unit sum, centred on the middle pixel.
    centres : numpy.ndarray, shape (n, 2)
        Starting positions ``(x, y)`` in stamp pixels.
    transform : numpy.ndarray, optional
        The kernels' padded transform (:func:`_padded_transform`), when known.

    Returns
    -------
    tuple of numpy.ndarray
        ``flux, flux_err`` (ADU), ``x, y`` (stamp pixels), ``spread, spread_err``
        (SExtractor's SPREAD_MODEL) and ``ok`` (False where the fit failed).
    """
    n, size = stamps.shape[0], stamps.shape[1]
    if transform is None:
        transform = _padded_transform(
            kernels, (_padded_size(kernels.shape[1]) - kernels.shape[1]) // 2
        )
    cx, cy = centres[:, 0].copy(), centres[:, 1].copy()
    active = np.arange(n)
    for _ in range(_PSF_FIT_ITERATIONS):
        if len(active) == 0:
            break
        model = _place_all(kernels[active], size, cx[active], cy[active], transform[active])
        # Design columns P, -dP/dx, -dP/dy on the model's support (zero weight elsewhere).
        normal = np.empty((len(active), 3, 3))
        rhs = np.empty((len(active), 3))
        _psf_normal_equations(model, weights, stamps, active, normal, rhs)
        solvable = np.all(np.isfinite(normal), axis=(1, 2))
        solvable[solvable] = _condition(normal[solvable]) <= 1e12
        sol = np.zeros((len(active), 3))
        if solvable.any():
            sol[solvable] = np.linalg.solve(normal[solvable], rhs[solvable][..., None])[..., 0]
        step = solvable & (sol[:, 0] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx, dy = sol[:, 1] / sol[:, 0], sol[:, 2] / sol[:, 0]
        step &= np.hypot(dx, dy) <= 1.0
        # A source whose step fails keeps its position and stops iterating.
        cx[active[step]] += dx[step]
        cy[active[step]] += dy[step]
        active = active[step]
    model = _place_all(kernels, size, cx, cy, transform)
    # SExtractor's SPREAD_MODEL: a PSF fit versus a fit of the PSF convolved with
    # an exponential of scale FWHM/16; 0 for point sources, > 0 for resolved ones.
    ky, kx = _frequencies(size)
    scale = _spread_scales(kernels)[:, None, None]
    t = 1.0 + (kx * kx + ky * ky) * scale**2
    broad = sp_fft.irfft2(
        sp_fft.rfft2(model) / (t * np.sqrt(t)),
        s=(size, size),
        overwrite_x=True,
    )
    sums = np.empty((n, 5))
    _psf_sums(model, np.ascontiguousarray(broad), weights, stamps, sums)
    den, pwx, gwx, gwp, spread_sq = sums.T
    ok = den > 0
    safe_den = np.where(ok, den, 1.0)
    flux = pwx / safe_den
    # spread = G'Wx / P'Wx - G'WP / P'WP; its variance, propagated from the pixels'
    # variance 1/W, is sum W (G - spread_ratio P)² / (P'Wx)².
    positive = pwx > 0
    safe = np.where(positive, pwx, 1.0)
    spread = np.where(positive, gwx / safe - gwp / safe_den, np.nan)
    spread_err = np.where(positive, np.sqrt(spread_sq) / safe, np.nan)
    return flux, 1.0 / np.sqrt(safe_den), cx, cy, spread, spread_err, ok


def _condition(matrices: NDArray[np.float64]) -> NDArray[np.float64]:
    """2-norm condition numbers of a stack of matrices (``numpy.linalg.cond``)."""
    singular = np.linalg.svd(matrices, compute_uv=False)
    with np.errstate(divide="ignore"):
        return np.asarray(singular[..., 0] / singular[..., -1])


def _spread_scales(kernels: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scale radii (px) of the exponential of SPREAD_MODEL: FWHM / 16 of each PSF."""
    c = kernels.shape[1] // 2
    peak = kernels[:, c, c]
    # FWHM from the area above half maximum (exact for a round Gaussian-like core).
    area = np.sum(kernels >= 0.5 * peak[:, None, None], axis=(1, 2)).astype(np.float64)
    return np.asarray(2.0 * np.sqrt(area / np.pi) / 16.0)
