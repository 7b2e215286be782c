"""Forced photometry: fluxes of known sources at fixed positions, with shared footprints.

Sources come from a reference detection and deblend (e.g. on a multi-band
detection coadd) made on the same pixel grid. For each source, at its fixed
reference centroid ``(x, y)`` (0-based pixel centres):

* a deblended child sees the image times its reference heavy-footprint weights
  inside its parent's footprint (siblings removed), as in
  :func:`~stacklab.toolkit.measure_sources`;
* PSF flux: the exposure's PSF model drawn at ``(x, y)``, amplitude by linear
  least squares with uniform weights, ``F = sum(P d) / sum(P**2)`` and
  ``sigma_F = sqrt(sum(P**2 V)) / sum(P**2)`` (uniform weights keep the estimator
  linear, hence unbiased, for bright sources whose variance plane holds their own
  Poisson noise);
* circular aperture fluxes (sep) at ``aperture_radii_px``.

Errors from the variance plane miss pixel-to-pixel noise correlations
(resampling, PSF matching). Forced fluxes at ``n_sky_objects`` random blank
positions (away from every footprint) measure the real noise: the robust
scatter of ``F / sigma_F`` there is each estimator's ``error scale`` (1 for
uncorrelated noise), by which the errors are multiplied when ``rescale_errors``
(as LSST's sky objects).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sep
from numpy.typing import NDArray
from scipy import ndimage

from ._psf_flux_fits import _place
from ._stamps import cutout, good_size
from .deblend import Deblended
from .exposure import Exposure
from .flags import SourceFlag

__all__ = ["ForcedConfig", "ForcedPhotometry", "forced_photometry"]

log = logging.getLogger(__name__)

_MIN_SKY_OBJECTS = 20
_IQR_PER_SIGMA = 1.3489795


@dataclass(frozen=True, kw_only=True)
class ForcedConfig:
    """Settings of :func:`forced_photometry`.

    Attributes
    ----------
    aperture_radii_px : tuple of float
        Radii of the circular apertures (pixels).
    bad_planes : tuple of str
        Mask planes whose pixels are left out of every sum.
    max_stamp_half_px : int
        Largest stamp half-width (pixels) used for one source.
    n_sky_objects : int
        Blank positions measured to calibrate the errors (0 for none).
    rescale_errors : bool
        Multiply the errors by the sky objects' error scales.
    seed : int
        Seed of the sky objects' positions.
    """

    aperture_radii_px: tuple[float, ...] = (3.0, 4.5, 6.0, 9.0, 12.0)
    bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "CR")
    max_stamp_half_px: int = 64
    n_sky_objects: int = 300
    rescale_errors: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        radii = tuple(float(r) for r in self.aperture_radii_px)
        if not radii or any(not r > 0 for r in radii):
            msg = f"aperture_radii_px must be positive radii in pixels, got {radii!r}"
            raise ValueError(msg)
        object.__setattr__(self, "aperture_radii_px", tuple(sorted(radii)))
        if not isinstance(self.max_stamp_half_px, int) or self.max_stamp_half_px < 8:
            msg = f"max_stamp_half_px must be an integer >= 8, got {self.max_stamp_half_px!r}"
            raise ValueError(msg)
        if not isinstance(self.n_sky_objects, int) or self.n_sky_objects < 0:
            msg = f"n_sky_objects must be an integer >= 0, got {self.n_sky_objects!r}"
            raise ValueError(msg)
        object.__setattr__(self, "bad_planes", tuple(self.bad_planes))


@dataclass(frozen=True, eq=False)
class ForcedPhotometry:
    """Forced fluxes of every source in one exposure.

    Attributes
    ----------
    psf_flux, psf_flux_err : numpy.ndarray
        PSF flux and its (rescaled) error per source (ADU).
    aper_flux, aper_flux_err : numpy.ndarray, shape (n_sources, n_radii)
        Aperture fluxes and (rescaled) errors (ADU).
    flags : numpy.ndarray of int64
        :class:`~stacklab.toolkit.flags.SourceFlag` bits per source.
    error_scale_psf : float
        Robust scatter of ``F / sigma_F`` of the PSF flux on sky objects (NaN
        without enough of them).
    error_scale_aper : numpy.ndarray
        The same per aperture radius.
    n_sky_objects : int
        Sky objects measured.
    config : ForcedConfig
        The settings used.
    """

    psf_flux: NDArray[np.float64]
    psf_flux_err: NDArray[np.float64]
    aper_flux: NDArray[np.float64]
    aper_flux_err: NDArray[np.float64]
    flags: NDArray[np.int64]
    error_scale_psf: float
    error_scale_aper: NDArray[np.float64]
    n_sky_objects: int
    config: ForcedConfig = field(default_factory=ForcedConfig)


@dataclass(frozen=True)
class _Planes:
    """Full-image arrays every stamp is cut from."""

    image: NDArray[np.float32]
    variance: NDArray[np.float32]
    mask: NDArray[np.int32]
    unusable: NDArray[np.bool_]
    bad_bits: int
    no_data: int


def forced_photometry(
    exposure: Exposure,
    sources: Deblended,
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    config: ForcedConfig | None = None,
) -> ForcedPhotometry:
    """Measure PSF and aperture fluxes of every source at fixed positions.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure on the grid ``sources`` were found on,
        with a PSF model.
    sources : Deblended
        Reference footprints (shared heavy footprints of the children).
    x, y : array of float
        Fixed centroid of every row of ``sources.sources`` (px).
    config : ForcedConfig, optional
        Apertures, masks and the sky objects.

    Returns
    -------
    ForcedPhotometry

    Raises
    ------
    ValueError
        If the exposure has no PSF, or ``x``/``y`` do not have one value per source.

    Examples
    --------
    >>> import numpy as np
    >>> from stacklab.toolkit.deblend import deblend_sources
    >>> from stacklab.toolkit.detection import detect_sources
    >>> from stacklab.toolkit.psf_match import TargetPsf
    >>> psf = TargetPsf(4.0)
    >>> image = np.zeros((96, 96)); image[29:70, 19:60] = 500.0 * psf.compute_image(0, 0)
    >>> exp = Exposure(image, variance=np.ones((96, 96)), psf=psf)
    >>> blend = deblend_sources(exp, detect_sources(exp))
    >>> result = forced_photometry(exp, blend, np.array([39.0]), np.array([49.0]),
    ...                            ForcedConfig(n_sky_objects=0))
    >>> round(float(result.psf_flux[0]))
    500
    """
    config = ForcedConfig() if config is None else config
    n = len(sources)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != (n,) or y.shape != (n,):
        msg = f"x and y must hold one position per source ({n}), got shapes {x.shape}, {y.shape}"
        raise ValueError(msg)
    if exposure.psf is None:
        msg = f"{exposure!r} has no PSF model; forced PSF fluxes need one"
        raise ValueError(msg)
    mask_planes = exposure.mask_planes
    present = [p for p in config.bad_planes if p in mask_planes]
    planes = _Planes(
        exposure.image,
        exposure.variance,
        exposure.mask,
        ~np.isfinite(exposure.image) | ~np.isfinite(exposure.variance) | ~(exposure.variance > 0),
        mask_planes.bitmask(*present) if present else 0,
        mask_planes.bitmask("NO_DATA") if "NO_DATA" in mask_planes else 0,
    )
    saturated = mask_planes.bitmask("SAT") if "SAT" in mask_planes else 0
    radii = np.asarray(config.aperture_radii_px)
    psf_flux, psf_err = np.full(n, np.nan), np.full(n, np.nan)
    aper, aper_err = np.full((n, len(radii)), np.nan), np.full((n, len(radii)), np.nan)
    flags = np.zeros(n, dtype=np.int64)
    src = sources.sources
    index_of = {int(i): k for k, i in enumerate(src["id"])}
    for k in range(n):
        heavy = sources.heavy_footprints[k]
        parent = int(src["parent"][k])
        f = 0
        if parent or int(src["n_children"][k]):
            f |= SourceFlag.BLENDED
        if int(src["n_children"][k]):
            f |= SourceFlag.PARENT
        if saturated and np.any(planes.mask[heavy.slices][heavy.weights > 0] & saturated):
            f |= SourceFlag.SATURATED
        if not (np.isfinite(x[k]) and np.isfinite(y[k])):
            flags[k] = f | SourceFlag.BAD_CENTROID | SourceFlag.PSF_FLUX_FAILED
            continue
        fy, fx = heavy.weights.shape
        half = int(np.clip(max(fy, fx) // 2 + 6, radii[-1] + 3, config.max_stamp_half_px))
        weights = None
        if parent:
            weights = (heavy, sources.heavy_footprints[index_of[parent]])
        result = _measure_one(planes, exposure.psf, x[k], y[k], half, radii, weights)
        psf_flux[k], psf_err[k], aper[k], aper_err[k], f_one = result
        f |= f_one
        if saturated and np.any(
            cutout(planes.mask, int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5)), 2) & saturated
        ):
            f |= SourceFlag.SATURATED_CENTER
        flags[k] = f
    scale_psf, scale_aper, n_sky = _sky_error_scales(planes, exposure.psf, sources, radii, config)
    if config.rescale_errors and np.isfinite(scale_psf):
        psf_err = psf_err * scale_psf
        aper_err = aper_err * np.where(np.isfinite(scale_aper), scale_aper, 1.0)[None, :]
    return ForcedPhotometry(
        psf_flux, psf_err, aper, aper_err, flags, scale_psf, scale_aper, n_sky, config
    )


def _measure_one(
    planes: _Planes,
    psf: Any,
    x: float,
    y: float,
    half: int,
    radii: NDArray[np.float64],
    weights: tuple[Any, Any] | None,
) -> tuple[float, float, NDArray[np.float64], NDArray[np.float64], int]:
    """PSF flux, error, aperture fluxes, errors and flags at one fixed position."""
    f = 0
    ny, nx = planes.image.shape
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    try:
        kernel = np.asarray(psf.compute_image(x, y), dtype=np.float64)
    except ValueError:  # a CoaddPsf with no input at this position
        kernel = None
        f |= SourceFlag.PSF_FLUX_FAILED
    if kernel is not None:
        half = max(half, kernel.shape[0] // 2 + 2)
    half = good_size(2 * half + 1) // 2
    stamp = np.nan_to_num(cutout(planes.image, ix, iy, half).astype(np.float64))
    var = cutout(planes.variance, ix, iy, half, fill=np.inf).astype(np.float64)
    bad = (cutout(planes.mask, ix, iy, half, fill=planes.no_data) & planes.bad_bits) != 0
    bad |= cutout(planes.unusable, ix, iy, half, fill=True).astype(bool)
    ox, oy = ix - half, iy - half
    if weights is not None:
        child, parent = weights
        box = (ox, oy, stamp.shape)
        stamp = stamp * np.where(parent.weights_on(*box) > 0, child.weights_on(*box), 1.0)
    if ox < 0 or oy < 0 or ix + half >= nx or iy + half >= ny:
        f |= SourceFlag.EDGE
    if np.any(bad[half - 2 : half + 3, half - 2 : half + 3]):
        f |= SourceFlag.BAD_CENTER
    cx, cy = x - ox, y - oy
    data = np.ascontiguousarray(np.where(bad, 0.0, stamp))
    var_c = np.ascontiguousarray(np.where(bad, 0.0, var))
    flux, err, aper_flags = sep.sum_circle(
        data, np.array([cx]), np.array([cy]), radii[None, :], var=var_c,
        mask=np.ascontiguousarray(bad), subpix=5,
    )  # fmt: skip
    edge = np.array([cx, cy, 2 * half - cx, 2 * half - cy])
    if np.any(aper_flags) or np.any(radii[-1] > edge):
        f |= SourceFlag.APERTURE_TRUNCATED
    psf_flux = psf_err = np.nan
    if kernel is not None:
        model = _place(kernel / kernel.sum(), stamp.shape[0], cx, cy)
        good = ~bad
        den = float(np.sum(model[good] ** 2))
        if den > 0.5 * float(np.sum(model**2)):
            psf_flux = float(np.sum(model[good] * stamp[good])) / den
            psf_err = float(np.sqrt(np.sum(model[good] ** 2 * var[good]))) / den
        else:  # most of the PSF's weight falls on masked pixels
            f |= SourceFlag.PSF_FLUX_FAILED
    return psf_flux, psf_err, flux[0], err[0], f


@dataclass(frozen=True)
class _FixedPsf:
    """One stamp for every position."""

    stamp: NDArray[np.float64]

    def compute_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the stamp."""
        return self.stamp


def _sky_error_scales(
    planes: _Planes,
    psf: Any,
    sources: Deblended,
    radii: NDArray[np.float64],
    config: ForcedConfig,
) -> tuple[float, NDArray[np.float64], int]:
    """Robust scatter of flux / error at blank positions, for the PSF flux and each aperture."""
    nan = (float("nan"), np.full(len(radii), np.nan), 0)
    if config.n_sky_objects == 0:
        return nan
    occupied = np.zeros(planes.image.shape, dtype=bool)
    for heavy in sources.heavy_footprints:
        occupied[heavy.slices] |= heavy.weights > 0
    clearance = int(np.ceil(radii[-1])) + 2
    blocked = occupied | planes.unusable | ((planes.mask & planes.bad_bits) != 0)
    free = ~ndimage.binary_dilation(blocked, iterations=clearance)
    free[:clearance], free[-clearance:], free[:, :clearance], free[:, -clearance:] = (
        False, False, False, False,
    )  # fmt: skip
    candidates = np.flatnonzero(free)
    if len(candidates) < _MIN_SKY_OBJECTS:
        log.warning("only %d blank pixels for sky objects; errors not calibrated", len(candidates))
        return nan
    rng = np.random.default_rng(config.seed)
    chosen = rng.choice(candidates, min(config.n_sky_objects, len(candidates)), replace=False)
    ys, xs = np.divmod(chosen, planes.image.shape[1])
    # Sky objects measure the noise only: one PSF stamp (of the first) serves them all.
    try:
        kernel = np.asarray(psf.compute_image(float(xs[0]), float(ys[0])), dtype=np.float64)
    except ValueError:  # a CoaddPsf without input there
        log.warning("no PSF model at the first sky object; errors not calibrated")
        return nan
    pulls_psf, pulls_aper = [], []
    for sx, sy in zip(xs, ys, strict=True):
        flux, err, aper, aper_err, f = _measure_one(
            planes, _FixedPsf(kernel), float(sx), float(sy), int(radii[-1]) + 3, radii, None
        )
        if f & (SourceFlag.PSF_FLUX_FAILED | SourceFlag.BAD_CENTER | SourceFlag.EDGE):
            continue
        pulls_psf.append(flux / err)
        pulls_aper.append(aper / aper_err)
    if len(pulls_psf) < _MIN_SKY_OBJECTS:
        log.warning("only %d usable sky objects; errors not calibrated", len(pulls_psf))
        return nan
    q = np.percentile(np.asarray(pulls_psf), [75, 25])
    q_aper = np.percentile(np.asarray(pulls_aper), [75, 25], axis=0)
    return (
        float((q[0] - q[1]) / _IQR_PER_SIGMA),
        (q_aper[0] - q_aper[1]) / _IQR_PER_SIGMA,
        len(pulls_psf),
    )
