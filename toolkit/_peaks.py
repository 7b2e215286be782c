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
from .exposure import Exposure

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _saturated_stars(
    exposure: Exposure, sigma_px: float
) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Saturated stars as spans ``(star, y, x_start, x_stop)`` sorted by y and x, and centres.

    A saturated star is its core and bleed trail plus a margin of two PSF FWHM
    (stars 1, 2, ...); its centre ``(y, x)`` (row ``k`` of the second array) is the
    middle of its saturated pixels' bounding box.
    """
    no_stars = (np.zeros((0, 4), dtype=np.int32), np.zeros((1, 2), dtype=np.int64))
    if "SAT" not in exposure.mask_planes:
        return no_stars
    saturated = exposure.plane("SAT")
    if not saturated.any():
        return no_stars
    sat_grown = _grow(saturated, 2.0 * _FWHM_PER_SIGMA * sigma_px)
    sat_labels, n = _label_compact(sat_grown, np.ones((3, 3), dtype=bool))
    del sat_grown
    centres = np.zeros((n + 1, 2), dtype=np.int64)
    for k, sl in enumerate(ndimage.find_objects(sat_labels), start=1):
        if sl is None:
            continue
        core = saturated[sl] & (sat_labels[sl] == k)
        ys, xs = np.nonzero(core)
        centres[k] = (
            round((ys.min() + ys.max()) / 2) + sl[0].start,
            round((xs.min() + xs.max()) / 2) + sl[1].start,
        )
    spans = _label_spans(sat_labels)
    order = np.lexsort((spans[:, 2], spans[:, 1]))
    return np.ascontiguousarray(spans[order]), centres


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
    at the pixels asked about, not over the whole image.
    """
    ys, xs = np.nonzero(where)
    ny, nx = image.shape
    value = image[ys, xs]
    keep = np.ones(len(ys), dtype=bool)
    for dy in (-1, 0, 1):
        yn = np.clip(ys + dy, 0, ny - 1)
        for dx in (-1, 0, 1):
            if dy or dx:
                keep &= value >= image[yn, np.clip(xs + dx, 0, nx - 1)]
    return ys[keep], xs[keep]


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
