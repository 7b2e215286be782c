"""FootprintInspector: click an object in the viewer and see its blend, row, flags and neighbours.

The computation is :func:`stacklab.toolkit.inspect_objects.inspect_object`; this
widget only lays the result out (ipywidgets) and draws the outline, peaks,
apertures and moments ellipse as a region layer of the viewer.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import ipywidgets as w  # type: ignore[import-untyped]
import numpy as np
from astropy import units as u
from astropy.table import Table
from regions import (
    CirclePixelRegion,
    EllipsePixelRegion,
    PixCoord,
    PointPixelRegion,
    PolygonPixelRegion,
)

from stacklab.toolkit.deblend import Deblended
from stacklab.toolkit.exposure import Exposure
from stacklab.toolkit.flags import SourceFlag
from stacklab.toolkit.inspect_objects import (
    InspectConfig,
    ObjectInspection,
    SourceStamp,
    inspect_object,
)
from stacklab.toolkit.inspect_select import select_sources, step_id

from ._messages import messages_html
from .stamps import plot_stamp_grid, stamp_limits, stamp_png

__all__ = ["FootprintInspector"]

log = logging.getLogger(__name__)

_ALL = "ALL"
_BLENDS = "BLENDS"
_ROW_COLUMNS = 24
_KINDS = ("image", "model", "residual", "footprint")


class FootprintInspector(w.VBox):
    """Inspect sources of a single-frame catalog next to an :class:`ImageViewer`.

    Clicking a marker of the catalog in the viewer (or :meth:`show` with an id)
    shows the source's blend as stamps (image, model, residual and heavy-footprint
    weights for the parent and each child, one stretch per row), its catalog row
    with flags in words, its neighbours, and draws the footprint outline, peaks,
    apertures, Kron ellipse and adaptive-moments ellipse in the viewer. Next and
    previous step through the sources that pass the filter (all blends by default,
    or any flag, e.g. ``DEBLEND_SKIPPED``).

    Parameters
    ----------
    viewer : ImageViewer
        The viewer showing ``exposure``.
    exposure : Exposure
        The measured exposure (``FrameResult.exposure``).
    catalog : astropy.table.Table
        Its catalog (``FrameResult.catalog``).
    deblended : Deblended
        Its deblended sources (``FrameResult.deblended``).
    psf : object with ``compute_image(x, y)``, optional
        PSF for the model stamps; ``exposure.psf`` by default.
    catalog_label : str
        Viewer catalog of the markers; loaded from ``catalog`` if absent.
    config : InspectConfig, optional
        Settings of :func:`~stacklab.toolkit.inspect_objects.inspect_object`.
    layer_id : str
        Viewer region layer for the overlays.

    Attributes
    ----------
    inspection : ObjectInspection or None
        What is shown.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit import process_frame
    >>> from stacklab.widgets import ImageViewer
    >>> sim_config = SimulationConfig(size=256, star_density_arcmin2=60.0, seed=4)
    >>> frame = process_frame(simulate_visit(make_sky(sim_config), sim_config, visit=0).exposure)
    >>> viewer = ImageViewer(frame.exposure)
    >>> inspector = FootprintInspector(viewer, frame.exposure, frame.catalog, frame.deblended)
    >>> inspector.show(int(frame.catalog["id"][0])).source_id == int(frame.catalog["id"][0])
    True
    """

    def __init__(
        self,
        viewer: Any,
        exposure: Exposure,
        catalog: Table,
        deblended: Deblended,
        *,
        psf: Any = None,
        catalog_label: str = "sources",
        config: InspectConfig | None = None,
        layer_id: str = "inspector",
    ) -> None:
        if len(catalog) != len(deblended):
            log.warning(
                "catalog has %d rows but deblended has %d sources; are they from the same run?",
                len(catalog),
                len(deblended),
            )
        self.viewer = viewer
        self.exposure = exposure
        self.catalog = catalog
        self.deblended = deblended
        self.psf = psf
        self.catalog_label = catalog_label
        self.config = InspectConfig() if config is None else config
        self.layer_id = layer_id
        self.inspection: ObjectInspection | None = None
        self._ids = np.asarray(catalog["id"], dtype=np.int64)
        if catalog_label not in viewer.catalog_labels:
            viewer.load_catalog(
                catalog, catalog_label=catalog_label, catalog_style={"color": "lime", "size": 9}
            )
        options = [("all blends", _BLENDS), ("all sources", _ALL)]
        options += [(f"flag {name}", name) for name in SourceFlag.__members__]
        self._filter = w.Dropdown(options=options, value=_BLENDS, description="step:")
        self._prev = w.Button(description="◀ previous", layout=w.Layout(width="110px"))
        self._next = w.Button(description="next ▶", layout=w.Layout(width="110px"))
        self._id_box = w.IntText(description="id:", layout=w.Layout(width="160px"))
        self._go = w.Button(description="show", layout=w.Layout(width="70px"))
        self._count = w.HTML()
        self._status = w.HTML()
        self._stamps = w.VBox()
        self._header = w.HBox(
            [w.HTML(f"<b>{name}</b>", layout=w.Layout(width="128px"))
             for name in ("", *_KINDS)]
        )  # fmt: skip
        # Widgets are reused from one source to the next: updating a PNG is one message,
        # a new widget costs a comm, a model and a view in the browser.
        self._pool: list[tuple[w.HTML, list[w.Image], w.HBox]] = []
        self._row = w.HTML()
        self._neighbours = w.HTML()
        self._neighbour_list = w.Select(options=[], rows=8, layout=w.Layout(width="200px"))
        self._neighbour_list.observe(self._on_neighbour, names="value")
        self._filling = False
        self._prev.on_click(lambda _b: self.previous())
        self._next.on_click(lambda _b: self.next())
        self._go.on_click(lambda _b: self._show_typed())
        self._filter.observe(lambda _c: self._update_count(), names="value")
        bar = w.HBox([self._prev, self._next, self._filter, self._id_box, self._go, self._count])
        details = w.HBox([self._row, w.VBox([self._neighbours, self._neighbour_list])])
        super().__init__([bar, self._status, self._stamps, details])
        self.add_class("sl-footprint-inspector")
        viewer.on_select(self._on_select)
        self._listening = True
        self._update_count()

    # ---- public ---------------------------------------------------------------------------
    @property
    def current_id(self) -> int | None:
        """Id of the source shown (None before the first)."""
        return None if self.inspection is None else self.inspection.source_id

    def filtered_ids(self) -> np.ndarray:
        """Ids that next/previous step through (the filter chosen in the dropdown)."""
        choice = self._filter.value
        if choice == _BLENDS:
            return select_sources(self.catalog, parents_only=True)
        if choice == _ALL:
            return select_sources(self.catalog)
        return select_sources(self.catalog, str(choice))

    def set_filter(self, flag: str) -> None:
        """Step through ``"BLENDS"``, ``"ALL"`` or sources with the named flag bit.

        Raises
        ------
        ValueError
            For an unknown name.
        """
        key = str(flag).upper()
        if key not in {value for _label, value in self._filter.options}:
            msg = f"flag must be 'BLENDS', 'ALL' or a SourceFlag name, got {flag!r}"
            raise ValueError(msg)
        self._filter.value = key

    def show(self, source_id: int, *, pan: bool = True) -> ObjectInspection:
        """Show one source by catalog id; returns what is shown.

        Raises
        ------
        ValueError
            If ``source_id`` is not in the catalog (the message names the id range).
        """
        found = inspect_object(
            self.exposure, self.catalog, self.deblended, source_id, self.config, psf=self.psf
        )
        self.inspection = found
        self._id_box.value = found.source_id
        self._status.value = messages_html(found.messages)
        self._render_stamps(found)
        self._row.value = _row_html(found)
        self._neighbours.value = _neighbours_html(found)
        self._filling = True
        try:
            self._neighbour_list.options = [
                (f"{int(r['id'])}  ({float(r['distance']):.1f} px)", int(r["id"]))
                for r in found.neighbours
            ]
            self._neighbour_list.value = None
        finally:
            self._filling = False
        self._draw_overlays(found)
        x, y = float(found.values["x"]), float(found.values["y"])
        if pan and np.isfinite(x) and np.isfinite(y):
            self.viewer.set_pan(x, y)
        rows = np.flatnonzero(self._ids == found.source_id).tolist()
        current = self.viewer.selection
        if current.get("catalog") != self.catalog_label or list(current.get("rows") or []) != rows:
            self.viewer.selection = {"catalog": self.catalog_label, "rows": rows}
        return found

    def next(self) -> ObjectInspection | None:
        """Show the next source that passes the filter (None when none does)."""
        return self._step(1)

    def previous(self) -> ObjectInspection | None:
        """Show the previous source that passes the filter (None when none does)."""
        return self._step(-1)

    def static_figure(self) -> Any:
        """Matplotlib figure of the stamps shown (for papermill reports), or None."""
        found = self.inspection
        if found is None or found.parent is None:
            return None
        rows = [
            (_label(stamp, found), [stamp.image, stamp.model, stamp.residual, stamp.weights])
            for stamp in [found.parent, *found.children]
        ]
        return plot_stamp_grid(
            rows,
            columns=("image", "model", "residual", "footprint"),
            title=f"source {found.source_id}",
        )

    def close(self) -> None:
        """Stop listening to the viewer, remove the overlays and close the widget."""
        if self._listening:
            self._listening = False
            self.viewer.on_select(self._on_select, remove=True)
        if self.layer_id in self.viewer.region_layers:
            self.viewer.delete_region_layer(self.layer_id)
        super().close()

    # ---- internals ------------------------------------------------------------------------
    def _step(self, step: int) -> ObjectInspection | None:
        ids = self.filtered_ids()
        if len(ids) == 0:
            self._status.value = messages_html(
                [f"no source matches the filter {self._filter.label!r}; choose another"]
            )
            return None
        return self.show(step_id(ids, self.current_id, step))

    def _show_typed(self) -> None:
        try:
            self.show(int(self._id_box.value))
        except ValueError as error:
            self._status.value = messages_html([str(error)])

    def _update_count(self) -> None:
        self._count.value = f"<span>{len(self.filtered_ids())} sources</span>"

    def _on_neighbour(self, change: dict[str, Any]) -> None:
        if self._filling or change["new"] is None:
            return
        self.show(int(change["new"]), pan=False)

    def _on_select(self, selection: dict[str, Any]) -> None:
        rows = list(selection.get("rows") or [])
        if selection.get("catalog") != self.catalog_label or not rows:
            return
        source_id = int(self._ids[int(rows[-1])])
        if source_id != self.current_id:
            self.show(source_id, pan=False)

    def _render_stamps(self, found: ObjectInspection) -> None:
        if found.parent is None:
            self._stamps.children = ()
            return
        stamps = [found.parent, *found.children]
        while len(self._pool) < len(stamps):
            label = w.HTML(layout=w.Layout(width="128px"))
            images = [w.Image(format="png", layout=w.Layout(width="120px")) for _kind in _KINDS]
            self._pool.append((label, images, w.HBox([label, *images])))
        for stamp, (label, images, _box) in zip(stamps, self._pool, strict=False):
            label.value = _label(stamp, found)
            limits = stamp_limits(stamp.image)
            arrays = (
                (stamp.image, limits, found.valid),
                (stamp.model, limits, found.valid),
                (stamp.residual, limits, found.valid),
                (stamp.weights, (0.0, 1.0), None),
            )
            for kind, image, (array, lim, valid) in zip(_KINDS, images, arrays, strict=True):
                # the pixels first, then the classes that name the source (tests wait on them)
                image.value = stamp_png(array, lim, valid=valid)
                image._dom_classes = (
                    "sl-stamp",
                    f"sl-stamp-{kind}",
                    f"sl-stamp-source-{stamp.source_id}",
                )
        self._stamps.children = (self._header, *(box for _l, _i, box in self._pool[: len(stamps)]))

    def _draw_overlays(self, found: ObjectInspection) -> None:
        shapes: list[Any] = []
        for line in found.outline:
            if len(line) >= 3:
                vertices = PixCoord(line[:, 0], line[:, 1])
                shapes.append(PolygonPixelRegion(vertices, visual={"edgecolor": "cyan"}))
        for px, py in found.peaks:
            shapes.append(
                PointPixelRegion(
                    PixCoord(float(px), float(py)), visual={"color": "orange", "marker": "+"}
                )
            )
        x, y = float(found.values["x"]), float(found.values["y"])
        if np.isfinite(x) and np.isfinite(y):
            centre = PixCoord(x, y)
            for radius in found.aperture_radii_px:
                shapes.append(
                    CirclePixelRegion(
                        centre, radius, visual={"edgecolor": "yellow", "linestyle": "dashed"}
                    )
                )
            if found.ellipse is not None:
                _, _, a, b, theta = found.ellipse
                if a > 0 and b > 0:
                    shapes.append(
                        EllipsePixelRegion(
                            centre, 2 * a, 2 * b, angle=theta * u.deg, visual={"edgecolor": "red"}
                        )
                    )
                    k = found.kron_radius_px * found.config.kron_factor
                    if np.isfinite(k) and k > 0:
                        shapes.append(
                            EllipsePixelRegion(
                                centre, 2 * a * k, 2 * b * k, angle=theta * u.deg,
                                visual={"edgecolor": "magenta", "linestyle": "dashed"},
                            )
                        )  # fmt: skip
        with self.viewer.buffering():
            self.viewer.overlay_region_layer(shapes, layer_id=self.layer_id, title="inspected")


def _label(stamp: SourceStamp, found: ObjectInspection) -> str:
    role = "parent" if found.parent is not None and stamp is found.parent else "child"
    if not found.children:
        role = "isolated"
    mark = " ◀" if stamp.source_id == found.source_id else ""
    return f"{role} {stamp.source_id}{mark}"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _row_html(found: ObjectInspection) -> str:
    values = found.values
    names = list(values)[:_ROW_COLUMNS]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td data-column='{html.escape(n)}'>"
        f"{_format(values[n])}</td></tr>"
        for n in names
    )
    flags = ", ".join(found.flags) or "none"
    return (
        f'<div class="sl-inspect-row" data-source-id="{found.source_id}">'
        f"<b>source {found.source_id}</b> (parent {found.parent_id}, catalog row {found.row})"
        f'<div class="sl-inspect-flags"><b>flags:</b> {html.escape(flags)}</div>'
        f'<table style="font-size:90%">{rows}</table></div>'
    )


def _neighbours_html(found: ObjectInspection) -> str:
    radius = found.config.neighbour_radius_px
    count = len(found.neighbours)
    if count == 0:
        return f"<div class='sl-inspect-neighbours'>no neighbours within {radius:g} px</div>"
    return (
        f"<div class='sl-inspect-neighbours'><b>{count} neighbours within {radius:g} px</b>"
        "<br>(choose one to inspect it)</div>"
    )
