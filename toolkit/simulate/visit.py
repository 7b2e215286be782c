"""Render one visit of one detector: objects through the PSF, sky, noise and artifacts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import galsim
import numpy as np
from astropy import units as u
from astropy.table import Table
from numpy.typing import NDArray

from ..exposure import Exposure
from ..mask import MaskPlanes
from . import artifacts
from .config import BAND_WAVELENGTH_NM, SimulationConfig
from .psf import SimulatedPsf, random_psf
from .sky import epoch_mjd, visit_magnitudes
from .wcs import (
    detector_offset,
    focal_plane_centre,
    local_jacobians,
    make_detector_wcs,
    sky_to_pixel,
)

__all__ = ["SimulatedVisit", "VisitConditions", "simulate_visit", "visit_conditions"]

log = logging.getLogger(__name__)

_EXPTIME_S = 30.0
_GSPARAMS = galsim.GSParams(maximum_fft_size=16384)
#: Planes of the artifact truth mask (same names as the exposure's mask planes).
ARTIFACT_PLANES = ("CR", "STREAK", "BAD", "SAT")


@dataclass(frozen=True)
class VisitConditions:
    """Observing conditions of one visit (all detectors share them)."""

    visit: int
    band: str
    mjd: float
    ra_deg: float
    dec_deg: float
    rotation_deg: float
    seeing_fwhm_arcsec: float
    zero_point: float
    sky_adu: float
    sky_gradient: tuple[float, float]
    psf_seed: int


@dataclass(frozen=True, eq=False)
class SimulatedVisit:
    """One simulated detector image and its truth.

    Attributes
    ----------
    exposure : Exposure
        The image as a pipeline would receive it (ISR-like: BAD and SAT planes set,
        CR and trails not), with the true PSF model attached.
    truth : astropy.table.Table
        Objects whose light falls on the detector: ``id``, ``x``, ``y`` (0-based
        px), ``flux`` (ADU, total), ``flux_drawn`` (ADU actually added to the
        image), ``flux2_drawn`` (sum of the squares of the object's noiseless
        pixels, ADU²: its optimal matched-filter S/N on a sky of variance ``V`` is
        ``sqrt(flux2_drawn / V)``), ``mag``, ``kind``, ``is_star``, ``in_image``,
        the PSF ``psf_fwhm_px``, ``psf_g1``, ``psf_g2`` there, and ``saturated``.
    noiseless : numpy.ndarray
        Expected image (ADU): sky plus objects, after brighter-fatter, without
        noise or artifacts.
    sky : numpy.ndarray
        The sky alone (ADU), with its gradient: the true background.
    artifact_mask : numpy.ndarray
        Truth mask (int32) with planes ``artifact_planes`` marking where cosmic
        rays, trails, bad columns and saturation/bleeding changed the pixels.
    artifact_planes : MaskPlanes
        Names of the bits of ``artifact_mask``.
    conditions : VisitConditions
        The visit's observing conditions.
    """

    exposure: Exposure
    truth: Table
    noiseless: NDArray[np.float32]
    sky: NDArray[np.float32]
    artifact_mask: NDArray[np.int32]
    conditions: VisitConditions
    artifact_planes: MaskPlanes = field(
        default_factory=lambda: MaskPlanes({n: i for i, n in enumerate(ARTIFACT_PLANES)})
    )


def visit_conditions(config: SimulationConfig, visit: int) -> VisitConditions:
    """Draw the observing conditions of ``visit`` (deterministic in the seed)."""
    if not isinstance(visit, int | np.integer) or visit < 0:
        msg = f"visit must be a non-negative integer, got {visit!r}"
        raise ValueError(msg)
    band = config.visit_band(int(visit))
    rng = np.random.default_rng([config.seed, 1, int(visit)])
    offset = rng.uniform(-config.dither_arcsec, config.dither_arcsec, 2) / 3600.0
    dec = config.dec_deg + offset[1]
    ra = config.ra_deg + offset[0] / np.cos(np.deg2rad(dec))
    seeing_r = rng.uniform(*config.seeing_fwhm_range_arcsec)
    # Atmospheric seeing scales as wavelength^-1/5.
    seeing = seeing_r * (BAND_WAVELENGTH_NM[band] / BAND_WAVELENGTH_NM["r"]) ** -0.2
    return VisitConditions(
        visit=int(visit),
        band=band,
        mjd=epoch_mjd(config, int(visit)),
        ra_deg=float(ra),
        dec_deg=float(dec),
        rotation_deg=float(rng.uniform(-config.rotation_max_deg, config.rotation_max_deg)),
        seeing_fwhm_arcsec=float(seeing),
        zero_point=float(
            config.zero_point[band] - abs(rng.normal(0.0, config.zero_point_scatter_mag))
        ),
        sky_adu=float(config.sky_adu[band] * rng.uniform(0.8, 1.3)),
        sky_gradient=(
            float(rng.uniform(-1, 1) * config.sky_gradient),
            float(rng.uniform(-1, 1) * config.sky_gradient),
        ),
        psf_seed=int(rng.integers(2**31)),
    )


def _galaxy_profile(row: Any, band: str) -> galsim.GSObject:
    hlr = float(row["hlr_arcsec"])
    if row["kind"] == "sersic":
        profile = galsim.Sersic(n=float(row["sersic_n"]), half_light_radius=hlr, gsparams=_GSPARAMS)
    else:
        bulge_fraction = float(row[f"bulge_fraction_{band}"])
        disk = galsim.Exponential(half_light_radius=hlr, gsparams=_GSPARAMS)
        bulge = galsim.DeVaucouleurs(
            half_light_radius=float(row["bulge_hlr_arcsec"]), gsparams=_GSPARAMS
        ).shear(g1=0.5 * float(row["g1"]), g2=0.5 * float(row["g2"]))
        profile = galsim.Add((1 - bulge_fraction) * disk, bulge_fraction * bulge)
        return profile.shear(g1=float(row["g1"]), g2=float(row["g2"]))
    return profile.shear(g1=float(row["g1"]), g2=float(row["g2"]))


def _stamp_half_size(is_star: bool, flux_e: float, fwhm_px: float, hlr_px: float) -> int:
    if is_star:
        # Kolmogorov wings hold ~2% of the light beyond 4 FWHM: bright stars get
        # larger stamps so that what is left out stays below ~0.2 e- per pixel.
        reach = 4.0 + 20.0 * np.clip(np.log10(max(flux_e, 1.0)) - 4.0, 0.0, 3.0) / 3.0
        return int(np.ceil(reach * fwhm_px))
    return int(np.clip(np.ceil(3.0 * fwhm_px + 8.0 * hlr_px), 12, 200))


def simulate_visit(
    sky: Table,
    config: SimulationConfig,
    *,
    visit: int,
    band: str | None = None,
    detector: int = 0,
) -> SimulatedVisit:
    """Render one detector of one visit.

    Parameters
    ----------
    sky : astropy.table.Table
        Truth catalog from :func:`~stacklab.toolkit.simulate.make_sky`.
    config : SimulationConfig
        The dataset's configuration (the same one that made ``sky``).
    visit : int
        Visit number; it fixes the conditions, pointing and noise.
    band : str, optional
        Filter; by default the visit's own (epochs cycle through ``config.bands``).
    detector : int
        Detector number in the focal plane grid.

    Returns
    -------
    SimulatedVisit

    Raises
    ------
    ValueError
        If ``band`` is not one of ``config.bands`` or ``sky`` lacks its magnitudes.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> config = SimulationConfig(size=128, galaxy_density_arcmin2=5.0)
    >>> sim = simulate_visit(make_sky(config), config, visit=1)
    >>> sim.exposure.band, sim.exposure.shape
    ('r', (128, 128))
    """
    conditions = visit_conditions(config, visit)
    if band is not None and band != conditions.band:
        if band not in config.bands:
            msg = f"band {band!r} is not among the configured bands {config.bands}"
            raise ValueError(msg)
        conditions = VisitConditions(**{**conditions.__dict__, "band": band})
        conditions = _rescale_for_band(conditions, config)
    band = conditions.band
    if f"mag_{band}" not in sky.colnames:
        msg = f"the sky catalog has no column mag_{band}; make it with the same config"
        raise ValueError(msg)
    shape = (config.size, config.size)
    wcs = make_detector_wcs(
        config,
        ra_deg=conditions.ra_deg,
        dec_deg=conditions.dec_deg,
        rotation_deg=conditions.rotation_deg,
        detector=detector,
    )
    dx, dy = detector_offset(config, detector)
    fp_centre, fp_half = focal_plane_centre(config)
    psf = random_psf(
        np.random.default_rng(conditions.psf_seed),
        fwhm_px=conditions.seeing_fwhm_arcsec / config.pixel_scale_arcsec,
        size_variation=config.psf_size_variation,
        ellipticity_max=config.psf_ellipticity_max,
        focal_plane_x0=fp_centre - dx,
        focal_plane_y0=fp_centre - dy,
        focal_plane_half_px=fp_half,
    )

    objects, image_adu = _draw_objects(sky, config, conditions, wcs, psf, shape)
    noise_rng = np.random.default_rng([config.seed, 2, conditions.visit, detector])
    artifact_rng = np.random.default_rng([config.seed, 4, conditions.visit, detector])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    gx, gy = conditions.sky_gradient
    sky_adu = conditions.sky_adu * (
        1.0 + gx * (xx - psf.focal_plane_x0) / fp_half + gy * (yy - psf.focal_plane_y0) / fp_half
    )
    expected_e = (sky_adu + image_adu) * config.gain
    if config.brighter_fatter > 0:
        expected_e = artifacts.apply_brighter_fatter(expected_e, config.brighter_fatter)
    noiseless = (expected_e / config.gain).astype(np.float32)
    variance = noiseless / config.gain + (config.read_noise_e / config.gain) ** 2
    sigma_e = np.sqrt(np.median(expected_e) + config.read_noise_e**2)

    planes = MaskPlanes({n: i for i, n in enumerate(ARTIFACT_PLANES)})
    truth_mask = np.zeros(shape, dtype=np.int32)
    photons_e = expected_e
    if artifact_rng.random() < config.satellite_trail_probability:
        trail = artifacts.satellite_trail(
            shape,
            artifact_rng,
            sigma_px=float(psf.fwhm_px) / 2.355,
            peak_e=float(artifact_rng.uniform(3.0, 30.0) * sigma_e),
        )
        photons_e = photons_e + trail
        truth_mask[trail > 0.05 * sigma_e] |= 1 << planes["STREAK"]
    charge = noise_rng.poisson(photons_e).astype(np.float64)
    if config.cosmic_rays_per_megapixel > 0:
        deposit = artifacts.add_cosmic_rays(shape, artifact_rng, config.cosmic_rays_per_megapixel)
        charge += deposit
        truth_mask[deposit > 0.05 * sigma_e] |= 1 << planes["CR"]
    saturated = artifacts.bleed_saturation(charge, config.full_well_e)
    truth_mask[saturated] |= 1 << planes["SAT"]
    image = charge / config.gain
    at_full_well = charge >= config.full_well_e
    noisy = ~at_full_well
    image[noisy] += noise_rng.normal(0.0, config.read_noise_e / config.gain, int(noisy.sum()))

    exposure_planes = MaskPlanes.default()
    mask = np.zeros(shape, dtype=np.int32)
    mask[at_full_well] |= exposure_planes.bitmask("SAT")
    defect_rng = np.random.default_rng([config.seed, 3, detector])
    for column, first, last, hot in artifacts.bad_columns(shape, defect_rng, config.n_bad_columns):
        level = noiseless[first:last, column] * 3.0 if hot else 0.0
        image[first:last, column] = level + noise_rng.normal(
            0.0, config.read_noise_e / config.gain, last - first
        )
        mask[first:last, column] |= exposure_planes.bitmask("BAD")
        truth_mask[first:last, column] |= 1 << planes["BAD"]

    objects["saturated"] = [
        bool(at_full_well[round(float(y)), round(float(x))]) if inside else False
        for x, y, inside in zip(objects["x"], objects["y"], objects["in_image"], strict=True)
    ]
    meta = {
        "EXPTIME": _EXPTIME_S,
        "MJD-OBS": conditions.mjd,
        "SEEING": round(conditions.seeing_fwhm_arcsec, 4),
        "SKYLEVEL": round(conditions.sky_adu, 3),
        "GAIN": config.gain,
        "RDNOISE": config.read_noise_e,
        "SATURATE": config.full_well_e / config.gain,
        "ROTANG": round(conditions.rotation_deg, 4),
        "SIMULATD": True,
    }
    exposure = Exposure(
        image.astype(np.float32),
        variance=variance.astype(np.float32),
        mask=mask,
        wcs=wcs,
        psf=psf,
        zero_point=conditions.zero_point,
        band=band,
        visit=conditions.visit,
        detector=detector,
        mask_planes=exposure_planes,
        meta=meta,
    )
    return SimulatedVisit(
        exposure=exposure,
        truth=objects,
        noiseless=noiseless,
        sky=sky_adu.astype(np.float32),
        artifact_mask=truth_mask,
        conditions=conditions,
        artifact_planes=planes,
    )


def _rescale_for_band(conditions: VisitConditions, config: SimulationConfig) -> VisitConditions:
    # A visit asked for in another band keeps its pointing and PSF pattern but
    # takes that band's sky, zero point and seeing.
    natural = config.visit_band(conditions.visit)
    ratio = (BAND_WAVELENGTH_NM[conditions.band] / BAND_WAVELENGTH_NM[natural]) ** -0.2
    return VisitConditions(
        **{
            **conditions.__dict__,
            "seeing_fwhm_arcsec": conditions.seeing_fwhm_arcsec * ratio,
            "zero_point": conditions.zero_point
            + config.zero_point[conditions.band]
            - config.zero_point[natural],
            "sky_adu": conditions.sky_adu
            * config.sky_adu[conditions.band]
            / config.sky_adu[natural],
        }
    )


def _draw_objects(
    sky: Table,
    config: SimulationConfig,
    conditions: VisitConditions,
    wcs: Any,
    psf: SimulatedPsf,
    shape: tuple[int, int],
) -> tuple[Table, NDArray[np.float64]]:
    ny, nx = shape
    mags = visit_magnitudes(sky, config, conditions.band, conditions.visit)
    present = np.isfinite(mags)
    x_all, y_all = sky_to_pixel(wcs, np.asarray(sky["ra"]), np.asarray(sky["dec"]))
    margin = 60.0
    near = present & (x_all > -margin) & (x_all < nx - 1 + margin)
    near &= (y_all > -margin) & (y_all < ny - 1 + margin)
    rows = np.flatnonzero(near)
    x, y = x_all[rows], y_all[rows]
    flux = 10.0 ** (-0.4 * (mags[rows] - conditions.zero_point))
    jacobians = local_jacobians(wcs, x, y) if len(rows) else np.zeros((0, 2, 2))
    fwhm, g1, g2 = psf.parameters_at(x, y)
    image = np.zeros(shape)
    flux_drawn = np.zeros(len(rows))
    flux2_drawn = np.zeros(len(rows))
    kinds = np.asarray(sky["kind"])[rows]
    for k, row_index in enumerate(rows):
        row = sky[row_index]
        is_star = kinds[k] == "star"
        point = galsim.Kolmogorov(fwhm=float(fwhm[k]), gsparams=_GSPARAMS).shear(
            g1=float(g1[k]), g2=float(g2[k])
        )
        if is_star:
            profile = point.withFlux(float(flux[k]))
            hlr_px = 0.0
        else:
            local = galsim.JacobianWCS(*jacobians[k].ravel())
            galaxy = local.toImage(_galaxy_profile(row, conditions.band))
            profile = galsim.Convolve(galaxy, point).withFlux(float(flux[k]))
            hlr_px = float(row["hlr_arcsec"]) / config.pixel_scale_arcsec
        half = _stamp_half_size(is_star, flux[k] * config.gain, float(fwhm[k]), hlr_px)
        ix, iy = round(float(x[k])), round(float(y[k]))
        x_lo, x_hi = max(ix - half, 0), min(ix + half, nx - 1)
        y_lo, y_hi = max(iy - half, 0), min(iy + half, ny - 1)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        # GalSim pixels are 1-based: image pixel i is GalSim pixel i + 1.
        stamp = galsim.ImageD(galsim.BoundsI(x_lo + 1, x_hi + 1, y_lo + 1, y_hi + 1), scale=1.0)
        profile.drawImage(image=stamp, center=galsim.PositionD(x[k] + 1, y[k] + 1))
        image[y_lo : y_hi + 1, x_lo : x_hi + 1] += stamp.array
        flux_drawn[k] = stamp.array.sum()
        flux2_drawn[k] = np.sum(stamp.array**2)
    truth = Table()
    truth["id"] = np.asarray(sky["id"])[rows]
    truth["x"] = x
    truth["y"] = y
    truth["flux"] = flux * u.adu
    truth["flux_drawn"] = flux_drawn * u.adu
    truth["flux2_drawn"] = flux2_drawn * u.adu**2
    truth["mag"] = mags[rows] * u.mag
    truth["kind"] = kinds
    truth["is_star"] = kinds == "star"
    truth["in_image"] = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    truth["psf_fwhm_px"] = fwhm
    truth["psf_g1"] = g1
    truth["psf_g2"] = g2
    truth.meta["VISIT"] = conditions.visit
    truth.meta["BAND"] = conditions.band
    log.debug("visit %d: drew %d objects", conditions.visit, len(rows))
    return truth, image
