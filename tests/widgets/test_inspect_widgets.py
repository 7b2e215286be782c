"""Python-side tests of the inspectors, the plots (bokeh and matplotlib) and the linking."""

from __future__ import annotations

import io

import numpy as np
import pytest
from bokeh.models import ColumnDataSource, GlyphRenderer
from bokeh.plotting import figure as bokeh_figure
from inspect_data import random_rho, small_frame
from matplotlib.figure import Figure
from PIL import Image

from stacklab.toolkit import CoaddPsf, SourceFlag, WarpedPsf
from stacklab.toolkit.inspect_psf import SRD_RHO1_REQUIREMENTS, psf_field, star_shapes
from stacklab.widgets import (
    FootprintInspector,
    ImageViewer,
    PsfInspector,
    link_selection,
    psf_report_figures,
)
from stacklab.widgets.plots import (
    plot_catalog,
    plot_colour_magnitude,
    plot_flux_comparison,
    plot_psf_size_map,
    plot_psf_whiskers,
    plot_rho_statistics,
    plot_size_magnitude,
)
from stacklab.widgets.stamps import stamp_png


@pytest.fixture(scope="module")
def frame():
    return small_frame()


@pytest.fixture
def viewer(frame):
    viewer = ImageViewer(frame.exposure, width=400, height=300)
    yield viewer
    viewer.close()


def _renderer_data(fig) -> list[dict]:
    return [dict(r.data_source.data) for r in fig.select({"type": GlyphRenderer})]


@pytest.mark.parametrize("backend", ["bokeh", "matplotlib"])
def test_every_plot_comes_in_both_backends(frame, backend):
    cat = frame.catalog
    stars = frame.psf_fit.stars
    field = psf_field(frame.exposure.shape, frame.psf, stars, n_grid=4)
    kind = bokeh_figure if backend == "bokeh" else Figure
    cmd = cat.copy()
    cmd["mag_g"] = -2.5 * np.log10(np.asarray(cat["flux_psf"])) + 0.5
    cmd["mag_r"] = -2.5 * np.log10(np.asarray(cat["flux_psf"]))
    figures = [
        plot_catalog(cat, "x", "flux_psf", backend=backend),
        plot_size_magnitude(cat, zero_point=27.0, backend=backend),
        plot_colour_magnitude(cmd, "mag_g", "mag_r", backend=backend),
        plot_flux_comparison(cat, "flux_psf", "flux_kron", backend=backend),
        plot_rho_statistics(random_rho(), backend=backend),
        plot_psf_whiskers(field, backend=backend),
        *(
            plot_psf_size_map(field, which=w, backend=backend)
            for w in ("model", "stars", "residual")
        ),
    ]
    assert all(isinstance(f, kind) for f in figures)
    if backend == "matplotlib":
        buffer = io.BytesIO()
        figures[4].savefig(buffer, format="png")
        assert Image.open(buffer).size[0] > 100


def test_catalog_plots_carry_catalog_rows(frame):
    cat = frame.catalog
    fig = plot_flux_comparison(cat, "flux_psf", "flux_kron")
    (source,) = [s for s in fig.select({"type": ColumnDataSource}) if s.name == "catalog"]
    rows = np.asarray(source.data["row"])
    a = np.asarray(cat["flux_psf"])[rows]
    b = np.asarray(cat["flux_kron"])[rows]
    np.testing.assert_allclose(source.data["x"], -2.5 * np.log10(a))
    np.testing.assert_allclose(source.data["y"], -2.5 * np.log10(a / b))
    sm = plot_size_magnitude(cat)
    star_rows = np.flatnonzero((np.asarray(cat["flags"]) & int(SourceFlag.PSF_STAR)) != 0)
    layers = [
        set(np.asarray(src.data["row"]).tolist())
        for src in sm.select({"type": ColumnDataSource})
        if src.name == "catalog"
    ]
    assert len(layers) == 3  # all sources, fitted PSF stars, reserved stars
    assert set(star_rows.tolist()) & set().union(*layers) in layers
    assert any(len(rows) > 10 and rows <= set(star_rows.tolist()) for rows in layers)
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]"):
        plot_catalog(cat, "x", "nope")
    with pytest.raises(ValueError, match="backend must be"):
        plot_catalog(cat, "x", "y", backend="svg")


def test_rho_plot_has_the_srd_requirement_lines():
    fig = plot_rho_statistics(random_rho())
    levels = {float(d["y"][0]) for d in _renderer_data(fig) if len(d.get("y", [])) == 2}
    assert {value for _, value, _, _ in SRD_RHO1_REQUIREMENTS} <= levels
    rho1 = np.asarray(random_rho().rho1)
    assert any(
        np.allclose(d["y"], np.abs(rho1[rho1 != 0])) for d in _renderer_data(fig) if "fill" in d
    )


def test_whiskers_follow_the_model_ellipticity(frame):
    field = psf_field(frame.exposure.shape, frame.psf, frame.psf_fit.stars, n_grid=3)
    fig = plot_psf_whiskers(field, scale_px=1000.0)
    data = _renderer_data(fig)
    (model,) = [d for d in data if len(d["x0"]) == field.grid_x.size]
    length = np.hypot(np.asarray(model["x1"]) - model["x0"], np.asarray(model["y1"]) - model["y0"])
    np.testing.assert_allclose(length, 1000.0 * np.hypot(field.grid_e1, field.grid_e2).ravel())
    assert sorted(len(d["x0"]) for d in data) == sorted([field.grid_x.size, len(field.stars)])


def test_selection_links_plots_and_viewer_both_ways(frame, viewer):
    cat = frame.catalog
    viewer.load_catalog(cat, catalog_label="src")
    sm, fc = plot_size_magnitude(cat), plot_flux_comparison(cat, "flux_psf", "flux_kron")
    link = link_selection(viewer, [sm, fc], catalog_label="src")
    fc_source = next(s for s in link.sources if s in fc.select({"type": ColumnDataSource}))
    # viewer -> plots
    viewer.selection = {"catalog": "src", "rows": [5, 7]}
    chosen = np.asarray(fc_source.data["row"])[fc_source.selected.indices]
    assert sorted(chosen.tolist()) == [r for r in (5, 7) if r in fc_source.data["row"]]
    # plot -> viewer and the other plot
    fc_source.selected.indices = [0, 2]
    rows = sorted(np.asarray(fc_source.data["row"])[[0, 2]].tolist())
    assert viewer.selection == {"catalog": "src", "rows": rows}
    assert link.selected_rows() == rows
    # a lasso in one figure updates each of its sources in turn: the union counts
    sm_sources = [s for s in link.sources if s in sm.select({"type": ColumnDataSource})]
    assert len(sm_sources) == 3
    sm_sources[0].selected.indices = [0, 1, 2]
    first_rows = sorted(np.asarray(sm_sources[0].data["row"])[[0, 1, 2]].tolist())
    sm_sources[1].selected.indices = []
    sm_sources[2].selected.indices = []
    assert viewer.selection["rows"] == first_rows
    assert sorted(np.asarray(fc_source.data["row"])[fc_source.selected.indices].tolist()) == [
        r for r in first_rows if r in fc_source.data["row"]
    ]
    rows = link.selected_rows()
    link.unlink()
    viewer.selection = {"catalog": "src", "rows": [9]}
    assert link.selected_rows() == rows
    with pytest.raises(ValueError, match="is not a catalog of the viewer"):
        link_selection(viewer, sm, catalog_label="nope")
    with pytest.raises(ValueError, match="hold no catalog data source"):
        link_selection(viewer, plot_rho_statistics(random_rho()), catalog_label="src")


def test_footprint_inspector_follows_clicks_and_steps_through_blends(frame, viewer):
    cat = frame.catalog
    inspector = FootprintInspector(viewer, frame.exposure, cat, frame.deblended)
    try:
        assert "sources" in viewer.catalog_labels
        parents = np.asarray(cat["id"])[np.asarray(cat["n_children"]) > 0]
        first = inspector.next()
        assert first is not None and first.source_id == parents[0]
        assert inspector.next().source_id == parents[1]
        assert inspector.previous().source_id == parents[0]
        # the blend's stamps, catalog row and overlays are shown
        n_children = int(cat["n_children"][first.row])
        assert len(inspector._stamps.children) == 1 + 1 + n_children  # header, parent, kids
        assert f'data-source-id="{first.source_id}"' in inspector._row.value
        assert "inspector" in viewer.region_layers
        assert viewer.selection == {"catalog": "sources", "rows": [first.row]}
        # a click on a marker in the viewer shows that source
        viewer.selection = {"catalog": "sources", "rows": [30]}
        assert inspector.current_id == int(cat["id"][30])
        classes = {
            c for row in inspector._stamps.children for im in row.children for c in im._dom_classes
        }
        assert f"sl-stamp-source-{int(cat['id'][30])}" in classes
        # neighbours are listed and can be opened
        shown = inspector.show(first.source_id)
        listed = [value for _label, value in inspector._neighbour_list.options]
        assert listed == list(shown.neighbours["id"])
        if listed:
            inspector._neighbour_list.value = listed[0]
            assert inspector.current_id == listed[0]
        # flag filter
        inspector.set_filter("EDGE")
        edge_ids = np.asarray(cat["id"])[(np.asarray(cat["flags"]) & int(SourceFlag.EDGE)) != 0]
        assert inspector.next().source_id in edge_ids
        assert "image edge" in inspector._status.value
        with pytest.raises(ValueError, match="flag must be"):
            inspector.set_filter("nope")
        # a typed id that does not exist is reported, not raised
        inspector._id_box.value = 99999
        inspector._show_typed()
        assert "99999 is not in the catalog" in inspector._status.value
        assert isinstance(inspector.static_figure(), Figure)
    finally:
        inspector.close()
    assert "inspector" not in viewer.region_layers


def test_psf_inspector_shows_positions_and_the_field(frame, viewer):
    viewer.load_catalog(frame.psf_fit.stars, catalog_label="psf stars")
    inspector = PsfInspector(
        frame.exposure, stars=frame.psf_fit.stars, catalog=frame.catalog, viewer=viewer
    )
    try:
        found = inspector.show_position(200.0, 300.0)
        assert len(inspector._stars.children) == len(found.stars) == 4
        viewer.selection = {"catalog": "psf stars", "rows": [3]}
        assert inspector.inspection.model.x == pytest.approx(float(frame.psf_fit.stars["x"][3]))
        inspector._x.value = -50.0
        inspector._show_typed()
        assert "off the image" in inspector._status.value
        inspector.show_field()
        (model,) = inspector._field.children
        assert len(model._model.children) == 5  # whiskers, 3 size maps, size-magnitude
    finally:
        inspector.close()
    figures = psf_report_figures(
        frame.exposure, stars=frame.psf_fit.stars, rho=random_rho(), catalog=frame.catalog,
        backend="matplotlib",
    )  # fmt: skip
    assert set(figures) == {
        "whiskers", "size_model", "size_stars", "size_residual", "rho", "size_magnitude",
    }  # fmt: skip


def test_stamp_png_paints_masked_pixels_and_flips_y():
    stamp = np.arange(12, dtype=float).reshape(3, 4)
    valid = np.ones_like(stamp, dtype=bool)
    valid[0, 0] = False
    image = np.asarray(Image.open(io.BytesIO(stamp_png(stamp, (0.0, 11.0), valid=valid, zoom=1))))
    assert image.shape == (3, 4, 3)
    assert tuple(image[2, 0]) == (200, 40, 160)  # row 0 of the array is at the bottom
    assert tuple(image[0, 3]) == (255, 255, 255)


def test_psf_inspector_works_on_a_coadd_psf(frame):
    ny, nx = frame.exposure.shape
    wcs = frame.exposure.wcs
    contributors = np.full((ny, nx), 0b11, dtype=np.int64)
    coadd_psf = CoaddPsf(
        [WarpedPsf(frame.psf, wcs, wcs), WarpedPsf(frame.psf, wcs, wcs)], [1.0, 2.0], contributors
    )
    exposure = frame.exposure.replace(psf=coadd_psf)
    stars = star_shapes(exposure, frame.psf_fit.stars["x"], frame.psf_fit.stars["y"])
    inspector = PsfInspector(exposure, stars=stars, catalog=frame.catalog, n_stars=2)
    try:
        found = inspector.show_position(100.0, 400.0)
        assert found.model.fwhm_px == pytest.approx(frame.psf.fwhm_px(100.0, 400.0), rel=0.05)
        assert len(inspector._stars.children) == 2
        inspector.show_field()
        (model,) = inspector._field.children
        assert len(model._model.children) == 5  # whiskers, 3 size maps, size-magnitude
    finally:
        inspector.close()
