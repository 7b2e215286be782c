"""Inspection tools: time to open an object, and to build the PSF field plots.

Goals (issue 7): opening the footprint inspector on an object of a 4096² frame
with ~5000 sources takes < 300 ms; rho-statistics and whisker plots of 1000 stars
render in < 1 s. Measured in the kernel (Python side: computation, PNG stamps,
widget and overlay updates, bokeh serialisation), against a peer in the same
session: the same stamps drawn as a static matplotlib figure and saved as PNG
(what a Python-rendered inspector does); then end to end in JupyterLab + headless
Chromium, from a click on a marker to the catalog row and stamps painted (skipped
without /usr/bin/chromium). No assertions: this prints a table.

``STACKLAB_BENCH_SIZE`` (4096) and ``STACKLAB_BENCH_REPS`` (30) change the frame
size and the number of objects opened.
"""

from __future__ import annotations

import io
import os
import time
import warnings

import matplotlib as mpl

mpl.use("Agg")
import numpy as np
from astropy.table import Table
from jupyter_bokeh import BokehModel

from stacklab.toolkit import MeasurementConfig, ProcessFrameConfig, process_frame
from stacklab.toolkit.inspect_objects import inspect_object
from stacklab.toolkit.inspect_psf import PsfFieldMap, psf_field
from stacklab.toolkit.rho_statistics import RhoStatistics, rho_statistics
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.widgets import FootprintInspector, ImageViewer
from stacklab.widgets.plots import plot_psf_whiskers, plot_rho_statistics

SIZE = int(os.environ.get("STACKLAB_BENCH_SIZE", "4096"))
REPS = int(os.environ.get("STACKLAB_BENCH_REPS", "30"))


def _stats(times: list[float]) -> str:
    ms = np.asarray(times) * 1e3
    p95 = np.percentile(ms, 95)
    return f"median {np.median(ms):7.1f} ms  p95 {p95:7.1f} ms  max {ms.max():7.1f} ms"


def _frame():
    config = SimulationConfig(
        size=SIZE, seed=21, bands=("r",), visits_per_band=1,
        galaxy_density_arcmin2=45.0, star_density_arcmin2=15.0,
    )  # fmt: skip
    exposure = simulate_visit(make_sky(config), config, visit=0).exposure
    # Galaxy-model fits do not change what the inspector shows; skipping them saves minutes.
    steps = ProcessFrameConfig(measurement=MeasurementConfig(fit_models=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return process_frame(exposure, steps)


def bench_footprint_inspector() -> None:
    start = time.perf_counter()
    frame = _frame()
    cat = frame.catalog
    print(f"frame {SIZE}² with {len(cat)} sources "
          f"({int(np.sum(cat['n_children'] > 0))} blends) made in "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    viewer = ImageViewer(frame.exposure, width=800, height=600)
    start = time.perf_counter()
    inspector = FootprintInspector(viewer, frame.exposure, cat, frame.deblended)
    print(f"FootprintInspector created (catalog of {len(cat)} loaded as markers): "
          f"{(time.perf_counter() - start) * 1e3:.0f} ms")  # fmt: skip
    rng = np.random.default_rng(1)
    blends = np.flatnonzero(np.asarray(cat["n_children"]) > 0)
    rows = np.concatenate([rng.choice(len(cat), REPS // 2), rng.choice(blends, REPS - REPS // 2)])
    compute, click, peer = [], [], []
    for row in rows:
        source_id = int(cat["id"][row])
        t0 = time.perf_counter()
        inspect_object(frame.exposure, cat, frame.deblended, source_id)
        compute.append(time.perf_counter() - t0)
        # what a marker click does: the viewer's selection changes, the inspector follows
        t0 = time.perf_counter()
        viewer.selection = {"catalog": "sources", "rows": [int(row)]}
        click.append(time.perf_counter() - t0)
        assert inspector.current_id == source_id
        t0 = time.perf_counter()
        figure = inspector.static_figure()
        figure.savefig(io.BytesIO(), format="png")
        peer.append(time.perf_counter() - t0)
    print(f"open an object ({REPS} objects, half of them blends):")
    print(f"  inspect_object (computation only)      {_stats(compute)}")
    print(f"  click -> inspector shown (all Python)  {_stats(click)}   goal < 300 ms")
    print(f"  peer: matplotlib stamp figure -> PNG   {_stats(peer)}")
    print(f"  ratio click / peer (median)            {np.median(click) / np.median(peer):.2f}")
    start = time.perf_counter()
    psf_field(frame.exposure.shape, frame.psf, frame.psf_fit.stars, n_grid=9)
    print(f"psf_field 9x9 grid + {len(frame.psf_fit.stars)} stars: "
          f"{(time.perf_counter() - start) * 1e3:.0f} ms")  # fmt: skip
    inspector.close()
    viewer.close()


def star_moments(n_stars: int = 1000) -> dict[str, np.ndarray]:
    """Seeded stars over a 4096² field with a smooth PSF pattern and small model residuals."""
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 4096, n_stars), rng.uniform(0, 4096, n_stars)
    T = 8.0 + 0.3 * (x / 4096) + rng.normal(0, 0.05, n_stars)
    e1 = 0.02 * (y / 4096 - 0.5) + rng.normal(0, 0.01, n_stars)
    e2 = 0.01 * (x / 4096 - 0.5) + rng.normal(0, 0.01, n_stars)
    mT = T * (1 + rng.normal(0, 0.005, n_stars))
    return {"x": x, "y": y, "T": T, "e1": e1, "e2": e2, "model_T": mT,
            "model_e1": e1 + 0.001, "model_e2": e2 - 0.001}  # fmt: skip


def star_rho(stars: dict[str, np.ndarray]) -> RhoStatistics:
    """Rho statistics of the stars (0.2 arcsec pixels)."""
    s = stars
    return rho_statistics(s["x"], s["y"], star_T=s["T"], star_e1=s["e1"], star_e2=s["e2"],
                          model_T=s["model_T"], model_e1=s["model_e1"], model_e2=s["model_e2"],
                          pixel_scale_arcsec=0.2)  # fmt: skip


def field_plots(
    stars: dict[str, np.ndarray], backend: str = "bokeh", rho: RhoStatistics | None = None
) -> list:
    """Rho and whisker figures of the stars (rho statistics computed unless given)."""
    s = stars
    rho = star_rho(stars) if rho is None else rho
    gx, gy = np.meshgrid(np.linspace(0, 4095, 9), np.linspace(0, 4095, 9))
    table = Table(s)
    table["dT_over_T"] = (table["T"] - table["model_T"]) / table["T"]
    table["de1"] = table["e1"] - table["model_e1"]
    table["de2"] = table["e2"] - table["model_e2"]
    field = PsfFieldMap(gx, gy, 8 + 0 * gx, 0.01 * gy / 4096, 0.01 * gx / 4096, table)
    return [
        plot_rho_statistics(rho, backend=backend),
        plot_psf_whiskers(field, backend=backend),
    ]


def bench_field_plots(n_stars: int = 1000) -> None:
    stars = star_moments(n_stars)
    times: dict[str, list[float]] = {k: [] for k in ("rho", "bokeh", "mpl")}
    for _ in range(5):
        t0 = time.perf_counter()
        star_rho(stars)
        times["rho"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for fig in field_plots(stars):
            BokehModel(fig)  # builds the document sent to the browser
        times["bokeh"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for backend_fig in field_plots(stars, backend="matplotlib"):
            backend_fig.savefig(io.BytesIO(), format="png")
        times["mpl"].append(time.perf_counter() - t0)
    print(f"PSF field plots for {n_stars} stars (5 runs):")
    print(f"  rho statistics (TreeCorr, 5 correlations)  {_stats(times['rho'])}")
    print(f"  rho stats + rho & whisker bokeh, serialised {_stats(times['bokeh'])}   goal < 1 s")
    print(f"  rho stats + rho & whisker matplotlib -> PNG {_stats(times['mpl'])}")


BROWSER_SETUP = """
import json, sys
from pathlib import Path
import numpy as np, ipywidgets as w
from bokeh.io import output_notebook
from bokeh.resources import INLINE
output_notebook(INLINE, hide_banner=True)
sys.path.insert(0, {here!r})
from bench_inspect import _frame
from stacklab.widgets import FootprintInspector, ImageViewer
frame = _frame()
viewer = ImageViewer(frame.exposure, width=600, height=600)
inspector = FootprintInspector(viewer, frame.exposure, frame.catalog, frame.deblended)
rows = np.random.default_rng(1).choice(len(frame.catalog), {reps}, replace=False)
Path("targets.json").write_text(json.dumps(
    [[float(frame.catalog["x"][r]), float(frame.catalog["y"][r])] for r in rows]))
w.VBox([viewer, inspector])
"""
# Click the marker at the centre of the view (synthetic mouse events, so the clock
# starts in the page), then wait until a new catalog row and all its stamps are painted.
CLICK = """async ([x, y]) => {
  const el = document.querySelector('.slv-root').parentElement, slv = el.__slv;
  slv.setView(x, y, 2.0);
  const frame = () => new Promise(r => requestAnimationFrame(r));
  // wait for the view's tiles and markers, so the click does not queue behind tiles
  const sharp = `:${slv.state.cx}:${slv.state.cy}:${slv.state.zoom}`;
  while (!(el.dataset.sharp || '').endsWith(sharp) || slv.state.overlayView?.cx !== x) {
    await frame();
  }
  const before = document.querySelector('.sl-inspect-row')?.dataset.sourceId;
  const stage = el.querySelector('.slv-stage'), box = stage.getBoundingClientRect();
  const at = { clientX: box.left + slv.state.W / 2, clientY: box.top + slv.state.H / 2,
               bubbles: true };
  const t0 = performance.now();
  stage.dispatchEvent(new MouseEvent('mousedown', at));
  window.dispatchEvent(new MouseEvent('mouseup', at));
  for (;;) {
    await frame();
    if (performance.now() - t0 > 5000) return -1;  // no marker hit, or the same object
    const row = document.querySelector('.sl-inspect-row');
    if (!row || row.dataset.sourceId === before) continue;
    const images = [...document.querySelectorAll('.sl-footprint-inspector img.sl-stamp')];
    if (images.length && images.every(i => i.complete && i.naturalWidth > 0)) break;
  }
  return performance.now() - t0;
}"""


PLOTS_CELL = """
from jupyter_bokeh import BokehModel
from bench_inspect import field_plots, star_moments, star_rho
stars_1000 = star_moments(1000)
rho_1000 = star_rho(stars_1000)
w.HBox([BokehModel(fig) for fig in field_plots(stars_1000, rho=rho_1000)])
"""
RENDER_CELL = """
# rho_1000 as fit_psf leaves it in PsfFit.validation.rho
w.HBox([BokehModel(fig) for fig in field_plots(stars_1000, rho=rho_1000)])
"""
# Run the plots cell from the page and wait until both bokeh canvases hold pixels.
RUN_PLOTS = """async (index) => {
  const nb = window.jupyterapp.shell.currentWidget.content, cell = nb.widgets[index];
  cell.model.outputs.clear();
  const frame = () => new Promise(r => requestAnimationFrame(r));
  await frame();
  const canvases = () => { const out = [];
    const walk = n => { if (n.shadowRoot) walk(n.shadowRoot);
      for (const c of n.children || []) { if (c.tagName === 'CANVAS') out.push(c); walk(c); } };
    walk(cell.node); return out; };
  const painted = c => { if (c.width < 100) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4 * 97) if (d[i + 3] && d[i] < 200) return true;
    return false; };
  const t0 = performance.now();
  nb.activeCellIndex = index;
  window.jupyterapp.commands.execute('notebook:run-cell');
  while (canvases().filter(painted).length < 2) {
    await frame();
    if (performance.now() - t0 > 60000) return -1;
  }
  return performance.now() - t0;
}"""


def bench_browser_click() -> None:
    """Click -> inspector painted, in JupyterLab + headless Chromium."""
    import json
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent / "widgets"))
    from lab_server import CHROMIUM, CHROMIUM_ARGS, Lab, open_notebook, run_cell

    if not CHROMIUM.exists():
        print("chromium is not installed at /usr/bin/chromium; browser timing skipped")
        return
    from playwright.sync_api import sync_playwright

    setup = BROWSER_SETUP.format(here=str(here), reps=REPS)
    with tempfile.TemporaryDirectory() as scratch:
        lab = Lab(Path(scratch))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                page = open_notebook(
                    browser,
                    lab,
                    "bench_inspect.ipynb",
                    [setup, PLOTS_CELL.strip(), RENDER_CELL.strip()],
                )
                page.set_default_timeout(600_000)
                run_cell(page, 0)
                page.wait_for_function(
                    "document.querySelector('.slv-root')?.parentElement.dataset.sharp",
                    polling=200,
                )
                targets = json.loads((lab.root / "targets.json").read_text())
                clicks = [page.evaluate(CLICK, target) for target in targets]
                times = [t / 1e3 for t in clicks if t >= 0]
                plots = [page.evaluate(RUN_PLOTS, 1) / 1e3 for _ in range(5)]
                render = [page.evaluate(RUN_PLOTS, 2) / 1e3 for _ in range(5)]
                lab.delete_sessions()
                browser.close()
        finally:
            lab.stop()
    print(f"browser: click on a marker -> row and stamps painted ({len(times)} of "
          f"{len(clicks)} clicks changed the object; "
          f"{SIZE}² frame):")  # fmt: skip
    print(f"  JupyterLab + Chromium                  {_stats(times)}   goal < 300 ms")
    print("browser: run cell -> rho statistics computed, rho and whisker plots of 1000 stars")
    print(f"  painted (5 runs)                       {_stats(plots)}")
    print("browser: run cell -> rho and whisker plots painted (rho statistics given)")
    print(f"  painted (5 runs)                       {_stats(render)}   goal < 1 s")


if __name__ == "__main__":
    bench_field_plots()
    bench_footprint_inspector()
    bench_browser_click()
