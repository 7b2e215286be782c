"""Peaks of the detection image: local maxima, the dip test, and saturated stars.

Private helpers of :mod:`~stacklab.toolkit.detection`: a saturated star gets one
peak at the middle of its saturated pixels (found from the SAT plane before any
other full-size image is made, and kept as spans), and a fainter peak survives
only if the significance dips enough between it and its nearest brighter peak.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ._footprint_spans import _grow, _label_compact, _label_spans
from ._jit import _compiled, _enlarged
from .exposure import Exposure

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _saturated_stars(
    exposure: Exposure, sigma_px: float
) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Saturated stars as spans ``(star, y, x_start, x_stop)`` sorted by y and x, and centres.

    A saturated star is its core and bleed trail plus a margin of two PSF FWHM
    (stars 1, 2, ..., numbered in raster order of their first pixel); its centre
    ``(y, x)`` (row ``k`` of the second array) is the middle of its saturated pixels'
    bounding box.
    """
    no_stars = (np.zeros((0, 4), dtype=np.int32), np.zeros((1, 2), dtype=np.int64))
    if "SAT" not in exposure.mask_planes:
        return no_stars
    sat_y, sat_x = _pixels_with_bits(exposure.mask, exposure.mask_planes.bitmask("SAT"))
    if len(sat_y) == 0:
        return no_stars
    radius = 2.0 * _FWHM_PER_SIGMA * sigma_px
    # The margin grows by at most round(radius) pixels along either axis: boxes that
    # hold every saturated pixel with this margin (plus one) and do not overlap hold
    # whole stars, and stars in different boxes never touch. Growing and labelling the
    # boxes gives what the whole image would, at a fraction of its cost.
    margin = max(round(radius), 0) + 1
    ny, nx = exposure.shape
    spans_by_box, centres_by_box = [], []
    for (y0, y1), rows in _intervals(sat_y, margin, ny):
        for (x0, x1), _ in _intervals(sat_x[rows], margin, nx):
            box = (slice(y0, y1), slice(x0, x1))
            saturated = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            inside = rows[(sat_x[rows] >= x0) & (sat_x[rows] < x1)]
            saturated[sat_y[inside] - y0, sat_x[inside] - x0] = True
            sat_labels, n = _label_compact(_grow(saturated, radius), np.ones((3, 3), dtype=bool))
            centres = np.zeros((n, 2), dtype=np.int64)
            for k, sl in enumerate(ndimage.find_objects(sat_labels), start=1):
                core = saturated[sl] & (sat_labels[sl] == k)
                ys, xs = np.nonzero(core)
                centres[k - 1] = (
                    round((ys.min() + ys.max()) / 2) + sl[0].start + y0,
                    round((xs.min() + xs.max()) / 2) + sl[1].start + x0,
                )
            spans = _label_spans(sat_labels)
            spans[:, 1] += box[0].start
            spans[:, 2:] += box[1].start
            spans_by_box.append(spans)
            centres_by_box.append(centres)
    # Stars numbered as a whole-image labelling would: by their first pixel in raster
    # order (each box's spans are sorted by star, then y, then x).
    firsts, offset = [], 0
    for spans in spans_by_box:
        first = np.flatnonzero(np.r_[True, spans[1:, 0] != spans[:-1, 0]])
        firsts.append(spans[first, 1:3].astype(np.int64))
        spans[:, 0] += offset
        offset += len(first)
    first_pixel = np.concatenate(firsts)
    number = np.empty(offset + 1, dtype=np.int32)
    number[1:][np.lexsort((first_pixel[:, 1], first_pixel[:, 0]))] = np.arange(
        1, offset + 1, dtype=np.int32
    )
    spans = np.concatenate(spans_by_box)
    spans[:, 0] = number[spans[:, 0]]
    centres = np.zeros((offset + 1, 2), dtype=np.int64)
    centres[number[1:]] = np.concatenate(centres_by_box)
    order = np.lexsort((spans[:, 2], spans[:, 1]))
    return np.ascontiguousarray(spans[order]), centres


def _intervals(
    coordinate: NDArray[np.intp], margin: int, size: int
) -> list[tuple[tuple[int, int], NDArray[np.intp]]]:
    """Merge ``[c - margin, c + margin]`` (clipped to ``range(size)``) over the coordinates.

    Returns each merged interval as ``(start, stop)`` with the indices of the
    coordinates in it.
    """
    order = np.argsort(coordinate, kind="stable")
    value = coordinate[order]
    # A new interval starts where the previous coordinate's reach ends before this one's.
    breaks = np.flatnonzero(value[1:] - value[:-1] > 2 * margin) + 1
    out = []
    for group in np.split(np.arange(len(value)), breaks):
        start = max(int(value[group[0]]) - margin, 0)
        stop = min(int(value[group[-1]]) + margin + 1, size)
        out.append(((start, stop), order[group]))
    return out


@_compiled
def _pixels_with_bits(
    mask: NDArray[np.int32], bits: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:  # pragma: no cover - compiled
    """``np.nonzero(mask & bits)`` in one pass, without a boolean image."""
    ny, nx = mask.shape
    count = 0
    for y in range(ny):
        for x in range(nx):
            if mask[y, x] & bits:
                count += 1
    ys = np.empty(count, dtype=np.intp)
    xs = np.empty(count, dtype=np.intp)
    i = 0
    for y in range(ny):
        for x in range(nx):
            if mask[y, x] & bits:
                ys[i] = y
                xs[i] = x
                i += 1
    return ys, xs


def _star_under(
    spans: NDArray[np.int32], py: NDArray[np.intp], px: NDArray[np.intp]
) -> NDArray[np.int32]:
    """Saturated star (from :func:`_saturated_stars`) under each pixel, 0 for none."""
    out = np.zeros(len(py), dtype=np.int32)
    if len(spans) == 0 or len(py) == 0:
        return out
    # The span starting last at or before the pixel in its row, if it reaches it.
    width = int(max(spans[:, 3].max(), px.max() + 1))
    keys = spans[:, 1].astype(np.int64) * width + spans[:, 2]
    index = np.searchsorted(keys, py.astype(np.int64) * width + px, side="right") - 1
    valid = index >= 0
    span = spans[np.maximum(index, 0)]
    valid &= (span[:, 1] == py) & (px < span[:, 3])
    out[valid] = span[valid, 0]
    return out


def _local_maxima(
    image: NDArray[np.float32], where: NDArray[np.bool_]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pixels of ``where`` not below any of their 8 neighbours (edges repeat outward).

    The same as comparing with a 3x3 maximum filter in ``"nearest"`` mode, but only
    at the pixels asked about, not over the whole image; in raster order.
    """
    return _local_maxima_kernel(image, np.ascontiguousarray(where))


@_compiled
def _local_maxima_kernel(
    image: NDArray[np.float32], where: NDArray[np.bool_]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:  # pragma: no cover - compiled
    ny, nx = image.shape
    found_y = np.empty(1024, dtype=np.intp)
    found_x = np.empty(1024, dtype=np.intp)
    count = 0
    for y in range(ny):
        for x in range(nx):
            if not where[y, x]:
                continue
            value = image[y, x]
            peak = True
            for dy in range(-1, 2):
                yn = min(max(y + dy, 0), ny - 1)
                for dx in range(-1, 2):
                    if (dy or dx) and not value >= image[yn, min(max(x + dx, 0), nx - 1)]:
                        peak = False
            if not peak:
                continue
            if count == len(found_y):  # grow the lists (amortised doubling)
                found_y = _enlarged(found_y, 2 * count)
                found_x = _enlarged(found_x, 2 * count)
            found_y[count], found_x[count] = y, x
            count += 1
    return found_y[:count].copy(), found_x[:count].copy()


def _dips(
    significance: NDArray[np.float32],
    py: NDArray[np.intp],
    px: NDArray[np.intp],
    i: int,
    kept: list[int],
    min_dip: float,
) -> bool:
    ky, kx = py[kept], px[kept]
    nearest = kept[int(np.argmin((ky - py[i]) ** 2 + (kx - px[i]) ** 2))]
    y0, x0, y1, x1 = py[i], px[i], py[nearest], px[nearest]
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.rint(np.linspace(y0, y1, n)).astype(np.intp)
    xs = np.rint(np.linspace(x0, x1, n)).astype(np.intp)
    saddle = float(significance[ys, xs].min())
    return float(significance[y0, x0]) - saddle >= min_dip
