"""The compiled inner loop of the warps: Lanczos sums over a block of output pixels.

One pass over the output pixels computes, for each, the image, variance and
covariance sums of its ``(2a)**2`` taps straight from the (padded) input planes,
the usable kernel weight and the mask bits. NumPy needed a sparse matrix of
weights and indices per chunk (36 floats and 36 indices per output pixel, written
and read back three times); here each tap is read once from the table and the input.

The arithmetic is the one of the sparse formulation, in the same order and the
same precision: 2D weights are float32 products ``wy_j * wx_i``, sums are float32
accumulated row by row of taps (as scipy's CSR product does), so warps are the
same to the last bit. The kernel is compiled by numba (see `_jit`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled

__all__: list[str] = []


@_compiled
def _resample_block(
    xin: NDArray[np.float64],
    yin: NDArray[np.float64],
    det: NDArray[np.float64],
    row0: int,
    col0: int,
    image_p: NDArray[np.float32],
    var_p: NDArray[np.float32],
    good_p: NDArray[np.float32],
    mask_p: NDArray[np.int32],
    reach: NDArray[np.bool_],
    table: NDArray[np.float32],
    in_shape: tuple[int, int],
    pad: int,
    threshold: np.float32,
    min_good_weight: np.float32,
    edge_bit: np.int32,
    no_data_bit: np.int32,
    out_image: NDArray[np.float32],
    out_var: NDArray[np.float32],
    out_mask: NDArray[np.int32],
) -> tuple[float, float]:  # pragma: no cover - compiled; run through warp_exposure
    """Resample the output pixels of a block whose input positions are ``xin, yin``.

    Parameters
    ----------
    xin, yin : numpy.ndarray of float64, shape (rows, cols)
        Input pixel position of each output pixel of the block (input px).
    det : numpy.ndarray of float64, shape (rows, cols)
        ``|det J|`` of the mapping there (input px² per output px²).
    row0, col0 : int
        Where the block starts in the output planes (output px).
    image_p, var_p, good_p, mask_p : numpy.ndarray, 2D
        Input image (ADU, bad pixels 0), variance (ADU², bad pixels 0), usable flag
        (1 or 0) and mask, each padded by ``pad`` px of zeros on every side.
    reach : numpy.ndarray of bool, 2D
        True where the kernel window starting at that padded pixel touches a bad,
        masked or off-sensor pixel (those pixels get the tap-by-tap pass).
    table : numpy.ndarray of float32, shape (steps + 1, 2a)
        Normalized Lanczos taps at ``frac = q / steps``.
    in_shape : tuple of int
        ``(ny, nx)`` of the unpadded input (px).
    pad : int
        Padding of the input planes (px), at least ``a + 1``.
    threshold : numpy.float32
        Mask bits of taps heavier than this (absolute weight) reach the output pixel.
    min_good_weight : numpy.float32
        Pixels with less usable kernel weight become NO_DATA.
    edge_bit, no_data_bit : numpy.int32
        SENSOR_EDGE and NO_DATA bits of the output mask.
    out_image, out_var, out_mask : numpy.ndarray, 2D
        Output planes, written in place where the input position is on the input
        (elsewhere they keep their NO_DATA fill).

    Returns
    -------
    sum_mean_var, sum_var : float
        Over pixels with their full kernel weight: the sum of ``|det J|`` times the
        kernel-weighted input variance, and the sum of the output variance (ADU²);
        their ratio is the noise-covariance factor.
    """
    in_ny, in_nx = in_shape
    taps = table.shape[1]
    order = taps // 2
    steps = table.shape[0] - 1
    start_offset = pad - order + 1  # window start = floor(position) + this, in padded px
    zero = np.float32(0.0)
    # Weight sums above this count as full (compared in float32, as NumPy did).
    full = np.float32(0.999)
    wx = np.empty(taps, dtype=np.float32)
    wy = np.empty(taps, dtype=np.float32)
    sum_mean_var = 0.0
    sum_var = 0.0
    rows, cols = xin.shape
    for r in range(rows):
        for c in range(cols):
            x = xin[r, c]
            y = yin[r, c]
            if not (x >= -0.5 and x <= in_nx - 0.5 and y >= -0.5 and y <= in_ny - 0.5):
                continue
            fx = np.floor(x)
            fy = np.floor(y)
            qx = int((x - fx) * steps + 0.5)
            qy = int((y - fy) * steps + 0.5)
            for k in range(taps):
                wx[k] = table[qx, k]
                wy[k] = table[qy, k]
            sy = int(fy) + start_offset
            sx = int(fx) + start_offset
            acc_i = zero
            acc_wv = zero
            acc_v = zero
            for j in range(taps):
                for i in range(taps):
                    w = wy[j] * wx[i]
                    v = var_p[sy + j, sx + i]
                    acc_i += w * image_p[sy + j, sx + i]
                    acc_wv += w * v
                    acc_v += (w * w) * v
            acc_w = np.float32(1.0)
            mask = np.int32(0)
            if reach[sy, sx]:
                acc_w = zero
                off_sensor = False
                for j in range(taps):
                    for i in range(taps):
                        w = wy[j] * wx[i]
                        acc_w += w * good_p[sy + j, sx + i]
                        if abs(w) > threshold:
                            mask |= mask_p[sy + j, sx + i]
                            yy = sy + j - pad
                            xx = sx + i - pad
                            if yy < 0 or yy >= in_ny or xx < 0 or xx >= in_nx:
                                off_sensor = True
                if off_sensor:
                    mask |= edge_bit
            d = det[r, c]
            # float32 quotients times the float64 |det J|, as the NumPy planes were.
            value = np.float32(acc_i / acc_w) * d
            variance = np.float32(acc_v / np.float32(acc_w * acc_w)) * (d * d)
            usable = acc_w >= min_good_weight and np.isfinite(value)
            orow = row0 + r
            ocol = col0 + c
            if usable:
                out_image[orow, ocol] = value
                out_var[orow, ocol] = variance
                out_mask[orow, ocol] = mask
                if acc_w > full:
                    sum_mean_var += np.float32(acc_wv / acc_w) * d
                    sum_var += variance
            else:
                out_image[orow, ocol] = zero
                out_var[orow, ocol] = np.inf
                out_mask[orow, ocol] = mask | no_data_bit
    return sum_mean_var, sum_var
