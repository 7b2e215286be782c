"""Peaks hidden on a brighter source's slope: the mirror-symmetry residual.

A faint source on the slope of a brighter one often makes no local maximum in the
significance image ``S``: the slope swallows it. A point source's ``S`` is
point-symmetric about its centre (the PSF and the smoothing kernel are, up to small
asymmetries), so light that no peak's mirror image explains belongs to something
else. This is the symmetric template of the SDSS deblender (Lupton's "photo"), used
to find peaks rather than to share flux.

Each peak ``c`` of a footprint (centred to sub-pixel precision) within 12 PSF sigmas
of a pixel ``p`` of the footprint explains ``T_c(p) = min(S(p), S(2c - p))`` there
(``S`` interpolated bilinearly; a mirror image below one noise unit explains nothing).
The residual ``S(p) - sum_c T_c(p)`` is compared with its noise,
``sqrt(1 + n + sum_c (2 e_c |grad S(2c - p)|)**2 + (tolerance * sum_c T_c)**2)``:
the unit noise of ``S(p)`` and of the ``n`` mirror images used, the shift of each
mirror image by twice the error ``e_c`` of its peak's centre, and the asymmetry of
real PSFs, a fraction ``tolerance`` of the explained signal. Summing the templates,
rather than taking the best single one, keeps the light between two overlapping
sources, which each one's mirror explains only in part, from looking like a third.
Pixels at least ``min_separation`` from every peak whose residual reaches
``threshold`` times its noise form candidate regions (8-connected); each region
gives one new peak. Footprints with excluded pixels (saturated stars, no data) are
not searched, nor pixels whose mirror image leaves the image.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._jit import _bucket_order, _compiled, _enlarged

# Peaks farther than this many PSF sigmas from a pixel are not paired with it: their
# mirror images there are far below the noise (S falls as exp(-r² / 4 sigma²)).
_REACH_SIGMA = 12.0
# Error of a peak's centre from a parabola through three samples of S (px), for
# S at least as wide as a well-sampled PSF's.
_CENTRE_ERROR_PX = 0.1


def _subpixel_centres(
    significance: NDArray[np.float32], py: NDArray[np.intp], px: NDArray[np.intp]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Peak centres refined by a parabola through each peak and its two neighbours per axis.

    Offsets are limited to half a pixel (a flat or saddle-shaped top gives none).
    """
    ny, nx = significance.shape

    def offset(
        lower: NDArray[np.float64], mid: NDArray[np.float64], upper: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        curvature = lower - 2.0 * mid + upper
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(curvature < 0, 0.5 * (lower - upper) / curvature, 0.0)
        return np.asarray(np.clip(np.nan_to_num(step), -0.5, 0.5))

    mid = significance[py, px].astype(np.float64)
    dx = offset(
        significance[py, np.maximum(px - 1, 0)].astype(np.float64),
        mid,
        significance[py, np.minimum(px + 1, nx - 1)].astype(np.float64),
    )
    dy = offset(
        significance[np.maximum(py - 1, 0), px].astype(np.float64),
        mid,
        significance[np.minimum(py + 1, ny - 1), px].astype(np.float64),
    )
    # On the image's edge one neighbour is missing: no parabola, no offset.
    dx = np.where((px > 0) & (px < nx - 1), dx, 0.0)
    dy = np.where((py > 0) & (py < ny - 1), dy, 0.0)
    return py + dy, px + dx


@_compiled
def _candidates(
    significance: NDArray[np.float32],
    labels: NDArray[np.integer],
    searched: NDArray[np.bool_],
    excluded: NDArray[np.bool_],
    floor: float,
    owner: NDArray[np.integer],
    cy: NDArray[np.float64],
    cx: NDArray[np.float64],
    centre_error2: NDArray[np.float64],
    reach: float,
    threshold: float,
    tolerance: float,
    min_separation: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:  # pragma: no cover
    """Pixels whose residual reaches ``threshold`` times its noise, in raster order.

    Searched are the pixels at least ``floor`` bright in a footprint that ``searched``
    marks, each paired with the peaks of its footprint within ``reach`` px (found in
    cells ``reach`` px wide; farther peaks cannot explain its light). Mirror images
    are interpolated bilinearly, with the length of the interpolant's gradient.
    Returns the candidates' ``ys, xs`` and residuals.
    """
    ny, nx = significance.shape
    cell = max(reach, 1.0)
    n_cy, n_cx = int(ny / cell) + 1, int(nx / cell) + 1
    # Peaks by cell of their centre (index order within a cell).
    cell_of = np.empty(len(cy), dtype=np.int64)
    for j in range(len(cy)):
        gy = min(max(int(cy[j] / cell), 0), n_cy - 1)
        gx = min(max(int(cx[j] / cell), 0), n_cx - 1)
        cell_of[j] = gy * n_cx + gx
    first, members = _bucket_order(cell_of, n_cy * n_cx)
    reach2 = reach * reach
    separation2 = min_separation * min_separation
    out_y = np.empty(64, dtype=np.intp)
    out_x = np.empty(64, dtype=np.intp)
    out_z = np.empty(64, dtype=np.float64)
    n_out = 0
    for y in range(ny):
        gy = int(y / cell)
        for x in range(nx):
            value32 = significance[y, x]
            if not value32 >= floor:
                continue
            k = labels[y, x]
            if k <= 0 or not searched[k]:
                continue
            value = float(value32)
            gx = int(x / cell)
            explained, shift_var = 0.0, 0.0
            n_used, n_pairs = 0, 0
            rejected = False
            for cell_y in range(max(gy - 1, 0), min(gy + 2, n_cy)):
                for cell_x in range(max(gx - 1, 0), min(gx + 2, n_cx)):
                    c = cell_y * n_cx + cell_x
                    for t in range(first[c], first[c + 1]):
                        j = members[t]
                        if owner[j] != k:
                            continue
                        distance2 = (cy[j] - y) ** 2 + (cx[j] - x) ** 2
                        if distance2 > reach2:
                            continue
                        n_pairs += 1
                        my, mx = 2.0 * cy[j] - y, 2.0 * cx[j] - x
                        # Too near a peak, or a mirror image off the image or on
                        # excluded pixels (unknown: a star cut by the edge would
                        # otherwise leave all of its light): not searched.
                        if distance2 < separation2 or not (
                            my >= 0 and my <= ny - 1 and mx >= 0 and mx <= nx - 1
                        ):
                            rejected = True
                            break
                        if excluded[int(np.rint(my)), int(np.rint(mx))]:
                            rejected = True
                            break
                        y0 = min(int(np.floor(my)), ny - 2)
                        x0 = min(int(np.floor(mx)), nx - 2)
                        fy, fx = my - y0, mx - x0
                        s00, s01 = float(significance[y0, x0]), float(significance[y0, x0 + 1])
                        s10 = float(significance[y0 + 1, x0])
                        s11 = float(significance[y0 + 1, x0 + 1])
                        top = s00 * (1.0 - fx) + s01 * fx
                        bottom = s10 * (1.0 - fx) + s11 * fx
                        mirrored = top * (1.0 - fy) + bottom * fy
                        # Mirror images below one noise unit would add noise and
                        # explain nothing.
                        if not mirrored >= 1.0:
                            continue
                        gradient_x = (s01 - s00) * (1.0 - fy) + (s11 - s10) * fy
                        slope = np.hypot(gradient_x, bottom - top)
                        explained += min(value, mirrored)
                        n_used += 1
                        # An error e in a peak's centre moves its mirror image by 2e:
                        # on a slope that changes the template by 2 e |grad S|.
                        shift_var += (2.0 * slope) ** 2 * centre_error2[j]
                    if rejected:
                        break
                if rejected:
                    break
            if rejected or n_pairs == 0:
                continue
            noise = np.sqrt(1.0 + n_used + shift_var + (tolerance * explained) ** 2)
            excess = value - explained
            if not excess >= threshold * noise:
                continue
            if n_out == len(out_y):
                out_y = _enlarged(out_y, 2 * n_out)
                out_x = _enlarged(out_x, 2 * n_out)
                out_z = _enlarged(out_z, 2 * n_out)
            out_y[n_out], out_x[n_out], out_z[n_out] = y, x, excess
            n_out += 1
    return out_y[:n_out], out_x[:n_out], out_z[:n_out]


@_compiled
def _searched(
    labels: NDArray[np.integer], excluded: NDArray[np.bool_], n_footprints: int
) -> NDArray[np.bool_]:  # pragma: no cover - compiled
    """Footprints ``0..n`` to search: those with no excluded pixel (never 0, the background)."""
    searched = np.ones(n_footprints + 1, dtype=np.bool_)
    searched[0] = False
    ny, nx = labels.shape
    for y in range(ny):
        for x in range(nx):
            if excluded[y, x]:
                searched[labels[y, x]] = False
    return searched


def _symmetry_peaks(
    significance: NDArray[np.float32],
    labels: NDArray[np.integer],
    n_footprints: int,
    py: NDArray[np.intp],
    px: NDArray[np.intp],
    owner: NDArray[np.integer],
    excluded: NDArray[np.bool_],
    threshold: float,
    tolerance: float,
    min_separation: float,
    sigma_px: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Return new peaks found in the mirror-symmetry residual of the existing ones.

    Parameters
    ----------
    significance : ndarray of float32
        The image peaks are found in (noise units).
    labels : ndarray of int
        Footprint label of every pixel (0 outside footprints).
    n_footprints : int
        Number of footprints (the largest label).
    py, px : ndarray of int
        The existing peaks (pixels).
    owner : ndarray of int
        Footprint of each existing peak.
    excluded : ndarray of bool
        Pixels that neither become peaks nor serve as mirror images (no data,
        saturated stars). A footprint with any excluded pixel is not searched:
        a saturated star's clipped core and bleed trail are not symmetric.
    threshold : float
        Residual needed, in units of its noise.
    tolerance : float
        Asymmetry of a point source allowed, as a fraction of the mirrored signal.
    min_separation : float
        Smallest distance of a new peak from an existing one (pixels).
    sigma_px : float
        Gaussian sigma of the PSF (pixels).

    Returns
    -------
    ys, xs : ndarray of int
        The new peaks, one per connected region of residual, where the residual
        is largest.
    """
    none = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))
    if len(py) == 0:
        return none
    ny, nx = significance.shape
    cy, cx = _subpixel_centres(significance, py, px)
    # Squared error of each centre along one axis (px²): the parabola's own, plus
    # the noise's, sqrt(2) sigma / (S/N) for a point source of S/N S.
    peak_value = np.maximum(significance[py, px].astype(np.float64), 1.0)
    centre_error2 = _CENTRE_ERROR_PX**2 + 2.0 * (sigma_px / peak_value) ** 2
    searched = _searched(labels, excluded, n_footprints)
    # Only pixels at least sqrt(2) threshold bright are searched: with a mirror image
    # in use, the residual's noise is at least sqrt(2).
    floor = float(np.float32(np.sqrt(2.0) * threshold))
    ys, xs, z = _candidates(
        significance, labels, searched, excluded, floor, owner, cy, cx, centre_error2,
        _REACH_SIGMA * sigma_px, threshold, tolerance, min_separation,
    )  # fmt: skip
    if len(ys) == 0:
        return none
    # 8-connected regions of candidate pixels, found by looking up each neighbour.
    key = ys.astype(np.int64) * nx + xs
    order = np.argsort(key)
    ys, xs, z, key = ys[order], xs[order], z[order], key[order]
    rows_i, cols_i = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        yn, xn = ys + dy, xs + dx
        valid = (yn < ny) & (xn >= 0) & (xn < nx)
        target = yn.astype(np.int64) * nx + xn
        at = np.minimum(np.searchsorted(key, target), len(key) - 1)
        hit = valid & (key[at] == target)
        rows_i.append(np.flatnonzero(hit))
        cols_i.append(at[hit])
    r, c = np.concatenate(rows_i), np.concatenate(cols_i)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(len(ys), len(ys)))
    _, region = connected_components(graph, directed=False)
    # Each region's peak is where the excess itself is largest (not its ratio to
    # the noise, which grows towards the brighter source).
    best = np.lexsort((-z, region))
    first_of_region = np.r_[True, region[best][1:] != region[best][:-1]]
    chosen = best[first_of_region]
    return ys[chosen].astype(np.intp), xs[chosen].astype(np.intp)
