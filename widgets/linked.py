"""Two-way selection links between bokeh catalog plots and the image viewer.

Points of the plots made by :mod:`stacklab.widgets.plots` carry their catalog
row; the viewer's ``selection`` holds catalog rows too. :func:`link_selection`
copies one to the other in both directions, so a lasso in a plot highlights the
objects in the image and a click on a marker highlights its points. The plot
must be made from the same table, in the same order, as the viewer's catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .plots import CATALOG_SOURCE_NAME

__all__ = ["SelectionLink", "link_selection"]


class SelectionLink:
    """A live link between catalog plots and one catalog of an image viewer.

    Made by :func:`link_selection`; call :meth:`unlink` to stop it.

    Attributes
    ----------
    catalog_label : str
        The viewer catalog whose rows the plots show.
    sources : list of bokeh.models.ColumnDataSource
        The linked data sources (each has a ``row`` column).
    """

    def __init__(self, viewer: Any, figures: Iterable[Any], catalog_label: str) -> None:
        self.viewer = viewer
        self.catalog_label = catalog_label
        grouped = _catalog_sources(figures)
        self.sources = [source for _group, source in grouped]
        self._group = {id(source): group for group, source in grouped}
        if not self.sources:
            msg = (
                "the figures hold no catalog data source (a ColumnDataSource named "
                f"{CATALOG_SOURCE_NAME!r} with a 'row' column); make them with "
                "stacklab.widgets.plots.plot_catalog/plot_size_magnitude/..."
            )
            raise ValueError(msg)
        self._busy = False
        self._callbacks: list[tuple[Any, Callable[..., None]]] = []
        for source in self.sources:
            callback = self._make_callback(source)
            source.selected.on_change("indices", callback)
            self._callbacks.append((source, callback))
        viewer.observe(self._from_viewer, names="selection")
        self._from_viewer({"new": viewer.selection})

    def unlink(self) -> None:
        """Stop copying selections in both directions."""
        self.viewer.unobserve(self._from_viewer, names="selection")
        for source, callback in self._callbacks:
            source.selected.remove_on_change("indices", callback)
        self._callbacks.clear()

    def selected_rows(self) -> list[int]:
        """Catalog rows selected in the plots (sorted, without repeats)."""
        return self._rows_of(self.sources)

    @staticmethod
    def _rows_of(sources: Iterable[Any]) -> list[int]:
        rows: set[int] = set()
        for source in sources:
            column = np.asarray(source.data["row"])
            rows.update(int(column[i]) for i in source.selected.indices if 0 <= i < len(column))
        return sorted(rows)

    # ---- both directions ----------------------------------------------------------------
    def _make_callback(self, origin: Any) -> Callable[[str, Any, Any], None]:
        # One lasso in a figure changes each of its sources in turn; the figure's
        # selection is the union over its sources, and only other figures follow it.
        group = self._group[id(origin)]

        def callback(_attr: str, _old: Any, _new: Any) -> None:
            if self._busy:
                return
            rows = self._rows_of(s for s in self.sources if self._group[id(s)] == group)
            self._busy = True
            try:
                self._select_in_plots(rows, skip_group=group)
                self.viewer.selection = {"catalog": self.catalog_label, "rows": rows}
            finally:
                self._busy = False

        return callback

    def _from_viewer(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        selection = change["new"] or {}
        rows = (
            [int(r) for r in selection.get("rows") or []]
            if selection.get("catalog") == self.catalog_label
            else []
        )
        self._busy = True
        try:
            self._select_in_plots(rows, skip_group=None)
        finally:
            self._busy = False

    def _select_in_plots(self, rows: list[int], skip_group: int | None) -> None:
        wanted = np.asarray(rows, dtype=np.int64)
        for source in self.sources:
            if self._group[id(source)] == skip_group:
                continue
            column = np.asarray(source.data["row"], dtype=np.int64)
            indices = np.flatnonzero(np.isin(column, wanted)).tolist()
            if list(source.selected.indices) != indices:
                source.selected.indices = indices


def link_selection(
    viewer: Any, figures: Any | Iterable[Any], *, catalog_label: str | None = None
) -> SelectionLink:
    """Link the selections of catalog plots and an image viewer, both ways.

    Parameters
    ----------
    viewer : ImageViewer
        The viewer showing the catalog as markers.
    figures : bokeh figure or layout, or an iterable of them
        Plots from :mod:`stacklab.widgets.plots` made from the same catalog table.
    catalog_label : str, optional
        The viewer's catalog; optional when exactly one is loaded.

    Returns
    -------
    SelectionLink

    Raises
    ------
    ValueError
        If the viewer has no such catalog, or the figures hold no catalog source.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.table import Table
    >>> from stacklab.widgets import ImageViewer
    >>> from stacklab.widgets.plots import plot_catalog
    >>> cat = Table({"x": [10.0, 20.0], "y": [5.0, 8.0], "flux": [1.0, 2.0]})
    >>> viewer = ImageViewer(np.zeros((30, 30)))
    >>> viewer.load_catalog(cat, catalog_label="src")
    >>> fig = plot_catalog(cat, "x", "flux")
    >>> link = link_selection(viewer, fig, catalog_label="src")
    >>> viewer.selection = {"catalog": "src", "rows": [1]}
    >>> link.selected_rows()
    [1]
    """
    labels = tuple(viewer.catalog_labels)
    if catalog_label is None and len(labels) == 1:
        catalog_label = labels[0]
    if catalog_label not in labels:
        msg = (
            f"catalog_label {catalog_label!r} is not a catalog of the viewer (loaded: "
            f"{', '.join(map(repr, labels)) or 'none'}); call viewer.load_catalog(table, "
            "catalog_label=...) with the table the plots were made from"
        )
        raise ValueError(msg)
    label = str(catalog_label)
    if hasattr(figures, "select") and not isinstance(figures, list | tuple):
        figures = [figures]
    return SelectionLink(viewer, figures, label)


def _catalog_sources(figures: Iterable[Any]) -> list[tuple[int, Any]]:
    """``(figure index, source)`` of every catalog source, each source once."""
    from bokeh.models import ColumnDataSource

    found: list[tuple[int, Any]] = []
    for group, figure in enumerate(figures):
        for source in figure.select({"type": ColumnDataSource}):
            named = source.name == CATALOG_SOURCE_NAME and "row" in source.data
            if named and not any(source is s for _, s in found):
                found.append((group, source))
    return found
