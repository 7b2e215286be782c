"""The simulated sky: one truth catalog of stars and galaxies shared by every visit.

Shapes are in the local tangent plane of each object: ``u`` points west
(``-ΔRA cos δ``) and ``v`` north, both in arcsec; ``g1 > 0`` elongates a galaxy
east-west.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from numpy.typing import NDArray

from .config import BAND_WAVELENGTH_NM, SimulationConfig

__all__ = ["epoch_mjd", "field_radius_arcsec", "make_sky", "visit_magnitudes"]

_SERSIC_N = (0.8, 1.5, 2.5, 4.0)  # quantized so GalSim reuses its profile tables
_VARIABLE_PERIOD_DAYS = 3.7
_MJD0 = 60600.0


def field_radius_arcsec(config: SimulationConfig) -> float:
    """Radius around the field centre that every visit's detectors stay within (arcsec)."""
    grid = config.detector_grid
    extent_px = grid * config.size + (grid - 1) * config.detector_gap_px
    half_diagonal = extent_px * config.pixel_scale_arcsec / np.sqrt(2.0)
    return float(half_diagonal + np.sqrt(2.0) * config.dither_arcsec + 10.0)


def _power_law_mags(
    rng: np.random.Generator, n: int, bright: float, faint: float, slope: float
) -> NDArray[np.float64]:
    # Inverse CDF of dN/dm ∝ 10^(slope m) between bright and faint.
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.random(n) * (hi - lo)) / slope


def _colour_offsets(
    band: str, g_minus_r: NDArray[np.float64], r_minus_i: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Magnitude in ``band`` minus magnitude in r, from a piecewise-linear SED."""
    lam = BAND_WAVELENGTH_NM[band]
    lam_g, lam_r, lam_i = (BAND_WAVELENGTH_NM[b] for b in "gri")
    if lam <= lam_r:
        return g_minus_r * (lam_r - lam) / (lam_r - lam_g)
    return -r_minus_i * (lam - lam_r) / (lam_i - lam_r)


def make_sky(config: SimulationConfig) -> Table:
    """Draw the truth catalog of the field.

    Parameters
    ----------
    config : SimulationConfig
        Densities, magnitude ranges, bands and seed.

    Returns
    -------
    astropy.table.Table
        One row per object: ``id``, ``ra``, ``dec`` (deg), ``kind`` (``star``,
        ``bulge+disk``, ``sersic``), ``mag_<band>`` (AB, total), for galaxies
        ``hlr_arcsec`` (disk or Sérsic half-light radius), ``bulge_hlr_arcsec``,
        ``bulge_fraction_<band>``, ``sersic_n``, ``g1``, ``g2`` (intrinsic shear
        in the u/v frame), and the flags ``variable`` and ``transient``.

    Examples
    --------
    >>> sky = make_sky(SimulationConfig(size=256, seed=3))
    >>> {"star", "bulge+disk"} <= set(sky["kind"])
    True
    """
    rng = np.random.default_rng([config.seed, 0])
    radius = field_radius_arcsec(config)
    area_arcmin2 = np.pi * (radius / 60.0) ** 2
    n_star = int(rng.poisson(config.star_density_arcmin2 * area_arcmin2))
    n_gal = int(rng.poisson(config.galaxy_density_arcmin2 * area_arcmin2))
    n_extra = int(config.variable_star) + int(config.transient)
    n = n_star + n_gal + n_extra

    # Positions uniform in the disc; the variable star and the transient go near the
    # centre so that every visit sees them.
    r = radius * np.sqrt(rng.random(n))
    r[n_star + n_gal :] = rng.uniform(0.0, 0.25, n_extra) * config.size * config.pixel_scale_arcsec
    phi = rng.uniform(0.0, 2 * np.pi, n)
    west, north = r * np.cos(phi), r * np.sin(phi)
    centre = SkyCoord(config.ra_deg * u.deg, config.dec_deg * u.deg)
    coords = centre.spherical_offsets_by(-west * u.arcsec, north * u.arcsec)

    kind = np.array(["star"] * n, dtype="<U10")
    is_gal = np.zeros(n, dtype=bool)
    is_gal[n_star : n_star + n_gal] = True
    sersic = is_gal & (rng.random(n) < config.sersic_fraction)
    kind[is_gal] = "bulge+disk"
    kind[sersic] = "sersic"

    mag_r = np.empty(n)
    mag_r[:n_star] = _power_law_mags(rng, n_star, *config.star_mag_range, config.star_count_slope)
    mag_r[n_star : n_star + n_gal] = _power_law_mags(
        rng, n_gal, *config.galaxy_mag_range, config.galaxy_count_slope
    )
    # Variable star: bright but unsaturated; transient: easy to detect in one epoch.
    extra_mags = [18.5] * int(config.variable_star) + [20.0] * int(config.transient)
    mag_r[n_star + n_gal :] = extra_mags

    # Sizes: disk half-light radius shrinks with magnitude, log-normal scatter.
    hlr = np.where(
        is_gal,
        np.clip(0.55 * 10 ** (-0.1 * (mag_r - 22.0)) * rng.lognormal(0.0, 0.3, n), 0.12, 4.0),
        0.0,
    )
    bulge_hlr = np.where(kind == "bulge+disk", np.maximum(0.45 * hlr, 0.08), 0.0)
    sersic_n = np.where(sersic, rng.choice(_SERSIC_N, n), 0.0)
    # Intrinsic shapes: shear per component ~ N(0, 0.25), |g| < 0.7, random orientation.
    g_mod = np.minimum(np.hypot(*rng.normal(0.0, 0.25, (2, n))), 0.7)
    beta = rng.uniform(0.0, np.pi, n)
    g1 = np.where(is_gal, g_mod * np.cos(2 * beta), 0.0)
    g2 = np.where(is_gal, g_mod * np.sin(2 * beta), 0.0)

    # Colours: stars along a locus; galaxy disks blue, bulges red.
    star_gr = rng.uniform(0.2, 1.5, n)
    star_ri = np.clip(0.45 * star_gr - 0.05 + rng.normal(0, 0.05, n), -0.2, 1.0)
    disk_gr, disk_ri = rng.normal(0.45, 0.15, n), rng.normal(0.25, 0.08, n)
    bulge_gr, bulge_ri = rng.normal(0.95, 0.08, n), rng.normal(0.42, 0.05, n)
    bulge_frac_r = np.where(kind == "bulge+disk", rng.beta(1.2, 3.0, n), 0.0)

    table = Table()
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["ra"] = coords.ra.deg * u.deg
    table["dec"] = coords.dec.deg * u.deg
    table["kind"] = kind
    for band in config.bands:
        star_mag = mag_r + _colour_offsets(band, star_gr, star_ri)
        disk_flux = (1 - bulge_frac_r) * 10 ** (-0.4 * _colour_offsets(band, disk_gr, disk_ri))
        bulge_flux = bulge_frac_r * 10 ** (-0.4 * _colour_offsets(band, bulge_gr, bulge_ri))
        gal_mag = mag_r - 2.5 * np.log10(disk_flux + bulge_flux)
        mag = np.where(is_gal, gal_mag, star_mag)
        if config.transient:
            mag[-1] = mag_r[-1]  # flat spectrum
        table[f"mag_{band}"] = mag * u.mag
        table[f"bulge_fraction_{band}"] = np.where(
            kind == "bulge+disk", bulge_flux / (disk_flux + bulge_flux), 0.0
        )
    table["hlr_arcsec"] = hlr * u.arcsec
    table["bulge_hlr_arcsec"] = bulge_hlr * u.arcsec
    table["sersic_n"] = sersic_n
    table["g1"] = g1
    table["g2"] = g2
    table["variable"] = np.zeros(n, dtype=bool)
    table["transient"] = np.zeros(n, dtype=bool)
    if config.variable_star:
        table["variable"][n_star + n_gal] = True
    if config.transient:
        table["transient"][-1] = True
    table.meta["RA0"], table.meta["DEC0"] = config.ra_deg, config.dec_deg
    table.meta["RADIUS"] = (radius, "field radius, arcsec")
    return table


def epoch_mjd(config: SimulationConfig, visit: int) -> float:
    """MJD of a visit: one epoch a night, the bands of an epoch 30 minutes apart."""
    epoch, band_index = divmod(visit, len(config.bands))
    return _MJD0 + epoch + band_index * 0.02


def visit_magnitudes(
    sky: Table, config: SimulationConfig, band: str, visit: int
) -> NDArray[np.float64]:
    """Magnitudes of every sky object in one visit (NaN where an object is absent).

    The variable star follows a sinusoid in time; the transient is present only in
    the visits of the middle epoch.
    """
    mags = np.array(sky[f"mag_{band}"], dtype=np.float64)
    mjd = epoch_mjd(config, visit)
    variable = np.asarray(sky["variable"], dtype=bool)
    mags[variable] += config.variable_star_amplitude_mag * np.sin(
        2 * np.pi * (mjd - _MJD0) / _VARIABLE_PERIOD_DAYS
    )
    transient = np.asarray(sky["transient"], dtype=bool)
    if transient.any() and visit // len(config.bands) != config.visits_per_band // 2:
        mags[transient] = np.nan
    return mags
