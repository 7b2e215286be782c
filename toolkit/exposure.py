"""The one image container of stacklab: image, variance and mask planes with WCS and PSF.

Array convention, stated once for the whole project: arrays are indexed
``[y, x]``; pixel ``(x, y)`` is the *centre* of ``image[y, x]``, 0-based. An
exposure cut out of a larger one keeps the position of its first pixel in the
parent as ``x0, y0``; everything else (WCS, PSF, catalogs) is in the local frame.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS
from numpy.typing import ArrayLike, NDArray

from .mask import MaskPlanes, _bits_set

__all__ = ["Exposure", "Psf", "ShiftedPsf"]

# Planes that make a pixel unusable, for consumers that only know a boolean mask.
_BAD_PLANES = ("BAD", "SAT", "CR", "NO_DATA", "SUSPECT", "INTRP", "EDGE")

log = logging.getLogger(__name__)


@runtime_checkable
class Psf(Protocol):
    """What an exposure needs of a PSF model.

    ``compute_image(x, y)`` returns a stamp of odd size whose pixels sum to 1 and
    whose centre pixel is the pixel containing ``(x, y)``; the PSF is centred on
    the pixel centre. Models that can be saved also provide ``to_hdu()`` and a
    classmethod ``from_hdu(hdu)``.
    """

    def compute_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the normalized PSF stamp at pixel position ``(x, y)``."""
        ...


@dataclass(frozen=True)
class ShiftedPsf:
    """A PSF model evaluated in a frame shifted by ``(dx, dy)`` pixels from its own.

    Cutouts use it so that their PSF, like their WCS, works in local pixels:
    ``ShiftedPsf(psf, dx, dy).compute_image(x, y) == psf.compute_image(x + dx, y + dy)``.
    """

    psf: Any
    dx: int
    dy: int

    def compute_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the parent model's stamp at ``(x + dx, y + dy)``."""
        return np.asarray(self.psf.compute_image(x + self.dx, y + self.dy), dtype=np.float64)

    def moments(self, x: float, y: float) -> Any:
        """Return the parent model's moments at ``(x + dx, y + dy)``, if it has them."""
        return self.psf.moments(x + self.dx, y + self.dy)


def _as_image(image: ArrayLike) -> NDArray[np.float32]:
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        msg = f"image must be a numeric 2-D array, got dtype {array.dtype}"
        raise TypeError(msg)
    if array.ndim != 2:
        msg = (
            f"image must be 2-D (ny, nx), got {array.ndim}-D with shape {array.shape}; "
            "pass one plane of a cube, e.g. cube[0]"
        )
        raise ValueError(msg)
    # astype also turns big-endian FITS data into native order, which sep requires.
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_plane(plane: ArrayLike, name: str, shape: tuple[int, ...], dtype: type) -> NDArray[Any]:
    array = np.asarray(plane)
    if array.shape != shape:
        msg = f"{name} has shape {array.shape} but image has shape {shape}; planes must match"
        raise ValueError(msg)
    if dtype is np.int32:
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                msg = f"{name} must hold integer bit planes, got non-integer values ({array.dtype})"
                raise TypeError(msg)
        elif array.dtype.kind not in "biu":
            msg = f"{name} must be an integer array of bit planes, got dtype {array.dtype}"
            raise TypeError(msg)
    return np.ascontiguousarray(array, dtype=dtype)


@dataclass(frozen=True, eq=False)
class Exposure:
    """An image with its variance, mask planes, WCS, PSF and photometric calibration.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Pixel values in ADU (converted to ``float32``, native byte order).
    variance : array_like, shape (ny, nx), optional
        Variance of each pixel in ADU². When omitted it is estimated once as a
        constant from the image's robust (median absolute deviation) scatter,
        and ``meta["VARSRC"]`` says so.
    mask : array_like of int, shape (ny, nx), optional
        Integer bit planes, named by ``mask_planes``; zeros when omitted.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the image (local pixel frame, 0-based as astropy).
    psf : Psf, optional
        PSF model in the local pixel frame.
    zero_point : float, optional
        Photometric calibration: AB magnitude of a source of 1 ADU total flux,
        i.e. ``mag = zero_point - 2.5 log10(flux_adu)``.
    band, visit, detector : optional
        Filter name and observation identifiers.
    mask_planes : MaskPlanes, optional
        Plane names to bits; :meth:`MaskPlanes.default` when omitted.
    x0, y0 : int
        Position of ``image[0, 0]`` in the parent image this was cut from.
    meta : dict
        Further FITS-compatible metadata (exposure time, airmass, ...).

    Examples
    --------
    >>> import numpy as np
    >>> exp = Exposure(np.zeros((50, 60)), variance=np.ones((50, 60)), band="r")
    >>> exp.shape
    (50, 60)
    >>> exp[10:20, 5:25].x0
    5
    """

    image: NDArray[np.float32]
    variance: NDArray[np.float32] = None  # type: ignore[assignment]
    mask: NDArray[np.int32] = None  # type: ignore[assignment]
    wcs: WCS | None = None
    psf: Psf | None = None
    zero_point: float | None = None
    band: str | None = None
    visit: int | None = None
    detector: int | None = None
    mask_planes: MaskPlanes = field(default_factory=MaskPlanes.default)
    x0: int = 0
    y0: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = _as_image(self.image)
        object.__setattr__(self, "image", image)
        meta = dict(self.meta)
        if self.variance is None:
            variance = np.full(image.shape, _robust_variance(image), dtype=np.float32)
            meta.setdefault("VARSRC", "estimated: constant from the image's MAD")
        else:
            variance = _as_plane(self.variance, "variance", image.shape, np.float32)
        object.__setattr__(self, "variance", variance)
        mask = (
            np.zeros(image.shape, dtype=np.int32)
            if self.mask is None
            else _as_plane(self.mask, "mask", image.shape, np.int32)
        )
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "meta", meta)
        if self.wcs is not None:
            if not isinstance(self.wcs, WCS):
                msg = f"wcs must be an astropy.wcs.WCS, got {type(self.wcs).__name__}"
                raise TypeError(msg)
            if self.wcs.pixel_n_dim != 2:
                msg = f"wcs must have 2 pixel axes for a 2-D image, got {self.wcs.pixel_n_dim}"
                raise ValueError(msg)
        if self.psf is not None and not isinstance(self.psf, Psf):
            msg = f"psf must have a compute_image(x, y) method, got {type(self.psf).__name__}"
            raise TypeError(msg)
        if not isinstance(self.mask_planes, MaskPlanes):
            object.__setattr__(self, "mask_planes", MaskPlanes(self.mask_planes))
        if self.zero_point is not None:
            zero_point = float(self.zero_point)
            if not np.isfinite(zero_point):
                msg = f"zero_point must be a finite magnitude, got {self.zero_point!r}"
                raise ValueError(msg)
            object.__setattr__(self, "zero_point", zero_point)
        for name in ("visit", "detector"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))

    # ---- shape -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` in pixels."""
        ny, nx = self.image.shape
        return ny, nx

    @property
    def width(self) -> int:
        """Number of columns, nx."""
        return self.shape[1]

    @property
    def height(self) -> int:
        """Number of rows, ny."""
        return self.shape[0]

    def __repr__(self) -> str:
        ids = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("band", "visit", "detector")
            if getattr(self, name) is not None
        )
        return (
            f"Exposure(shape={self.shape}{', ' + ids if ids else ''}, "
            f"wcs={'yes' if self.wcs is not None else 'no'}, "
            f"psf={type(self.psf).__name__ if self.psf is not None else 'no'}, "
            f"zero_point={self.zero_point})"
        )

    # ---- variants ----------------------------------------------------------------
    def replace(self, **changes: Any) -> Exposure:
        """Return a new exposure with some fields replaced (arrays are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def copy(self) -> Exposure:
        """Return a deep copy of the pixel planes and metadata (WCS and PSF are shared)."""
        return self.replace(
            image=self.image.copy(),
            variance=self.variance.copy(),
            mask=self.mask.copy(),
            meta=dict(self.meta),
        )

    def __getitem__(self, key: tuple[slice, slice]) -> Exposure:
        """Cut out ``exposure[y0:y1, x0:x1]``: planes are views, WCS and PSF shifted."""
        if not (
            isinstance(key, tuple)
            and len(key) == 2
            and all(isinstance(k, slice) and k.step in (None, 1) for k in key)
        ):
            msg = (
                f"exposures are cut out with two unit-step slices, exposure[y0:y1, x0:x1]; "
                f"got {key!r}"
            )
            raise TypeError(msg)
        ys, xs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        if ys[1] <= ys[0] or xs[1] <= xs[0]:
            msg = f"cutout {key!r} of an exposure of shape {self.shape} is empty"
            raise ValueError(msg)
        sub = (slice(ys[0], ys[1]), slice(xs[0], xs[1]))
        wcs = self.wcs.slice(sub) if self.wcs is not None else None
        psf = self.psf
        if psf is not None and (xs[0] or ys[0]):
            psf = ShiftedPsf(psf, xs[0], ys[0])
        return self.replace(
            image=self.image[sub],
            variance=self.variance[sub],
            mask=self.mask[sub],
            wcs=wcs,
            psf=psf,
            x0=self.x0 + xs[0],
            y0=self.y0 + ys[0],
        )

    # ---- mask planes -------------------------------------------------------------
    def plane(self, name: str) -> NDArray[np.bool_]:
        """Return a boolean image of the pixels that have plane ``name`` set."""
        return _bits_set(self.mask, self.mask_planes.bitmask(name))

    def set_plane(self, name: str, where: ArrayLike) -> None:
        """Set plane ``name`` on the pixels where ``where`` is true (in place)."""
        where = np.asarray(where, dtype=bool)
        if where.shape != self.shape:
            msg = f"where has shape {where.shape}, the exposure {self.shape}; they must match"
            raise ValueError(msg)
        self.mask[where] |= np.int32(self.mask_planes.bitmask(name))

    def with_plane(self, name: str) -> Exposure:
        """Return an exposure (sharing pixels) whose planes include ``name``."""
        return self.replace(mask_planes=self.mask_planes.with_plane(name))

    # ---- photometry --------------------------------------------------------------
    def flux_to_mag(self, flux_adu: ArrayLike) -> NDArray[np.float64]:
        """Convert fluxes in ADU to AB magnitudes with the zero point (NaN where flux <= 0)."""
        if self.zero_point is None:
            msg = "this exposure has no zero_point; set one to convert fluxes to magnitudes"
            raise ValueError(msg)
        flux = np.asarray(flux_adu, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(flux > 0, self.zero_point - 2.5 * np.log10(flux), np.nan)

    def mag_to_flux(self, mag: ArrayLike) -> NDArray[np.float64]:
        """Convert AB magnitudes to fluxes in ADU with the zero point."""
        if self.zero_point is None:
            msg = "this exposure has no zero_point; set one to convert magnitudes to fluxes"
            raise ValueError(msg)
        return np.asarray(10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - self.zero_point)))

    # ---- interoperability --------------------------------------------------------
    def to_ccddata(self, *, bad_planes: tuple[str, ...] = _BAD_PLANES) -> CCDData:
        """Return an ``astropy.nddata.CCDData`` in ADU with a variance uncertainty.

        CCDData masks are boolean: ``mask`` is true where any of ``bad_planes``
        is set, and the full integer bit planes travel as ``flags``.
        """
        meta = fits.Header()
        for key in ("band", "visit", "detector", "zero_point", "x0", "y0"):
            value = getattr(self, key)
            if value is not None:
                meta[f"HIERARCH STACKLAB {key.upper()}"] = value
        self.mask_planes.to_header(meta)
        return CCDData(
            self.image,
            unit=u.adu,
            uncertainty=VarianceUncertainty(self.variance, unit=u.adu**2),
            mask=(self.mask & self.mask_planes.bitmask(*bad_planes)) != 0,
            flags=self.mask.copy(),
            wcs=self.wcs,
            meta=meta,
        )

    @classmethod
    def from_ccddata(cls, ccd: CCDData, **fields: Any) -> Exposure:
        """Build an exposure from ``CCDData`` (its uncertainty becomes the variance).

        Integer ``flags`` (as :meth:`to_ccddata` writes) are taken as the bit planes;
        otherwise a boolean mask becomes the ``BAD`` plane. ``fields`` override
        anything read (e.g. ``band="r"``).
        """
        image = np.asarray(ccd.data)
        variance: NDArray[Any] | None = None
        uncertainty = ccd.uncertainty
        if isinstance(uncertainty, VarianceUncertainty):
            variance = np.asarray(uncertainty.array)
        elif isinstance(uncertainty, StdDevUncertainty):
            variance = np.asarray(uncertainty.array) ** 2
        elif isinstance(uncertainty, InverseVariance):
            with np.errstate(divide="ignore"):
                variance = 1.0 / np.asarray(uncertainty.array)
        planes = MaskPlanes.from_header(fits.Header(ccd.meta)) or MaskPlanes.default()
        mask: NDArray[Any] | None = None
        flags = getattr(ccd, "flags", None)
        if (
            isinstance(flags, np.ndarray)
            and flags.dtype.kind in "iu"
            and flags.shape == image.shape
        ):
            mask = flags
        elif ccd.mask is not None:
            raw = np.asarray(ccd.mask)
            mask = (
                np.where(raw, np.int32(planes.bitmask("BAD")), np.int32(0))
                if raw.dtype == bool
                else raw
            )
        meta = dict(ccd.meta)
        read: dict[str, Any] = {
            key: meta.get(f"STACKLAB {key.upper()}")
            for key in ("band", "visit", "detector", "zero_point", "x0", "y0")
            if f"STACKLAB {key.upper()}" in meta
        }
        read.update(fields)
        return cls(
            image,
            variance=variance,  # type: ignore[arg-type]
            mask=mask,  # type: ignore[arg-type]
            wcs=ccd.wcs,
            mask_planes=planes,
            **read,
        )


def _robust_variance(image: NDArray[np.float32]) -> float:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 1.0
    sample = finite[:: max(1, finite.size // 1_000_000)].astype(np.float64)
    sigma = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if sigma == 0.0:
        sigma = float(np.std(sample)) or 1.0
    return sigma**2
