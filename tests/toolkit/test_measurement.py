"""Measurement on small hand-made scenes with truth."""

from __future__ import annotations

import galsim
import numpy as np

from stacklab.toolkit import Exposure, deblend_sources, detect_sources, measure_sources

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
