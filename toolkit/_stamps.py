"""Private helpers shared by the PSF and measurement steps: cut-outs and sub-pixel shifts."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled

_LARGEST = float(np.finfo(np.float64).max)
# Stamps shifted per batch by fft_shift (bounds its temporaries' memory).
_SHIFT_CHUNK = 128


@functools.lru_cache(maxsize=256)
def good_size(n: int) -> int:
    """Smallest odd integer >= ``n`` whose prime factors are 3, 5, 7, 11 and 13 (fast FFTs).

    scipy's pocketfft transforms such lengths at 2.3-3.3 ns per pixel of a 2-D
    stamp (batches of single-precision inverse transforms, measured here), against
    3.5 for a factor 17 and more for larger primes.
    Allowing 11 and 13 saves a size step where it is large: a 47 px PSF padded by
    3 px a side takes 55 (5 x 11) rather than 63.
    """
    m = max(int(n), 1)
    m += 1 - m % 2
    while True:
        k = m
        for p in (3, 5, 7, 11, 13):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def fft_shift(
    stamp: NDArray[np.floating], dx: float | NDArray[np.floating], dy: float | NDArray[np.floating]
) -> NDArray[np.float64]:
    """Shift ``stamp`` by ``(dx, dy)`` pixels with a Fourier phase ramp (sinc interpolation).

    Exact for band-limited images; a well-sampled PSF (FWHM >= 2.5 px) is. The shift
    wraps around, so callers pad the stamp by a few pixels and crop afterwards.
    ``stamp`` may be a stack ``(..., ny, nx)`` with one shift per stamp (``dx``, ``dy``
    of the stack's leading shape): each is transformed as on its own, bit for bit
    (NumPy's FFTs go line by line), with one call's overhead for the stack.
    """
    ny, nx = stamp.shape[-2:]
    if stamp.ndim == 3 and len(stamp) > _SHIFT_CHUNK:
        # A few MB of complex temporaries at a time, however many stamps.
        dx = np.broadcast_to(np.asarray(dx, dtype=np.float64), stamp.shape[:1])
        dy = np.broadcast_to(np.asarray(dy, dtype=np.float64), stamp.shape[:1])
        out = np.empty(stamp.shape)
        for start in range(0, len(stamp), _SHIFT_CHUNK):
            part = slice(start, start + _SHIFT_CHUNK)
            out[part] = fft_shift(stamp[part], dx[part], dy[part])
        return out
    if np.ndim(dx) or np.ndim(dy):
        dx = np.asarray(dx, dtype=np.float64)[..., None, None]
        dy = np.asarray(dy, dtype=np.float64)[..., None, None]
    return np.fft.irfft2(np.fft.rfft2(stamp) * phase_ramp(ny, nx, dx, dy), s=(ny, nx))


def phase_ramp(ny: int, nx: int, dx: Any, dy: Any) -> NDArray[np.complex128]:
    """Return the ``rfft2`` factor that shifts an ``(ny, nx)`` image by ``(dx, dy)`` pixels.

    ``dx``, ``dy`` broadcast against ``(ny, nx // 2 + 1)`` (e.g. ``(n, 1, 1)`` for a stack).
    """
    ky = np.fft.fftfreq(ny)[:, None]  # fftfreq/rfftfreq are cheap next to the transforms
    kx = np.fft.rfftfreq(nx)[None, :]
    return np.asarray(np.exp(-2j * np.pi * (kx * dx + ky * dy)))


def shift_padding(n: int, margin: int) -> int:
    """Return the zeros a side that pad length ``n`` to the :func:`good_size` of ``n + margin``.

    The padded length is ``n + 2 * shift_padding(n, margin)``.
    """
    return (good_size(n + margin) - n) // 2


def fft_shift_padded(
    stamps: NDArray[np.floating],
    dx: float | NDArray[np.floating],
    dy: float | NDArray[np.floating],
    margin: int = 6,
) -> NDArray[np.float64]:
    """:func:`fft_shift` of stamps zero-padded so the shift does not wrap around.

    Each axis is padded on both sides to the FFT-friendly :func:`good_size` of its
    length plus ``margin``, shifted, and cropped back to the stamps' shape.
    """
    ny, nx = stamps.shape[-2:]
    py, px = shift_padding(ny, margin), shift_padding(nx, margin)
    widths = [(0, 0)] * (stamps.ndim - 2) + [(py, py), (px, px)]
    shifted = fft_shift(np.pad(stamps, widths), dx, dy)
    return np.asarray(shifted[..., py : py + ny, px : px + nx])


def inverse_variance(variance: NDArray[np.floating], bad: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Weights ``1 / variance``, 0 on ``bad`` pixels and where the variance is not > 0."""
    usable = ~bad & (variance > 0)
    return np.where(usable, 1.0 / np.where(usable, variance, 1.0), 0.0)


def cutout(
    array: NDArray[Any],
    ix: int,
    iy: int,
    half: int,
    fill: float | int = 0,
) -> NDArray[Any]:
    """Return ``array[iy-half:iy+half+1, ix-half:ix+half+1]``, padded with ``fill`` off the edge."""
    ny, nx = array.shape
    size = 2 * half + 1
    out = np.full((size, size), fill, dtype=array.dtype)
    y0, x0 = iy - half, ix - half
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, ny), min(x0 + size, nx)
    if ys < ye and xs < xe:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = array[ys:ye, xs:xe]
    return out


def boxes(
    array: NDArray[Any], ix: NDArray[np.intp], iy: NDArray[np.intp], half: int
) -> NDArray[Any]:
    """Return the stack of ``array[iy-half:iy+half+1, ix-half:ix+half+1]`` at each ``(ix, iy)``.

    Every box must lie inside ``array`` (see :func:`inside_fraction`); one gather for all.
    """
    size = 2 * half + 1
    ix = np.asarray(ix, dtype=np.intp)
    iy = np.asarray(iy, dtype=np.intp)
    if len(ix) == 0:
        return np.empty((0, size, size), dtype=array.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(array, (size, size))
    return np.asarray(windows[iy - half, ix - half])


def inside_fraction(shape: tuple[int, int], ix: int, iy: int, half: int) -> bool:
    """Whether the stamp of half-size ``half`` around ``(ix, iy)`` lies fully inside ``shape``."""
    ny, nx = shape
    return bool(ix - half >= 0 and iy - half >= 0 and ix + half < nx and iy + half < ny)


@_compiled
def _source_planes(
    image: NDArray[np.floating],
    variance: NDArray[np.floating],
    mask: NDArray[np.integer],
    bad_bits: int,
    ix: int,
    iy: int,
    half: int,
    own: NDArray[np.float32],
    own_x0: int,
    own_y0: int,
    parent: NDArray[np.float32],
    parent_x0: int,
    parent_y0: int,
    is_child: bool,
    sat_bit: int,
    no_data_bit: int,
    stamp_copy: NDArray[np.float64],
    keep: NDArray[np.int32],
    data: NDArray[np.float32],
    data_variance: NDArray[np.float32],
) -> tuple[NDArray[np.float64], NDArray[np.float64], int, int, bool]:  # pragma: no cover
    """Cut out the planes the measurement step uses for one source, in one pass.

    The stamp is ``image[iy-half:iy+half+1, ix-half:ix+half+1]`` (0 off the
    image, as float64, NaN as 0 and +-inf as the largest float64, as
    ``np.nan_to_num``); a deblended child's (``is_child``) is multiplied, inside its
    parent's footprint (``parent`` weights > 0, box origin ``parent_x0, parent_y0``),
    by its own weights ``own`` (origin ``own_x0, own_y0``; 0 outside them). A pixel
    is bad off the image, where the image is not finite, where the variance is not
    finite and > 0, or where ``mask`` has one of ``bad_bits``.

    Besides the arrays returned, it fills the stamp-sized ``stamp_copy`` with the
    stamp, ``keep`` with 1 on good pixels and 0 on bad ones (GalSim's mask
    convention), and ``data`` and ``data_variance`` (float32: sep works in float32
    and would round float64 input to the same values) with the stamp and the
    variance, 0 on bad pixels.

    Returns
    -------
    stamp : float64 array
        The source's pixels.
    weight : float64 array
        ``1 / variance``, 0 on bad pixels.
    n_bad : int
        Bad pixels.
    near : int
        The mask bits OR'ed over the 5 x 5 pixels around ``(ix, iy)``
        (``no_data_bit`` for pixels off the image).
    footprint_sat : bool
        Whether a pixel of ``own`` with weight > 0 has ``sat_bit`` set in ``mask``.
    """
    ny, nx = image.shape
    size = 2 * half + 1
    stamp = np.empty((size, size))
    weight = np.empty((size, size))
    n_bad = 0
    pny, pnx = parent.shape
    ony, onx = own.shape
    for i in range(size):
        y = iy - half + i
        for j in range(size):
            x = ix - half + j
            if 0 <= y < ny and 0 <= x < nx:
                value = float(image[y, x])
                var = float(variance[y, x])
                is_bad = (
                    not np.isfinite(value)
                    or not var > 0
                    or not np.isfinite(var)
                    or (mask[y, x] & bad_bits) != 0
                )
            else:
                value = 0.0
                var = np.inf
                is_bad = True
            if np.isnan(value):
                value = 0.0
            elif value == np.inf:
                value = _LARGEST
            elif value == -np.inf:
                value = -_LARGEST
            if is_child:
                py, px = y - parent_y0, x - parent_x0
                if 0 <= py < pny and 0 <= px < pnx and parent[py, px] > 0:
                    oy, ox = y - own_y0, x - own_x0
                    share = np.float32(0.0)
                    if 0 <= oy < ony and 0 <= ox < onx:
                        share = own[oy, ox]
                    value = value * float(share)
            stamp[i, j] = value
            stamp_copy[i, j] = value
            if is_bad:
                n_bad += 1
                keep[i, j] = 0
                data[i, j] = 0.0
                data_variance[i, j] = 0.0
                weight[i, j] = 0.0
            else:
                keep[i, j] = 1
                data[i, j] = np.float32(value)
                data_variance[i, j] = np.float32(var)
                weight[i, j] = 1.0 / var
    near = 0
    for y in range(iy - 2, iy + 3):
        for x in range(ix - 2, ix + 3):
            if 0 <= y < ny and 0 <= x < nx:
                near |= mask[y, x]
            else:
                near |= no_data_bit
    footprint_sat = False
    if sat_bit:
        for i in range(ony):
            for j in range(onx):
                y, x = own_y0 + i, own_x0 + j
                if own[i, j] > 0 and 0 <= y < ny and 0 <= x < nx and mask[y, x] & sat_bit:
                    footprint_sat = True
    return stamp, weight, n_bad, near, footprint_sat
