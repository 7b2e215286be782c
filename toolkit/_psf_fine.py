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
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._model_fit_kernels import _psf_normal_equations
from ._psf_flux_fits import _condition
from ._stamps import fft_shift_padded

_Floats = NDArray[np.float64]

# Conjugate-gradient iterations per solve (warm-started: the offsets, not the solves,
# limit the accuracy; on noise-free 2 px stars 40 per solve give what 300 do, size
# and shape to 1e-4), and the relative residual that ends one sooner.
_CG_ITERATIONS = 40
_CG_TOLERANCE = 1e-7
# Solves, each followed by a Gauss-Newton step of the stars' offsets, in fit_psf's
# first round (one in each later round, from where the last left off).
_FIRST_FINE_ROUNDS = 4
# Ridge on the coefficients, relative to the mean of the normal matrix's diagonal.
_RIDGE = 1e-9


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
    weight = np.where(bad | ~(variance > 0), 0.0, 1.0 / np.where(variance > 0, variance, 1.0))
    for k in range(n):
        cols, rows = pixel_nodes + node_shift[k, 0], pixel_nodes + node_shift[k, 1]
        keep_c, keep_r = (cols >= 0) & (cols < fine), (rows >= 0) & (rows < fine)
        on = np.ix_(rows[keep_r], cols[keep_c])
        data[k][on] = raw[k][np.ix_(keep_r, keep_c)]
        inv_var[k][on] = weight[k][np.ix_(keep_r, keep_c)]
    return data, inv_var, phase - node_shift


def _shifted(stamps: _Floats, remainders: _Floats, sign: float = 1.0) -> _Floats:
    """Each stamp's values at its nodes plus ``sign`` times its remainder (Fourier, padded)."""
    return fft_shift_padded(stamps, -sign * remainders[:, 0], -sign * remainders[:, 1], margin=16)


def _star_models(terms: _Floats, coeffs: _Floats, over: int) -> _Floats:
    """Each star's model on the grid of ``coeffs``, of unit sum per pixel (``over²`` values)."""
    model = np.einsum("sk,kyx->syx", terms, coeffs)
    model /= model.sum(axis=(1, 2), keepdims=True) / over**2
    return model


def _solve(
    y: _Floats, weight: _Floats, terms: _Floats, remainders: _Floats, start: _Floats
) -> _Floats:
    """Coefficients ``C`` minimising ``sum W (y - shift(terms . C))²``, by conjugate gradients.

    ``y`` are the stars' samples over their fluxes and ``weight`` their inverse
    variances times the fluxes² (``(n, M, M)``, 0 off each star's nodes); ``start``
    is the first guess ``(n_terms, M, M)``. The adjoint of the shift is the shift
    back (exact but for the padding's edges, where the PSF has faded).
    """

    def forward(c: _Floats) -> _Floats:
        return _shifted(np.einsum("kt,tyx->kyx", terms, c), remainders)

    def adjoint(r: _Floats) -> _Floats:
        return np.einsum("kt,kyx->tyx", terms, _shifted(r, remainders, -1.0))

    # Preconditioner: each node's own normal matrix over the terms, as if the samples
    # sat on it (the polynomial terms are far from orthogonal; the shifts mix nodes
    # only a little).
    n_terms, size = terms.shape[1], weight.shape[1]
    pairs = (terms[:, :, None] * terms[:, None, :]).reshape(len(terms), n_terms * n_terms)
    blocks = (weight.reshape(len(terms), -1).T @ pairs).reshape(-1, n_terms, n_terms)
    ridge = _RIDGE * float(np.mean(np.trace(blocks, axis1=1, axis2=2))) / n_terms
    inverse = np.linalg.inv(blocks + ridge * np.eye(n_terms))

    def precondition(r: _Floats) -> _Floats:
        flat = r.reshape(n_terms, -1).T[:, :, None]
        return np.asarray((inverse @ flat)[:, :, 0].T.reshape(n_terms, size, size))

    def normal(c: _Floats) -> _Floats:
        return adjoint(weight * forward(c)) + ridge * c

    c = start.copy()
    r = adjoint(weight * y) - normal(c)
    z = precondition(r)
    p = z.copy()
    rz = float(np.sum(r * z))
    first = np.sqrt(float(np.sum(r * r))) or 1.0
    for _ in range(_CG_ITERATIONS):
        q = normal(p)
        alpha = rz / float(np.sum(p * q))
        c += alpha * p
        r -= alpha * q
        if np.sqrt(float(np.sum(r * r))) < _CG_TOLERANCE * first:
            break
        z = precondition(r)
        rz, rz_old = float(np.sum(r * z)), rz
        p = z + (rz / rz_old) * p
    return c


def _fit_fine(
    data: _Floats,
    inv_var: _Floats,
    flux: _Floats,
    terms: _Floats,
    used: NDArray[np.bool_],
    remainders: _Floats,
    start: _Floats,
    over: int,
    *,
    first: bool,
) -> tuple[_Floats, _Floats]:
    """Fit the fine coefficients to the ``used`` stars; refine every star's remainder.

    Returns the coefficients (``(n_terms, M, M)``) and the remainders (fine px),
    refined in place by a Gauss-Newton step per solve, the measurement step's PSF
    fit's (:func:`._model_fit_kernels._psf_normal_equations`): their mean change
    over the used stars is held at zero (it would only move the model). The first
    of fit_psf's rounds (``first``) makes ``_FIRST_FINE_ROUNDS`` solves, the
    others one, from where the last left off.
    """
    coeffs = start
    f = np.nan_to_num(flux)
    n = len(data)
    for _ in range(_FIRST_FINE_ROUNDS if first else 1):
        y = data[used] / f[used, None, None]
        weight = inv_var[used] * f[used, None, None] ** 2
        coeffs = _solve(y, weight, terms[used], remainders[used], coeffs)
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
