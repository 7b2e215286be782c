"""Background: sep/SExtractor agreement on the real NTT image, and truth on simulations."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from stacklab.toolkit import (
    BackgroundConfig,
    Exposure,
    estimate_background,
    subtract_background,
)
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit


@pytest.fixture(scope="module")
def ntt(real_data: Path) -> dict[str, np.ndarray]:
    folder = real_data / "sep"
    if not (folder / "image.fits").is_file():
        pytest.skip(f"{folder} lacks sep's NTT test image")
    catalog = np.loadtxt(folder / "image.cat", comments="#")
    planes = {}
    for name in ("image", "back", "rms"):
        # The 1992 ESO header has non-standard cards astropy warns about.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            with fits.open(folder / f"{name}.fits", memmap=False) as hdul:
                planes[name] = np.asarray(hdul[0].data, dtype=np.float32)
    return {**planes, "catalog": catalog}


def test_single_pass_reproduces_sextractor_background(ntt: dict[str, np.ndarray]) -> None:
    exposure = Exposure(ntt["image"], variance=np.ones_like(ntt["image"]))
    bkg = estimate_background(exposure, BackgroundConfig(mesh_size_px=64, n_iterations=0))
    np.testing.assert_allclose(bkg.background, ntt["back"], rtol=1e-5)
    np.testing.assert_allclose(bkg.rms, ntt["rms"], rtol=1e-4)


def test_sextractor_catalog_from_our_background(ntt: dict[str, np.ndarray]) -> None:
    # sep's own test_vs_sextractor, with our background layer underneath.
    exposure = Exposure(ntt["image"], variance=np.ones_like(ntt["image"]))
    bkg = estimate_background(exposure, BackgroundConfig(mesh_size_px=64, n_iterations=0))
    data = subtract_background(exposure, bkg).image
    objects = sep.extract(data, 1.5 * bkg.global_rms, deblend_cont=1.0)
    objects = np.sort(objects, order=["y"])
    ref = ntt["catalog"]
    ref = ref[np.argsort(ref[:, 2])]
    assert len(objects) == len(ref) == 65
    np.testing.assert_allclose(objects["x"], ref[:, 1] - 1, atol=1e-3)
    np.testing.assert_allclose(objects["y"], ref[:, 2] - 1, atol=1e-3)
    flux, fluxerr, flags = sep.sum_circle(data, objects["x"], objects["y"], 5.0, err=bkg.global_rms)
    np.testing.assert_allclose(flux, ref[:, 12], rtol=1e-3)
    np.testing.assert_allclose(fluxerr, ref[:, 13], rtol=1e-3)
    assert int(np.sum(flags != 0)) == 4


@pytest.fixture(scope="module")
def sim():
    config = SimulationConfig(size=512, seed=21, bands=("r",), star_density_arcmin2=20.0)
    return simulate_visit(make_sky(config), config, visit=0)


def test_background_matches_true_sky(sim) -> None:
    bkg = estimate_background(sim.exposure, BackgroundConfig(mesh_size_px=64))
    sigma = float(np.sqrt(np.median(sim.exposure.variance)))
    residual = bkg.background - sim.sky
    # The masked iterations keep the bias well below the per-pixel noise.
    assert abs(float(np.median(residual))) < 0.03 * sigma
    assert float(np.percentile(np.abs(residual), 95)) < 0.2 * sigma
    assert bkg.source_mask.any()


def test_masking_is_unbiased_on_pure_noise() -> None:
    rng = np.random.default_rng(3)
    image = 100.0 + rng.normal(0.0, 10.0, (512, 512))
    bkg = estimate_background(Exposure(image, variance=np.full(image.shape, 100.0)))
    assert abs(float(np.median(bkg.background)) - 100.0) < 0.1


def test_subtract_returns_new_exposure(sim) -> None:
    bkg = estimate_background(sim.exposure)
    sub = subtract_background(sim.exposure, bkg)
    assert sub is not sim.exposure
    np.testing.assert_allclose(sub.image + bkg.background, sim.exposure.image, rtol=1e-6)
    assert sub.meta["BGMEAN"] == pytest.approx(bkg.global_background, abs=1e-3)


def test_small_image_warns_and_falls_back() -> None:
    image = np.random.default_rng(1).normal(5.0, 1.0, (40, 50))
    with pytest.warns(UserWarning, match="smaller than the background mesh"):
        bkg = estimate_background(Exposure(image, variance=np.ones(image.shape)))
    assert bkg.mesh_size_px == 40
    assert abs(float(np.mean(bkg.background)) - 5.0) < 0.3


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no usable pixel"):
        estimate_background(Exposure(np.full((64, 64), np.nan), variance=np.ones((64, 64))))
    with pytest.raises(ValueError, match="mesh_size_px"):
        BackgroundConfig(mesh_size_px=2)
    with pytest.raises(ValueError, match="mask_threshold_sigma"):
        BackgroundConfig(mask_threshold_sigma=-1.0)
    with pytest.raises(TypeError, match="Exposure"):
        estimate_background(np.zeros((10, 10)))  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "mesh"), [((300, 470), 64), ((64, 300), 64), ((333, 40), 40)])
def test_mesh_interpolation_reproduces_sep_maps(shape: tuple[int, int], mesh: int) -> None:
    # The result keeps one value per box; its maps are sep's bicubic spline of them,
    # including one-row and one-column meshes and a partial last box.
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = (100 + 0.05 * xx + 3 * np.sin(yy / 40.0) + rng.normal(0, 5, shape)).astype(np.float32)
    config = BackgroundConfig(mesh_size_px=mesh, n_iterations=0)
    bkg = estimate_background(Exposure(image, variance=np.full(shape, 25.0)), config)
    nodes = (-(-shape[0] // mesh), -(-shape[1] // mesh))
    assert bkg.mesh_background.shape == nodes
    filter_size = 3 if min(nodes) >= 3 else 1  # as estimate_background shrinks it
    reference = sep.Background(image, bw=mesh, bh=mesh, fw=filter_size, fh=filter_size)
    np.testing.assert_allclose(bkg.background, reference.back(), rtol=2e-6)
    np.testing.assert_allclose(bkg.rms, reference.rms(), rtol=2e-6)
    np.testing.assert_array_equal(bkg.background_rows(7, 19), bkg.background[7:19])
    np.testing.assert_array_equal(bkg.rms_rows(0, 0), np.zeros((0, shape[1]), np.float32))
    with pytest.raises(ValueError, match="outside the background map"):
        bkg.background_rows(0, shape[0] + 1)


def test_result_is_small_and_picklable(sim) -> None:
    bkg = estimate_background(sim.exposure)
    # No full-resolution float map is held: the mesh and a bit-packed source mask.
    held = bkg.mesh_background.nbytes + bkg.mesh_rms.nbytes + bkg.source_mask_bits.nbytes
    assert held < sim.exposure.image.nbytes / 20
    mask = bkg.source_mask
    assert mask.shape == sim.exposure.shape and mask.dtype == bool
    assert np.array_equal(np.packbits(mask, axis=1), bkg.source_mask_bits)
    copy = pickle.loads(pickle.dumps(bkg))
    np.testing.assert_array_equal(copy.background, bkg.background)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_source_mask_is_the_grown_4_connected_groups_of_the_3x3_test(seed: int) -> None:
    from scipy import ndimage

    from stacklab.toolkit.background import _mask_sources

    rng = np.random.default_rng(seed)
    ny, nx = 90, 130
    sky = rng.normal(100.0, 0.5, (ny, nx)).astype(np.float32)
    rms = np.full((ny, nx), 4.0, dtype=np.float32)
    data = (sky + rng.normal(0.0, 4.0, (ny, nx))).astype(np.float32)
    data[rng.random((ny, nx)) < 0.02] += 200.0  # single hot pixels and small groups
    ignore = rng.random((ny, nx)) < 0.01
    factor, min_pixels, grow = np.float32(9.0), 20, 2
    widths = np.array([int(np.floor(np.sqrt(grow * grow - dy * dy))) for dy in range(grow + 1)])
    got = np.zeros((ny, nx), dtype=bool)
    _mask_sources(data, sky, rms, ignore, factor, min_pixels, widths, got)
    # Oracle: the 3x3 sum in the kernel's float32 order (centre, up, down; then
    # centre, left, right; the pixel beyond an edge is the edge pixel), ndimage's
    # 4-connected labels, the groups' sizes, and a dilation by the disk's rows.
    residual = np.pad(data - sky, 1, mode="edge")
    column = (residual[1:-1] + residual[:-2]) + residual[2:]
    total = (column[:, 1:-1] + column[:, :-2]) + column[:, 2:]
    above = (total > rms * factor) & ~ignore
    labels, n = ndimage.label(above)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    kept = (sizes >= min_pixels)[labels] & above
    disk = np.zeros((2 * grow + 1, 2 * grow + 1), dtype=bool)
    for dy in range(-grow, grow + 1):
        w = widths[abs(dy)]
        disk[dy + grow, grow - w : grow + w + 1] = True
    want = ndimage.binary_dilation(kept, structure=disk)
    assert np.array_equal(got, want)
    # Groups touching only at a corner decide the mask here: 8-connected labels differ.
    labels8, n8 = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    sizes8 = np.bincount(labels8.ravel(), minlength=n8 + 1)
    kept8 = (sizes8 >= min_pixels)[labels8] & above
    assert not np.array_equal(ndimage.binary_dilation(kept8, structure=disk), want)
