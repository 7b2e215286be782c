"""Measurement on small hand-made scenes: Kron radius units, PSFs defined only on the data."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from stacklab.toolkit import Exposure, SourceFlag, deblend_sources, detect_sources, measure_sources
from stacklab.toolkit.coadd import coadd
from stacklab.toolkit.coadd_psf import CoaddPsf
from stacklab.toolkit.errors import ToolkitError
from stacklab.toolkit.measurement import MeasurementConfig
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import patch_covering

PSF_SIGMA_PX = 2.0


class GaussianPsf:
    """A round Gaussian PSF of ``sigma`` px, the same everywhere (pixel-centre sampled)."""

    def __init__(self, sigma: float = PSF_SIGMA_PX, size: int = 25) -> None:
        self.sigma, self.size = sigma, size

    def compute_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        n = self.size if size is None else int(size)
        stamp = galsim.Gaussian(sigma=self.sigma).drawImage(
            nx=n, ny=n, scale=1.0, method="no_pixel"
        )
        return stamp.array / stamp.array.sum()


def _gaussian(shape, x, y, sigma, flux):
    """A circular Gaussian of total ``flux`` at ``(x, y)`` sampled at pixel centres."""
    yy, xx = np.indices(shape, dtype=np.float64)
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    return flux * np.exp(-0.5 * r2 / sigma**2) / (2.0 * np.pi * sigma**2)


def _measure(exposure, config=None):
    deblended = deblend_sources(exposure, detect_sources(exposure))
    return measure_sources(exposure, deblended, config).catalog


def test_kron_radius_is_in_units_of_the_adaptive_semi_axes() -> None:
    """A Gaussian's Kron radius is sqrt(pi/2) semi-axes whatever its size in pixels.

    Truth: for a Gaussian of sigma ``s`` the adaptive ellipse has ``a = b = s`` and the
    light-weighted mean of ``r / s`` is ``sqrt(pi / 2)``; the Kron ellipse of
    ``2.5`` such radii encloses ``1 - exp(-(2.5 sqrt(pi/2))^2 / 2)`` of the flux.
    """
    rng = np.random.default_rng(4)
    shape = (121, 241)
    sigmas = (2.0, 4.0)
    flux = 2e5
    image = sum(
        _gaussian(shape, 60.3 + 120 * i, 59.6, s, flux) for i, s in enumerate(sigmas)
    ) + rng.normal(0.0, 1.0, shape)
    exposure = Exposure(image, variance=np.ones(shape), psf=GaussianPsf())
    cat = _measure(exposure)
    assert len(cat) == 2
    cat.sort("x")
    assert cat["kron_radius"].unit is None
    expected = np.sqrt(np.pi / 2.0)
    # Pixel-centre sampling of a Gaussian of sigma >= 2 px changes the sums by ~0.1%;
    # the noise (S/N ~ 10^3 in the Kron ellipse) by less. In pixels it would be 2.5 and 5.
    np.testing.assert_allclose(cat["kron_radius"], expected, rtol=0.005)
    # The radius in pixels scales with the source, the Kron radius does not.
    semi_axis = np.sqrt(0.5 * np.asarray(cat["ixx"] + cat["iyy"]))
    np.testing.assert_allclose(semi_axis, sigmas, rtol=0.005)
    enclosed = 1.0 - np.exp(-0.5 * (2.5 * expected) ** 2)
    # sep sums whole pixels inside the ellipse (subpix=1): the boundary ring of a
    # 6-13 px aperture moves the enclosed flux by ~0.1%.
    np.testing.assert_allclose(np.asarray(cat["flux_kron"]) / flux, enclosed, rtol=0.003)


def _coadd_like(shape=(160, 160), radius=70.0, seed=8):
    """A coadd-like exposure whose data is a disk: corners NO_DATA, a real CoaddPsf.

    Returns the exposure and the true positions of its stars (all in the disk).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.indices(shape)
    covered = np.hypot(xx - (nx - 1) / 2, yy - (ny - 1) / 2) <= radius
    # The last star is near the edge of the data, between grid points of which some
    # (e.g. (139, 139)) have no data.
    stars = [(80.2, 79.7), (40.6, 95.1), (118.3, 62.4), (75.5, 128.8), (123.0, 124.0)]
    image = sum(_gaussian(shape, x, y, PSF_SIGMA_PX, 5e4) for x, y in stars)
    image = image + rng.normal(0.0, 1.0, shape)
    no_data = Exposure(np.zeros(shape)).mask_planes.bitmask("NO_DATA")
    # As coadd() leaves pixels without input: zero image, infinite variance, NO_DATA.
    psf = CoaddPsf([GaussianPsf()], [1.0], covered.astype(np.int64))
    exposure = Exposure(
        np.where(covered, image, 0.0),
        variance=np.where(covered, 1.0, np.inf),
        mask=np.where(covered, 0, no_data),
        psf=psf,
    )
    return exposure, stars


def test_psf_known_only_where_there_is_data() -> None:
    """A CoaddPsf raises at NO_DATA corners; measurement must sample it on the data."""
    exposure, stars = _coadd_like()
    with pytest.raises(ValueError, match="NO_DATA"):
        exposure.psf.compute_image(0.0, 0.0)
    cat = _measure(exposure)
    assert len(cat) == len(stars)
    cat.sort("y")
    truth = sorted(stars, key=lambda s: s[1])
    np.testing.assert_allclose(cat["x_psf"], [s[0] for s in truth], atol=0.05)
    np.testing.assert_allclose(cat["y_psf"], [s[1] for s in truth], atol=0.05)
    # The PSF fit of a star drawn with the PSF recovers its flux (S/N ~ 4000).
    np.testing.assert_allclose(cat["flux_psf"], 5e4, rtol=0.002)
    # The PSF's moments are known at every source: the model is sigma = 2 px, round.
    np.testing.assert_allclose(cat["psf_ixx"], PSF_SIGMA_PX**2, rtol=0.005)
    np.testing.assert_allclose(cat["psf_iyy"], PSF_SIGMA_PX**2, rtol=0.005)
    np.testing.assert_allclose(cat["psf_ixy"], 0.0, atol=1e-3)
    assert not np.any(np.asarray(cat["flags"]) & int(SourceFlag.PSF_FLUX_FAILED))


def test_psf_that_cannot_be_evaluated_anywhere_is_a_clear_error() -> None:
    exposure, _ = _coadd_like()

    class NowherePsf:
        def compute_image(self, x: float, y: float) -> np.ndarray:
            msg = f"no input contributed at ({x:.1f}, {y:.1f})"
            raise ValueError(msg)

    deblended = deblend_sources(exposure, detect_sources(exposure))
    with pytest.raises(ToolkitError, match="could not be evaluated"):
        measure_sources(exposure, deblended, MeasurementConfig(), psf=NowherePsf())


def test_psf_returning_nan_off_the_data_is_sampled_on_the_data() -> None:
    """A PSF that returns NaN stamps (rather than raising) off the data is handled alike.

    The star near the edge of the data got NaN PSF moments from the grid's NaN corners.
    """
    exposure, stars = _coadd_like()
    coadd_psf = exposure.psf

    class NanOffDataPsf:
        def compute_image(self, x: float, y: float) -> np.ndarray:
            try:
                return coadd_psf.compute_image(x, y)
            except ValueError:
                return np.full((25, 25), np.nan)

    deblended = deblend_sources(exposure, detect_sources(exposure))
    cat = measure_sources(exposure, deblended, psf=NanOffDataPsf()).catalog
    assert len(cat) == len(stars)
    assert np.all(np.isfinite(cat["flux_psf"])) and np.all(np.isfinite(cat["psf_ixx"]))
    np.testing.assert_allclose(cat["psf_ixx"], PSF_SIGMA_PX**2, rtol=0.005)


def test_source_where_the_psf_is_undefined_is_flagged_not_fatal() -> None:
    """A PSF defined on part of the data only: the other sources are flagged, not fatal."""
    exposure, stars = _coadd_like()
    coadd_psf = exposure.psf

    class LeftPsf:
        def compute_image(self, x: float, y: float) -> np.ndarray:
            if x >= 100.0:
                msg = f"no PSF at x = {x:.1f} >= 100"
                raise ValueError(msg)
            return coadd_psf.compute_image(x, y)

    deblended = deblend_sources(exposure, detect_sources(exposure))
    cat = measure_sources(exposure, deblended, psf=LeftPsf()).catalog
    assert len(cat) == len(stars)
    right = np.asarray(cat["x"]) >= 100.0
    assert right.sum() == 2
    failed = SourceFlag.PSF_FLUX_FAILED | SourceFlag.MODEL_FLUX_FAILED
    flags = np.asarray(cat["flags"])
    assert np.all(flags[right] & int(failed) == int(failed))
    assert np.all(np.isnan(cat["flux_psf"][right])) and np.all(np.isnan(cat["psf_ixx"][right]))
    assert not np.any(flags[~right] & int(failed))
    np.testing.assert_allclose(cat["flux_psf"][~right], 5e4, rtol=0.002)


def test_real_coadd_with_no_data_corners_is_measured() -> None:
    """A coadd of dithered visits on the patch covering them: its corners have no input."""
    config = SimulationConfig(
        size=200, bands=("r",), visits_per_band=3, seed=7, star_density_arcmin2=60.0,
        galaxy_density_arcmin2=10.0, sip_distortion_px=0.0, dither_arcsec=10.0,
    )  # fmt: skip
    sky = make_sky(config)
    sims = [simulate_visit(sky, config, visit=v) for v in range(3)]
    exposures = [s.exposure.replace(image=s.exposure.image - s.sky) for s in sims]
    exposure = coadd(exposures, patch_covering(exposures)).exposure
    no_data = exposure.plane("NO_DATA")
    assert no_data[0, 0] and no_data[0, -1] and no_data[-1, 0] and no_data[-1, -1]
    with pytest.raises(ValueError, match="NO_DATA"):
        exposure.psf.compute_image(0.0, 0.0)
    cat = _measure(exposure)
    assert len(cat) > 20
    # Every source lies on the data, where the CoaddPsf is defined.
    assert np.all(np.isfinite(cat["flux_psf"])) and np.all(np.isfinite(cat["psf_ixx"]))
    assert not np.any(np.asarray(cat["flags"]) & int(SourceFlag.PSF_FLUX_FAILED))


def test_psf_too_small_for_its_moments_is_not_an_error() -> None:
    """A PSF defined on the data but too small for HSM: NaN PSF moments, fluxes measured.

    Unknown moments (as on undersampled real images) are not an undefined PSF.
    """
    exposure, stars = _coadd_like()
    covered = exposure.psf.contributors
    tiny = CoaddPsf([GaussianPsf(sigma=0.2)], [1.0], covered)
    deblended = deblend_sources(exposure, detect_sources(exposure))
    cat = measure_sources(exposure, deblended, psf=tiny).catalog
    assert len(cat) == len(stars)
    assert np.all(np.isnan(cat["psf_ixx"]))
    assert np.all(np.isfinite(cat["flux_psf"]))
