"""Batched PSF-flux and galaxy-model fits of the measurement step's stamps.

:func:`~stacklab.toolkit.measurement.measure_sources` cuts one stamp per source
and queues it; :func:`_fit_batch` then fits a batch of stamps of one size at
once:

* PSF flux: weighted linear least squares of the PSF model drawn at the source,
  after Gauss-Newton refinement of the position, and SExtractor's SPREAD_MODEL;
* model flux (CModel-like): exponential and de Vaucouleurs profiles of the
  deconvolved adaptive-moment shape, convolved with the PSF in Fourier space,
  their size scanned on a grid, the best of each combined with non-negative
  amplitudes.

Kernels are placed on stamps with sub-pixel Fourier shifts (:func:`_place_all`).
Stamp pixels are ``(y, x)`` indexed, 0-based pixel centres.
"""

from __future__ import annotations

import functools
from typing import Any

import galsim
import numpy as np
from numpy.typing import NDArray
from scipy import optimize

from ._stamps import good_size
from .flags import SourceFlag

_PSF_FIT_ITERATIONS = 2
_SIZE_FACTORS = np.array([0.0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0])
_EXP_HLR_PER_SCALE = 1.6783469900166608  # half-light radius of exp(-r) in scale radii


@functools.lru_cache(maxsize=1)
def _dev_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # Fourier transform of a unit-flux de Vaucouleurs profile of half-light radius 1,
    # as a function of angular wavenumber, tabulated once.
    profile = galsim.DeVaucouleurs(half_light_radius=1.0)
    q = np.concatenate([[0.0], np.geomspace(1e-3, 3e3, 600)])
    values = np.array([profile.kValue(float(k), 0.0).real for k in q])
    return q, values


def _profile_ft(kind: str, q: NDArray[np.float64]) -> NDArray[np.float64]:
    if kind == "exp":
        return np.asarray((1.0 + (q / _EXP_HLR_PER_SCALE) ** 2) ** -1.5)
    grid, values = _dev_table()
    return np.asarray(np.interp(q, grid, values, right=0.0))


def _paste(target: NDArray[np.float64], source: NDArray[np.float64], x0: int, y0: int) -> None:
    ty, tx = target.shape
    sy, sx = source.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + sy, ty), min(x0 + sx, tx)
    if ys < ye and xs < xe:
        target[ys:ye, xs:xe] = source[ys - y0 : ye - y0, xs - x0 : xe - x0]


_Moments = tuple[float, float, float, float, float]
# Row, stamp, weights, PSF kernel, centre x, y (stamp px), stamp origin x, y, moments, PSF moments.
_FitInput = tuple[
    int,
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    float,
    float,
    int,
    int,
    _Moments | None,
    _Moments | None,
]


def _fit_batch(
    batch: list[_FitInput],
    out: dict[str, NDArray[Any]],
    flags: NDArray[np.int64],
    *,
    fit_models: bool,
) -> None:
    """PSF fluxes, then galaxy models, of a batch of sources; fill ``out`` and ``flags``."""
    rows = np.array([item[0] for item in batch])
    stamps = np.array([item[1] for item in batch])
    weights = np.array([item[2] for item in batch])
    kernels = np.array([item[3] for item in batch])
    origin = np.array([(item[6], item[7]) for item in batch], dtype=float)
    centres = np.array([(item[4], item[5]) for item in batch])
    flux, err, x, y, spread, spread_err, ok = _psf_fluxes(stamps, weights, kernels, centres)
    flags[rows[~ok]] |= int(SourceFlag.PSF_FLUX_FAILED)
    good = rows[ok]
    out["flux_psf"][good], out["flux_psf_err"][good] = flux[ok], err[ok]
    out["x_psf"][good], out["y_psf"][good] = x[ok] + origin[ok, 0], y[ok] + origin[ok, 1]
    out["spread_model"][good], out["spread_model_err"][good] = spread[ok], spread_err[ok]
    if not fit_models:
        return
    # Centred where the PSF fit put the source, so that a star's exponential fit at
    # zero size is exactly its PSF fit.
    centres = np.where(ok[:, None], np.column_stack([x, y]), centres)
    size = stamps.shape[1]
    middle = np.full(len(batch), float(size // 2))
    results = _model_fluxes(
        stamps,
        weights,
        _place_all(kernels, size, middle, middle),
        centres,
        [item[8] for item in batch],
        [item[9] for item in batch],
    )
    for k, model in zip(rows, results, strict=True):
        if model is None:
            flags[k] |= int(SourceFlag.MODEL_FLUX_FAILED)
        else:
            out["flux_model"][k], out["flux_model_err"][k], out["frac_dev"][k] = model[:3]
            out["flux_exp"][k] = model[3]


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
    pad = (good_size(ksize + 6) - ksize) // 2
    ix, iy = np.floor(cx + 0.5).astype(np.int64), np.floor(cy + 0.5).astype(np.int64)
    dx, dy = cx - ix, cy - iy
    shifted = kernels.copy()
    moved = (dx != 0.0) | (dy != 0.0)
    if moved.any():
        if transform is None:
            transform = _padded_transform(kernels, pad)
        ky, kx = _frequencies(ksize + 2 * pad)
        phase = np.exp(-1j * (kx * dx[moved, None, None] + ky * dy[moved, None, None]))
        whole = np.fft.irfft2(transform[moved] * phase, s=(ksize + 2 * pad,) * 2)
        shifted[moved] = whole[:, pad:-pad, pad:-pad]
    out = np.zeros((n, size, size))
    for i in range(n):
        _paste(out[i], shifted[i], int(ix[i]) - half, int(iy[i]) - half)
    return out


def _padded_transform(kernels: NDArray[np.float64], pad: int) -> NDArray[np.complex128]:
    return np.fft.rfft2(np.pad(kernels, ((0, 0), (pad, pad), (pad, pad))))


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

    Returns
    -------
    tuple of numpy.ndarray
        ``flux, flux_err`` (ADU), ``x, y`` (stamp pixels), ``spread, spread_err``
        (SExtractor's SPREAD_MODEL) and ``ok`` (False where the fit failed).
    """
    n, size = stamps.shape[0], stamps.shape[1]
    transform = _padded_transform(
        kernels, (good_size(kernels.shape[1] + 6) - kernels.shape[1]) // 2
    )
    cx, cy = centres[:, 0].copy(), centres[:, 1].copy()
    active = np.arange(n)
    for _ in range(_PSF_FIT_ITERATIONS):
        if len(active) == 0:
            break
        model = _place_all(kernels[active], size, cx[active], cy[active], transform[active])
        support = model != 0
        gy, gx = _gradient(model)
        # The design rows are the model's support pixels: zero weight elsewhere.
        design = np.stack([model, -gx, -gy], axis=-1)
        w = np.where(support, weights[active], 0.0)
        # Batched matrix products (three-operand einsums loop slowly).
        design = design.reshape(len(active), -1, 3)
        weighted = np.swapaxes(design * w.reshape(len(active), -1, 1), 1, 2)
        normal = weighted @ design
        rhs = (weighted @ stamps[active].reshape(len(active), -1, 1))[..., 0]
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
    weighted_model = weights * model
    den = np.einsum("nyx,nyx->n", weighted_model, model)
    ok = den > 0
    safe_den = np.where(ok, den, 1.0)
    flux = np.einsum("nyx,nyx->n", weighted_model, stamps) / safe_den
    # SExtractor's SPREAD_MODEL: a PSF fit versus a fit of the PSF convolved with
    # an exponential of scale FWHM/16; 0 for point sources, > 0 for resolved ones.
    ky, kx = _frequencies(size)
    scale = np.array([_spread_scale(kernel) for kernel in kernels])[:, None, None]
    broad = np.fft.irfft2(
        np.fft.rfft2(model) * (1.0 + (kx * kx + ky * ky) * scale**2) ** -1.5, s=(size, size)
    )
    # spread = G'Wx / P'Wx - G'WP / P'WP, its error propagated from the variance.
    u, v = weights * broad, weighted_model
    numerator = np.einsum("nyx,nyx->n", u, stamps)
    denominator = np.einsum("nyx,nyx->n", v, stamps)
    positive = denominator > 0
    safe = np.where(positive, denominator, 1.0)
    spread = np.where(
        positive, numerator / safe - np.einsum("nyx,nyx->n", u, model) / safe_den, np.nan
    )
    gradient = (u - (numerator / safe)[:, None, None] * v) / safe[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread_var = np.sum(np.where(weights > 0, gradient**2 / weights, 0.0), axis=(1, 2))
    spread_err = np.where(positive, np.sqrt(spread_var), np.nan)
    return flux, 1.0 / np.sqrt(safe_den), cx, cy, spread, spread_err, ok


def _gradient(image: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``numpy.gradient`` over the last two axes (central, one-sided at the edges), lighter."""
    gy = np.empty_like(image)
    gy[..., 1:-1, :] = (image[..., 2:, :] - image[..., :-2, :]) / 2.0
    gy[..., 0, :] = image[..., 1, :] - image[..., 0, :]
    gy[..., -1, :] = image[..., -1, :] - image[..., -2, :]
    gx = np.empty_like(image)
    gx[..., 1:-1] = (image[..., 2:] - image[..., :-2]) / 2.0
    gx[..., 0] = image[..., 1] - image[..., 0]
    gx[..., -1] = image[..., -1] - image[..., -2]
    return gy, gx


def _condition(matrices: NDArray[np.float64]) -> NDArray[np.float64]:
    """2-norm condition numbers of a stack of matrices (``numpy.linalg.cond``)."""
    singular = np.linalg.svd(matrices, compute_uv=False)
    with np.errstate(divide="ignore"):
        return np.asarray(singular[..., 0] / singular[..., -1])


def _spread_scale(kernel: NDArray[np.float64]) -> float:
    """Scale radius (px) of the exponential of SPREAD_MODEL: FWHM / 16 of the PSF."""
    c = kernel.shape[0] // 2
    peak = kernel[c, c]
    # FWHM from the area above half maximum (exact for a round Gaussian-like core).
    area = float(np.sum(kernel >= 0.5 * peak))
    return float(2.0 * np.sqrt(area / np.pi) / 16.0)


def _model_fluxes(
    stamps: NDArray[np.float64],
    weights: NDArray[np.float64],
    psf_stamps: NDArray[np.float64],
    centres: NDArray[np.float64],
    shapes: list[tuple[float, float, float, float, float] | None],
    psf_shapes: list[tuple[float, float, float, float, float] | None],
) -> list[tuple[float, float, float, float] | None]:
    """Galaxy-model fluxes of a batch of sources with stamps of one size.

    Parameters
    ----------
    stamps, weights : numpy.ndarray, shape (n, size, size)
        Each source's image (ADU) and inverse-variance weights (0 on bad pixels).
    psf_stamps : numpy.ndarray, shape (n, size, size)
        Each source's PSF, unit sum, centred on the stamp's middle pixel.
    centres : numpy.ndarray, shape (n, 2)
        Model centres ``(x, y)`` in stamp pixels.
    shapes, psf_shapes : list
        Adaptive moments of each source and of its PSF (or None).

    Returns
    -------
    list
        Per source ``(flux, flux_err, frac_dev, flux_exp)`` (ADU), or None when the
        fit fails. Batching turns a few dozen small transforms per source into a
        few large ones.
    """
    n, size = stamps.shape[0], stamps.shape[1]
    # The PSF sits at the stamp centre c; the phase ramp moves it (and the profile,
    # centred on the origin) to (cx, cy) directly, with no fftshift of the results.
    psf_ft = np.fft.rfft2(psf_stamps)
    # Deconvolved shape (px²); unresolved sources get a small round guess.
    c = np.tile(np.eye(2) * 0.25, (n, 1, 1))
    for i, (shape, psf_shape) in enumerate(zip(shapes, psf_shapes, strict=True)):
        if shape is not None and psf_shape is not None:
            c[i] = [[shape[2] - psf_shape[2], shape[4] - psf_shape[4]],
                    [shape[4] - psf_shape[4], shape[3] - psf_shape[3]]]  # fmt: skip
    evals, evecs = np.linalg.eigh(c)
    evals = np.maximum(evals, 0.05 * np.maximum(evals.max(axis=1), 0.25)[:, None])
    c = (evecs * evals[:, None, :]) @ np.swapaxes(evecs, 1, 2)
    det = np.linalg.det(c)
    unit = c / np.sqrt(det)[:, None, None]  # shape matrices of determinant 1
    hlr0 = 1.2 * det**0.25
    ky, kx = _frequencies(size)
    u00, u01, u11 = (unit[:, i, j, None, None] for i, j in ((0, 0), (0, 1), (1, 1)))
    kk = np.sqrt(u00 * kx * kx + 2 * u01 * kx * ky + u11 * ky * ky)
    offset = centres - size // 2
    phase = np.exp(-1j * (kx * offset[:, 0, None, None] + ky * offset[:, 1, None, None]))
    shifted_psf = (psf_ft * phase)[:, None]
    q = kk[:, None] * (hlr0[:, None] * _SIZE_FACTORS)[:, :, None, None]
    rows = np.arange(n)
    best: dict[str, tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]] = {}
    for kind in ("exp", "dev"):
        # All sources and sizes at once: one batched inverse FFT.
        models = np.fft.irfft2(_profile_ft(kind, q) * shifted_psf, s=(size, size))
        # Batched matrix-vector products over the pixels (three-operand einsums loop slowly).
        flat = models.reshape(n, len(_SIZE_FACTORS), -1)
        den = ((flat * flat) @ weights.reshape(n, -1, 1))[..., 0]
        num = (flat @ (weights * stamps).reshape(n, -1, 1))[..., 0]
        valid = den > 0
        amp = np.where(valid, num / np.where(valid, den, 1.0), 0.0)
        # chi2 = sum w d² - num²/den; the first term is common to all sizes.
        gain = np.where(valid, amp * num, -np.inf)
        j = np.argmax(gain, axis=1)
        best[kind] = (np.asarray(valid.any(axis=1)), models[rows, j], amp[rows, j])
    out: list[tuple[float, float, float, float] | None] = []
    for i in range(n):
        w = weights[i].ravel()
        if not best["exp"][0][i] or not best["dev"][0][i] or not np.any(w > 0):
            out.append(None)
            continue
        a = np.stack([best["exp"][1][i].ravel(), best["dev"][1][i].ravel()], axis=1)
        sw = np.sqrt(w)
        coeffs, _ = optimize.nnls(a * sw[:, None], stamps[i].ravel() * sw)
        if not np.any(coeffs > 0):
            out.append(None)
            continue
        combined = a @ coeffs
        den_i = float(np.sum(w * combined * combined))
        flux = float(coeffs.sum())
        frac_dev = float(coeffs[1] / coeffs.sum())
        # Each template has unit total flux: the combination is flux * t, t of unit flux.
        out.append((flux, flux / np.sqrt(den_i), frac_dev, float(best["exp"][2][i])))
    return out
