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

from ._jit import _block_sum, _compiled
from .exposure import Exposure

if TYPE_CHECKING:
    from .detection import DetectionConfig

log = logging.getLogger(__name__)

# Rows per strip of the matched filter and of footprint sums: a strip's transforms and
# copies stay a small fraction of the image (128 rows measured faster than 512: the
# strip stays in cache), and strips are long next to the kernel.
_BLOCK_ROWS = 128
# A kernel whose rank-one remainder is at most this fraction of its largest value is
# applied as two one-dimensional passes (float32's rounding is 6e-8).
_SEPARABLE_TOLERANCE = 1e-9


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

    A separable kernel (a Gaussian, as detection's first pass uses) is applied as
    two one-dimensional passes instead (:func:`_separable_matched_filter`): the same
    result to float32 rounding, in about a third of the time.
    """
    factors = _separable_factors(kernel)
    if factors is not None:
        return _separable_matched_filter(data, var, *factors, zero_data, fill_var)
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


def _separable_factors(
    kernel: NDArray[np.floating],
) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    """Column and row factors ``(c, r)`` with ``kernel = outer(c, r)``, or None if it is not so.

    Separable means within float32 rounding: the rank-one remainder is at most
    ``_SEPARABLE_TOLERANCE`` of the largest kernel value (a sampled Gaussian's is
    ~1e-16). Both factors are taken positive-sum.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or min(k.shape) < 2 or not np.all(np.isfinite(k)):
        return None
    u, s, vt = np.linalg.svd(k)
    column, row = u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])
    if column.sum() < 0:
        column, row = -column, -row
    scale = float(np.max(np.abs(k)))
    if not scale > 0 or np.max(np.abs(k - np.outer(column, row))) > _SEPARABLE_TOLERANCE * scale:
        return None
    return column.astype(np.float32), row.astype(np.float32)


def _separable_matched_filter(
    data: NDArray[np.floating],
    var: NDArray[np.floating],
    column: NDArray[np.float32],
    row: NDArray[np.float32],
    zero_data: NDArray[np.bool_] | None,
    fill_var: tuple[NDArray[np.bool_], float] | None,
) -> NDArray[np.float32]:
    """`_matched_filter` of the kernel ``outer(column, row)``: a column pass, then a row pass.

    ``K²`` is ``outer(column², row²)``, so the noise image is separable too.
    """
    empty = np.zeros((0, 0), dtype=bool)
    fill_mask, fill_value = (empty, 0.0) if fill_var is None else fill_var
    out = np.empty(data.shape, dtype=np.float32)
    _separable_signal_to_noise(
        data, var, column, row, column * column, row * row,
        empty if zero_data is None else zero_data, fill_mask, np.float32(fill_value), out,
    )  # fmt: skip
    return out


@_compiled
def _separable_signal_to_noise(
    data: NDArray[np.floating],
    var: NDArray[np.floating],
    column: NDArray[np.float32],
    row: NDArray[np.float32],
    column2: NDArray[np.float32],
    row2: NDArray[np.float32],
    zero_data: NDArray[np.bool_],
    fill_mask: NDArray[np.bool_],
    fill_value: np.float32,
    out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled
    """``out = (data * K) / sqrt(var * K²)`` for ``K = outer(column, row)``, row by row.

    Convolutions ("same" size, zero outside the image) summed in float32, as the
    FFT path computes them. The ``kh`` input rows an output row needs are kept,
    cleaned (``zero_data`` sets data to 0 and ``fill_mask`` var to ``fill_value``;
    empty arrays: none), in a ring of rows; the column pass sums them into a
    zero-padded row and the row pass sums along it; :func:`_signal_to_noise` then
    divides. Every inner loop runs over contiguous rows without branches, so that
    numba vectorises it.
    """
    ny, nx = data.shape
    kh, kw = len(column), len(row)
    hy, hx = kh // 2, kw // 2
    use_zero = zero_data.shape[0] > 0
    use_fill = fill_mask.shape[0] > 0
    zero32 = np.float32(0.0)
    ring_data = np.zeros((kh, nx), dtype=np.float32)
    ring_var = np.zeros((kh, nx), dtype=np.float32)
    padded_data = np.zeros(nx + 2 * hx, dtype=np.float32)
    padded_var = np.zeros(nx + 2 * hx, dtype=np.float32)
    smoothed = np.empty(nx, dtype=np.float32)
    noise2 = np.empty(nx, dtype=np.float32)
    # Input row yy lives in ring slot yy % kh; rows outside the image are zeros.
    for yy in range(min(hy, ny)):
        _clean_row(data, var, zero_data, fill_mask, fill_value, use_zero, use_fill, yy,
                   ring_data[yy % kh], ring_var[yy % kh])  # fmt: skip
    for y in range(ny):
        new = y + hy
        if new < ny:
            _clean_row(data, var, zero_data, fill_mask, fill_value, use_zero, use_fill, new,
                       ring_data[new % kh], ring_var[new % kh])  # fmt: skip
        # Loops read and write slices, not offset indices: numba vectorises those
        # (offset reads ran 6x slower).
        inner_data, inner_var = padded_data[hx : hx + nx], padded_var[hx : hx + nx]
        inner_data[:] = zero32
        inner_var[:] = zero32
        # Convolution: column[a] weighs the input row y + hy - a.
        for a in range(kh):
            yy = y + hy - a
            if yy < 0 or yy >= ny:
                continue
            ca, ca2 = column[a], column2[a]
            d_row, v_row = ring_data[yy % kh], ring_var[yy % kh]
            for x in range(nx):
                inner_data[x] += ca * d_row[x]
            for x in range(nx):
                inner_var[x] += ca2 * v_row[x]
        smoothed[:] = zero32
        noise2[:] = zero32
        # row[b] weighs the column sum at x + hx - b: padded index x + 2 hx - b.
        for b in range(kw):
            rb, rb2, shift = row[b], row2[b], 2 * hx - b
            d_shifted, v_shifted = padded_data[shift : shift + nx], padded_var[shift : shift + nx]
            for x in range(nx):
                smoothed[x] += rb * d_shifted[x]
            for x in range(nx):
                noise2[x] += rb2 * v_shifted[x]
        _signal_to_noise(smoothed.reshape(1, nx), noise2.reshape(1, nx), 0, 0, out[y : y + 1])


@_compiled
def _clean_row(
    data: NDArray[np.floating],
    var: NDArray[np.floating],
    zero_data: NDArray[np.bool_],
    fill_mask: NDArray[np.bool_],
    fill_value: np.float32,
    use_zero: bool,
    use_fill: bool,
    y: int,
    data_out: NDArray[np.float32],
    var_out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled
    """Row ``y`` in float32: data 0 where ``zero_data``, var ``fill_value`` where ``fill_mask``."""
    nx = data.shape[1]
    zero32 = np.float32(0.0)
    for x in range(nx):
        data_out[x] = np.float32(data[y, x])
    for x in range(nx):
        var_out[x] = np.float32(var[y, x])
    if use_zero:
        for x in range(nx):
            if zero_data[y, x]:
                data_out[x] = zero32
    if use_fill:
        for x in range(nx):
            if fill_mask[y, x]:
                var_out[x] = fill_value


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
