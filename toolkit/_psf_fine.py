"""The oversampled fit of :func:`~stacklab.toolkit.psf.fit_psf`, for undersampled PSFs.

Below ~2.5 px FWHM a star cannot be re-centred by sinc interpolation (it is not
band-limited at the pixel scale), so the model is fitted on a grid ``over`` times
finer, from the stars' pixels where they fall (:func:`_fine_samples`). All of a
star's pixels lie the same remainder ``delta`` (under a fine pixel) from nodes of
that grid, so its pixels are its fine model, Fourier-shifted by ``delta`` (exact
on the well-sampled fine grid), taken on its nodes. The polynomial coefficients
of every node are then one linear least-squares problem, solved by conjugate
gradients with that shift and its adjoint (:func:`_solve`); each star's offset is
refined against the model between solves, as adaptive centroids of undersampled
stars are pulled towards their pixel centres.

The fine model is band-limited (:func:`_band_limit`): its transform is kept to
``2 / FWHM`` cycles per pixel, where a Kolmogorov PSF's has fallen below 1e-4 of
its peak (a diffraction-limited PSF's ends near ``1 / FWHM``). Without that, the
nodes of each of the ``over²`` lattices on which stars' pixels fall are fitted
mostly from those stars alone: the model's pixel-centred values (its pixel-scale
image) came from a quarter of the stars at ``over = 2``, and its shapes were
twice as noisy as they need be.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._model_fit_kernels import _psf_normal_equations
from ._psf_flux_fits import _condition
from ._stamps import inverse_variance, phase_ramp, shift_padding
from .psf_model import _term_normal_matrices

_Floats = NDArray[np.float64]

# Conjugate-gradient iterations per solve (warm-started: the offsets, not the solves,
# limit the accuracy; on noise-free 2 px stars 20 per solve give size and shape to
# 5e-4 and 1.3e-4, 40 to 4.3e-4 and 1e-4, at twice the time; on a simulated 2 px
# visit the shapes' errors agree to 1e-4), and the relative residual that ends one sooner.
_CG_ITERATIONS = 20
_CG_TOLERANCE = 1e-7
# Solves, each followed by a Gauss-Newton step of the stars' offsets, in fit_psf's
# first round (one in each later round, from where the last left off).
_FIRST_FINE_ROUNDS = 4
# Ridge on the coefficients, relative to the mean of the normal matrix's diagonal.
_RIDGE = 1e-9
# The fine model's band limit (cycles per pixel, times the FWHM in pixels): its
# transform is kept whole below _PASS_PER_FWHM / FWHM and cut to zero above
# _CUT_PER_FWHM / FWHM, with a cos² taper between. A Kolmogorov PSF's transform
# is 1e-4 of its peak at 2 / FWHM (and a diffraction-limited PSF's is zero beyond
# ~1 / FWHM). On noise-free 2 px stars a cut at 1.8 / FWHM already biases the size
# by 2e-3; on simulated 2 px visits the cut at 2 cuts the shape noise by 2-3 times.
_PASS_PER_FWHM = 1.6
_CUT_PER_FWHM = 2.0
# Fine pixels of zero padding around a star's model before its Fourier shift (the
# shift is under one fine pixel; 16 gave the same models as 8 to every digit shown).
_SHIFT_MARGIN = 8


def _fine_samples(
    raw: _Floats,
    bad: NDArray[np.bool_],
    variance: _Floats,
    offset_x: _Floats,
    offset_y: _Floats,
    over: int,
) -> tuple[_Floats, _Floats, _Floats]:
    """Put each star's pixels on the nodes of a grid ``over`` times finer, as they fall.

    Star ``k`` lies ``offset_x[k], offset_y[k]`` px (-0.5 to 0.5) from its box's
    middle pixel, so its pixel ``i`` (from the middle) lies ``over (i - offset)``
    fine px from the star: at the node ``over i + o`` nearest that, ``o`` the
    rounded ``-over offset``, plus a remainder of at most half a fine pixel.

    Returns
    -------
    data, inv_var : numpy.ndarray, shape (n, M, M)
        The samples on the nodes, ``M = over (N - 1) + 1``, and their inverse
        variances (0 on nodes without a sample, and for bad pixels).
    remainders : numpy.ndarray, shape (n, 2)
        Each star's ``(x, y)`` remainder (fine px): its samples lie that far from
        their nodes.
    """
    n, size = raw.shape[0], raw.shape[1]
    fine = over * (size - 1) + 1
    phase = -over * np.column_stack([offset_x, offset_y])
    node_shift = np.rint(phase).astype(np.intp)
    pixel_nodes = over * np.arange(size)
    data = np.zeros((n, fine, fine))
    inv_var = np.zeros((n, fine, fine))
    weight = inverse_variance(variance, bad)
    for k in range(n):
        cols, rows = pixel_nodes + node_shift[k, 0], pixel_nodes + node_shift[k, 1]
        keep_c, keep_r = (cols >= 0) & (cols < fine), (rows >= 0) & (rows < fine)
        on = np.ix_(rows[keep_r], cols[keep_c])
        data[k][on] = raw[k][np.ix_(keep_r, keep_c)]
        inv_var[k][on] = weight[k][np.ix_(keep_r, keep_c)]
    return data, inv_var, phase - node_shift


def _shifted(stamps: _Floats, remainders: _Floats, sign: float = 1.0) -> _Floats:
    """Each stamp's values at its nodes plus ``sign`` times its remainder (Fourier, padded)."""
    shift = _Shift(remainders, stamps.shape[-1])
    return shift.forward(stamps) if sign > 0 else shift.adjoint(stamps)


def _star_models(terms: _Floats, coeffs: _Floats, over: int) -> _Floats:
    """Each star's model on the grid of ``coeffs``, of unit sum per pixel (``over²`` values)."""
    model = np.einsum("sk,kyx->syx", terms, coeffs)
    model /= model.sum(axis=(1, 2), keepdims=True) / over**2
    return model


def _band_limit(size: int, over: int, fwhm: float) -> _Floats:
    """Transfer function (``rfft2`` layout) that band-limits a fine model of ``size`` values.

    ``fwhm`` is the stars' (pixels; Gaussian-equivalent, from their adaptive
    moments, so the pixel's response included); the grid has ``over`` values per
    pixel.
    """
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]) * over
    start, stop = _PASS_PER_FWHM / fwhm, _CUT_PER_FWHM / fwhm
    taper = np.cos(0.5 * np.pi * np.clip((f - start) / (stop - start), 0.0, 1.0)) ** 2
    return np.asarray(taper)


def _limited(coeffs: _Floats, band: _Floats) -> _Floats:
    """``coeffs`` (``(..., M, M)``) filtered by the transfer function ``band``.

    The filter is circular over the model's grid: its edges, which it joins, hold
    only the PSF's faint wings.
    """
    size = coeffs.shape[-1]
    return np.asarray(np.fft.irfft2(np.fft.rfft2(coeffs) * band, s=(size, size)))


class _Shift:
    """The Fourier shift of each star's fine model by its remainder, and its adjoint.

    Each stamp is zero-padded by at least ``_SHIFT_MARGIN / 2`` values a side (to
    an FFT-friendly size) so the shift does not wrap around, shifted, and cropped.
    The phase ramps are computed once per solve (the remainders are fixed in it),
    where the shift is applied twice per conjugate-gradient iteration.
    """

    def __init__(self, remainders: _Floats, size: int) -> None:
        self.size = size
        self.pad = shift_padding(size, _SHIFT_MARGIN)
        self.padded = size + 2 * self.pad
        # The values at each node plus its remainder: the model shifted by -remainder.
        dx, dy = -remainders[:, 0, None, None], -remainders[:, 1, None, None]
        self.phase = phase_ramp(self.padded, self.padded, dx, dy)

    def _apply(self, stamps: _Floats, phase: NDArray[np.complex128]) -> _Floats:
        p, m = self.pad, self.size
        full = np.zeros((len(stamps), self.padded, self.padded))
        full[:, p : p + m, p : p + m] = stamps
        out = np.fft.irfft2(np.fft.rfft2(full) * phase, s=(self.padded, self.padded))
        return np.asarray(out[:, p : p + m, p : p + m])

    def forward(self, stamps: _Floats) -> _Floats:
        """Take each star's model at its samples' places (its nodes plus its remainder)."""
        return self._apply(stamps, self.phase)

    def adjoint(self, stamps: _Floats) -> _Floats:
        """Shift back: the adjoint of :meth:`forward` (the crop and the padding are transposes)."""
        return self._apply(stamps, self.phase.conj())


def _solve(
    y: _Floats,
    weight: _Floats,
    terms: _Floats,
    remainders: _Floats,
    start: _Floats,
    band: _Floats,
) -> _Floats:
    """Band-limited coefficients ``C`` minimising ``sum W (y - shift(terms . C))²``.

    ``y`` are the stars' samples over their fluxes and ``weight`` their inverse
    variances times the fluxes² (``(n, M, M)``, 0 off each star's nodes); ``start``
    is the first guess ``(n_terms, M, M)``. ``C = B Z`` with ``B`` the band limit
    ``band`` (:func:`_band_limit`): conjugate gradients on ``B A B Z = B b``, the
    normal equations ``A C = b`` restricted to band-limited models.
    """
    shift = _Shift(remainders, weight.shape[1])

    def forward(z: _Floats) -> _Floats:
        return shift.forward(np.einsum("kt,tyx->kyx", terms, _limited(z, band)))

    def adjoint(r: _Floats) -> _Floats:
        return _limited(np.einsum("kt,kyx->tyx", terms, shift.adjoint(r)), band)

    # Preconditioner: each node's own normal matrix over the terms, as if the samples
    # sat on it (the polynomial terms are far from orthogonal), within the band.
    n_terms, size = terms.shape[1], weight.shape[1]
    blocks = _term_normal_matrices(weight, terms).reshape(-1, n_terms, n_terms)
    ridge = _RIDGE * float(np.mean(np.trace(blocks, axis1=1, axis2=2))) / n_terms
    inverse = np.linalg.inv(blocks + ridge * np.eye(n_terms))

    def precondition(r: _Floats) -> _Floats:
        flat = _limited(r, band).reshape(n_terms, -1).T[:, :, None]
        return _limited((inverse @ flat)[:, :, 0].T.reshape(n_terms, size, size), band)

    def normal(z: _Floats) -> _Floats:
        return adjoint(weight * forward(z)) + ridge * z

    z = start.copy()
    r = adjoint(weight * y) - normal(z)
    h = precondition(r)
    p = h.copy()
    rh = float(np.sum(r * h))
    first = np.sqrt(float(np.sum(r * r))) or 1.0
    for _ in range(_CG_ITERATIONS):
        q = normal(p)
        alpha = rh / float(np.sum(p * q))
        z += alpha * p
        r -= alpha * q
        if np.sqrt(float(np.sum(r * r))) < _CG_TOLERANCE * first:
            break
        h = precondition(r)
        rh, rh_old = float(np.sum(r * h)), rh
        p = h + (rh / rh_old) * p
    return _limited(z, band)


def _fit_fine(
    data: _Floats,
    inv_var: _Floats,
    flux: _Floats,
    terms: _Floats,
    used: NDArray[np.bool_],
    remainders: _Floats,
    start: _Floats,
    over: int,
    fwhm: float,
    *,
    first: bool,
) -> tuple[_Floats, _Floats]:
    """Fit the fine coefficients to the ``used`` stars; refine every star's remainder.

    Returns the coefficients (``(n_terms, M, M)``) and the remainders (fine px),
    refined in place by a Gauss-Newton step per solve, the measurement step's PSF
    fit's (:func:`._model_fit_kernels._psf_normal_equations`): their mean change
    over the used stars is held at zero (it would only move the model). The first
    of fit_psf's rounds (``first``) makes ``_FIRST_FINE_ROUNDS`` solves, the
    others one, from where the last left off. The model is band-limited for a PSF
    of ``fwhm`` (pixels; :func:`_band_limit`).
    """
    coeffs = start
    band = _band_limit(start.shape[1], over, fwhm)
    f = np.nan_to_num(flux)
    n = len(data)
    y = data[used] / f[used, None, None]
    weight = inv_var[used] * f[used, None, None] ** 2
    for _ in range(_FIRST_FINE_ROUNDS if first else 1):
        coeffs = _solve(y, weight, terms[used], remainders[used], coeffs, band)
        there = np.ascontiguousarray(_shifted(_star_models(terms, coeffs, over), remainders))
        normal, rhs = np.empty((n, 3, 3)), np.empty((n, 3))
        _psf_normal_equations(there, inv_var, data, np.arange(n, dtype=np.int64), normal, rhs)
        ok = np.all(np.isfinite(normal), axis=(1, 2))
        ok[ok] = _condition(normal[ok]) <= 1e12
        sol = np.zeros((n, 3))
        sol[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
        ok &= sol[:, 0] > 0
        # The fit moves the star by sol[1:] / sol[0]: its samples, that much less far.
        change = np.zeros((n, 2))
        change[ok] = -sol[ok, 1:] / sol[ok, :1]
        change = np.clip(change, -0.5, 0.5)
        change -= np.mean(change[used & ok], axis=0)
        remainders += change
    return coeffs, remainders
