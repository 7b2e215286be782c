"""Multi-band catalogs: detect and deblend once, then forced photometry in every band.

The per-band coadds must share one patch grid (same shape and WCS). The steps:

1. :func:`coadd_bands` coadds each band on one common patch and, when PSF
   matching is asked for without a target, matches every band to one common
   target (``target_broadening`` times the broadest input of *any* band), so that
   fluxes in every band are measured through the same PSF.
2. :func:`detection_coadd` (from :mod:`~stacklab.toolkit.detection_coadd`)
   combines the bands into one image to detect on: the S/N-weighted sum
   (``"snr"``) or the Szalay et al. (1999) chi-square image (``"chi2"``).
3. :func:`measure_multiband` detects (:func:`~stacklab.toolkit.detect_sources`)
   and deblends (:func:`~stacklab.toolkit.deblend_sources`) once on the
   detection coadd (deblending and centroids always on the linear ``"snr"``
   sum, whose PSF fit gives the reference centroids), then measures every
   source in every band with *forced* photometry
   (:func:`~stacklab.toolkit.forced.forced_photometry`): the reference centroid
   is kept fixed, a child sees each band's image times its reference
   heavy-footprint weights (siblings removed), the PSF flux uses that band's PSF
   model (the common target on PSF-matched coadds, the CoaddPsf otherwise), and
   errors are calibrated on sky objects (blank positions), which matters on
   PSF-matched coadds whose pixel noise is correlated.

Colours of wavelength-adjacent bands are magnitude differences, ``m_b1 - m_b2``,
with errors added in quadrature. On PSF-matched coadds the PSF flux is a
matched-aperture flux (one weight function, the target PSF, in every band): the
right input for colours of galaxies, whose PSF-flux colours on direct coadds
depend on each band's seeing.

Pixel positions are 0-based pixel centres, ``(y, x)`` array indexing.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table
from numpy.typing import NDArray

from .coadd import Coadd, CoaddConfig, _target_psf, coadd
from .deblend import DeblendConfig, Deblended, deblend_sources
from .detection import DetectionConfig, detect_sources
from .detection_coadd import (
    _METHODS,
    DetectionMethod,
    _check_bands,
    _chi2_image,
    _grid_offset,
    _snr_sum,
    detection_coadd,
)
from .exposure import Exposure
from .forced import ForcedConfig, ForcedPhotometry, forced_photometry
from .measurement import MeasurementConfig, measure_sources
from .skymap import Patch, patch_covering

__all__ = [
    "MultibandCatalog",
    "MultibandConfig",
    "coadd_bands",
    "detection_coadd",
    "measure_multiband",
]

log = logging.getLogger(__name__)

_MAG_PER_LN = 2.5 / np.log(10.0)
_CENTROID_PSF_CELL_PX = 64


@dataclass(frozen=True, kw_only=True)
class MultibandConfig:
    """Settings of :func:`measure_multiband`.

    Attributes
    ----------
    detection_method : str
        ``"snr"`` (S/N-weighted sum) or ``"chi2"`` (Szalay chi-square image).
    detection : DetectionConfig
        Detection on the detection coadd.
    deblend : DeblendConfig
        Deblending on the S/N-weighted sum.
    forced : ForcedConfig
        Forced photometry in each band: apertures, masks and the sky objects
        that calibrate the errors.
    colour_aperture_px : float
        Aperture (one of ``forced.aperture_radii_px``) whose fluxes give the
        aperture colours ``colour_<b1>_<b2>_aper``.
    wcs_tolerance_px : float
        Largest disagreement (pixels) between two bands' grids accepted as "the
        same patch".
    """

    detection_method: DetectionMethod = "snr"
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    deblend: DeblendConfig = field(default_factory=DeblendConfig)
    forced: ForcedConfig = field(default_factory=ForcedConfig)
    colour_aperture_px: float = 6.0
    wcs_tolerance_px: float = 0.01

    def __post_init__(self) -> None:
        if self.detection_method not in _METHODS:
            msg = f"detection_method must be one of {_METHODS}, got {self.detection_method!r}"
            raise ValueError(msg)
        radii = self.forced.aperture_radii_px
        if float(self.colour_aperture_px) not in radii:
            msg = (
                f"colour_aperture_px must be one of forced.aperture_radii_px {radii}, "
                f"got {self.colour_aperture_px!r}"
            )
            raise ValueError(msg)
        if not self.wcs_tolerance_px > 0:
            msg = f"wcs_tolerance_px must be > 0 pixels, got {self.wcs_tolerance_px!r}"
            raise ValueError(msg)


@dataclass(frozen=True, eq=False)
class MultibandCatalog:
    """The result of :func:`measure_multiband`.

    Attributes
    ----------
    catalog : astropy.table.Table
        One row per source (parents, children and isolated sources); see
        :func:`measure_multiband` for the columns.
    bands : tuple of str
        The bands, bluest first.
    detection : Exposure
        The detection coadd.
    sources : Deblended
        The reference footprints and peaks shared by every band.
    config : MultibandConfig
        The settings that made it.
    """

    catalog: Table
    bands: tuple[str, ...]
    detection: Exposure
    sources: Deblended
    config: MultibandConfig


@dataclass(frozen=True)
class _NodePsf:
    """A PSF model evaluated once per ``step`` x ``step`` cell (at its centre) and reused.

    For reference centroids only, where the slow variation of the PSF across a
    cell does not matter but evaluating a CoaddPsf per source would.
    """

    psf: Any
    step: int
    cache: dict[tuple[int, int], NDArray[np.float64]] = field(default_factory=dict)

    def compute_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the model at the centre of the cell holding ``(x, y)``."""
        key = (int(x // self.step), int(y // self.step))
        if key not in self.cache:
            try:
                stamp = self.psf.compute_image(
                    (key[0] + 0.5) * self.step, (key[1] + 0.5) * self.step
                )
            except ValueError:  # no data at the cell centre: use the position itself
                return np.asarray(self.psf.compute_image(x, y), dtype=np.float64)
            self.cache[key] = np.asarray(stamp, dtype=np.float64)
        return self.cache[key]


def coadd_bands(
    exposures_by_band: Mapping[str, Sequence[Exposure]],
    patch: Patch | None = None,
    config: CoaddConfig | None = None,
) -> dict[str, Coadd]:
    """Coadd every band on one patch, PSF-matched to one common target if asked.

    Parameters
    ----------
    exposures_by_band : mapping of str to sequence of Exposure
        Background-subtracted, calibrated exposures of each band.
    patch : Patch, optional
        Common grid; by default one covering every exposure of every band.
    config : CoaddConfig, optional
        Coadd settings used for every band. With ``psf_match`` set and no
        ``target_fwhm_px``, the target is ``target_broadening`` times the
        broadest input over all bands (the same for every band).

    Returns
    -------
    dict of str to Coadd
        One coadd per band, in the order of ``exposures_by_band``.

    Raises
    ------
    ValueError
        If no band or a band without exposures is given (and as :func:`coadd`).

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit.psf_match import PsfMatchConfig
    >>> sim = SimulationConfig(size=96, bands=("g", "r"), visits_per_band=2, seed=4)
    >>> sky = make_sky(sim)
    >>> visits = [simulate_visit(sky, sim, visit=v) for v in range(4)]
    >>> by_band = {b: [v.exposure for v in visits if v.exposure.band == b] for b in "gr"}
    >>> coadds = coadd_bands(
    ...     by_band, config=CoaddConfig(statistic="mean", psf_match=PsfMatchConfig()))
    >>> coadds["g"].exposure.psf == coadds["r"].exposure.psf
    True
    """
    config = CoaddConfig() if config is None else config
    if not exposures_by_band:
        msg = "exposures_by_band is empty; pass {band: [exposures]} for each band"
        raise ValueError(msg)
    for band, exposures in exposures_by_band.items():
        if len(exposures) == 0:
            msg = f"band {band!r} has no exposures; drop it or add its exposures"
            raise ValueError(msg)
    every = [e for exposures in exposures_by_band.values() for e in exposures]
    patch = patch_covering(every) if patch is None else patch
    match = config.psf_match
    if match is not None and match.target_fwhm_px is None:
        target = _target_psf(every, match)
        log.info("PSF-matching every band to a Kolmogorov of FWHM %.2f px", target.fwhm_px)
        config = dataclasses.replace(
            config, psf_match=dataclasses.replace(match, target_fwhm_px=target.fwhm_px)
        )
    return {band: coadd(list(exps), patch, config) for band, exps in exposures_by_band.items()}


def measure_multiband(
    coadds_by_band: Mapping[str, Coadd | Exposure],
    config: MultibandConfig | None = None,
    *,
    detect_on: Mapping[str, Coadd | Exposure] | None = None,
) -> MultibandCatalog:
    """Detect and deblend once, then measure the same sources in every band.

    Parameters
    ----------
    coadds_by_band : mapping of str to Coadd or Exposure
        Background-subtracted, calibrated coadds of at least two bands on one
        patch, each with a PSF model (PSF-matched coadds from
        :func:`coadd_bands` give colours in matched apertures).
    config : MultibandConfig, optional
        Detection method, detection/deblending settings and apertures.
    detect_on : mapping of str to Coadd or Exposure, optional
        Coadds to detect, deblend and centroid on (e.g. the direct coadds, which
        have the best S/N and uncorrelated-by-matching noise) when measuring on
        PSF-matched ones; same patch. By default ``coadds_by_band``.

    Returns
    -------
    MultibandCatalog
        Its catalog has ``id, parent, n_children``, ``is_primary`` (not a
        parent), ``x, y`` (reference centroid, px), ``ra, dec`` (deg),
        ``detection_significance``, ``reference_flags`` (of the centroiding
        on the S/N-weighted sum); per band ``<b>_psf_flux, <b>_psf_flux_err``
        (ADU at the band's zero point), ``<b>_psf_mag, <b>_psf_mag_err`` (AB mag),
        ``<b>_aper_flux_<r>`` and ``_err`` (ADU), ``<b>_flags``
        (:class:`~stacklab.toolkit.flags.SourceFlag`); per pair of
        wavelength-adjacent bands ``colour_<b1>_<b2>_psf`` and
        ``colour_<b1>_<b2>_aper`` with ``_err`` (mag, ``m_b1 - m_b2``).
        ``meta`` holds ``BANDS``, ``ZP_<b>`` and ``ESCALE_<b>`` (the sky-object
        error scale of the PSF flux, already applied to the errors).

    Raises
    ------
    ValueError
        If fewer than two bands are given, a band has no PSF, WCS or zero point,
        or the coadds are not all on one grid (the error names the band).
    TypeError
        If the coadds are not a mapping of Coadd/Exposure.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> sim = SimulationConfig(size=128, bands=("g", "r"), visits_per_band=2, seed=4)
    >>> sky = make_sky(sim)
    >>> visits = [simulate_visit(sky, sim, visit=v) for v in range(4)]
    >>> by_band = {
    ...     b: [v.exposure.replace(image=v.exposure.image - v.sky)
    ...         for v in visits if v.exposure.band == b] for b in "gr"}
    >>> coadds = coadd_bands(by_band, config=CoaddConfig(statistic="mean"))
    >>> result = measure_multiband(coadds)
    >>> "colour_g_r_psf" in result.catalog.colnames
    True
    """
    config = MultibandConfig() if config is None else config
    exposures = _check_bands(coadds_by_band, config.wcs_tolerance_px)
    bands = tuple(exposures)
    if detect_on is None:
        reference = exposures
    else:
        reference = _check_bands(detect_on, config.wcs_tolerance_px, name="detect_on")
        first, other = next(iter(exposures.values())), next(iter(reference.values()))
        offset = _grid_offset(first, other)
        if first.shape != other.shape or not offset <= config.wcs_tolerance_px:
            msg = (
                f"detect_on is on another grid than coadds_by_band (shapes {other.shape} and "
                f"{first.shape}, pixels differ by up to {offset:.3g} px); coadd both on the "
                "same patch"
            )
            raise ValueError(msg)
    linear = _snr_sum(reference)
    detection = linear if config.detection_method == "snr" else _chi2_image(reference)
    detections = detect_sources(detection, config.detection)
    # Templates and centroids need a linear image, whatever the detection image.
    sources = deblend_sources(linear, detections, config.deblend)
    ref = measure_sources(
        linear, sources, psf=_NodePsf(linear.psf, _CENTROID_PSF_CELL_PX), config=MeasurementConfig(
            aperture_radii_px=config.forced.aperture_radii_px, fit_models=False,
            bad_planes=config.forced.bad_planes, max_stamp_half_px=config.forced.max_stamp_half_px,
        ),
    ).catalog  # fmt: skip
    x = np.where(np.isfinite(ref["x_psf"]), ref["x_psf"], ref["x"]).astype(np.float64)
    y = np.where(np.isfinite(ref["y_psf"]), ref["y_psf"], ref["y"]).astype(np.float64)
    catalog = Table()
    catalog["id"] = np.asarray(ref["id"])
    catalog["parent"] = np.asarray(ref["parent"])
    catalog["n_children"] = np.asarray(ref["n_children"])
    catalog["is_primary"] = np.asarray(ref["n_children"]) == 0
    catalog["x"] = x * u.pix
    catalog["y"] = y * u.pix
    ra = dec = np.full(len(x), np.nan)
    if len(x):
        ra, dec = linear.wcs.celestial.pixel_to_world_values(x, y)  # type: ignore[union-attr]
    catalog["ra"] = np.asarray(ra) * u.deg
    catalog["dec"] = np.asarray(dec) * u.deg
    catalog["detection_significance"] = np.asarray(ref["peak_significance"])
    catalog["reference_flags"] = np.asarray(ref["flags"], dtype=np.int64)
    mags: dict[str, dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]] = {}
    forced_by_band: dict[str, ForcedPhotometry] = {}
    for band, exposure in exposures.items():
        forced = forced_photometry(exposure, sources, x, y, config.forced)
        zero_point = float(exposure.zero_point)  # type: ignore[arg-type]
        catalog[f"{band}_psf_flux"] = forced.psf_flux * u.adu
        catalog[f"{band}_psf_flux_err"] = forced.psf_flux_err * u.adu
        psf_mag = _magnitudes(forced.psf_flux, forced.psf_flux_err, zero_point)
        catalog[f"{band}_psf_mag"] = psf_mag[0] * u.mag
        catalog[f"{band}_psf_mag_err"] = psf_mag[1] * u.mag
        radii = config.forced.aperture_radii_px
        for j, r in enumerate(radii):
            name = f"{band}_aper_flux_{r:g}".replace(".", "p")
            catalog[name] = forced.aper_flux[:, j] * u.adu
            catalog[name + "_err"] = forced.aper_flux_err[:, j] * u.adu
        j = radii.index(float(config.colour_aperture_px))
        aper_mag = _magnitudes(forced.aper_flux[:, j], forced.aper_flux_err[:, j], zero_point)
        catalog[f"{band}_flags"] = forced.flags
        mags[band] = {"psf": psf_mag, "aper": aper_mag}
        forced_by_band[band] = forced
    for blue, red in itertools.pairwise(bands):
        for kind in ("psf", "aper"):
            (m1, e1), (m2, e2) = mags[blue][kind], mags[red][kind]
            catalog[f"colour_{blue}_{red}_{kind}"] = (m1 - m2) * u.mag
            catalog[f"colour_{blue}_{red}_{kind}_err"] = np.hypot(e1, e2) * u.mag
    catalog.meta["BANDS"] = ",".join(bands)
    for band, exposure in exposures.items():
        catalog.meta[f"ZP_{band}"] = exposure.zero_point
        catalog.meta[f"ESCALE_{band}"] = forced_by_band[band].error_scale_psf
    log.info("measured %d sources in bands %s", len(catalog), ",".join(bands))
    return MultibandCatalog(catalog, bands, detection, sources, config)


def _magnitudes(
    flux: NDArray[np.float64], error: NDArray[np.float64], zero_point: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    positive = np.isfinite(flux) & (flux > 0)
    safe = np.where(positive, flux, 1.0)
    mag = np.where(positive, zero_point - 2.5 * np.log10(safe), np.nan)
    return mag, np.where(positive, _MAG_PER_LN * error / safe, np.nan)
