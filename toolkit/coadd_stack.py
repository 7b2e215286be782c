"""Row-chunked stacking machinery of :mod:`~stacklab.toolkit.coadd` (private).

Warps live in scratch files read and written by rows; ``_combine`` applies one
statistic to a ``(n_inputs, rows, nx)`` chunk; ``_mark_safe_clip`` and
``_mark_compare_warp`` write the CLIPPED plane of the warps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .compare_warp import find_artifacts, region_margin
from .safe_clip import clipped_pixels, find_clip_regions

if TYPE_CHECKING:
    from .coadd import CoaddConfig

__all__: list[str] = []


#: Values (inputs x rows x columns) of one stacked chunk: bounds the memory of the
#: clipping statistics whatever the number of inputs (16 MB per float64 plane).
_CHUNK_VALUES = 2**21


def _chunk_rows(max_rows: int, n_inputs: int, nx: int) -> int:
    """Rows per stacked chunk: at most ``max_rows``, and at most ``_CHUNK_VALUES`` values."""
    return max(1, min(max_rows, _CHUNK_VALUES // max(1, n_inputs * nx)))


class _DiskStack:
    """Warp planes in scratch files, read and written by rows (no memory map).

    Each warp is stored only on its box ``(y0, y1, x0, x1)`` of the patch; outside
    it reads as NO_DATA (image 0, variance inf, mask ``no_data_bit``), and writes
    there are dropped.
    """

    _DTYPES: Mapping[str, Any] = MappingProxyType(
        {"image": np.float32, "variance": np.float32, "mask": np.int32}
    )

    def __init__(self, folder: str, shape: tuple[int, int], no_data_bit: int = 0) -> None:
        self.folder, self.shape, self.n = Path(folder), shape, 0
        self.boxes: list[tuple[int, int, int, int]] = []
        self._fill: Mapping[str, Any] = MappingProxyType(
            {"image": 0.0, "variance": np.inf, "mask": no_data_bit}
        )

    def _path(self, plane: str, i: int) -> Path:
        return self.folder / f"{plane}-{i:03d}.bin"

    def append(
        self,
        image: NDArray[Any],
        variance: NDArray[Any],
        mask: NDArray[Any],
        box: tuple[int, int, int, int] | None = None,
    ) -> None:
        box = (0, self.shape[0], 0, self.shape[1]) if box is None else box
        box_shape = (box[1] - box[0], box[3] - box[2])
        for plane, data in (("image", image), ("variance", variance), ("mask", mask)):
            if data.shape != box_shape:
                msg = f"{plane} has shape {data.shape}, expected the box's {box_shape}"
                raise ValueError(msg)
            np.ascontiguousarray(data, dtype=self._DTYPES[plane]).tofile(self._path(plane, self.n))
        self.boxes.append(box)
        self.n += 1

    def segment(
        self, plane: str, i: int, y0: int, y1: int
    ) -> tuple[NDArray[Any], tuple[slice, slice]] | None:
        """Warp ``i``'s data in patch rows ``y0..y1-1``, and where it sits in them; None if none.

        The second item indexes a ``(y1 - y0, nx)`` array of those rows.
        """
        by0, by1, bx0, bx1 = self.boxes[i]
        ya, yb = max(y0, by0), min(y1, by1)
        if ya >= yb:
            return None
        dtype = np.dtype(self._DTYPES[plane])
        width = bx1 - bx0
        with self._path(plane, i).open("rb") as f:
            f.seek((ya - by0) * width * dtype.itemsize)
            data = np.fromfile(f, dtype=dtype, count=(yb - ya) * width)
        return data.reshape(yb - ya, width), (slice(ya - y0, yb - y0), slice(bx0, bx1))

    def fill(self, plane: str) -> Any:
        """Value of ``plane`` outside every warp's box (0, inf or the NO_DATA bit)."""
        return self._fill[plane]

    def rows(self, plane: str, i: int, y0: int, y1: int) -> NDArray[Any]:
        out = np.full((y1 - y0, self.shape[1]), self._fill[plane], dtype=self._DTYPES[plane])
        found = self.segment(plane, i, y0, y1)
        if found is not None:
            out[found[1]] = found[0]
        return out

    def full(self, plane: str, i: int) -> NDArray[Any]:
        return self.rows(plane, i, 0, self.shape[0])

    def write_rows(self, plane: str, i: int, y0: int, data: NDArray[Any]) -> None:
        """Write full-width rows from ``y0``; only the part on warp ``i``'s box is kept."""
        by0, by1, bx0, bx1 = self.boxes[i]
        ya, yb = max(y0, by0), min(y0 + data.shape[0], by1)
        if ya >= yb:
            return
        dtype = np.dtype(self._DTYPES[plane])
        part = np.ascontiguousarray(data[ya - y0 : yb - y0, bx0:bx1], dtype=dtype)
        with self._path(plane, i).open("r+b") as f:
            f.seek((ya - by0) * (bx1 - bx0) * dtype.itemsize)
            part.tofile(f)


def _clipped_mean_of(values: NDArray[np.floating], sigma: float, iterations: int) -> float:
    """Mean of ``values`` after ``iterations`` of ``sigma`` clipping about median, then mean.

    Sums are accumulated in float64 whatever the input type, so float32 planes need
    no float64 copy.
    """
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    centre = float(np.median(values))
    spread = float(np.std(values, dtype=np.float64))
    if iterations == 0 or spread == 0:
        return float(np.mean(values, dtype=np.float64))
    for _ in range(iterations):
        if spread == 0:
            break
        keep = values[np.abs(values - centre) <= sigma * spread]
        mean = float(np.mean(keep, dtype=np.float64))
        centre, spread = mean, float(np.std(keep, dtype=np.float64))
    return mean


def _sorted_quantile(
    ordered: NDArray[np.float64], count: NDArray[np.int64], q: float
) -> NDArray[np.float64]:
    """Quantile along axis 0 of data sorted with NaN last; ``count`` finite values per pixel."""
    position = q * np.maximum(count - 1, 0)
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    frac = position - lo
    low = np.take_along_axis(ordered, lo[None], axis=0)[0]
    high = np.take_along_axis(ordered, hi[None], axis=0)[0]
    return np.asarray(low + frac * (high - low))


def _combine(
    data: NDArray[np.float64],
    var: NDArray[np.float64],
    usable: NDArray[np.bool_],
    weights: NDArray[np.float64],
    statistic: str,
    sigma_clip: float,
    iterations: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Combine a (n, rows, nx) stack; return image, variance and which inputs were used."""
    w = weights[:, None, None]
    weighted = w * data
    used = usable.copy()
    # The clipped mean's last centre is its image: its weight sum is kept for the variance.
    image: NDArray[np.float64] | None = None
    wsum: NDArray[np.float64] | None = None
    if statistic == "clipped_mean":
        x = np.where(usable, data, np.nan)
        ordered = np.sort(x, axis=0)
        count = usable.sum(axis=0)
        centre = _sorted_quantile(ordered, count, 0.5)
        spread = 0.7413 * (
            _sorted_quantile(ordered, count, 0.75) - _sorted_quantile(ordered, count, 0.25)
        )
        del ordered
        for _ in range(iterations):
            with np.errstate(invalid="ignore"):
                inside = np.abs(x - centre) <= sigma_clip * spread
            used = usable & (inside | (spread <= 0)[None])
            n_used = used.sum(axis=0)
            wsum = np.sum(np.where(used, w, 0.0), axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                centre = np.sum(np.where(used, weighted, 0.0), axis=0) / wsum
                deviation = np.where(used, data - centre, 0.0)
                spread = np.sqrt(np.sum(deviation**2, axis=0) / np.maximum(n_used - 1, 1))
            spread = np.where(n_used > 1, spread, 0.0)
            image = centre
    if wsum is None:
        wsum = np.sum(np.where(used, w, 0.0), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.sum(np.where(used, (w * w) * var, 0.0), axis=0) / wsum**2
        if statistic == "median":
            ordered = np.sort(np.where(used, data, np.nan), axis=0)
            image = _sorted_quantile(ordered, used.sum(axis=0), 0.5)
            variance = variance * (np.pi / 2.0)
        elif image is None:
            image = np.sum(np.where(used, weighted, 0.0), axis=0) / wsum
    return image, variance, used


def _mark_safe_clip(
    stack: _DiskStack,
    weights: NDArray[np.float64],
    bad_bits: int,
    clip_bit: int,
    det_bits: int,
    psf_sigma: float,
    config: CoaddConfig,
) -> None:
    ny, nx = stack.shape
    diff = np.zeros((ny, nx))
    usable_any = np.zeros((ny, nx), dtype=bool)
    for y0, y1, inputs, data, var, usable in _stacked_chunks(stack, bad_bits, config.chunk_rows):
        mean, _, _ = _combine(data, var, usable, weights[inputs], "mean", 0.0, 0)
        clipped, _, _ = _combine(
            data, var, usable, weights[inputs], "clipped_mean",
            config.safe_clip.sigma_clip, config.safe_clip.clip_iterations,
        )  # fmt: skip
        ok = usable.any(axis=0)
        diff[y0:y1] = np.where(ok, mean - clipped, 0.0)
        usable_any[y0:y1] = ok

    def masks(i: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        mask = stack.full("mask", i)
        return (mask & det_bits) != 0, (mask & bad_bits) != 0

    regions = find_clip_regions(
        diff, usable_any, masks, stack.n, psf_sigma_px=psf_sigma, config=config.safe_clip
    )
    for i in range(stack.n):
        detected, _ = masks(i)
        clip = clipped_pixels(regions, i, detected)
        if clip is not None:
            mask = stack.full("mask", i)
            mask[clip] |= np.int32(clip_bit)
            stack.write_rows("mask", i, 0, mask)


def _mark_compare_warp(
    stack: _DiskStack,
    weights: NDArray[np.float64],
    bad_bits: int,
    clip_bit: int,
    psf_sigma: float,
    config: CoaddConfig,
    psf_sigmas: list[float] | None = None,
) -> None:
    ny, nx = stack.shape
    template = np.zeros((ny, nx))
    template_var = np.zeros((ny, nx))
    n_good = np.zeros((ny, nx), dtype=np.int16)
    cw = config.compare_warp
    for y0, y1, inputs, data, var, usable in _stacked_chunks(stack, bad_bits, config.chunk_rows):
        value, value_var, _ = _combine(
            data, var, usable, weights[inputs], "clipped_mean",
            cw.template_sigma_clip, cw.template_clip_iterations,
        )  # fmt: skip
        ok = usable.any(axis=0)
        template[y0:y1] = np.where(ok, value, 0.0)
        template_var[y0:y1] = np.where(ok, value_var, 0.0)
        n_good[y0:y1] = usable.sum(axis=0)

    margin = region_margin(psf_sigma, cw)

    def region(i: int) -> tuple[slice, slice]:
        by0, by1, bx0, bx1 = stack.boxes[i]
        return (
            slice(max(0, by0 - margin), min(ny, by1 + margin)),
            slice(max(0, bx0 - margin), min(nx, bx1 + margin)),
        )

    def warp(i: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
        rows, columns = region(i)
        mask = stack.rows("mask", i, rows.start, rows.stop)[:, columns]
        image = stack.rows("image", i, rows.start, rows.stop)[:, columns].astype(np.float64)
        variance = stack.rows("variance", i, rows.start, rows.stop)[:, columns].astype(np.float64)
        usable = ((mask & bad_bits) == 0) & np.isfinite(image) & np.isfinite(variance)
        return image, variance, usable

    clipped = find_artifacts(
        template, template_var, n_good, warp, stack.n, psf_sigma_px=psf_sigma, config=cw,
        regions=region, psf_sigmas_px=psf_sigmas,
    )  # fmt: skip
    for i in range(stack.n):
        clip = clipped(i)
        if clip is not None:
            rows, columns = region(i)
            mask = stack.rows("mask", i, rows.start, rows.stop)
            mask[:, columns][clip] |= np.int32(clip_bit)
            stack.write_rows("mask", i, rows.start, mask)


def _overlapping(stack: _DiskStack, y0: int, y1: int) -> list[int]:
    """Return the inputs whose box has rows in ``y0..y1-1`` (the others have no data there)."""
    return [i for i, box in enumerate(stack.boxes) if box[0] < y1 and box[1] > y0]


def _stacked_chunks(
    stack: _DiskStack, bad_bits: int, max_rows: int
) -> Iterator[
    tuple[int, int, list[int], NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]
]:
    """Row chunks ``(y0, y1, inputs, data, var, usable)`` of the stack, as `_read_chunk`.

    Only the inputs with rows in a chunk are stacked (the others would only add empty
    layers); chunks no input reaches are skipped.
    """
    ny, nx = stack.shape
    step = _chunk_rows(max_rows, stack.n, nx)
    for y0 in range(0, ny, step):
        y1 = min(y0 + step, ny)
        inputs = _overlapping(stack, y0, y1)
        if inputs:
            yield (y0, y1, inputs, *_read_chunk(stack, y0, y1, bad_bits, inputs))


def _read_chunk(
    stack: _DiskStack, y0: int, y1: int, bad_bits: int, inputs: list[int] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Stack rows ``y0..y1-1`` of ``inputs`` (default all) as ``(n, rows, nx)`` arrays."""
    inputs = list(range(stack.n)) if inputs is None else inputs
    shape = (len(inputs), y1 - y0, stack.shape[1])
    # Filled in place, each warp's segment converted as it is copied in (no float32
    # stack and float64 copy of it).
    out: dict[str, NDArray[Any]] = {
        "image": np.empty(shape),
        "variance": np.empty(shape),
        "mask": np.empty(shape, np.int32),
    }
    for plane, array in out.items():
        for k, i in enumerate(inputs):
            array[k] = stack.fill(plane)
            found = stack.segment(plane, i, y0, y1)
            if found is not None:
                array[k][found[1]] = found[0]
    data, var, mask = out["image"], out["variance"], out["mask"]
    usable = ((mask & bad_bits) == 0) & np.isfinite(data) & np.isfinite(var)
    return data, var, usable
