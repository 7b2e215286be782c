"""Private helpers shared by the PSF and measurement steps: cut-outs and sub-pixel shifts."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def good_size(n: int) -> int:
    """Smallest odd integer >= ``n`` whose prime factors are 3, 5 and 7 (fast FFTs)."""
    m = max(int(n), 1)
    m += 1 - m % 2
    while True:
        k = m
        for p in (3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def fft_shift(stamp: NDArray[np.floating], dx: float, dy: float) -> NDArray[np.float64]:
    """Shift ``stamp`` by ``(dx, dy)`` pixels with a Fourier phase ramp (sinc interpolation).

    Exact for band-limited images; a well-sampled PSF (FWHM >= 2.5 px) is. The shift
    wraps around, so callers pad the stamp by a few pixels and crop afterwards.
    """
    ny, nx = stamp.shape
    ky = np.fft.fftfreq(ny)[:, None]  # fftfreq/rfftfreq are cheap next to the transforms
    kx = np.fft.rfftfreq(nx)[None, :]
    phase = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    return np.fft.irfft2(np.fft.rfft2(stamp) * phase, s=(ny, nx))


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


def inside_fraction(shape: tuple[int, int], ix: int, iy: int, half: int) -> bool:
    """Whether the stamp of half-size ``half`` around ``(ix, iy)`` lies fully inside ``shape``."""
    ny, nx = shape
    return bool(ix - half >= 0 and iy - half >= 0 and ix + half < nx and iy + half < ny)
