"""Combining the stacked warps of a coadd into its rows: weighted mean or clipped statistics.

`_assemble` walks the patch in row chunks. The weighted mean adds one input's box at a
time (memory independent of the number of inputs; one compiled pass per box,
`_combine_kernel`); the clipping statistics read a chunk
of the stack (at most ``2**21`` values). Each chunk's mask is the OR of the used inputs'
masks, with planes propagated by weight fraction, and CLIPPED, INEXACT_PSF and NO_DATA set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ._combine_kernel import _add_to_mean
from .coadd_stack import _chunk_rows, _combine, _DiskStack, _read_chunk
from .mask import MaskPlanes

if TYPE_CHECKING:
    from .coadd import CoaddConfig

#: Input mask planes a coadd never inherits (they describe one warp, not the sky).
_NEVER_PROPAGATED = ("DETECTED", "DETECTED_NEGATIVE", "CLIPPED")


def _assemble(
    stack: _DiskStack,
    weights: NDArray[np.float64],
    planes: MaskPlanes,
    bad_bits: int,
    config: CoaddConfig,
) -> tuple[
    NDArray[np.float32], NDArray[np.float32], NDArray[np.int32], NDArray[np.int16],
    NDArray[np.int64], int,
]:  # fmt: skip
    ny, nx = stack.shape
    image = np.zeros((ny, nx), dtype=np.float32)
    variance = np.full((ny, nx), np.inf, dtype=np.float32)
    out_mask = np.zeros((ny, nx), dtype=np.int32)
    n_inputs = np.zeros((ny, nx), dtype=np.int16)
    contributors = np.zeros((ny, nx), dtype=np.int64)
    region_based = config.statistic in ("safe_clip", "compare_warp")
    statistic = "mean" if region_based else config.statistic
    combine_bad = bad_bits | (planes.bitmask("CLIPPED") if region_based else 0)
    # The mean needs one input at a time (memory independent of their number, and
    # only each input's box is touched); the clipping statistics need the stack.
    chunk = _assemble_mean_chunk if statistic == "mean" else _assemble_stack_chunk
    step = config.chunk_rows if statistic == "mean" else _chunk_rows(config.chunk_rows, stack.n, nx)
    n_all_clipped = 0
    for y0 in range(0, ny, step):
        y1 = min(y0 + step, ny)
        rows = slice(y0, y1)
        found = chunk(stack, weights, planes, bad_bits, combine_bad, y0, y1, config)
        value, value_var, mask, count, bits, n_clipped = found
        any_used = count > 0
        # The planes start as 0 and inf: only pixels with data are written (cast to float32).
        np.copyto(image[rows], value, where=any_used)
        np.copyto(variance[rows], value_var, where=any_used)
        out_mask[rows] = mask
        n_inputs[rows] = count
        contributors[rows] = bits
        n_all_clipped += n_clipped
    return image, variance, out_mask, n_inputs, contributors, n_all_clipped


_Chunk = tuple[
    NDArray[np.float64], NDArray[np.float64], NDArray[np.int32], NDArray[np.int16],
    NDArray[np.int64], int,
]  # fmt: skip


def _finish_mask(
    mask: NDArray[np.int32],
    any_used: NDArray[np.bool_],
    clipped_here: NDArray[np.bool_],
    wsum_data: NDArray[np.float64],
    wsum_planes: Mapping[int, NDArray[np.float64]],
    thresholds: Mapping[int, float],
    planes: MaskPlanes,
) -> NDArray[np.int32]:
    """Coadd mask of a chunk from the OR of the used inputs' masks and the propagation sums."""
    clip_bit = np.int32(planes.bitmask("CLIPPED"))
    inexact = np.int32(planes.bitmask("INEXACT_PSF"))
    edge = np.int32(planes.bitmask("SENSOR_EDGE"))
    never = planes.bitmask(*[p for p in _NEVER_PROPAGATED if p in planes])
    mask = mask & ~np.int32(never)
    for bit, threshold in thresholds.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = wsum_planes[bit] / wsum_data
        mask[fraction > threshold] |= np.int32(bit)
    mask[clipped_here] |= clip_bit
    mask[(mask & (clip_bit | edge)) != 0] |= inexact
    mask[~any_used] |= np.int32(planes.bitmask("NO_DATA"))
    return mask


def _propagated_bits(planes: MaskPlanes, config: CoaddConfig) -> dict[int, float]:
    return {
        planes.bitmask(name): threshold
        for name, threshold in config.mask_propagation_thresholds.items()
        if name in planes
    }


def _assemble_mean_chunk(
    stack: _DiskStack,
    weights: NDArray[np.float64],
    planes: MaskPlanes,
    bad_bits: int,
    combine_bad: int,
    y0: int,
    y1: int,
    config: CoaddConfig,
) -> _Chunk:
    """Weighted mean of coadd rows ``y0..y1-1``, adding one input's box at a time."""
    shape = (y1 - y0, stack.shape[1])
    no_data_bit = planes.bitmask("NO_DATA")
    thresholds = _propagated_bits(planes, config)
    propagated = np.array(list(thresholds), dtype=np.int32)
    wsum = np.zeros(shape)
    wdata = np.zeros(shape)
    w2var = np.zeros(shape)
    wsum_data = np.zeros(shape)
    wsum_stack = np.zeros((len(propagated), *shape))
    mask = np.zeros(shape, dtype=np.int32)
    count = np.zeros(shape, dtype=np.int16)
    bits = np.zeros(shape, dtype=np.int64)
    clipped_here = np.zeros(shape, dtype=bool)
    # Rejected for something other than a bad plane (a CLIPPED region or a non-finite value).
    bad_but_no_data = np.int32(bad_bits & ~no_data_bit)
    for i in range(stack.n):
        found = stack.segment("image", i, y0, y1)
        if found is None:
            continue
        data, at = found
        var = stack.segment("variance", i, y0, y1)[0]  # type: ignore[index]
        m = stack.segment("mask", i, y0, y1)[0]  # type: ignore[index]
        _add_to_mean(
            data, var, m, at[0].start, at[1].start, float(weights[i]), np.int64(1) << np.int64(i),
            np.int32(combine_bad), np.int32(no_data_bit), bad_but_no_data, propagated,
            wsum, wdata, w2var, wsum_data, wsum_stack, mask, count, bits, clipped_here,
        )  # fmt: skip
    wsum_planes = dict(zip(thresholds, wsum_stack, strict=True))
    any_used = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        value = wdata / wsum
        value_var = w2var / wsum**2
    mask = _finish_mask(mask, any_used, clipped_here, wsum_data, wsum_planes, thresholds, planes)
    return value, value_var, mask, count, bits, 0


def _assemble_stack_chunk(
    stack: _DiskStack,
    weights: NDArray[np.float64],
    planes: MaskPlanes,
    bad_bits: int,
    combine_bad: int,
    y0: int,
    y1: int,
    config: CoaddConfig,
) -> _Chunk:
    """Clipped mean or median of coadd rows ``y0..y1-1`` from the stacked inputs."""
    clip_bit = np.int32(planes.bitmask("CLIPPED"))
    no_data_bit = np.int32(planes.bitmask("NO_DATA"))
    thresholds = _propagated_bits(planes, config)
    w = weights[:, None, None]
    data, var, usable = _read_chunk(stack, y0, y1, combine_bad)
    masks = np.stack([stack.rows("mask", i, y0, y1) for i in range(stack.n)])
    has_data = (masks & no_data_bit) == 0
    value, value_var, used = _combine(
        data, var, usable, weights, config.statistic, config.sigma_clip, config.clip_iterations
    )
    rejected = has_data & ~used
    clipped_here = np.any(rejected & ((masks & (bad_bits & ~no_data_bit)) == 0), axis=0)
    if config.statistic == "clipped_mean":
        for i in range(stack.n):
            newly = rejected[i] & usable[i]
            if newly.any():
                m = masks[i].copy()
                m[newly] |= clip_bit
                stack.write_rows("mask", i, y0, m)
    any_used = np.asarray(used.any(axis=0))
    n_all_clipped = int(np.sum(usable.any(axis=0) & ~any_used))
    mask = np.bitwise_or.reduce(np.where(used, masks, 0), axis=0)
    wsum_data = np.sum(np.where(has_data, w, 0.0), axis=0)
    wsum_planes = {
        bit: np.sum(np.where(has_data & ((masks & np.int32(bit)) != 0), w, 0.0), axis=0)
        for bit in thresholds
    }
    mask = _finish_mask(mask, any_used, clipped_here, wsum_data, wsum_planes, thresholds, planes)
    bits = np.left_shift(np.int64(1), np.arange(stack.n, dtype=np.int64))[:, None, None]
    contributors = np.sum(np.where(used, bits, 0), axis=0)
    return value, value_var, mask, used.sum(axis=0).astype(np.int16), contributors, n_all_clipped
