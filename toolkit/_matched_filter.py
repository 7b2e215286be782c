"""The smoothing kernel of detection and the matched-filter significance image.

`_kernel` takes the exposure's PSF at the centre (or at the data pixel nearest it: a
coadd's PSF is undefined where no input contributed), trimmed to its core, or a Gaussian
of ``fallback_fwhm_px`` when there is no usable PSF. `_matched_filter` divides the image
smoothed by that kernel by the noise of the smoothed image from the variance plane,
``(data * K) / sqrt(var * K²)``; `_smoothed_at` gives the smoothed image at a few pixels.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import galsim
import numpy as np
from numpy.typing import NDArray
from scipy import fft

from ._deblend_kernels import _block_sum
from ._jit import _compiled
from .exposure import Exposure

if TYPE_CHECKING:
    from .detection import DetectionConfig

log = logging.getLogger(__name__)

# Rows per strip of the matched filter and of footprint sums: a strip's transforms and
# copies stay a small fraction of the image (128 rows measured faster than 512: the
# strip stays in cache), and strips are long next to the kernel.
_BLOCK_ROWS = 128


def _psf_position(exposure: Exposure) -> tuple[float, float]:
    """Where to evaluate the smoothing PSF: the centre, or the data pixel nearest to it.

    A coadd's PSF is undefined where no input contributed (``NO_DATA``), which can
    include the centre of a patch the inputs only partly cover.
    """
    ny, nx = exposure.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    if "NO_DATA" not in exposure.mask_planes:
        return cx, cy
    # The centre pixel first: the whole plane only when the centre has no data.
    if not exposure.mask[round(cy), round(cx)] & exposure.mask_planes.bitmask("NO_DATA"):
        return cx, cy
    no_data = exposure.plane("NO_DATA")
    rows, cols = np.nonzero(~no_data)
    if rows.size == 0:
        return cx, cy
    nearest = int(np.argmin((cols - cx) ** 2 + (rows - cy) ** 2))
    return float(cols[nearest]), float(rows[nearest])


def _kernel(exposure: Exposure, config: DetectionConfig) -> tuple[NDArray[np.float64], float]:
    if exposure.psf is not None:
        x, y = _psf_position(exposure)
        try:
            stamp = np.asarray(exposure.psf.compute_image(x, y), float)
        except ValueError as err:  # e.g. a coadd PSF where nothing contributed
            log.warning("the exposure's PSF cannot be evaluated at (%g, %g): %s", x, y, err)
            stamp = np.zeros((0, 0))
        if stamp.ndim == 2 and stamp.size and np.all(np.isfinite(stamp)) and stamp.sum() > 0:
            stamp = stamp / stamp.sum()
            sigma = _gaussian_sigma(stamp)
            # The far wings add nothing to a matched filter but cost time.
            half = min(stamp.shape[0] // 2, int(np.ceil(4.0 * sigma)) + 1)
            c = stamp.shape[0] // 2
            kernel = stamp[c - half : c + half + 1, c - half : c + half + 1]
            return kernel / kernel.sum(), float(sigma)
        log.warning("the exposure's PSF gave an unusable stamp; smoothing with a Gaussian")
    sigma = config.fallback_fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    half = int(np.ceil(4.0 * sigma))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2)
    return kernel / kernel.sum(), float(sigma)


def _gaussian_sigma(stamp: NDArray[np.float64]) -> float:
    """Sigma (px) of the Gaussian with the stamp's adaptive moments; unweighted if HSM fails."""
    result = galsim.hsm.FindAdaptiveMom(
        galsim.ImageD(np.ascontiguousarray(stamp), scale=1.0), strict=False
    )
    if result.moments_status == 0 and result.moments_sigma > 0:
        return float(result.moments_sigma)
    yy, xx = np.indices(stamp.shape, dtype=float)
    cy, cx = (np.asarray(stamp.shape) - 1) / 2.0
    r2 = float(np.sum(stamp * ((xx - cx) ** 2 + (yy - cy) ** 2)))
    return float(np.sqrt(max(r2, 0.25) / 2.0))


def _matched_filter(
    data: NDArray[np.floating],
    var: NDArray[np.floating],
    kernel: NDArray[np.floating],
    block_rows: int = _BLOCK_ROWS,
    *,
    zero_data: NDArray[np.bool_] | None = None,
    fill_var: tuple[NDArray[np.bool_], float] | None = None,
) -> NDArray[np.float32]:
    """Return ``(data * K) / sqrt(var * K²)`` (convolutions, "same" size, zero outside).

    Overlap-save in strips of ``block_rows`` rows: both convolutions of a strip
    share its loop, and no full-size smoothed or noise image is ever held, only
    the float32 result. ``data`` counts as 0 where ``zero_data`` is set, and
    ``var`` as ``value`` where the mask of ``fill_var = (mask, value)`` is set:
    strip by strip, so the caller needs no cleaned full-size copies.
    """
    ny, nx = data.shape
    kh, kw = kernel.shape
    hy, hx = kh // 2, kw // 2
    block = max(1, min(block_rows, ny))
    shape = (
        fft.next_fast_len(block + 2 * hy, real=True),
        fft.next_fast_len(nx + 2 * hx, real=True),
    )
    k32 = np.asarray(kernel, dtype=np.float32)
    kernel_ft = fft.rfft2(k32, s=shape)
    kernel2_ft = fft.rfft2(k32 * k32, s=shape)
    out = np.empty((ny, nx), dtype=np.float32)
    # The strip has the transform's size already (zeros beyond the data), so the
    # transforms need no padded copy of it.
    strip = np.zeros(shape, dtype=np.float32)
    for y0 in range(0, ny, block):
        y1 = min(y0 + block, ny)
        lo, hi = max(y0 - hy, 0), min(y1 + hy, ny)
        rows = slice(lo - (y0 - hy), hi - (y0 - hy))
        smoothed_noise = []
        for plane, transform, fill in (
            (data, kernel_ft, None if zero_data is None else (zero_data, 0.0)),
            (var, kernel2_ft, fill_var),
        ):
            # Only the rows outside the image can hold an earlier strip's pixels: the
            # columns around the data are never written.
            strip[: rows.start] = 0.0
            strip[rows.stop :] = 0.0
            inner = strip[rows, hx : hx + nx]
            inner[...] = plane[lo:hi]
            if fill is not None:
                inner[fill[0][lo:hi]] = fill[1]
            transformed = fft.rfft2(strip)
            transformed *= transform
            smoothed_noise.append(fft.irfft2(transformed, s=shape, overwrite_x=True))
            del transformed
        # The convolution at strip row r needs rows r-2hy..r: rows below 2hy wrap
        # around in the circular transform and are not kept (nor columns below 2hx).
        _signal_to_noise(*smoothed_noise, 2 * hy, 2 * hx, out[y0:y1])
    return out


@_compiled
def _signal_to_noise(
    smoothed: NDArray[np.float32],
    noise2: NDArray[np.float32],
    row0: int,
    col0: int,
    out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled
    """``out = smoothed / sqrt(max(noise2, 1e-30))`` in float32, in one pass without temporaries.

    ``smoothed`` and ``noise2`` are whole contiguous strips read from ``(row0, col0)``
    on (not views of their kept part: numba vectorises the loop over contiguous rows
    only, 2.3x faster). NaN stays NaN (as NumPy's ``maximum`` propagates it).
    """
    tiny = np.float32(1e-30)
    ny, nx = out.shape
    for y in range(ny):
        smoothed_row = smoothed[row0 + y]
        noise2_row = noise2[row0 + y]
        out_row = out[y]
        for x in range(nx):
            n2 = noise2_row[col0 + x]
            if n2 < tiny:
                n2 = tiny
            out_row[x] = smoothed_row[col0 + x] / np.sqrt(n2)


@_compiled
def _smoothed_at(
    image: NDArray[np.float32],
    no_signal: NDArray[np.bool_],
    kernel: NDArray[np.floating],
    ys: NDArray[np.intp],
    xs: NDArray[np.intp],
) -> NDArray[np.float64]:  # pragma: no cover - compiled
    """Return ``image`` (0 on ``no_signal``) convolved with ``kernel`` at ``(ys, xs)``.

    The same as the matched filter's smoothed image ("same" size, zero outside
    the image), summed at a few pixels only: each pixel's products in float64,
    kernel row by row, summed in NumPy's pairwise order (as ``np.sum`` of them).
    """
    ny, nx = image.shape
    kh, kw = kernel.shape
    out = np.zeros(len(ys))
    terms = np.empty(kh * kw)
    for i in range(len(ys)):
        m = 0
        # Convolution: the pixel at offset (a, b) of the kernel weighs image[y + h - a, x + h - b].
        for a in range(kh):
            y = ys[i] + kh // 2 - a
            for b in range(kw):
                x = xs[i] + kw // 2 - b
                value = 0.0
                if 0 <= y < ny and 0 <= x < nx and not no_signal[y, x]:
                    value = float(image[y, x])
                terms[m] = value * kernel[a, b]
                m += 1
        out[i] = _pairwise_sum(terms, m)
    return out


@_compiled
def _pairwise_sum(values: NDArray[np.float64], n: int) -> float:  # pragma: no cover - compiled
    """Sum ``values[:n]`` as ``np.sum`` does: halves (multiples of 8) down to blocks of 128.

    Without recursion (numba's cache cannot hold recursive functions): the halves
    are kept on a stack and added as NumPy's recursion adds them.
    """
    seg_start = np.empty(64, dtype=np.int64)
    seg_n = np.empty(64, dtype=np.int64)
    seg_split = np.zeros(64, dtype=np.bool_)
    sums = np.empty(64)
    seg_start[0], seg_n[0] = 0, n
    top, n_sums = 1, 0
    while top > 0:
        top -= 1
        start, m = seg_start[top], seg_n[top]
        if m <= 128:
            sums[n_sums] = _block_sum(values[start:], m)
            n_sums += 1
        elif seg_split[top]:  # both halves summed: add them
            n_sums -= 1
            sums[n_sums - 1] = sums[n_sums - 1] + sums[n_sums]
        else:
            half = m // 2
            half -= half % 8
            seg_split[top] = True
            top += 1
            seg_start[top], seg_n[top], seg_split[top] = start + half, m - half, False
            top += 1
            seg_start[top], seg_n[top], seg_split[top] = start, half, False
            top += 1
    return sums[0]
