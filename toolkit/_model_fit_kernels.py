"""Compiled inner loops of the batched PSF and galaxy-model fits (:mod:`._model_fits`).

NumPy built these sums from stacks of temporaries the size of the batch (design
matrices of the PSF fit, per-pixel profile tables of every template size), so
most of their time went to memory traffic; here each is one pass over the
stamps. Compiled by numba (see :mod:`._jit`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled

__all__: list[str] = []


@_compiled
def _paste_all(
    out: NDArray[np.float64],
    kernels: NDArray[np.float64],
    x0: NDArray[np.int64],
    y0: NDArray[np.int64],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """Copy ``kernels[i]`` onto ``out[i]`` with its first pixel at ``(x0[i], y0[i])``, clipped.

    Parameters
    ----------
    out : numpy.ndarray, shape (n, size, size)
        Stamps to paste on (zero where no kernel lands).
    kernels : numpy.ndarray, shape (n, k, k)
        The kernels.
    x0, y0 : numpy.ndarray of int64, shape (n,)
        Stamp pixel of each kernel's first pixel (may be off the stamp).
    """
    n, ky, kx = kernels.shape
    ty, tx = out.shape[1], out.shape[2]
    for i in range(n):
        ys, ye = max(y0[i], 0), min(y0[i] + ky, ty)
        xs, xe = max(x0[i], 0), min(x0[i] + kx, tx)
        for y in range(ys, ye):
            for x in range(xs, xe):
                out[i, y, x] = kernels[i, y - y0[i], x - x0[i]]


@_compiled
def _psf_normal_equations(
    model: NDArray[np.float64],
    weights: NDArray[np.float64],
    stamps: NDArray[np.float64],
    rows: NDArray[np.int64],
    normal: NDArray[np.float64],
    rhs: NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """Build the normal equations of the linearised PSF fit (flux, position shift) per stamp.

    The design columns are the model ``P`` and ``-dP/dx, -dP/dy``, the derivatives
    as ``numpy.gradient`` takes them (central differences, one-sided on the stamp's
    edges), over the model's support only (pixels where ``P != 0``).

    Parameters
    ----------
    model : numpy.ndarray, shape (n, size, size)
        PSF models.
    weights, stamps : numpy.ndarray, shape (N, size, size)
        Inverse-variance weights and images of a batch.
    rows : numpy.ndarray of int64, shape (n,)
        The batch's row of each model.
    normal : numpy.ndarray, shape (n, 3, 3)
        Output: ``D^T W D``.
    rhs : numpy.ndarray, shape (n, 3)
        Output: ``D^T W x``.
    """
    n, ny, nx = model.shape
    for i in range(n):
        k = rows[i]
        a00 = a01 = a02 = a11 = a12 = a22 = 0.0
        r0 = r1 = r2 = 0.0
        for y in range(ny):
            for x in range(nx):
                p = model[i, y, x]
                if p == 0.0:
                    continue
                if y == 0:
                    gy = model[i, 1, x] - model[i, 0, x]
                elif y == ny - 1:
                    gy = model[i, y, x] - model[i, y - 1, x]
                else:
                    gy = (model[i, y + 1, x] - model[i, y - 1, x]) / 2.0
                if x == 0:
                    gx = model[i, y, 1] - model[i, y, 0]
                elif x == nx - 1:
                    gx = model[i, y, x] - model[i, y, x - 1]
                else:
                    gx = (model[i, y, x + 1] - model[i, y, x - 1]) / 2.0
                w = weights[k, y, x]
                d1, d2 = -gx, -gy
                w0, w1, w2 = p * w, d1 * w, d2 * w
                a00 += w0 * p
                a01 += w0 * d1
                a02 += w0 * d2
                a11 += w1 * d1
                a12 += w1 * d2
                a22 += w2 * d2
                s = stamps[k, y, x]
                r0 += w0 * s
                r1 += w1 * s
                r2 += w2 * s
        normal[i, 0, 0], normal[i, 0, 1], normal[i, 0, 2] = a00, a01, a02
        normal[i, 1, 0], normal[i, 1, 1], normal[i, 1, 2] = a01, a11, a12
        normal[i, 2, 0], normal[i, 2, 1], normal[i, 2, 2] = a02, a12, a22
        rhs[i, 0], rhs[i, 1], rhs[i, 2] = r0, r1, r2


@_compiled
def _psf_sums(
    model: NDArray[np.float64],
    broad: NDArray[np.float64],
    weights: NDArray[np.float64],
    stamps: NDArray[np.float64],
    sums: NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """Weighted sums of the PSF flux and SPREAD_MODEL of each stamp.

    Parameters
    ----------
    model, broad, weights, stamps : numpy.ndarray, shape (n, size, size)
        PSF model ``P``, the PSF convolved with SPREAD_MODEL's exponential ``G``,
        inverse-variance weights ``W`` and image ``x``.
    sums : numpy.ndarray, shape (n, 5)
        Output per stamp: ``P'WP, P'Wx, G'Wx, G'WP`` and
        ``sum W (G - r P)²`` with ``r = G'Wx / P'Wx`` (``r = G'Wx`` when
        ``P'Wx <= 0``), the numerator of SPREAD_MODEL's variance.
    """
    n, ny, nx = model.shape
    for i in range(n):
        pwp = pwx = gwx = gwp = 0.0
        for y in range(ny):
            for x in range(nx):
                w = weights[i, y, x]
                p, g, s = model[i, y, x], broad[i, y, x], stamps[i, y, x]
                wp, wg = w * p, w * g
                pwp += wp * p
                pwx += wp * s
                gwx += wg * s
                gwp += wg * p
        ratio = gwx / (pwx if pwx > 0 else 1.0)
        spread_sq = 0.0
        for y in range(ny):
            for x in range(nx):
                w = weights[i, y, x]
                if w > 0:
                    r = broad[i, y, x] - ratio * model[i, y, x]
                    spread_sq += w * r * r
        sums[i, 0], sums[i, 1], sums[i, 2], sums[i, 3], sums[i, 4] = pwp, pwx, gwx, gwp, spread_sq


@_compiled
def _template_spectra(
    psf: NDArray[np.complexfloating],
    kk: NDArray[np.float64],
    position: NDArray[np.float64],
    rows: NDArray[np.int64],
    radii: NDArray[np.float64],
    dev: bool,
    grid: NDArray[np.float64],
    values: NDArray[np.float64],
    slopes: NDArray[np.float64],
    steps_per_log: float,
    work: NDArray[np.floating],
    out: NDArray[np.complexfloating],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """Fourier transforms of PSF-convolved elliptical profiles, for a set of sizes per source.

    The profile's transform at wavenumber ``k`` is ``F(q)``, ``q = r kk`` with
    ``kk = sqrt(k' U k)``, ``U`` the source's shape matrix of determinant 1 and
    ``r`` the half-light radius: for the exponential ``(1 + (q / 1.678...)²)^-1.5``;
    for de Vaucouleurs the linear interpolation of ``values`` on ``grid``
    (``numpy.interp``, 0 beyond the last node). ``grid`` is 0 then nodes uniform
    in ``log q``, so the interval comes from ``log q`` directly; within 1e-6 of a
    node (the logarithm's rounding is 1e-13) it is checked against the nodes
    themselves: the same interval, and the same value, as ``numpy.interp``'s search.

    Parameters
    ----------
    psf : numpy.ndarray of complex, shape (n, ny, nxh)
        Each source's PSF transform with the phase ramp to its centre.
    kk : numpy.ndarray, shape (n, ny, nxh)
        ``sqrt(k' U k)`` of each source (rad/px).
    position : numpy.ndarray, shape (n, ny, nxh)
        ``(log kk - log grid[1]) * steps_per_log`` (-inf where ``kk = 0``): where
        ``kk`` falls in the table, in nodes after ``grid[1]``.
    rows : numpy.ndarray of int64, shape (p,)
        The source (row of ``psf``, ``kk`` and ``position``) of each output row;
        a source may appear in several.
    radii : numpy.ndarray, shape (p, m)
        Half-light radii (px) of the templates of each output row.
    dev : bool
        De Vaucouleurs (True) or exponential (False).
    grid, values, slopes : numpy.ndarray
        De Vaucouleurs transform table: ``grid[0] = 0``, then geometric nodes; the
        values there, and the slopes between nodes.
    steps_per_log : float
        Nodes per unit of ``log q``.
    work : numpy.ndarray, shape (nxh,), float32 or float64
        Work space. The exponential is computed in its precision: single
        precision (which vectorises) for templates stored in single precision.
    out : numpy.ndarray of complex, shape (p, m, ny, nxh)
        Output: the templates' transforms (complex128 or complex64).
    """
    ny, nxh = psf.shape[1], psf.shape[2]
    m = radii.shape[1]
    one = work.dtype.type(1.0)
    inverse_scale = 1.0 / 1.6783469900166608  # exp(-r) has half-light radius 1.678... r
    last = grid.shape[0] - 1
    for o in range(rows.shape[0]):
        i = rows[o]
        for s in range(m):
            radius = radii[o, s]
            scale = work.dtype.type(radius * inverse_scale)
            shift = math.log(radius) * steps_per_log if radius > 0 else -np.inf
            for y in range(ny):
                if not dev:
                    for x in range(nxh):
                        t = work.dtype.type(kk[i, y, x]) * scale
                        t = one + t * t
                        work[x] = one / (t * np.sqrt(t))
                else:
                    for x in range(nxh):
                        q = kk[i, y, x] * radius
                        if q > grid[last]:
                            f = 0.0
                        elif q == grid[last]:
                            f = values[last]
                        elif q == 0.0:
                            f = values[0]
                        else:
                            at = position[i, y, x] + shift
                            whole = math.floor(at)
                            j = int(whole) + 1
                            near = abs(at - whole - 0.5) > 0.5 - 1e-6
                            if j < 0 or j > last - 1:
                                j = min(max(j, 0), last - 1)
                                near = True
                            if near:
                                while j < last - 1 and q >= grid[j + 1]:
                                    j += 1
                                while j > 0 and q < grid[j]:
                                    j -= 1
                            f = values[j] if q == grid[j] else slopes[j] * (q - grid[j]) + values[j]
                        work[x] = f
                for x in range(nxh):
                    out[o, s, y, x] = psf[i, y, x] * work[x]


@_compiled
def _weighted_sums(
    models: NDArray[np.floating],
    weights: NDArray[np.float64],
    weighted_data: NDArray[np.float64],
    rows: NDArray[np.int64],
    den: NDArray[np.float64],
    num: NDArray[np.float64],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """``sum W t²`` and ``sum W x t`` of every template ``t`` of each source (float64 sums).

    Parameters
    ----------
    models : numpy.ndarray, shape (p, m, ny, nx)
        The templates (float32 or float64).
    weights, weighted_data : numpy.ndarray, shape (n, ny, nx)
        Inverse-variance weights ``W`` and ``W x`` of the sources.
    rows : numpy.ndarray of int64, shape (p,)
        The source of each row of ``models``.
    den, num : numpy.ndarray, shape (p, m)
        Outputs.
    """
    p, m, ny, nx = models.shape
    for o in range(p):
        i = rows[o]
        for s in range(m):
            # Four partial sums: independent additions keep the pipeline full.
            d0 = d1 = d2 = d3 = 0.0
            n0 = n1 = n2 = n3 = 0.0
            for y in range(ny):
                x = 0
                while x + 3 < nx:
                    t0, t1 = float(models[o, s, y, x]), float(models[o, s, y, x + 1])
                    t2, t3 = float(models[o, s, y, x + 2]), float(models[o, s, y, x + 3])
                    d0 += weights[i, y, x] * t0 * t0
                    d1 += weights[i, y, x + 1] * t1 * t1
                    d2 += weights[i, y, x + 2] * t2 * t2
                    d3 += weights[i, y, x + 3] * t3 * t3
                    n0 += weighted_data[i, y, x] * t0
                    n1 += weighted_data[i, y, x + 1] * t1
                    n2 += weighted_data[i, y, x + 2] * t2
                    n3 += weighted_data[i, y, x + 3] * t3
                    x += 4
                while x < nx:
                    t0 = float(models[o, s, y, x])
                    d0 += weights[i, y, x] * t0 * t0
                    n0 += weighted_data[i, y, x] * t0
                    x += 1
            den[o, s] = (d0 + d1) + (d2 + d3)
            num[o, s] = (n0 + n1) + (n2 + n3)


@_compiled
def _gain(num: float, den: float) -> float:  # pragma: no cover - compiled
    """Return a template's chi² gain ``(sum W x t)² / sum W t²`` (-inf where ``sum W t² <= 0``)."""
    if den > 0:
        return num / den * num
    return -np.inf


@_compiled
def _rounding_bound(scale: float, best: float, data_sq: float) -> float:  # pragma: no cover
    """Return the bound on a single-precision gain's rounding near ``best``.

    ``scale * (sqrt(best * sum W x²) + best)`` (see :func:`_search_round`).
    """
    return scale * (math.sqrt(max(best, 0.0) * data_sq) + best)


@_compiled
def _search_round(
    den: NDArray[np.float64],
    num: NDArray[np.float64],
    drawn: NDArray[np.bool_],
    data_sq: NDArray[np.float64],
    tolerance_scale: float,
    climb: NDArray[np.int64],
    top: NDArray[np.int64],
    wanted: NDArray[np.bool_],
    ambiguous: NDArray[np.bool_],
) -> bool:  # pragma: no cover - compiled; run through _model_fits
    """One round of the size search of ``_model_fits._search_sizes``, per source.

    Finds the best drawn size (``numpy.argmax``'s: the first of equal gains),
    marks the source ambiguous where another drawn gain is within the rounding
    bound ``tolerance_scale * (sqrt(best sum W x²) + best)`` of the best, steps
    the start's climb uphill once both its neighbours are drawn, and marks the
    undrawn neighbours of the best size and of the climb as wanted.

    Parameters
    ----------
    den, num : numpy.ndarray, shape (n, sizes)
        ``sum W t²`` and ``sum W x t`` of the drawn templates.
    drawn : numpy.ndarray of bool, shape (n, sizes)
        Which templates are drawn.
    data_sq : numpy.ndarray, shape (n,)
        ``sum W x²`` of each stamp.
    tolerance_scale : float
        Relative rounding bound of the sums (``_SCAN_TOLERANCE``).
    climb : numpy.ndarray of int64, shape (n,)
        Size index of the climb from the start; updated.
    top : numpy.ndarray of int64, shape (n,)
        Output: the best drawn size index.
    wanted : numpy.ndarray of bool, shape (n, sizes)
        Output: templates to draw next (False elsewhere).
    ambiguous : numpy.ndarray of bool, shape (n,)
        Set where a comparison was within the rounding bound.

    Returns
    -------
    bool
        Whether anything is wanted or a climb moved (the search goes on).
    """
    n, m = den.shape
    gain = np.empty(m)
    going = False
    for i in range(n):
        best = -np.inf
        k = -1
        for s in range(m):
            g = _gain(num[i, s], den[i, s]) if drawn[i, s] else -np.inf
            gain[s] = g
            # numpy.argmax: the first maximum, a NaN counting as the maximum.
            if k < 0 or (not np.isnan(best) and (np.isnan(g) or g > best)):
                best, k = g, s
        top[i] = k
        tolerance = _rounding_bound(tolerance_scale, best, data_sq[i])
        close = 0
        for s in range(m):
            if gain[s] >= best - tolerance:
                close += 1
        if close > 1:
            ambiguous[i] = True
        c = climb[i]
        lo, hi = max(c - 1, 0), min(c + 1, m - 1)
        if drawn[i, lo] and drawn[i, c] and drawn[i, hi]:
            step = lo
            for s in (c, hi):
                if not np.isnan(gain[step]) and (np.isnan(gain[s]) or gain[s] > gain[step]):
                    step = s
            if step != c:
                climb[i] = step
                going = True
        for centre in (k, climb[i]):
            for s in (centre - 1, centre + 1):
                if 0 <= s < m and not drawn[i, s]:
                    wanted[i, s] = True
                    going = True
    return going


@_compiled
def _search_unimodal(
    den: NDArray[np.float64],
    num: NDArray[np.float64],
    drawn: NDArray[np.bool_],
    top: NDArray[np.int64],
    data_sq: NDArray[np.float64],
    tolerance_scale: float,
    unimodal: NDArray[np.bool_],
    ambiguous: NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled; run through _model_fits
    """Whether each source's drawn gains, in size order, rise strictly to ``top`` and then fall.

    Where two successive drawn gains are within the rounding bound (see
    :func:`_search_round`) the source is also marked ambiguous.

    Parameters
    ----------
    den, num, drawn : numpy.ndarray, shape (n, sizes)
        As for :func:`_search_round`.
    top : numpy.ndarray of int64, shape (n,)
        The best drawn size index of each source.
    data_sq : numpy.ndarray, shape (n,)
        ``sum W x²`` of each stamp.
    tolerance_scale : float
        Relative rounding bound of the sums.
    unimodal : numpy.ndarray of bool, shape (n,)
        Output.
    ambiguous : numpy.ndarray of bool, shape (n,)
        Set where two successive drawn gains are within the rounding bound.
    """
    n, m = den.shape
    for i in range(n):
        k = top[i]
        tolerance = _rounding_bound(tolerance_scale, _gain(num[i, k], den[i, k]), data_sq[i])
        ordered = True
        previous = 0.0
        have = False
        for s in range(m):
            if not drawn[i, s]:
                continue
            g = _gain(num[i, s], den[i, s])
            if have:
                rises = g > previous if s <= k else g < previous
                ordered = ordered and rises
                if not abs(g - previous) > tolerance:
                    ambiguous[i] = True
            previous, have = g, True
        unimodal[i] = ordered
