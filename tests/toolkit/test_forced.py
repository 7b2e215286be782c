"""Forced photometry: fixed-position fluxes, shared footprints and sky-object error scales."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stacklab.toolkit._stamps import fft_shift
from stacklab.toolkit.deblend import deblend_sources
from stacklab.toolkit.detection import detect_sources
from stacklab.toolkit.exposure import Exposure
from stacklab.toolkit.forced import ForcedConfig, forced_photometry
from stacklab.toolkit.psf_match import TargetPsf

PSF = TargetPsf(4.0)
SIZE = 256
# Stars on a grid, away from each other and the edges: (x, y, flux in ADU).
STARS = [(40.0 + 60 * i + 0.3 * j, 40.0 + 60 * j - 0.2 * i, 2000.0 * (1 + i + j)) for i in range(3)
         for j in range(3)]  # fmt: skip


def _scene(noise: np.ndarray) -> Exposure:
    image = noise.copy()
    stamp = PSF.compute_image(0.0, 0.0)
    half = stamp.shape[0] // 2
    for x, y, flux in STARS:
        ix, iy = round(x), round(y)
        # Sub-pixel offsets are drawn by the same Fourier shift as the fit uses.
        pad = 4
        shifted = fft_shift(np.pad(stamp, pad), x - ix, y - iy)[pad:-pad, pad:-pad]
        image[iy - half : iy + half + 1, ix - half : ix + half + 1] += flux * shifted
    return Exposure(image, variance=np.ones((SIZE, SIZE)), psf=PSF)


def _positions(sources):
    """The true position of the star nearest each source's peak."""
    stars = np.array([(sx, sy) for sx, sy, _ in STARS])
    peaks = np.column_stack([sources.sources["peak_x"], sources.sources["peak_y"]])
    nearest = np.argmin(((peaks[:, None, :] - stars[None, :, :]) ** 2).sum(axis=2), axis=1)
    return stars[nearest, 0], stars[nearest, 1]


def test_forced_psf_fluxes_are_exact_without_noise() -> None:
    exposure = _scene(np.zeros((SIZE, SIZE)))
    sources = deblend_sources(exposure, detect_sources(exposure))
    assert len(sources) == len(STARS)
    x, y = _positions(sources)
    result = forced_photometry(exposure, sources, x, y, ForcedConfig(n_sky_objects=0))
    truth = {(sx, sy): flux for sx, sy, flux in STARS}
    expected = np.array([truth[(a, b)] for a, b in zip(x, y, strict=True)])
    np.testing.assert_allclose(result.psf_flux, expected, rtol=1e-6)
    assert np.isnan(result.error_scale_psf)
    # With unit variance, the PSF-flux error is 1 / sqrt(sum P^2).
    p2 = float(np.sum(PSF.compute_image(0.0, 0.0) ** 2))
    np.testing.assert_allclose(result.psf_flux_err, 1 / np.sqrt(p2), rtol=0.02)


@pytest.mark.parametrize("smooth", [0.0, 1.5])
def test_sky_objects_measure_the_real_noise(smooth) -> None:
    rng = np.random.default_rng(4)
    noise = rng.normal(0.0, 1.0, (SIZE, SIZE))
    if smooth:
        # Correlated noise of unit per-pixel variance, as after PSF matching.
        noise = ndimage.gaussian_filter(noise, smooth)
        noise /= noise.std()
    # Sources from the noiseless scene, measured on the noisy one (forced).
    sources = deblend_sources(_scene(np.zeros((SIZE, SIZE))), detect_sources(_scene(0 * noise)))
    x, y = _positions(sources)
    exposure = _scene(noise)
    raw = forced_photometry(exposure, sources, x, y, ForcedConfig(rescale_errors=False))
    fixed = forced_photometry(exposure, sources, x, y)
    if smooth:
        # Sums over correlated pixels scatter much more than the per-pixel variance says.
        assert raw.error_scale_psf > 2.0
    else:
        # ~250 overlapping sky objects on this small image: a 7% scatter.
        assert 0.8 < raw.error_scale_psf < 1.2
    assert raw.n_sky_objects >= 100
    np.testing.assert_allclose(fixed.psf_flux_err, raw.psf_flux_err * raw.error_scale_psf)
    np.testing.assert_allclose(fixed.psf_flux, raw.psf_flux)


def test_bad_input() -> None:
    exposure = _scene(np.zeros((SIZE, SIZE)))
    sources = deblend_sources(exposure, detect_sources(exposure))
    x, y = _positions(sources)
    with pytest.raises(ValueError, match="one position per source"):
        forced_photometry(exposure, sources, x[:-1], y)
    with pytest.raises(ValueError, match="no PSF model"):
        forced_photometry(exposure.replace(psf=None), sources, x, y)
    with pytest.raises(ValueError, match="n_sky_objects"):
        ForcedConfig(n_sky_objects=-1)
