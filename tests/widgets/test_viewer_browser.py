"""Real-browser test: JupyterLab + headless Chromium show the viewer, and it talks back."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from astropy.wcs import WCS
from lab_server import open_notebook, run_cell

from stacklab.toolkit import Exposure
from stacklab.widgets import ImageViewer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = """
import json, numpy as np
from pathlib import Path
from stacklab.toolkit import Exposure
from stacklab.widgets import ImageViewer
rng = np.random.default_rng(42)
image = rng.normal(100.0, 10.0, size=(1000, 1200)).astype(np.float32)
from astropy.wcs import WCS
wcs = WCS(naxis=2); wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]; wcs.wcs.crval = [150.0, 2.0]
wcs.wcs.crpix = [600.0, 500.0]; wcs.wcs.cdelt = [-0.0002, 0.0002]
exposure = Exposure(image, variance=np.ones_like(image), wcs=wcs)
box = np.zeros(image.shape, dtype=bool); box[150:250, 250:350] = True
exposure.set_plane("DETECTED", box)
viewer = ImageViewer(exposure, width=400, height=300)
viewer.set_stretch("asinh"); viewer.set_cuts((70.0, 130.0)); viewer.set_colormap("viridis")
viewer.set_mask_transparency(50)
viewer.set_viewport(center=(300.0, 200.0), fov=300)
viewer
"""
CELLS = [
    SETUP,
    'viewer.set_mask_plane_visible("DETECTED", False)',
    "viewer.set_viewport(center=(599.5, 499.5), fov=1200)\n"
    "grid = [f'box {60 + 120 * i} {50 + 100 * j} 100 80 0 # color=red'\n"
    "        for i in range(10) for j in range(10)]\n"
    "report = viewer.overlay_region_layer(grid, layer_id='grid')\n"
    "xss = 'image; circle(600,500,20) # text={<img src=x onerror=alert(1)>}'\n"
    "viewer.overlay_region_layer(xss, layer_id='label')",
    "from astropy.table import Table\n"
    "viewer.load_catalog(Table({'x': [200.0, 900.0], 'y': [300.0, 700.0], 'name': ['a', 'b']}),\n"
    "                    catalog_label='stars', catalog_style={'size': 12, 'color': 'cyan'})",
    "Path('state.json').write_text(json.dumps({'selection': viewer.selection,\n"
    "    'viewport': viewer.get_viewport(sky_or_pixel='pixel')}, default=float))",
]
FIND = "document.querySelector('.slv-root').parentElement"


def _image() -> np.ndarray:
    return np.random.default_rng(42).normal(100.0, 10.0, size=(1000, 1200)).astype(np.float32)


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [600.0, 500.0]
    wcs.wcs.cdelt = [-0.0002, 0.0002]
    return wcs


def _expected(mask_visible: bool) -> np.ndarray:
    image = _image()
    exposure = Exposure(image, variance=np.ones_like(image), wcs=_wcs())
    box = np.zeros(image.shape, dtype=bool)
    box[150:250, 250:350] = True
    exposure.set_plane("DETECTED", box)
    viewer = ImageViewer(exposure, width=400, height=300)
    viewer.set_stretch("asinh")
    viewer.set_cuts((70.0, 130.0))
    viewer.set_colormap("viridis")
    viewer.set_mask_transparency(50)
    viewer.set_mask_plane_visible("DETECTED", mask_visible)
    viewer.set_viewport(center=(300.0, 200.0), fov=300)
    return viewer.render()


def _canvas_pixels(page) -> np.ndarray:
    data = page.evaluate(
        f"""() => {{ const c = {FIND}.querySelector('canvas.slv-image');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }}"""
    )
    return np.asarray(data, dtype=np.uint8).reshape(300, 400, 4)


def test_viewer_in_jupyterlab(lab, browser):
    page = open_notebook(browser, lab, "viewer.ipynb", CELLS)
    try:
        # 1. first cell: the image paints, tiles arrive, pixels equal the Python rendering
        run_cell(page, 0)
        page.wait_for_function(f"{FIND}?.dataset.sharp", timeout=60_000, polling=100)
        expected = _expected(mask_visible=True)
        np.testing.assert_array_equal(_canvas_pixels(page), expected)
        # cursor readout: pixel, value from the float tile, RA/Dec from the WCS grid
        stage = page.locator(".slv-stage").bounding_box()
        page.mouse.move(stage["x"] + 100, stage["y"] + 50)  # near image (200, 300) at zoom 1
        readout = page.locator(".slv-readout").text_content()
        words = readout.split()
        x, y = int(words[1]), int(words[3])
        assert abs(x - 200) <= 1 and abs(y - 300) <= 1
        value = float(readout.split("value ")[1].split()[0])
        assert value == pytest.approx(float(_image()[y, x]), rel=1e-5)
        degrees = readout.split("(")[1].split(")")[0].replace("°", "").split(",")
        truth = _wcs().pixel_to_world(x, y)
        half_pixel = 0.0001  # degrees: the cursor is within half a pixel of the centre
        assert float(degrees[0]) == pytest.approx(truth.ra.deg, abs=half_pixel)
        assert float(degrees[1]) == pytest.approx(truth.dec.deg, abs=half_pixel)
        assert "RA 10:00:" in readout and "Dec +0" in readout
        # 2. toggling a mask plane repaints without new pixels
        run_cell(page, 1)
        hidden = _expected(mask_visible=False)
        page.wait_for_function(
            f"""() => {{ const c = {FIND}.querySelector('canvas.slv-image');
            const p = c.getContext('2d').getImageData(50, 60, 1, 1).data;
            return p[0] === {hidden[60, 50, 0]} && p[1] === {hidden[60, 50, 1]}; }}""",
            timeout=20_000,
        )
        np.testing.assert_array_equal(_canvas_pixels(page), hidden)
        assert not np.array_equal(expected, hidden)
        # 3. the talk's grid: 100 DS9 boxes become 100 drawn shapes
        run_cell(page, 2)
        page.wait_for_function(f"{FIND}.dataset.overlayShapes === '101'", timeout=20_000)
        # the DS9 label is drawn as text on the canvas, never parsed as HTML
        assert page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
        # 4. catalog: clicking a marker sends the selection to Python
        run_cell(page, 3)
        page.wait_for_function(f"{FIND}.dataset.overlayShapes === '103'", timeout=20_000)
        stage = page.locator(".slv-stage").bounding_box()  # cells ran: it may have moved
        zoom = 300 / 1200
        sx = (900.0 - 599.5) * zoom + 200
        sy = 150 - (700.0 - 499.5) * zoom
        page.mouse.move(stage["x"] + sx, stage["y"] + sy)
        page.wait_for_function(
            "document.querySelector('.slv-tip')?.textContent.includes('name: b')"
        )
        page.mouse.down()
        page.mouse.up()
        # 5. keyboard zoom reaches Python's viewport too
        page.keyboard.press("+")
        time.sleep(0.6)
        state_file = lab.root / "state.json"
        state_file.unlink(missing_ok=True)
        run_cell(page, 4)
        deadline = time.monotonic() + 20
        while not state_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        state = json.loads(state_file.read_text())
        assert state["selection"] == {"catalog": "stars", "rows": [1]}
        assert state["viewport"]["fov"] == pytest.approx(600.0, rel=1e-6)
    finally:
        page.close()
        lab.delete_sessions()
