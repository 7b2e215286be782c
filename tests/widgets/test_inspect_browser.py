"""Real-browser test of the inspectors: JupyterLab + headless Chromium + jupyter_bokeh.

1. Clicking a marker in the viewer opens that object in the FootprintInspector: the
   catalog row shown and the stamps (their PNG bytes) are that object's.
2. A lasso in a linked bokeh plot selects catalog rows that reach the viewer (in
   the kernel and in the browser's drawing state).
3. The PSF inspector shows its star stamps and its six field plots.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from inspect_data import small_frame
from lab_server import open_notebook, run_cell

from stacklab.toolkit.inspect_objects import inspect_object
from stacklab.widgets.stamps import stamp_limits, stamp_png

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
SETUP = f"""
import json, sys
from pathlib import Path
import ipywidgets as w
from bokeh.io import output_notebook
from bokeh.resources import INLINE
output_notebook(INLINE, hide_banner=True)
sys.path.insert(0, {str(HERE)!r})
from inspect_data import small_frame
from stacklab.widgets import FootprintInspector, ImageViewer, link_selection
frame = small_frame()
viewer = ImageViewer(frame.exposure, width=400, height=400)
viewer.set_viewport(center=(255.5, 255.5), fov=512)
inspector = FootprintInspector(viewer, frame.exposure, frame.catalog, frame.deblended)
w.VBox([viewer, inspector])
"""
PLOT = """
from jupyter_bokeh import BokehModel
from stacklab.widgets.plots import plot_size_magnitude
figure = plot_size_magnitude(frame.catalog)
link = link_selection(viewer, figure, catalog_label="sources")
BokehModel(figure)
"""
STATE = """
Path("inspect_state.json").write_text(json.dumps({
    "current": inspector.current_id, "selection": viewer.selection,
    "plot_rows": link.selected_rows()}))
"""
PSF = """
from inspect_data import random_rho
from stacklab.widgets import PsfInspector
psf_inspector = PsfInspector(frame.exposure, stars=frame.psf_fit.stars, rho=random_rho(),
                             catalog=frame.catalog)
psf_inspector.show_position(250.0, 250.0)
psf_inspector.show_field()
psf_inspector
"""
VIEWER = "document.querySelector('.slv-root').parentElement"
ZOOM = 400 / 512


def _isolated_source(frame) -> int:
    """Row of an isolated, unflagged-by-edge source with no other marker within 15 px."""
    cat = frame.catalog
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    for row in np.argsort(-np.asarray(cat["flux_psf"], float)):
        if cat["parent"][row] or cat["n_children"][row] or int(cat["flags"][row]) & 1:
            continue
        if not (60 < x[row] < 450 and 60 < y[row] < 450):
            continue
        distance = np.hypot(x - x[row], y - y[row])
        if np.sum(distance < 15 / ZOOM) == 1:
            return int(row)
    raise AssertionError("no isolated source in the test frame")


def _wait_for_file(path: Path, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"{path} was not written")


def test_click_opens_the_object_and_lasso_reaches_the_viewer(lab, browser):
    frame = small_frame()
    row = _isolated_source(frame)
    source_id = int(frame.catalog["id"][row])
    page = open_notebook(browser, lab, "inspect.ipynb", [SETUP, PLOT, STATE, PSF])
    try:
        run_cell(page, 0)
        page.wait_for_function(f"{VIEWER}?.dataset.sharp", timeout=90_000, polling=100)
        page.wait_for_function(
            f"{VIEWER}.dataset.overlayShapes === String({len(frame.catalog)})", timeout=30_000
        )
        # 1. click the marker of the source
        stage = page.locator(".slv-stage").bounding_box()
        x, y = float(frame.catalog["x"][row]), float(frame.catalog["y"][row])
        sx = stage["x"] + 200 + (x - 255.5) * ZOOM
        sy = stage["y"] + 200 - (y - 255.5) * ZOOM
        page.mouse.move(sx, sy)
        page.mouse.down()
        page.mouse.up()
        shown = f'.sl-inspect-row[data-source-id="{source_id}"]'
        page.wait_for_selector(shown, timeout=30_000)
        text = page.locator(shown).inner_text()
        assert f"source {source_id}" in text
        x_cell = page.locator(f"{shown} td[data-column='x']").inner_text()
        assert float(x_cell) == pytest.approx(x, rel=1e-5)
        flux_cell = page.locator(f"{shown} td[data-column='flux_psf']").inner_text()
        assert float(flux_cell) == pytest.approx(float(frame.catalog["flux_psf"][row]), rel=1e-5)
        # the image stamp shown is, byte for byte, this object's stamp
        found = inspect_object(frame.exposure, frame.catalog, frame.deblended, source_id)
        stamp = found.stamp
        assert stamp is not None
        expected = stamp_png(stamp.image, stamp_limits(stamp.image), valid=found.valid)
        selector = f"img.sl-stamp-image.sl-stamp-source-{source_id}"
        page.wait_for_selector(selector, timeout=10_000)
        shown_png = page.evaluate(
            f"""async () => {{ const img = document.querySelector({selector!r});
            const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
            let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }}"""
        )
        assert base64.b64decode(shown_png) == expected
        # 2. a lasso over the left half of the size-magnitude plot
        run_cell(page, 1)
        lasso = page.locator('[title="Lasso Select"]').first
        lasso.wait_for(timeout=60_000)
        lasso.click()
        canvas = page.locator(".bk-Canvas canvas").first
        box = canvas.bounding_box()
        left, top = box["x"] + 0.2 * box["width"], box["y"] + 0.1 * box["height"]
        right, bottom = box["x"] + 0.55 * box["width"], box["y"] + 0.8 * box["height"]
        page.mouse.move(left, top)
        page.mouse.down()
        for px, py in ((right, top), (right, bottom), (left, bottom), (left, top + 2)):
            page.mouse.move(px, py, steps=8)
        page.mouse.up()
        page.wait_for_function(
            f"{VIEWER}.__slv.state.selected.size > 1", timeout=20_000, polling=100
        )
        state_file = lab.root / "inspect_state.json"
        state_file.unlink(missing_ok=True)
        run_cell(page, 2)
        state = _wait_for_file(state_file)
        assert state["selection"]["catalog"] == "sources"
        rows = state["selection"]["rows"]
        assert rows == state["plot_rows"]
        assert 1 < len(rows) < len(frame.catalog)
        # The lasso's selection may reach the kernel in several updates while it is
        # drawn: by the time cell 2 ran, the kernel has them all, and the viewer must
        # show the same rows (reading its count right after the first update raced).
        page.wait_for_function(
            f"{VIEWER}.__slv.state.selected.size === {len(rows)}", timeout=20_000, polling=100
        )
        # 3. the PSF inspector: star stamps and the six field plots render (bokeh canvases)
        run_cell(page, 3)
        stamps = page.locator(".sl-psf-inspector img.sl-psf-stamp")
        stamps.nth(11).wait_for(state="attached", timeout=60_000)
        assert stamps.count() == 12  # 4 stars x (data, model, residual)
        canvases = page.locator(".sl-psf-inspector .bk-Canvas canvas")
        canvases.nth(5).wait_for(timeout=60_000)
        sizes = [canvases.nth(i).bounding_box() for i in range(canvases.count())]
        assert sum(1 for box in sizes if box and box["width"] > 100) >= 6
    finally:
        page.close()
        lab.delete_sessions()
