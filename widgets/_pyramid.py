"""A lazily built multi-resolution tile pyramid over an image held in the kernel.

Level 0 is the caller's own array (never copied: a memory-mapped FITS image stays
on disk until a tile touches it). Level ``k`` halves level ``k - 1`` in both axes
by a 2x2 block mean (NaN where any input pixel is NaN); it is computed the first
time a tile of that level is asked for and kept, so the whole pyramid costs at
most a third of the image in float32. Mask levels combine 2x2 blocks with a
bitwise OR, so a flagged pixel never disappears when zoomed out.

Arrays are indexed ``[y, x]``; tile ``(tx, ty)`` of level ``k`` covers level-``k``
pixels ``[ty * tile_size:(ty + 1) * tile_size, tx * tile_size:(tx + 1) * tile_size]``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Tile", "TilePyramid"]

#: Longest side, in pixels, of the strided preview sent with the first paint.
PREVIEW_SIZE = 512
#: Pixels drawn for cut levels (zscale, percentiles): a strided sample of about this many.
CUT_SAMPLE_SIZE = 1_000_000


@dataclass(frozen=True)
class Tile:
    """One tile of one pyramid level, ready to send.

    Attributes
    ----------
    level : int
        Pyramid level (0 is full resolution; level ``k`` is binned ``2**k`` times).
    tx, ty : int
        Tile column and row at that level.
    data : numpy.ndarray of float32, shape (h, w)
        Pixel values, little-endian, C-contiguous.
    mask : numpy.ndarray of int32, shape (h, w), or None
        Mask bits (OR over the binned pixels); None when no bit is set in the tile.
    """

    level: int
    tx: int
    ty: int
    data: NDArray[np.float32]
    mask: NDArray[np.int32] | None


def _halve(array: NDArray[np.float32]) -> NDArray[np.float32]:
    """2x2 block mean; an odd last row/column is averaged with itself."""
    ny, nx = array.shape
    ey, ex = ny - ny % 2, nx - nx % 2
    out = np.empty(((ny + 1) // 2, (nx + 1) // 2), dtype=np.float32)
    if ey and ex:
        core = out[: ey // 2, : ex // 2]
        np.add(array[0:ey:2, 0:ex:2], array[1:ey:2, 0:ex:2], out=core, dtype=np.float32)
        core += array[0:ey:2, 1:ex:2]
        core += array[1:ey:2, 1:ex:2]
        core *= np.float32(0.25)
    if nx % 2 and ey:
        out[: ey // 2, -1] = 0.5 * (array[0:ey:2, -1] + array[1:ey:2, -1])
    if ny % 2 and ex:
        out[-1, : ex // 2] = 0.5 * (array[-1, 0:ex:2] + array[-1, 1:ex:2])
    if ny % 2 and nx % 2:
        out[-1, -1] = array[-1, -1]
    return out


def _halve_mask(mask: NDArray[np.int32]) -> NDArray[np.int32]:
    """2x2 bitwise OR; an odd last row/column is carried over."""
    padded_y = mask if mask.shape[0] % 2 == 0 else np.concatenate([mask, mask[-1:]], axis=0)
    padded = (
        padded_y
        if padded_y.shape[1] % 2 == 0
        else np.concatenate([padded_y, padded_y[:, -1:]], axis=1)
    )
    return (
        padded[0::2, 0::2] | padded[1::2, 0::2] | padded[0::2, 1::2] | padded[1::2, 1::2]
    ).astype(np.int32, copy=False)


class TilePyramid:
    """Serve tiles of an image, and of its mask, at power-of-two resolutions.

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        Pixel values of any real dtype and byte order; kept by reference.
    mask : numpy.ndarray of int, shape (ny, nx), optional
        Integer bit planes; kept by reference.
    tile_size : int
        Tile side in pixels (a power of two between 64 and 1024).

    Examples
    --------
    >>> import numpy as np
    >>> pyramid = TilePyramid(np.arange(600 * 500, dtype=np.float32).reshape(600, 500))
    >>> pyramid.n_levels, pyramid.level_shape(1)
    (3, (300, 250))
    >>> pyramid.tile(0, 1, 2).data.shape
    (88, 244)
    """

    def __init__(
        self,
        image: NDArray[np.generic],
        mask: NDArray[np.integer] | None = None,
        *,
        tile_size: int = 256,
    ) -> None:
        if tile_size not in (64, 128, 256, 512, 1024):
            msg = f"tile_size must be a power of two in 64..1024, got {tile_size}"
            raise ValueError(msg)
        self.tile_size = tile_size
        self.image = image
        self.mask = mask
        ny, nx = image.shape
        self.n_levels = max(1, math.ceil(math.log2(max(ny, nx, tile_size) / tile_size)) + 1)
        self._levels: dict[int, NDArray[np.float32]] = {}
        self._mask_levels: dict[int, NDArray[np.int32]] = {}
        self._lock = threading.Lock()

    # ---- geometry ----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of level 0, in pixels."""
        ny, nx = self.image.shape
        return int(ny), int(nx)

    def level_shape(self, level: int) -> tuple[int, int]:
        """``(ny, nx)`` of one level, in pixels of that level."""
        ny, nx = self.shape
        for _ in range(level):
            ny, nx = (ny + 1) // 2, (nx + 1) // 2
        return ny, nx

    def n_tiles(self, level: int) -> tuple[int, int]:
        """Return the number of tile rows and columns ``(n_ty, n_tx)`` of one level."""
        ny, nx = self.level_shape(level)
        return -(-ny // self.tile_size), -(-nx // self.tile_size)

    # ---- levels ------------------------------------------------------------------
    def level(self, level: int) -> NDArray[np.generic]:
        """Return the pixels of one level (level 0 is the caller's array itself)."""
        self._check_level(level)
        if level == 0:
            return self.image
        with self._lock:
            return self._level_locked(level)

    def _level_locked(self, level: int) -> NDArray[np.float32]:
        if level not in self._levels:
            below = (
                np.asarray(self.image, dtype=np.float32)
                if level == 1 and self.image.dtype != np.float32
                else (self.image if level == 1 else self._level_locked(level - 1))
            )
            self._levels[level] = _halve(below)  # type: ignore[arg-type]
        return self._levels[level]

    def has_level(self, level: int) -> bool:
        """Return whether a level is available without computing it."""
        return level == 0 or level in self._levels

    def mask_level(self, level: int) -> NDArray[np.integer] | None:
        """Return the mask bits of one level (OR-binned), or None without a mask."""
        if self.mask is None:
            return None
        self._check_level(level)
        if level == 0:
            return self.mask
        with self._lock:
            for k in range(1, level + 1):
                if k not in self._mask_levels:
                    below = self.mask if k == 1 else self._mask_levels[k - 1]
                    self._mask_levels[k] = _halve_mask(np.asarray(below, dtype=np.int32))
            return self._mask_levels[level]

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.n_levels:
            msg = f"level must be in 0..{self.n_levels - 1}, got {level}"
            raise ValueError(msg)

    # ---- tiles -------------------------------------------------------------------
    def tile(self, level: int, tx: int, ty: int) -> Tile:
        """Return tile ``(tx, ty)`` of ``level`` as native float32 (and int32 mask bits).

        Raises
        ------
        ValueError
            If the level or the tile indices are outside the pyramid.
        """
        self._check_level(level)
        n_ty, n_tx = self.n_tiles(level)
        if not (0 <= tx < n_tx and 0 <= ty < n_ty):
            msg = (
                f"tile (tx={tx}, ty={ty}) is outside level {level}, which has {n_tx} x {n_ty} tiles"
            )
            raise ValueError(msg)
        size = self.tile_size
        window = (slice(ty * size, (ty + 1) * size), slice(tx * size, (tx + 1) * size))
        data = np.ascontiguousarray(self.level(level)[window], dtype="<f4")
        mask_level = self.mask_level(level)
        mask = None
        if mask_level is not None:
            bits = np.ascontiguousarray(mask_level[window], dtype="<i4")
            if bits.any():
                mask = bits
        return Tile(level, tx, ty, data, mask)

    def preview(self, max_size: int = PREVIEW_SIZE) -> tuple[NDArray[np.float32], int]:
        """Return a cheap strided preview of at most ``max_size`` pixels a side, and its stride.

        Striding reads one pixel in ``stride**2``, so the preview of a 12k x 12k image
        costs milliseconds; tiles replace it as they arrive.
        """
        ny, nx = self.shape
        stride = max(1, math.ceil(max(ny, nx) / max_size))
        return np.ascontiguousarray(self.image[::stride, ::stride], dtype="<f4"), stride

    def sample(self, n_pixels: int = CUT_SAMPLE_SIZE) -> NDArray[np.float32]:
        """Return a strided sample of about ``n_pixels`` finite pixels, for cut levels."""
        ny, nx = self.shape
        stride = max(1, math.ceil(math.sqrt(ny * nx / n_pixels)))
        values = np.asarray(self.image[::stride, ::stride], dtype=np.float32).ravel()
        return values[np.isfinite(values)]

    def cached_bytes(self) -> int:
        """Bytes held by the computed levels (the caller's arrays not counted)."""
        return sum(a.nbytes for a in self._levels.values()) + sum(
            a.nbytes for a in self._mask_levels.values()
        )
