"""Turn whatever the user displays into an image record: pixels, mask planes and WCS.

Pixels are kept by reference (numpy arrays, memory-mapped FITS data); nothing is
copied except when a FITS file has to be rescaled by ``BSCALE``/``BZERO``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.nddata import NDData
from astropy.visualization import BaseInterval, BaseStretch, LinearStretch, ZScaleInterval
from astropy.wcs import WCS, FITSFixedWarning
from numpy.typing import NDArray

from stacklab.toolkit import Exposure, MaskPlanes, read_exposure

from ._pyramid import TilePyramid

__all__ = ["ImageRecord", "load_image_data"]

#: Images up to this many pixels are checked in full for finite values.
_FULL_CHECK_PIXELS = 16_000_000


@dataclass(eq=False)
class ImageRecord:
    """One loaded image with its display settings (the viewer's per-label state)."""

    source: Any
    image: NDArray[Any]
    mask: NDArray[np.integer] | None
    mask_planes: MaskPlanes | None
    wcs: WCS | None
    title: str
    pyramid: TilePyramid
    stretch: BaseStretch = field(default_factory=LinearStretch)
    interval: BaseInterval = field(default_factory=ZScaleInterval)
    limits: tuple[float, float] = (0.0, 1.0)
    colormap: str = "gray"
    center: Any = None
    fov: Any = None
    _sample: NDArray[np.float32] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` in pixels."""
        return self.pyramid.shape

    def sample(self) -> NDArray[np.float32]:
        """Return a strided sample of finite pixels (cached), for cuts and histograms."""
        if self._sample is None:
            self._sample = self.pyramid.sample()
        return self._sample


def _check_pixels(array: Any, *, name: str) -> NDArray[Any]:
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.dtype.kind not in "biuf":
        msg = f"{name} must hold real numbers, got dtype {array.dtype}; pass a numeric 2-D array"
        raise TypeError(msg)
    if array.ndim != 2:
        msg = (
            f"{name} must be 2-D (ny, nx), got {array.ndim}-D with shape {array.shape}; "
            f"pass one plane, e.g. cube[0], or reshape a flat array to (ny, nx)"
        )
        raise ValueError(msg)
    if 0 in array.shape:
        msg = f"{name} is empty (shape {array.shape}); pass an image with at least one pixel"
        raise ValueError(msg)
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        n = array.shape[0] * array.shape[1]
        step = 1 if n <= _FULL_CHECK_PIXELS else math.ceil(math.sqrt(n / 1_000_000))
        probe = array[::step, ::step]
        if not np.isfinite(probe).any():
            msg = (
                f"{name} has no finite pixels (all NaN or infinite, shape {array.shape}); "
                f"there is nothing to display"
            )
            raise ValueError(msg)
    return array


def _celestial(wcs: Any) -> WCS | None:
    if isinstance(wcs, WCS) and wcs.has_celestial and wcs.pixel_n_dim == 2:
        return wcs
    return None


def _mask_from_nddata(data: NDData) -> tuple[NDArray[np.integer] | None, MaskPlanes | None]:
    flags = getattr(data, "flags", None)
    if isinstance(flags, np.ndarray) and flags.dtype.kind in "iu" and flags.shape == data.shape:
        planes = MaskPlanes.from_header(fits.Header(dict(data.meta))) if data.meta else None
        return flags, planes or MaskPlanes.default()
    if data.mask is not None and np.shape(data.mask) == data.data.shape:
        mask = np.asarray(data.mask)
        if mask.dtype == bool:
            return mask.view(np.uint8), MaskPlanes({"MASKED": 0})
        if mask.dtype.kind in "iu":
            return mask, MaskPlanes.default()
    return None, None


def _read_fits(path: Path) -> tuple[Any, NDArray[Any], Any, Any, WCS | None]:
    with fits.open(path, memmap=True) as hdul:
        names = {hdu.name for hdu in hdul}
    if {"IMAGE", "MASK"} <= names:
        exposure = read_exposure(path)
        return exposure, exposure.image, exposure.mask, exposure.mask_planes, exposure.wcs
    # Closing the file keeps the memory map alive as long as the data array is referenced.
    with fits.open(path, memmap=True) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                header = hdu.header.copy()
                data = hdu.data
                with warnings.catch_warnings():
                    # astropy reports the header keywords it normalizes; nothing to act on.
                    warnings.simplefilter("ignore", FITSFixedWarning)
                    wcs = _celestial(WCS(header)) if header.get("NAXIS", 0) == 2 else None
                return NDData(data, wcs=wcs, meta=header), data, None, None, wcs
    msg = f"FITS file {str(path)!r} has no 2-D image HDU; pass a file with an image extension"
    raise ValueError(msg)


def load_image_data(data: Any, *, title: str = "") -> ImageRecord:
    """Build an :class:`ImageRecord` from an array, Exposure, NDData/CCDData or FITS path.

    Raises
    ------
    FileNotFoundError
        If a path is given that does not exist.
    TypeError, ValueError
        For inputs that are not 2-D real images (empty, 1-D, all-NaN, wrong type).
    """
    mask: NDArray[np.integer] | None = None
    planes: MaskPlanes | None = None
    wcs: WCS | None = None
    source = data
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            msg = f"data path {str(path)!r} does not exist; pass an existing FITS file or an array"
            raise FileNotFoundError(msg)
        source, image, mask, planes, wcs = _read_fits(path)
        meta = getattr(source, "meta", None) or {}
        title = title or str(meta.get("OBJECT", "") or "").strip() or path.name
    elif isinstance(data, Exposure):
        image, mask, planes, wcs = data.image, data.mask, data.mask_planes, data.wcs
    elif isinstance(data, NDData):
        image = data.data
        wcs = _celestial(data.wcs)
        mask, planes = _mask_from_nddata(data)
    elif isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        image = data
    else:
        msg = (
            f"data must be a 2-D array, an Exposure, an astropy NDData/CCDData or a FITS path; "
            f"got {type(data).__name__}"
        )
        raise TypeError(msg)
    image = _check_pixels(image, name="data")
    if mask is not None and mask.shape != image.shape:
        msg = f"mask has shape {mask.shape} but the image {image.shape}; they must match"
        raise ValueError(msg)
    pyramid = TilePyramid(image, mask)
    ny, nx = pyramid.shape
    return ImageRecord(
        source=source,
        image=image,
        mask=mask,
        mask_planes=planes if mask is not None else None,
        wcs=wcs,
        title=title,
        pyramid=pyramid,
        center=((nx - 1) / 2, (ny - 1) / 2),
        fov=float(max(nx, ny)),
    )
