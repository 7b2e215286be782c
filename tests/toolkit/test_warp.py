"""Warping: identity, flux conservation, variance and covariance, masks, NO_DATA, the PSF."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from stacklab.toolkit.exposure import Exposure
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import patch_covering
from stacklab.toolkit.warp import WarpConfig, warp_exposure


@pytest.fixture(scope="module")
def visits():
    config = SimulationConfig(
        size=384, bands=("r",), visits_per_band=2, seed=21, star_density_arcmin2=40.0,
        galaxy_density_arcmin2=2.0, rotation_max_deg=30.0,
    )  # fmt: skip
    sky = make_sky(config)
    return [simulate_visit(sky, config, visit=v) for v in range(2)]


@pytest.fixture(scope="module")
def patch(visits):
    return patch_covering([v.exposure for v in visits])


def _noiseless(sim):
    exp = sim.exposure
    return exp.replace(image=sim.noiseless - sim.sky, mask=np.zeros(exp.shape, dtype=np.int32))


def test_identity_warp_returns_the_input(visits) -> None:
    exp = visits[0].exposure
    warp = warp_exposure(exp, exp.wcs, exp.shape)
    no_data = warp.exposure.plane("NO_DATA")
    bad = (exp.mask & exp.mask_planes.bitmask("BAD", "SAT")) != 0
    # Only pixels masked in the input lose their data (their kernel is just themselves).
    assert np.array_equal(no_data, bad)
    assert np.allclose(warp.exposure.image[~bad], exp.image[~bad], rtol=1e-5, atol=1e-3)
    assert np.allclose(warp.exposure.variance[~bad], exp.variance[~bad], rtol=1e-5)
    assert np.array_equal(warp.exposure.mask & exp.mask, exp.mask)
    assert warp.covariance_factor == pytest.approx(1.0, abs=1e-4)


def test_star_flux_is_conserved_to_a_thousandth(visits, patch) -> None:
    sim = visits[1]
    source = _noiseless(sim)
    warped = warp_exposure(source, patch.wcs, patch.shape).exposure
    stars = sim.truth[sim.truth["is_star"] & sim.truth["in_image"] & (sim.truth["mag"] < 21.0)]
    ra, dec = sim.exposure.wcs.all_pix2world(stars["x"], stars["y"], 0)
    xo, yo = patch.wcs.all_world2pix(ra, dec, 0)
    ratios = []
    r = 14
    for row, x, y in zip(stars, xo, yo, strict=True):
        xi, yi = round(float(row["x"])), round(float(row["y"]))
        xw, yw = round(float(x)), round(float(y))
        if not (r <= xi < 384 - r and r <= yi < 384 - r):
            continue
        before = source.image[yi - r : yi + r + 1, xi - r : xi + r + 1].sum()
        after = warped.image[yw - r : yw + r + 1, xw - r : xw + r + 1].sum()
        ratios.append(after / before)
    assert len(ratios) >= 5
    assert np.median(np.abs(np.array(ratios) - 1)) < 1e-3


def test_noise_variance_and_covariance_factor(visits, patch) -> None:
    exp = visits[0].exposure
    rng = np.random.default_rng(3)
    sigma = 7.0
    noise = exp.replace(
        image=rng.normal(0, sigma, exp.shape).astype(np.float32),
        variance=np.full(exp.shape, sigma**2, dtype=np.float32),
        mask=np.zeros(exp.shape, dtype=np.int32),
    )
    warp = warp_exposure(noise, patch.wcs, patch.shape)
    good = ~warp.exposure.plane("NO_DATA") & ~warp.exposure.plane("SENSOR_EDGE")
    image, variance = warp.exposure.image, warp.exposure.variance
    # Per pixel: the propagated plane is the variance of the warped noise.
    assert np.var(image[good]) == pytest.approx(np.mean(variance[good]), rel=0.03)
    assert np.mean(variance[good]) < sigma**2  # interpolation smooths single pixels
    # Sums of 8x8 blocks: the plane's sum times the covariance factor.
    ny, nx = (s // 8 * 8 for s in image.shape)
    full_blocks = good[:ny, :nx].reshape(ny // 8, 8, nx // 8, 8).all(axis=(1, 3))
    sums = image[:ny, :nx].reshape(ny // 8, 8, nx // 8, 8).sum(axis=(1, 3))[full_blocks]
    plane = variance[:ny, :nx].reshape(ny // 8, 8, nx // 8, 8).sum(axis=(1, 3))[full_blocks]
    assert warp.covariance_factor > 1.1
    assert np.var(sums) == pytest.approx(np.mean(plane) * warp.covariance_factor, rel=0.08)


def test_bad_pixels_are_left_out_and_masks_grow(visits, patch) -> None:
    exp = visits[0].exposure.copy()
    exp.mask[:] = 0
    exp.image[200, 150] = 1e6
    exp.set_plane("BAD", np.pad(np.ones((1, 1), dtype=bool), ((200, 183), (150, 233))))
    warp = warp_exposure(exp, patch.wcs, patch.shape).exposure
    ra, dec = exp.wcs.all_pix2world(150, 200, 0)
    x, y = (round(float(v)) for v in patch.wcs.all_world2pix(ra, dec, 0))
    near = warp.plane("BAD")[y - 4 : y + 5, x - 4 : x + 5]
    assert 1 <= near.sum() <= 16
    assert warp.plane("BAD").sum() == near.sum()
    assert np.abs(warp.image[y - 4 : y + 5, x - 4 : x + 5]).max() < 1e4  # no 1e6 leaks


def test_outside_the_input_is_no_data_not_nan(visits, patch) -> None:
    warp = warp_exposure(visits[0].exposure, patch.wcs, patch.shape)
    no_data = warp.exposure.plane("NO_DATA")
    assert no_data.any() and not no_data.all()
    assert np.all(np.isfinite(warp.exposure.image))
    assert np.all(warp.exposure.image[no_data] == 0)
    assert warp.n_good_pixels == int((~no_data).sum())


def test_flipped_axis_gives_the_same_warp(visits, patch) -> None:
    exp = visits[0].exposure
    flipped_wcs = exp.wcs.deepcopy()
    flipped_wcs.wcs.cd = exp.wcs.wcs.cd @ np.diag([-1.0, 1.0])
    flipped_wcs.wcs.crpix = [exp.shape[1] + 1 - exp.wcs.wcs.crpix[0], exp.wcs.wcs.crpix[1]]
    flipped_wcs.sip = None
    flipped_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    plain_wcs = exp.wcs.deepcopy()
    plain_wcs.sip = None
    plain_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    plain = exp.replace(wcs=plain_wcs, psf=None)
    flipped = exp.replace(
        image=exp.image[:, ::-1], variance=exp.variance[:, ::-1], mask=exp.mask[:, ::-1],
        wcs=flipped_wcs, psf=None,
    )  # fmt: skip
    a = warp_exposure(plain, patch.wcs, patch.shape).exposure
    b = warp_exposure(flipped, patch.wcs, patch.shape).exposure
    both = ~a.plane("NO_DATA") & ~b.plane("NO_DATA")
    assert np.allclose(a.image[both], b.image[both], atol=1e-2, rtol=1e-4)


def test_no_overlap_and_missing_wcs_are_refused(visits, patch) -> None:
    exp = visits[0].exposure
    far = exp.wcs.deepcopy()
    far.wcs.crval = [exp.wcs.wcs.crval[0] + 1.0, exp.wcs.wcs.crval[1]]
    far.wcs.set()
    with pytest.raises(ValueError, match="does not overlap"):
        warp_exposure(exp.replace(wcs=far), patch.wcs, patch.shape)
    with pytest.raises(ValueError, match="has no WCS"):
        warp_exposure(Exposure(np.zeros((10, 10))), patch.wcs, patch.shape)
    with pytest.raises(ValueError, match="lanczos_order"):
        WarpConfig(lanczos_order=7)


def test_warped_psf_matches_stars_on_the_warp(visits, patch) -> None:
    sim = visits[1]
    warped = warp_exposure(_noiseless(sim), patch.wcs, patch.shape).exposure
    stars = sim.truth[sim.truth["is_star"] & (sim.truth["mag"] > 18) & (sim.truth["mag"] < 21)]
    ra, dec = sim.exposure.wcs.all_pix2world(stars["x"], stars["y"], 0)
    xo, yo = patch.wcs.all_world2pix(ra, dec, 0)
    all_ra, all_dec = sim.exposure.wcs.all_pix2world(sim.truth["x"], sim.truth["y"], 0)
    ax, ay = patch.wcs.all_world2pix(all_ra, all_dec, 0)
    d_t, d_e = [], []
    half = 12
    for x, y in zip(xo, yo, strict=True):
        ix, iy = round(float(x)), round(float(y))
        if np.sum((ax - x) ** 2 + (ay - y) ** 2 < 14**2) > 1:
            continue
        cut = warped.image[iy - half : iy + half + 1, ix - half : ix + half + 1]
        if cut.shape != (2 * half + 1,) * 2 or warped.plane("NO_DATA")[iy, ix]:
            continue
        star = galsim.hsm.FindAdaptiveMom(galsim.ImageD(cut.astype(float), scale=1.0))
        # Adaptive moments are taken about the centroid: no need to shift the model.
        stamp = warped.psf.compute_image(float(x), float(y), size=2 * half + 1)
        fit = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp, scale=1.0))
        d_t.append(star.moments_sigma**2 / fit.moments_sigma**2 - 1)
        d_e.append(star.observed_shape.e1 - fit.observed_shape.e1)
    assert len(d_t) >= 5
    assert abs(np.median(d_t)) < 0.003
    assert abs(np.median(d_e)) < 0.003


def test_tabulated_kernel_is_the_normalized_lanczos_kernel() -> None:
    from stacklab.toolkit._lanczos import _TABLE_STEPS, _lanczos_taps, _table_taps

    frac = np.concatenate([[0.0, 0.5, 1 - 1e-12], np.random.default_rng(5).random(5000)])
    # The table row used is the exact kernel at a position within half a step of frac.
    nearest = np.round(frac * _TABLE_STEPS) / _TABLE_STEPS
    assert np.abs(nearest - frac).max() <= 0.5 / _TABLE_STEPS < 3.1e-5
    for order in (2, 3, 5):
        at = nearest.copy()
        at[at >= 1.0] = 0.0  # frac -> 1 is frac = 0 one tap over
        exact = _lanczos_taps(at, order)
        exact[nearest >= 1.0] = np.roll(exact[nearest >= 1.0], 1, axis=1)
        exact /= exact.sum(axis=1, keepdims=True)
        table = _table_taps(frac, order)
        assert np.abs(table - exact).max() < 3e-7
        assert np.abs(table.sum(axis=1) - 1).max() < 1e-6
    assert np.array_equal(_table_taps(np.zeros(1), 3)[0], [0, 0, 1, 0, 0, 0])


def test_a_wide_grid_holds_the_same_pixels_as_a_tight_one(visits, patch) -> None:
    # Only the box the input reaches is resampled: a grid four times wider, with the
    # patch in its middle, must hold the same pixels there and NO_DATA elsewhere.
    exp = visits[0].exposure
    ny, nx = patch.shape
    wide = patch.wcs.deepcopy()
    wide.wcs.crpix = [patch.wcs.wcs.crpix[0] + nx, patch.wcs.wcs.crpix[1] + ny]
    wide.wcs.set()
    tight = warp_exposure(exp, patch.wcs, patch.shape).exposure
    big = warp_exposure(exp, wide, (3 * ny, 3 * nx)).exposure
    middle = (slice(ny, 2 * ny), slice(nx, 2 * nx))
    assert np.allclose(big.image[middle], tight.image, rtol=1e-6, atol=1e-4)
    assert np.array_equal(big.mask[middle], tight.mask)
    outside = np.ones(big.shape, dtype=bool)
    outside[middle] = False
    assert np.all(big.plane("NO_DATA")[outside])
