"""Compiled pixel loops of :mod:`.detection` (numba; see ``_jit``).

Each is one pass over the image or over the footprints' spans (rows ``(footprint,
y, x_start, x_stop)`` sorted by footprint, y and x) that NumPy would make in
several passes with full-size temporaries.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled

# What np.nan_to_num makes of an infinite float32 pixel.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@_compiled
def _sizes_and_seeds(
    spans: NDArray[np.int32],
    n: int,
    no_signal: NDArray[np.bool_],
    mask: NDArray[np.int32],
    seed_bits: int,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:  # pragma: no cover - compiled
    """Pixels of each region ``0..n`` of ``spans``, and whether one is a seed.

    A seed has signal and none of ``seed_bits`` in its mask.
    """
    sizes = np.zeros(n + 1, dtype=np.int64)
    seeded = np.zeros(n + 1, dtype=np.bool_)
    for s in range(len(spans)):
        k, y = spans[s, 0], spans[s, 1]
        sizes[k] += spans[s, 3] - spans[s, 2]
        if seeded[k]:
            continue
        for x in range(spans[s, 2], spans[s, 3]):
            if not no_signal[y, x] and (mask[y, x] & seed_bits) == 0:
                seeded[k] = True
                break
    return sizes, seeded


@_compiled
def _footprint_stats(
    spans: NDArray[np.int32], n: int, image: NDArray[np.float32], block_rows: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:  # pragma: no cover
    """Bounding box ``(x_min, x_max, y_min, y_max)``, pixel count and flux of footprints ``1..n``.

    ``spans`` are sorted by footprint, y and x. The flux is the float64 sum of the
    image (NaN as 0, inf as the largest float32) in raster order, summed within each
    strip of ``block_rows`` rows and then over the strips: the order footprint fluxes
    have always been summed in, so that they stay the same to the bit.
    """
    boxes = np.zeros((n, 4), dtype=np.int64)
    n_pixels = np.zeros(n, dtype=np.int64)
    flux = np.zeros(n)
    s = 0
    while s < len(spans):
        k = spans[s, 0]
        x_min, x_max = spans[s, 2], spans[s, 3] - 1
        y_min = spans[s, 1]
        total, strip_sum, strip = 0.0, 0.0, spans[s, 1] // block_rows
        count = 0
        while s < len(spans) and spans[s, 0] == k:
            y = spans[s, 1]
            if y // block_rows != strip:
                total += strip_sum
                strip_sum, strip = 0.0, y // block_rows
            x_min, x_max = min(x_min, spans[s, 2]), max(x_max, spans[s, 3] - 1)
            for x in range(spans[s, 2], spans[s, 3]):
                value = float(image[y, x])
                if np.isnan(value):
                    value = 0.0
                elif np.isinf(value):
                    value = _FLOAT32_MAX if value > 0 else -_FLOAT32_MAX
                strip_sum += value
            count += spans[s, 3] - spans[s, 2]
            s += 1
        boxes[k - 1, 0], boxes[k - 1, 1] = x_min, x_max
        boxes[k - 1, 2], boxes[k - 1, 3] = y_min, spans[s - 1, 1]
        n_pixels[k - 1] = count
        flux[k - 1] = total + strip_sum
    return boxes, n_pixels, flux


@_compiled
def _unusable(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.int32],
    no_signal_bits: int,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], bool, bool]:  # pragma: no cover - compiled
    """Return the bad pixels, the pixels without signal, and whether there are any of each.

    Bad pixels have a non-finite value or variance, or a variance <= 0; pixels without
    signal are the bad ones and those with any of ``no_signal_bits`` set.
    """
    ny, nx = image.shape
    bad = np.empty((ny, nx), dtype=np.bool_)
    no_signal = np.empty((ny, nx), dtype=np.bool_)
    any_bad = any_no_signal = False
    for y in range(ny):
        for x in range(nx):
            v = variance[y, x]
            is_bad = not (np.isfinite(image[y, x]) and np.isfinite(v) and v > 0)
            bad[y, x] = is_bad
            no_signal[y, x] = is_bad or (mask[y, x] & no_signal_bits) != 0
            any_bad |= is_bad
            any_no_signal |= no_signal[y, x]
    return bad, no_signal, any_bad, any_no_signal


@_compiled
def _set_bits(
    spans: NDArray[np.int32], mask: NDArray[np.int32], bits: int
) -> None:  # pragma: no cover - compiled
    """OR ``bits`` into ``mask`` on every pixel of ``spans`` (in place)."""
    for s in range(len(spans)):
        y = spans[s, 1]
        for x in range(spans[s, 2], spans[s, 3]):
            mask[y, x] |= bits
