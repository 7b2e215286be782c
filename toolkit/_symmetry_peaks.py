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
from scipy.spatial import cKDTree

from ._jit import _compiled

# Rows per strip, and pixels per chunk of a strip: the pixel lists and (pixel, peak)
# pairs stay small whatever the image size and crowding.
_STRIP_ROWS = 256
_CHUNK_PIXELS = 16384
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


def _bilinear(
    image: NDArray[np.float32], y: NDArray[np.float64], x: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``image`` and the length of its gradient, interpolated bilinearly at ``(y, x)``.

    All positions must lie inside ``[0, n - 1]`` on both axes.
    """
    ny, nx = image.shape
    y0 = np.minimum(np.floor(y).astype(np.intp), ny - 2)
    x0 = np.minimum(np.floor(x).astype(np.intp), nx - 2)
    fy, fx = y - y0, x - x0
    s00, s01 = image[y0, x0].astype(np.float64), image[y0, x0 + 1].astype(np.float64)
    s10, s11 = image[y0 + 1, x0].astype(np.float64), image[y0 + 1, x0 + 1].astype(np.float64)
    top = s00 * (1.0 - fx) + s01 * fx
    bottom = s10 * (1.0 - fx) + s11 * fx
    gx = (s01 - s00) * (1.0 - fy) + (s11 - s10) * fy
    return top * (1.0 - fy) + bottom * fy, np.hypot(gx, bottom - top)


def _chunk_candidates(
    significance: NDArray[np.float32],
    excluded: NDArray[np.bool_],
    ys: NDArray[np.intp],
    xs: NDArray[np.intp],
    lab: NDArray[np.intp],
    owner: NDArray[np.integer],
    cy: NDArray[np.float64],
    cx: NDArray[np.float64],
    centre_error2: NDArray[np.float64],
    peak_tree: cKDTree,
    reach: float,
    threshold: float,
    tolerance: float,
    min_separation: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]] | None:
    """Pixels of one chunk whose residual reaches ``threshold`` times its noise.

    Each pixel ``(ys, xs)`` of footprint ``lab`` is paired with the peaks of its
    footprint within ``reach`` px (farther ones cannot explain its light). Returns the
    candidates' ``ys, xs`` and residuals, or None.
    """
    ny, nx = significance.shape
    pairs = cKDTree(np.column_stack([xs, ys])).sparse_distance_matrix(
        peak_tree, reach, output_type="ndarray"
    )
    pixel, peak = pairs["i"].astype(np.intp), pairs["j"].astype(np.intp)
    same = owner[peak] == lab[pixel]
    pixel, peak = pixel[same], peak[same]
    if len(pixel) == 0:
        return None
    order = np.argsort(pixel, kind="stable")
    pixel, peak = pixel[order], peak[order]
    # Pairs grouped by pixel: pixels[k] owns pairs bounds[k]:bounds[k + 1].
    pixels, bounds = np.unique(pixel, return_index=True)
    py_pair, px_pair = ys[pixel], xs[pixel]
    my = 2.0 * cy[peak] - py_pair
    mx = 2.0 * cx[peak] - px_pair
    distance2 = (cy[peak] - py_pair) ** 2 + (cx[peak] - px_pair) ** 2
    inside = (my >= 0) & (my <= ny - 1) & (mx >= 0) & (mx <= nx - 1)
    pair_value = significance[py_pair, px_pair].astype(np.float64)
    mirrored = np.full(len(pixel), np.inf)
    slope = np.zeros(len(pixel))
    mirrored[inside], slope[inside] = _bilinear(significance, my[inside], mx[inside])
    # A mirror image off the image or on excluded pixels is unknown: the pixel is
    # not searched (a star cut by the edge would otherwise leave all of its light).
    blocked = ~inside
    blocked[inside] = excluded[
        np.rint(my[inside]).astype(np.intp), np.rint(mx[inside]).astype(np.intp)
    ]
    # Mirror images below one noise unit would add noise and explain nothing.
    used = ~blocked & (mirrored >= 1.0)
    template = np.where(used, np.minimum(pair_value, mirrored), 0.0)
    # An error e in a peak's centre moves its mirror image by 2e: on a slope
    # that changes the template by 2 e |grad S|.
    shift_noise = np.where(used, 2.0 * slope, 0.0) ** 2 * centre_error2[peak]
    explained = np.add.reduceat(template, bounds)
    n_used = np.add.reduceat(used.astype(np.int64), bounds)
    shift_var = np.add.reduceat(shift_noise, bounds)
    any_blocked = np.logical_or.reduceat(blocked, bounds)
    near = np.minimum.reduceat(distance2, bounds) < min_separation**2
    value = pair_value[bounds]  # S at each pixel (its first pair)
    noise = np.sqrt(1.0 + n_used + shift_var + (tolerance * explained) ** 2)
    excess = value - explained
    keep = (excess >= threshold * noise) & ~any_blocked & ~near
    return ys[pixels[keep]], xs[pixels[keep]], excess[keep]


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


@_compiled
def _strip_pixels(
    significance: NDArray[np.float32],
    labels: NDArray[np.integer],
    searched: NDArray[np.bool_],
    floor: np.float32,
    y_start: int,
    y_stop: int,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:  # pragma: no cover - compiled
    """Return the pixels of rows ``y_start:y_stop`` to search, in raster order, and their labels.

    Those at least ``floor`` bright in a footprint that ``searched`` marks.
    """
    nx = significance.shape[1]
    count = 0
    for y in range(y_start, y_stop):
        for x in range(nx):
            if significance[y, x] >= floor and labels[y, x] > 0 and searched[labels[y, x]]:
                count += 1
    ys = np.empty(count, dtype=np.intp)
    xs = np.empty(count, dtype=np.intp)
    lab = np.empty(count, dtype=np.intp)
    i = 0
    for y in range(y_start, y_stop):
        for x in range(nx):
            if significance[y, x] >= floor and labels[y, x] > 0 and searched[labels[y, x]]:
                ys[i], xs[i], lab[i] = y, x, labels[y, x]
                i += 1
    return ys, xs, lab


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
    peak_tree = cKDTree(np.column_stack([cx, cy]))
    reach = _REACH_SIGMA * sigma_px
    # Only pixels at least sqrt(2) threshold bright are searched: with a mirror image
    # in use, the residual's noise is at least sqrt(2).
    floor = np.float32(np.sqrt(2.0) * threshold)
    found_y: list[NDArray[np.intp]] = []
    found_x: list[NDArray[np.intp]] = []
    found_z: list[NDArray[np.float64]] = []
    for y_start in range(0, ny, _STRIP_ROWS):
        strip_ys, strip_xs, strip_lab = _strip_pixels(
            significance, labels, searched, floor, y_start, min(y_start + _STRIP_ROWS, ny)
        )
        # In chunks of pixels, so that the (pixel, peak) pairs stay few in crowded fields.
        for c0 in range(0, len(strip_ys), _CHUNK_PIXELS):
            ys, xs = strip_ys[c0 : c0 + _CHUNK_PIXELS], strip_xs[c0 : c0 + _CHUNK_PIXELS]
            lab = strip_lab[c0 : c0 + _CHUNK_PIXELS]
            found = _chunk_candidates(
                significance, excluded, ys, xs, lab, owner, cy, cx, centre_error2, peak_tree,
                reach, threshold, tolerance, min_separation,
            )  # fmt: skip
            if found is not None:
                found_y.append(found[0])
                found_x.append(found[1])
                found_z.append(found[2])
    if not found_y:
        return none
    ys, xs, z = np.concatenate(found_y), np.concatenate(found_x), np.concatenate(found_z)
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
