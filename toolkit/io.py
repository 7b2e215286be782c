"""Reading and writing exposures as FITS, atomically.

Files written by stacklab follow LSST's layout: an empty primary HDU holding the
metadata, then ``IMAGE``, ``MASK`` and ``VARIANCE`` image HDUs (each with the
WCS), and a ``PSF`` HDU when the PSF model can be saved. :func:`read_exposure`
reads those and also plain single-image FITS files as users have them.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning
from numpy.typing import NDArray

from .exposure import Exposure, ShiftedPsf
from .mask import MaskPlanes

__all__ = ["atomic_path", "read_exposure", "write_exposure"]

log = logging.getLogger(__name__)

_PLANE_NAMES = ("IMAGE", "MASK", "VARIANCE")
_ID_KEYS = {"band": "BAND", "visit": "VISIT", "detector": "DETECTOR", "zero_point": "MAGZERO"}
# Structural keywords that astropy writes itself; never copied into meta.
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT",
    "EXTNAME", "BSCALE", "BZERO", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "",
    "LTV1", "LTV2", "INHERIT", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2",
}  # fmt: skip


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and move it into place on success.

    The temporary file is removed if the block raises, so a failed write leaves
    neither a partial file nor the temporary behind, and an existing ``path`` is
    untouched.
    """
    target = Path(path)
    if not target.parent.is_dir():
        msg = f"cannot write {target}: folder {target.parent} does not exist; create it first"
        raise FileNotFoundError(msg)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes owner-only files; give the result the usual permissions.
        tmp.chmod(0o666 & ~umask)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def write_exposure(exposure: Exposure, path: str | os.PathLike[str]) -> Path:
    """Write ``exposure`` to a multi-extension FITS file, atomically.

    Parameters
    ----------
    exposure : Exposure
        What to write.
    path : str or path-like
        Destination; a ``.fz`` or ``.fits.fz`` name writes tile-compressed
        (lossless) HDUs.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``exposure`` is not an :class:`Exposure`.
    FileNotFoundError
        If the destination folder does not exist.
    """
    if not isinstance(exposure, Exposure):
        msg = f"write_exposure needs an Exposure, got {type(exposure).__name__}"
        raise TypeError(msg)
    target = Path(path)
    compress = target.name.endswith(".fz")
    primary = fits.PrimaryHDU()
    header = primary.header
    for attr, key in _ID_KEYS.items():
        value = getattr(exposure, attr)
        if value is not None:
            header[key] = value
    for key, value in exposure.meta.items():
        _put_card(header, key, value)
    wcs_header = exposure.wcs.to_header(relax=True) if exposure.wcs is not None else fits.Header()
    hdus: list[Any] = [primary]
    planes: dict[str, NDArray[Any]] = {
        "IMAGE": exposure.image,
        "MASK": exposure.mask,
        "VARIANCE": exposure.variance,
    }
    for name, data in planes.items():
        plane_header = wcs_header.copy()
        plane_header["LTV1"] = (-exposure.x0, "minus x0: position in the parent image")
        plane_header["LTV2"] = (-exposure.y0, "minus y0: position in the parent image")
        if name == "MASK":
            exposure.mask_planes.to_header(plane_header)
        if compress:
            # Lossless: quantize_level 0 would still be lossy for floats, so use no quantization.
            hdus.append(
                fits.CompImageHDU(
                    data,
                    header=plane_header,
                    name=name,
                    compression_type="RICE_1" if data.dtype.kind == "i" else "GZIP_2",
                    quantize_level=0.0,
                )
            )
        else:
            hdus.append(fits.ImageHDU(data, header=plane_header, name=name))
    psf_hdu = _psf_to_hdu(exposure.psf)
    if psf_hdu is not None:
        hdus.append(psf_hdu)
    with atomic_path(target) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)
    return target


def read_exposure(
    path: str | os.PathLike[str],
    *,
    hdu: int | str | None = None,
    variance: str | os.PathLike[str] | NDArray[Any] | None = None,
    weight: str | os.PathLike[str] | NDArray[Any] | None = None,
    gain: float | None = None,
    **fields: Any,
) -> Exposure:
    """Read an exposure from FITS.

    Reads stacklab/LSST files (``IMAGE``/``MASK``/``VARIANCE`` HDUs) and plain
    single-image files: any integer or float type, big-endian data, BSCALE/BZERO,
    tile-compressed (``.fz``) and ``.gz``/``.bz2`` files. NaN pixels become
    ``NO_DATA`` (value 0, infinite variance). WCS comes from the header through
    astropy, including DSS plate solutions and SIP/TPV distortions.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    hdu : int or str, optional
        The image HDU of a plain file (index or EXTNAME); by default the first HDU
        with 2-D data.
    variance : path or array, optional
        Variance map (ADU²) for a plain file, a FITS path or an array.
    weight : path or array, optional
        Inverse-variance weight map (1/ADU²) for a plain file; pixels of zero
        weight become ``NO_DATA``. Give at most one of ``variance`` and ``weight``.
    gain : float, optional
        Gain in e-/ADU for estimating a plain file's variance (Poisson term on top
        of the sky scatter); by default the header's ``GAIN`` if any.
    **fields
        Exposure fields to set or override (``band="r"``, ``visit=3``, ...).

    Returns
    -------
    Exposure

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not FITS, has no 2-D image, a plane's shape differs from
        the image's, or the named HDU is missing or not an image.

    Examples
    --------
    >>> exp = read_exposure("calexp.fits")  # doctest: +SKIP
    >>> exp.plane("SAT").sum()  # doctest: +SKIP
    """
    source = Path(path)
    if not source.is_file():
        msg = f"no such FITS file: {source}; check the path"
        raise FileNotFoundError(msg)
    if variance is not None and weight is not None:
        msg = "give either variance= or weight=, not both"
        raise ValueError(msg)
    with warnings.catch_warnings():
        # Real headers carry non-standard cards (ESO-LOG, ...); astropy reports each one.
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            hdul = fits.open(source, memmap=False)
        except OSError as err:
            msg = (
                f"{source} is not a readable FITS file ({err}); is it truncated or another format?"
            )
            raise ValueError(msg) from err
        with hdul:
            names = [h.name.upper() for h in hdul]
            if hdu is None and all(n in names for n in _PLANE_NAMES):
                if variance is not None or weight is not None:
                    msg = f"{source} already has a VARIANCE HDU; do not pass variance= or weight="
                    raise ValueError(msg)
                return _read_stacklab(hdul, source, fields)
            return _read_plain(hdul, source, hdu, variance, weight, gain, fields)


# ---- stacklab / LSST layout ---------------------------------------------------------
def _read_stacklab(hdul: fits.HDUList, source: Path, fields: dict[str, Any]) -> Exposure:
    planes = {}
    for name in _PLANE_NAMES:
        data = hdul[name].data
        if data is None or data.ndim != 2:
            shape = None if data is None else data.shape
            msg = f"{source}[{name}] must hold a 2-D image, found {shape}; the file is damaged"
            raise ValueError(msg)
        planes[name] = data
    image_header = hdul["IMAGE"].header
    shape = planes["IMAGE"].shape
    for name in ("MASK", "VARIANCE"):
        if planes[name].shape != shape:
            msg = (
                f"{source}[{name}] has shape {planes[name].shape} but IMAGE has {shape}; "
                "the planes of an exposure file must match"
            )
            raise ValueError(msg)
    mask_planes = MaskPlanes.from_header(hdul["MASK"].header) or MaskPlanes.default()
    primary = hdul[0].header
    kwargs: dict[str, Any] = {
        attr: primary[key] for attr, key in _ID_KEYS.items() if key in primary
    }
    kwargs["meta"] = {
        key: value
        for key, value in primary.items()
        if key not in _STRUCTURAL and key not in _ID_KEYS.values()
    }
    kwargs["x0"] = -int(image_header.get("LTV1", 0))
    kwargs["y0"] = -int(image_header.get("LTV2", 0))
    if "PSF" in [h.name.upper() for h in hdul]:
        kwargs["psf"] = _psf_from_hdu(hdul["PSF"], source)
    kwargs.update(fields)
    return Exposure(
        planes["IMAGE"],
        variance=planes["VARIANCE"],
        mask=planes["MASK"],
        wcs=_parse_wcs(image_header, hdul, source, "IMAGE"),
        mask_planes=mask_planes,
        **kwargs,
    )


# ---- plain files ---------------------------------------------------------------------
def _pick_image_hdu(hdul: fits.HDUList, source: Path, hdu: int | str | None) -> tuple[Any, str]:
    if hdu is not None:
        try:
            chosen = hdul[hdu]
        except (KeyError, IndexError):
            available = ", ".join(f"{i}:{h.name or '(primary)'}" for i, h in enumerate(hdul))
            msg = f"{source} has no HDU {hdu!r}; it has {available}"
            raise ValueError(msg) from None
        label = f"{source}[{hdu}]"
        if not chosen.is_image:
            msg = f"{label} is a {type(chosen).__name__}, not an image; pick an image HDU"
            raise ValueError(msg)
        if chosen.data is None:
            msg = f"{label} holds no data; pick the HDU with the pixels"
            raise ValueError(msg)
        return chosen, label
    found = []
    for index, candidate in enumerate(hdul):
        if candidate.is_image and candidate.header.get("NAXIS", 0) > 0:
            found.append(index)
            if candidate.header["NAXIS"] == 2 or (
                candidate.data is not None and np.squeeze(candidate.data).ndim == 2
            ):
                return candidate, f"{source}[{index}]"
    if found:
        shape = hdul[found[0]].data.shape
        msg = (
            f"{source}[{found[0]}] holds {len(shape)}-D data of shape {shape}; stacklab exposures "
            "are 2-D images: take one plane (e.g. data[0]) and build Exposure(image=...)"
        )
        raise ValueError(msg)
    kinds = ", ".join(type(h).__name__ for h in hdul)
    msg = f"{source} has no image HDU with data (it has {kinds}); it is not an image file"
    raise ValueError(msg)


def _read_plain(
    hdul: fits.HDUList,
    source: Path,
    hdu: int | str | None,
    variance: str | os.PathLike[str] | NDArray[Any] | None,
    weight: str | os.PathLike[str] | NDArray[Any] | None,
    gain: float | None,
    fields: dict[str, Any],
) -> Exposure:
    chosen, label = _pick_image_hdu(hdul, source, hdu)
    raw = chosen.data
    if raw.ndim != 2:
        raw = np.squeeze(raw)  # e.g. (1, ny, nx) written by some archives
    image = raw.astype(np.float32)  # applies BSCALE/BZERO, native byte order
    header = chosen.header.copy()
    if isinstance(chosen, fits.CompImageHDU) or chosen is not hdul[0]:
        # The primary header of a multi-extension file carries observation metadata.
        merged = hdul[0].header.copy()
        merged.update(header)
        header = merged
    planes = MaskPlanes.default()
    mask = np.zeros(image.shape, dtype=np.int32)
    no_data = ~np.isfinite(image)
    var_array: NDArray[Any] | None = None
    if variance is not None:
        var_array = _load_plane(variance, "variance", image.shape)
    elif weight is not None:
        weights = _load_plane(weight, "weight", image.shape).astype(np.float64)
        if np.any(weights < 0):
            msg = "weight map has negative values; a weight is an inverse variance (>= 0)"
            raise ValueError(msg)
        no_data |= ~(weights > 0)
        with np.errstate(divide="ignore"):
            var_array = np.where(weights > 0, 1.0 / weights, np.inf)
    if np.any(no_data):
        mask[no_data] |= planes.bitmask("NO_DATA")
        image[no_data] = 0.0
    meta = {k: v for k, v in header.items() if k not in _STRUCTURAL and not _is_wcs_key(k)}
    if var_array is None:
        var_array = _estimate_variance(image, ~no_data, gain if gain is not None else _gain(header))
        meta["VARSRC"] = "estimated: sky MAD plus Poisson term"
    var_array = np.asarray(var_array, dtype=np.float32).copy()
    var_array[no_data] = np.inf
    kwargs: dict[str, Any] = {"meta": meta}
    band = header.get("BAND", header.get("FILTER"))
    if isinstance(band, str) and band.strip():
        kwargs["band"] = band.strip().split()[0]
    zero_point = header.get("MAGZERO", header.get("MAGZPT"))
    if isinstance(zero_point, int | float) and np.isfinite(zero_point):
        kwargs["zero_point"] = float(zero_point)
    kwargs.update(fields)
    return Exposure(
        image,
        variance=var_array,
        mask=mask,
        wcs=_parse_wcs(header, hdul, source, label),
        mask_planes=planes,
        **kwargs,
    )


def _load_plane(
    value: str | os.PathLike[str] | NDArray[Any], name: str, shape: tuple[int, ...]
) -> NDArray[Any]:
    if isinstance(value, str | os.PathLike):
        plane_path = Path(value)
        if not plane_path.is_file():
            msg = f"no such {name} file: {plane_path}"
            raise FileNotFoundError(msg)
        with fits.open(plane_path, memmap=False) as hdul:
            chosen, _ = _pick_image_hdu(hdul, plane_path, None)
            array = np.squeeze(chosen.data).astype(np.float64)
        origin = str(plane_path)
    else:
        array = np.asarray(value, dtype=np.float64)
        origin = f"the {name} array"
    if array.shape != shape:
        msg = f"{origin} has shape {array.shape} but the image has {shape}; they must match"
        raise ValueError(msg)
    return array


def _gain(header: fits.Header) -> float | None:
    for key in ("GAIN", "GAINA", "EGAIN", "CCDGAIN"):
        value = header.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def _estimate_variance(
    image: NDArray[np.float32], good: NDArray[np.bool_], gain: float | None
) -> NDArray[np.float64]:
    values = image[good].astype(np.float64)
    if values.size == 0:
        return np.ones(image.shape)
    sample = values[:: max(1, values.size // 1_000_000)]
    sky = float(np.median(sample))
    sky_var = (1.4826 * float(np.median(np.abs(sample - sky)))) ** 2
    if sky_var == 0.0:
        sky_var = float(np.var(sample)) or 1.0
    variance = np.full(image.shape, sky_var)
    if gain is not None:
        variance += np.clip(image - sky, 0.0, None) / gain
    return variance


def _is_wcs_key(key: str) -> bool:
    prefixes = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_",
                "PV1_", "PV2_", "A_", "B_", "AP_", "BP_", "WCSAXES", "LONPOLE", "LATPOLE",
                "RADESYS", "EQUINOX")  # fmt: skip
    return key.startswith(prefixes)


def _parse_wcs(header: fits.Header, hdul: fits.HDUList, source: Path, label: str) -> WCS | None:
    with warnings.catch_warnings():
        # Real headers are full of non-standard keywords that astropy fixes and reports.
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header, fobj=hdul, naxis=2)
        except Exception as err:
            msg = (
                f"the WCS in {label} of {source} does not parse ({type(err).__name__}: {err}); "
                "fix or delete its WCS keywords (CTYPE/CRVAL/CRPIX/CD...)"
            )
            raise ValueError(msg) from err
    if not wcs.has_celestial:
        return None
    return wcs


# ---- PSF persistence ---------------------------------------------------------------
def _psf_to_hdu(psf: Any) -> fits.BinTableHDU | fits.ImageHDU | None:
    if psf is None:
        return None
    shift = (0, 0)
    if isinstance(psf, ShiftedPsf):
        shift = (psf.dx, psf.dy)
        psf = psf.psf
    to_hdu = getattr(psf, "to_hdu", None)
    cls = type(psf)
    if to_hdu is None or not cls.__module__.startswith("stacklab."):
        log.warning("PSF model %s cannot be saved; writing the exposure without it", cls.__name__)
        return None
    try:
        hdu = to_hdu()
    except ValueError as err:
        log.warning(
            "PSF model %s cannot be saved (%s); writing the exposure without it", cls.__name__, err
        )
        return None
    hdu.name = "PSF"
    # A model may save itself as another class (a CoaddPsf saves its sampled form).
    saved_as = str(hdu.header.get("PSFCLASS", f"{cls.__module__}:{cls.__qualname__}"))
    hdu.header["PSFCLASS"] = (saved_as, "stacklab PSF model type")
    hdu.header["PSFDX"], hdu.header["PSFDY"] = shift
    return hdu


def _psf_from_hdu(hdu: Any, source: Path) -> Any:
    spec = str(hdu.header.get("PSFCLASS", ""))
    module_name, _, class_name = spec.partition(":")
    # Only stacklab's own classes are instantiated from a file, never arbitrary imports.
    if not module_name.startswith("stacklab.") or not class_name:
        log.warning("%s: PSF HDU of unknown type %r ignored", source, spec)
        return None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        log.warning("%s: PSF model %r is not available in this stacklab; ignored", source, spec)
        return None
    psf = cls.from_hdu(hdu)
    dx, dy = int(hdu.header.get("PSFDX", 0)), int(hdu.header.get("PSFDY", 0))
    return ShiftedPsf(psf, dx, dy) if (dx or dy) else psf


def _put_card(header: fits.Header, key: str, value: Any) -> None:
    if not isinstance(value, str | int | float | bool | np.integer | np.floating):
        return
    name = str(key).upper()
    if len(name) > 8 or not name.replace("_", "").replace("-", "").isalnum():
        name = f"HIERARCH {name}"
    try:
        header[name] = value
    except (ValueError, TypeError):
        log.debug("metadata %r=%r does not fit a FITS card; not written", key, value)
