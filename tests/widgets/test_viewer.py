"""Python-side tests of the image viewer: tiles, colour tables, regions, the three APIs."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import Table
from astropy.visualization import AsinhStretch, LogStretch, SqrtStretch, ZScaleInterval
from astropy.wcs import WCS
from PIL import Image

from stacklab.toolkit import Exposure
from stacklab.widgets import ImageViewer, RegionSyntaxError
from stacklab.widgets._display import N_LEVELS, colormap_lut, render_rgba, stretch_lut
from stacklab.widgets._pyramid import TilePyramid, _halve, _halve_mask
from stacklab.widgets._render import view_level


def _tan_wcs(nx: int, ny: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [nx / 2, ny / 2]
    wcs.wcs.cdelt = [-0.0002, 0.0002]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    return wcs


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(3).normal(100.0, 10.0, size=(700, 900)).astype(np.float32)


# ---- tile pyramid ------------------------------------------------------------------------
def test_level0_tiles_are_the_image_pixels(noise):
    pyramid = TilePyramid(noise, tile_size=256)
    tile = pyramid.tile(0, 3, 2)
    np.testing.assert_array_equal(tile.data, noise[512:700, 768:900])
    assert tile.data.dtype == np.dtype("<f4") and tile.mask is None


def test_coarse_levels_are_block_means_and_mask_or():
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    mask = np.zeros((6, 6), dtype=np.int32)
    mask[0, 1] = 4
    mask[5, 5] = 1
    np.testing.assert_allclose(_halve(image), image.reshape(3, 2, 3, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(_halve_mask(mask), [[4, 0, 0], [0, 0, 0], [0, 0, 1]])
    big = np.tile(image, (50, 50))
    pyramid = TilePyramid(big, np.tile(mask, (50, 50)), tile_size=64)
    np.testing.assert_allclose(pyramid.level(2), _halve(_halve(big)))
    assert pyramid.tile(1, 0, 0).mask is not None


def test_odd_shapes_and_big_endian_ints_are_served_as_native_float32():
    image = (np.arange(5 * 7).reshape(5, 7)).astype(">i2")
    pyramid = TilePyramid(image, tile_size=64)
    np.testing.assert_array_equal(pyramid.tile(0, 0, 0).data, image.astype(np.float32))
    assert pyramid.level_shape(1) == (3, 4)
    assert _halve(image.astype(np.float32))[2, 3] == pytest.approx(float(image[4, 6]))


def test_pyramid_is_lazy_and_small(noise):
    pyramid = TilePyramid(noise, tile_size=64)
    assert pyramid.cached_bytes() == 0
    pyramid.tile(pyramid.n_levels - 1, 0, 0)
    assert 0 < pyramid.cached_bytes() <= noise.nbytes / 3 + 1024


def test_tile_outside_the_pyramid_is_a_clear_error(noise):
    with pytest.raises(ValueError, match=r"tile \(tx=9, ty=0\) is outside level 0"):
        TilePyramid(noise).tile(0, 9, 0)


# ---- colour tables -------------------------------------------------------------------------
@pytest.mark.parametrize("stretch", [LogStretch(), AsinhStretch(0.05), SqrtStretch()])
def test_stretch_table_is_astropys_stretch(stretch):
    grid = np.linspace(0, 1, N_LEVELS)
    np.testing.assert_allclose(stretch_lut(stretch), stretch(grid), atol=1e-6)


def test_render_matches_astropy_normalization(noise):
    lo, hi = ZScaleInterval().get_limits(noise)
    stretch = AsinhStretch()
    rgba = render_rgba(
        noise,
        limits=(lo, hi),
        stretch_table=stretch_lut(stretch),
        colormap_table=colormap_lut("gray"),
    )
    expected = stretch(np.clip((noise - lo) / (hi - lo), 0, 1)) * 255
    # quantization to 4096 levels then 256 grey levels: at most one grey level apart
    assert np.abs(rgba[..., 0].astype(float) - expected).max() <= 1.0 + 255 * 0.0025


def test_changing_stretch_sends_tables_not_pixels(noise):
    viewer = ImageViewer(noise)
    image_state = viewer._image
    viewer.set_stretch("log")
    viewer.set_cuts((90, 130))
    viewer.set_colormap("viridis")
    assert viewer._image is image_state  # pixels (preview) untouched
    assert len(viewer._display["stretch"]) == 4 * N_LEVELS
    assert (viewer._display["lo"], viewer._display["hi"]) == (90.0, 130.0)


# ---- loading and bad input -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (np.zeros((0, 5)), ValueError, "empty"),
        (np.zeros(10), ValueError, "2-D"),
        (np.full((20, 20), np.nan), ValueError, "no finite pixels"),
        ("does/not/exist.fits", FileNotFoundError, "does not exist"),
        (np.array([["a"]]), TypeError, "real numbers"),
        ({"not": "an image"}, TypeError, "2-D array, an Exposure"),
    ],
)
def test_bad_images_raise_clear_errors(data, error, match):
    with pytest.raises(error, match=match):
        ImageViewer().load_image(data)


def test_big_endian_int16_fits_and_huge_dynamic_range(tmp_path):
    path = tmp_path / "be.fits"
    fits.PrimaryHDU((np.arange(64 * 64) % 3000).reshape(64, 64).astype(">i2")).writeto(path)
    viewer = ImageViewer(path)
    assert viewer.get_cuts() is not None and viewer._image["nx"] == 64
    wild = np.logspace(-30, 30, 100 * 100).reshape(100, 100)
    viewer.load_image(wild, image_label="wild")
    lo, hi = viewer._images["wild"].limits
    assert np.isfinite(lo) and np.isfinite(hi) and hi > lo
    assert viewer.render().shape == (600, 800, 4)


def test_exposure_mask_planes_become_overlays():
    image = np.zeros((64, 64), dtype=np.float32)
    exposure = Exposure(image, variance=np.ones_like(image))
    exposure.set_plane("SAT", np.eye(64, dtype=bool))
    viewer = ImageViewer(exposure, width=64, height=64)
    names = {p["name"] for p in viewer._masks["planes"]}
    assert "SAT" in names and "DETECTED" in names
    viewer.set_cuts((0, 1))
    viewer.set_viewport(center=(31.5, 31.5), fov=64)
    viewer.set_mask_transparency(0)
    viewer.set_mask_plane_color("SAT", "red")
    rgba = viewer.render()
    # screen row sy shows image row 63 - sy; the diagonal is flagged
    assert tuple(rgba[63, 0, :3]) == (255, 0, 0)
    assert tuple(rgba[0, 0, :3]) == (0, 0, 0)
    viewer.set_mask_plane_visible("SAT", False)
    assert tuple(viewer.render()[63, 0, :3]) == (0, 0, 0)
    with pytest.raises(KeyError, match="unknown mask plane 'NOPE'"):
        viewer.set_mask_plane_color("NOPE", "red")
    with pytest.raises(ValueError, match="transparency must be a percentage"):
        viewer.set_mask_transparency(150)


def test_tile_message_carries_raw_float32_buffers(noise):
    viewer = ImageViewer(noise)
    sent = []
    viewer.send = lambda content, buffers=None: sent.append((content, buffers))  # type: ignore[method-assign]
    viewer._handle_message(
        viewer, {"type": "tiles", "rev": viewer._image["rev"], "tiles": [[0, 1, 1], [1, 0, 0]]}, []
    )
    (first, buffers), (second, _) = sent
    data = np.frombuffer(buffers[0], dtype="<f4").reshape(first["h"], first["w"])
    np.testing.assert_array_equal(data, noise[256:512, 256:512])
    assert second["level"] == 1 and second["w"] == 256


# ---- regions -------------------------------------------------------------------------------
def test_talks_grid_of_100_boxes_draws_100_shapes():
    viewer = ImageViewer(np.zeros((12, 12), dtype=np.float32))
    strings = [
        f"box {1000 + 1000 * i} {1000 + 1000 * j} 1000 1000 0 # color=red"
        for i in range(10)
        for j in range(10)
    ]
    report = viewer.overlay_region_layer(strings, layer_id="amps", title="amplifiers")
    assert report.n_drawn == 100 and not report.unsupported
    (layer,) = viewer._layers
    assert layer["n"] == 100 and layer["styles"][0]["color"].startswith("rgba(255,0,0")
    x = np.frombuffer(layer["x"], dtype="<f4")
    assert x.min() == 999.0  # DS9 is 1-based, the viewer 0-based
    assert report.n_off_image == 100


def test_unsupported_shapes_are_reported(real_data):
    viewer = ImageViewer(np.zeros((100, 100), dtype=np.float32))
    report = viewer.overlay_region_layer(real_data / "regions/ds9_legacy/ds9.physical.reg")
    assert report.n_drawn == 0 and len(report.unsupported) > 0
    assert all("not supported" in item.reason for item in report.unsupported)
    sky_without_wcs = viewer.overlay_region_layer(real_data / "regions/ds9/ds9.fk5.reg")
    assert sky_without_wcs.n_drawn == 0
    assert sum("no WCS" in item.reason for item in sky_without_wcs.unsupported) == 17


def test_malformed_region_names_line_and_column():
    viewer = ImageViewer(np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(RegionSyntaxError, match=r"line 3, column 11"):
        viewer.overlay_region_layer("image\ncircle(1, 2, 3)\nbox(5, 5, foo, 4, 0)")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viewer.overlay_region_layer("missing.reg")


def test_region_text_is_kept_verbatim_for_safe_drawing():
    viewer = ImageViewer(np.zeros((10, 10), dtype=np.float32))
    viewer.overlay_region_layer("image\ncircle(5,5,2) # text={<img src=x onerror=alert(1)>}")
    assert viewer._layers[0]["texts"] == ["<img src=x onerror=alert(1)>"]


def test_every_real_ds9_file_goes_through_the_region_path(real_data, caplog):
    header = fits.Header.fromtextfile(real_data / "pyregion/sample_fits02.header")
    wcs = WCS(header)
    viewer = ImageViewer(NDData(np.zeros((header["NAXIS2"], header["NAXIS1"])), wcs=wcs))
    files = sorted((real_data / "regions").glob("ds9*/*.reg")) + sorted(
        (real_data / "pyregion").glob("*.reg")
    )
    assert len(files) > 50
    with caplog.at_level(logging.ERROR):
        for path in files:
            try:
                report = viewer.overlay_region_layer(path, layer_id=path.name)
            except RegionSyntaxError as error:  # reported clearly, never a crash
                assert "line" in str(error)
                continue
            assert report.n_drawn + len(report.unsupported) > 0 or "comment" in path.name


def test_pyregion_sky_and_pixel_files_agree(real_data):
    header = fits.Header.fromtextfile(real_data / "pyregion/sample_fits02.header")
    viewer = ImageViewer(NDData(np.zeros((header["NAXIS2"], header["NAXIS1"])), wcs=WCS(header)))
    viewer.overlay_region_layer(real_data / "pyregion/test02_1_img.reg", layer_id="img")
    viewer.overlay_region_layer(real_data / "pyregion/test02_1_fk5.reg", layer_id="fk5")
    img, sky = viewer._regions["img"]["data"], viewer._regions["fk5"]["data"]
    assert len(img) == len(sky) > 10
    np.testing.assert_allclose(img.x, sky.x, atol=0.03)
    np.testing.assert_allclose(img.y, sky.y, atol=0.03)


def test_layers_can_be_added_to_restyled_hidden_and_deleted():
    viewer = ImageViewer(np.zeros((100, 100), dtype=np.float32))
    viewer.overlay_region_layer("image\ncircle(10,10,3)\ncircle(20,20,3)", layer_id="a")
    viewer.add_region_data("image\nbox(50,50,10,10,0)", layer_id="a")
    assert viewer._layers[0]["n"] == 3
    assert viewer.remove_region_data("image\ncircle(10,10,3)", layer_id="a") == 1
    viewer.set_region_layer_style("a", visible=False, color="cyan", width=2)
    layer = viewer._layers[0]
    assert layer["n"] == 2 and not layer["visible"] and layer["styles"][0]["width"] == 2.0
    viewer.delete_region_layer("a")
    assert viewer.region_layers == ()
    with pytest.raises(ValueError, match="region layer 'a' not found"):
        viewer.delete_region_layer("a")


# ---- catalogs, selection, afw vocabulary, save ---------------------------------------------
def test_catalog_columns_and_selection_callback():
    viewer = ImageViewer(np.zeros((100, 100), dtype=np.float32))
    table = Table({"x": [10.0, 50.0], "y": [20.0, 60.0], "flux": [1.5, 2.5]})
    viewer.load_catalog(table, catalog_label="src", catalog_style={"color": "cyan", "size": 8})
    (layer,) = viewer._layers
    np.testing.assert_array_equal(np.frombuffer(layer["x"], "<f4"), [10, 50])
    seen = []
    viewer.on_select(seen.append)
    viewer.selection = {"catalog": "src", "rows": [1]}
    assert seen[0]["rows"] == [1] and seen[0]["table"]["flux"][0] == 2.5
    with pytest.raises(ValueError, match="Cannot use pixel coordinates without pixel columns"):
        viewer.load_catalog(Table({"ra": [1.0]}))


def test_afw_vocabulary_and_buffering():
    viewer = ImageViewer(np.random.default_rng(0).normal(size=(200, 200)))
    updates = []
    viewer.observe(lambda change: updates.append(change), names="_layers")
    with viewer.buffering():
        for i in range(20):
            viewer.dot("o", 10 * i, 100, size=4, ctype="red")
        viewer.dot("+", 5, 5)
        viewer.dot("@:4,0,1", 50, 50)
        viewer.dot("label", 60, 60)
        viewer.line([(0, 0), (10, 10), (20, 0)], ctype="blue")
    assert len(updates) == 1 and updates[0]["new"][0]["n"] == 20 + 2 + 1 + 1 + 1
    viewer.scale("asinh", "zscale")
    assert isinstance(viewer.get_stretch(), AsinhStretch)
    viewer.scale("linear", 1, 99, unit="percent")
    viewer.zoom(2, 100, 100)
    assert viewer.get_viewport()["fov"] == pytest.approx(300)
    viewer.pan(10, 20)
    viewer.set_zoom(4)
    viewer.set_pan(30, 40)
    assert viewer.get_viewport()["center"] == (30.0, 40.0)
    viewer.erase()
    assert viewer._layers == []


def test_save_and_static_png_show_the_same_view(tmp_path, noise):
    viewer = ImageViewer(noise, width=200, height=150)
    viewer.set_stretch(SqrtStretch())
    viewer.overlay_region_layer("image; circle(450,350,30) # color=red")
    path = tmp_path / "view.png"
    viewer.save(path)
    saved = np.asarray(Image.open(path))
    np.testing.assert_array_equal(saved, viewer.render()[..., :3])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        viewer.save(path)
    data, _ = viewer._repr_mimebundle_()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))))
    np.testing.assert_array_equal(png, saved)
    assert "application/vnd.jupyter.widget-view+json" in data
    assert (saved[..., 0] == 255).any()  # the red circle is drawn


def test_view_level_follows_zoom():
    assert view_level(2.0, 6) == 0 and view_level(0.5, 6) == 1 and view_level(1 / 40, 6) == 5
    assert view_level(1e-6, 6) == 5


def test_catalog_from_plain_ra_dec_columns_uses_the_wcs():
    wcs = _tan_wcs(200, 100)
    viewer = ImageViewer(NDData(np.zeros((100, 200)), wcs=wcs))
    sky = wcs.pixel_to_world([10.0, 150.0], [20.0, 80.0])
    viewer.load_catalog(Table({"RA": sky.ra.deg, "Dec": sky.dec.deg, "id": [1, 2]}))
    table = viewer.get_catalog()
    np.testing.assert_allclose(table["x"], [10.0, 150.0], atol=1e-6)
    np.testing.assert_allclose(table["y"], [20.0, 80.0], atol=1e-6)
    with pytest.raises(ValueError, match="Cannot use pixel coordinates without pixel columns"):
        viewer.load_catalog(Table({"flux": [1.0]}))


def test_sky_regions_land_on_the_right_pixels():
    from astropy.coordinates import SkyCoord
    from regions import CircleSkyRegion

    wcs = _tan_wcs(200, 100)
    viewer = ImageViewer(NDData(np.zeros((100, 200)), wcs=wcs))
    center = wcs.pixel_to_world(50.0, 40.0)
    circle = CircleSkyRegion(SkyCoord(center.ra, center.dec), radius=0.002 * u.deg)
    report = viewer.overlay_region_layer([circle], layer_id="sky")
    assert report.n_drawn == 1 and report.n_off_image == 0
    data = viewer._regions["sky"]["data"]
    assert data.x[0] == pytest.approx(50.0, abs=1e-6) and data.y[0] == pytest.approx(40.0, abs=1e-6)
    assert data.a[0] == pytest.approx(10.0, rel=1e-3)  # 0.002 deg at 0.0002 deg/pixel


@pytest.mark.parametrize(
    ("name", "cls"),
    [("linear", "LinearStretch"), ("sqrt", "SqrtStretch"), ("power", "PowerStretch"),
     ("histeq", "HistEqStretch"), ("log", "LogStretch")],
)  # fmt: skip
def test_named_stretches_are_astropy_stretches(noise, name, cls):
    viewer = ImageViewer(noise)
    viewer.set_stretch(name)
    assert type(viewer.get_stretch()).__name__ == cls
    table = np.frombuffer(viewer._display["stretch"], dtype=np.float32)
    assert table[0] == pytest.approx(0.0, abs=0.01) and table[-1] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(table) >= -1e-6)  # monotonic
    with pytest.raises(TypeError, match="Stretch 'wobbly' is not valid"):
        viewer.set_stretch("wobbly")
