"""Deblending against truth: children's fluxes of blended stars, and the templates."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from stacklab.toolkit import Exposure, PsfModel, deblend_sources, detect_sources, measure_sources
from stacklab.toolkit._deblend_kernels import _monotonic_inplace, _template_pixels, _window_start
from stacklab.toolkit.deblend import DeblendConfig


def _pair(
    seed: int, *, flux_a: float, flux_b: float, offset: tuple[float, float], fwhm: float = 4.0
) -> tuple[Exposure, np.ndarray]:
    """Two Moffat stars, neither centred on a pixel, with sky and photon noise.

    Returns the exposure and the stars' 0-based positions ``[[x_a, y_a], [x_b, y_b]]``.
    """
    size = 80
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm)
    image = galsim.ImageD(size, size, scale=1.0)
    a = np.array([39.4, 40.6])  # 0-based; galsim's pixel centres are 1-based
    b = a + np.asarray(offset)
    for flux, (x, y) in ((flux_a, a), (flux_b, b)):
        psf.withFlux(flux).drawImage(image, center=(x + 1.0, y + 1.0), add_to_image=True)
    variance = 25.0 + image.array  # sky and the stars' photon noise (gain 1)
    rng = np.random.default_rng(seed)
    pixels = image.array + rng.normal(0.0, 1.0, image.array.shape) * np.sqrt(variance)
    stamp = psf.drawImage(nx=31, ny=31, scale=1.0).array
    exposure = Exposure(pixels, variance=variance, psf=PsfModel(stamp[None] / stamp.sum()))
    return exposure, np.array([a, b])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blended_pair_children_get_their_true_fluxes(seed: int) -> None:
    # 2e4 and 5e3 ADU stars 1.6 FWHM apart, centred off the pixel grid. Templates
    # centred on the peaks' pixels (the fainter peak found ~2 px off by the symmetry
    # search) left the faint child 34-45% of its PSF flux and the bright one +6%.
    exposure, truth = _pair(seed, flux_a=2e4, flux_b=5e3, offset=(5.3, -3.6))
    blend = deblend_sources(exposure, detect_sources(exposure))
    children = blend.sources["parent"] > 0
    assert children.sum() == 2
    # Flux conservation: the children share the parent's flux exactly.
    parent = blend.sources[blend.sources["n_children"] > 0]
    assert np.sum(blend.sources["flux_footprint"][children]) == pytest.approx(
        parent["flux_footprint"][0], rel=1e-5
    )
    catalog = measure_sources(exposure, blend).catalog
    kids = catalog[catalog["parent"] > 0]
    for (x, y), flux in zip(truth, (2e4, 5e3), strict=True):
        k = int(np.argmin(np.hypot(kids["x"] - x, kids["y"] - y)))
        assert np.hypot(kids["x"][k] - x, kids["y"][k] - y) < 0.5
        # The faint child still comes out 5-8% low for these seeds (its template keeps
        # some of the bright star's slope, so the fit scales it down).
        assert kids["flux_psf"][k] == pytest.approx(flux, rel=0.03 if flux > 1e4 else 0.1)


@pytest.mark.parametrize(("cx", "cy"), [(20.0, 20.0), (20.5, 20.0), (20.5, 20.5), (3.5, 36.5)])
def test_template_of_a_symmetric_source_is_the_source_on_the_half_pixel_grid(
    cx: float, cy: float
) -> None:
    # A centre on a pixel edge mirrors pixels onto pixels: nothing of the source is cut.
    yy, xx = np.mgrid[0:40, 0:40]
    image = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
    cx2, cy2 = int(2 * cx), int(2 * cy)
    flat, values = _template_pixels(image, cx2, cy2, 10)
    # The window is symmetric about the centre: it ends at 2c - start.
    y0, x0 = _window_start(cy2, 10, 40), _window_start(cx2, 10, 40)
    rows, cols = np.arange(y0, cy2 - y0 + 1), np.arange(x0, cx2 - x0 + 1)
    np.testing.assert_array_equal(flat, (rows[:, None] * 40 + cols[None, :]).ravel())
    np.testing.assert_allclose(values, image.ravel()[flat], rtol=0, atol=1e-15)


def test_recentre_iterations_is_validated() -> None:
    with pytest.raises(ValueError, match="recentre_iterations"):
        DeblendConfig(recentre_iterations=-1)


@pytest.mark.parametrize(("ny", "nx"), [(25, 24), (24, 25), (9, 14), (24, 24), (25, 25)])
def test_monotonic_templates_stay_point_symmetric(ny: int, nx: int) -> None:
    # Any point-symmetric input, centred on a pixel or a pixel edge per axis: the
    # monotonic clip must keep it symmetric (np.rint's ties to even did not, for
    # centres on a pixel in one axis and on an edge in the other).
    rng = np.random.default_rng(ny * 100 + nx)
    data = rng.random((ny, nx))
    data = np.minimum(data, data[::-1, ::-1])
    clipped = data.copy()
    _monotonic_inplace(clipped)
    np.testing.assert_array_equal(clipped, clipped[::-1, ::-1])
    assert np.all(clipped <= data)


def test_an_infinite_pixel_in_a_blend_leaves_the_childrens_weights_finite() -> None:
    yy, xx = np.mgrid[0:48, 0:48]
    image = 1000.0 * (np.exp(-((xx - 20) ** 2 + (yy - 24) ** 2) / 8.0)
                      + 0.6 * np.exp(-((xx - 27) ** 2 + (yy - 24) ** 2) / 8.0))  # fmt: skip
    exposure = Exposure(image, variance=np.ones_like(image))
    detections = detect_sources(exposure)
    image = image.copy()
    image[30, 23] = np.inf  # inside the blend's footprint, not at a peak
    exposure = exposure.replace(image=image)
    blends = deblend_sources(exposure, detections)
    assert int(blends.sources["n_children"].max()) == 2
    for heavy in blends.heavy_footprints:
        assert np.all(np.isfinite(heavy.weights))
