"""The compiled inner loop of the weighted-mean coadd: add one warp's rows to the sums.

NumPy made about a dozen passes over each warp segment (usable and has-data tests,
five masked sums, mask and contributor ORs, propagated planes, rejections), each with
its temporaries; here it is one pass. Sums are float64 with the same operands in the
same order (inputs one after the other), so the coadd is the same to the last bit.
Compiled by numba (see `_jit`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled

__all__: list[str] = []


@_compiled
def _add_to_mean(
    data: NDArray[np.float32],
    var: NDArray[np.float32],
    m: NDArray[np.int32],
    row0: int,
    col0: int,
    weight: float,
    input_bit: np.int64,
    combine_bad: np.int32,
    no_data_bit: np.int32,
    bad_but_no_data: np.int32,
    propagated: NDArray[np.int32],
    wsum: NDArray[np.float64],
    wdata: NDArray[np.float64],
    w2var: NDArray[np.float64],
    wsum_data: NDArray[np.float64],
    wsum_planes: NDArray[np.float64],
    mask: NDArray[np.int32],
    count: NDArray[np.int16],
    bits: NDArray[np.int64],
    clipped_here: NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled; run through coadd
    """Add one warp's segment to the weighted-mean sums of a chunk of coadd rows (in place).

    Parameters
    ----------
    data, var, m : numpy.ndarray, shape (rows, cols)
        The warp's image (ADU), variance (ADU²) and mask on the segment.
    row0, col0 : int
        Where the segment starts in the chunk (px).
    weight : float
        The warp's weight ``w`` (1/ADU²).
    input_bit : numpy.int64
        The warp's bit in the contributors image.
    combine_bad : numpy.int32
        Mask bits that leave a pixel out of the sums (bad planes, and CLIPPED for the
        artifact-rejecting statistics).
    no_data_bit, bad_but_no_data : numpy.int32
        The NO_DATA bit, and the bad bits other than NO_DATA.
    propagated : numpy.ndarray of int32
        Bits whose weight fraction is summed in ``wsum_planes`` (same order).
    wsum, wdata, w2var, wsum_data : numpy.ndarray of float64, shape (chunk rows, nx)
        Sums of ``w``, ``w I``, ``w² V`` over used inputs, and of ``w`` over inputs
        with data.
    wsum_planes : numpy.ndarray of float64, shape (len(propagated), chunk rows, nx)
        Sums of ``w`` over inputs with data having each propagated bit.
    mask, count, bits, clipped_here : numpy.ndarray, shape (chunk rows, nx)
        OR of used inputs' masks, number of used inputs, contributor bits, and
        whether an input with data was rejected for other than a bad plane.
    """
    rows, cols = data.shape
    n_planes = propagated.shape[0]
    w2 = weight * weight
    for r in range(rows):
        for c in range(cols):
            bits_here = m[r, c]
            if (bits_here & no_data_bit) != 0:
                continue
            y = row0 + r
            x = col0 + c
            value = data[r, c]
            variance = var[r, c]
            wsum_data[y, x] += weight
            for p in range(n_planes):
                if (bits_here & propagated[p]) != 0:
                    wsum_planes[p, y, x] += weight
            if (bits_here & combine_bad) == 0 and np.isfinite(value) and np.isfinite(variance):
                wsum[y, x] += weight
                wdata[y, x] += value * weight
                w2var[y, x] += variance * w2
                mask[y, x] |= bits_here
                count[y, x] += 1
                bits[y, x] |= input_bit
            elif (bits_here & bad_but_no_data) == 0:
                clipped_here[y, x] = True
