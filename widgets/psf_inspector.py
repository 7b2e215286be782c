"""PsfInspector: the PSF model at a position, the stars around it, and the model over the field.

The computation is :mod:`stacklab.toolkit.inspect_psf`; this widget lays it out
with ipywidgets and shows bokeh figures through ``jupyter_bokeh.BokehModel``
(call ``bokeh.io.output_notebook()`` once in the notebook so BokehJS is loaded).
It works for single frames (``PsfModel`` with ``PsfFit.stars``) and coadds
(``CoaddPsf`` with stars measured by :func:`~stacklab.toolkit.inspect_psf.star_shapes`).
"""

from __future__ import annotations

import logging
from typing import Any

import ipywidgets as w  # type: ignore[import-untyped]
from astropy.table import Table

from stacklab.toolkit.exposure import Exposure
from stacklab.toolkit.inspect_psf import PsfInspection, inspect_psf, psf_field
from stacklab.toolkit.rho_statistics import RhoStatistics

from ._messages import messages_html
from .plots import (
    Backend,
    plot_psf_size_map,
    plot_psf_whiskers,
    plot_radial_profiles,
    plot_rho_statistics,
    plot_size_magnitude,
)
from .stamps import stamp_limits, stamp_png

__all__ = ["PsfInspector", "psf_report_figures"]

log = logging.getLogger(__name__)


def psf_report_figures(
    exposure: Exposure,
    *,
    psf: Any = None,
    stars: Table | None = None,
    rho: RhoStatistics | None = None,
    catalog: Table | None = None,
    zero_point: float | None = None,
    n_grid: int = 9,
    backend: Backend = "bokeh",
) -> dict[str, Any]:
    """Field-wide PSF figures: whiskers, size maps, rho statistics and size-magnitude.

    Parameters
    ----------
    exposure : Exposure
        Single frame or coadd.
    psf : object with ``compute_image(x, y)``, optional
        The model; ``exposure.psf`` by default.
    stars : astropy.table.Table, optional
        Stars with moments (``PsfFit.stars`` or ``star_shapes``) for residuals.
    rho : RhoStatistics, optional
        Rho statistics (``PsfFit.validation.rho``); the rho plot is skipped without.
    catalog : astropy.table.Table, optional
        Source catalog for the size-magnitude diagram.
    zero_point : float, optional
        AB zero point of the magnitudes.
    n_grid : int
        Model grid points per side.
    backend : {"bokeh", "matplotlib"}
        Figure library (matplotlib for papermill reports).

    Returns
    -------
    dict of str to figure
        Keys among ``whiskers``, ``size_model``, ``size_stars``, ``size_residual``,
        ``rho``, ``size_magnitude``.
    """
    psf = exposure.psf if psf is None else psf
    moments = ("x", "y", "T", "e1", "e2", "model_T", "model_e1", "model_e2")
    if stars is not None and not all(name in stars.colnames for name in moments):
        log.info("stars have no moments; the field plots show the model only")
        stars = None
    field_map = psf_field(exposure.shape, psf, stars, n_grid=n_grid)
    figures: dict[str, Any] = {
        "whiskers": plot_psf_whiskers(field_map, backend=backend),
        "size_model": plot_psf_size_map(field_map, which="model", backend=backend),
    }
    if len(field_map.stars):
        figures["size_stars"] = plot_psf_size_map(field_map, which="stars", backend=backend)
        figures["size_residual"] = plot_psf_size_map(field_map, which="residual", backend=backend)
    if rho is not None:
        figures["rho"] = plot_rho_statistics(rho, backend=backend)
    if catalog is not None:
        figures["size_magnitude"] = plot_size_magnitude(
            catalog, zero_point=zero_point, backend=backend
        )
    return figures


class PsfInspector(w.VBox):
    """Inspect a PSF model at any position, and over the field.

    The "position" tab shows the model stamp with its FWHM and moments and the
    nearest stars as data, model and residual stamps (one stretch per star) with
    their radial profiles; the "field" tab (built when first opened) shows the
    whisker plot, size maps, rho statistics with the LSST SRD lines and the
    size-magnitude diagram of :func:`psf_report_figures`. With a viewer, clicking
    any catalog marker inspects the PSF at that object.

    Parameters
    ----------
    exposure : Exposure
        Single frame or coadd, with its PSF (or pass ``psf``).
    psf : object with ``compute_image(x, y)``, optional
        ``PsfModel`` or ``CoaddPsf``; ``exposure.psf`` by default.
    stars : astropy.table.Table, optional
        Stars (``x, y``, plus moments for the residual maps).
    rho : RhoStatistics, optional
        For the rho plot.
    catalog : astropy.table.Table, optional
        For the size-magnitude diagram.
    viewer : ImageViewer, optional
        Viewer whose marker clicks choose the position.
    n_stars : int
        Number of nearest stars shown.
    zero_point : float, optional
        AB zero point for magnitudes.

    Raises
    ------
    ValueError
        If there is no PSF.
    """

    def __init__(
        self,
        exposure: Exposure,
        *,
        psf: Any = None,
        stars: Table | None = None,
        rho: RhoStatistics | None = None,
        catalog: Table | None = None,
        viewer: Any = None,
        n_stars: int = 4,
        zero_point: float | None = None,
    ) -> None:
        psf = exposure.psf if psf is None else psf
        if psf is None:
            msg = "no PSF: the exposure has none; pass psf= (FrameResult.psf or a CoaddPsf)"
            raise ValueError(msg)
        self.exposure = exposure
        self.psf = psf
        self.stars = stars
        self.rho = rho
        self.catalog = catalog
        self.viewer = viewer
        self.n_stars = n_stars
        self.zero_point = zero_point
        self.inspection: PsfInspection | None = None
        ny, nx = exposure.shape
        self._x = w.FloatText(value=(nx - 1) / 2, description="x:", layout=w.Layout(width="170px"))
        self._y = w.FloatText(value=(ny - 1) / 2, description="y:", layout=w.Layout(width="170px"))
        self._go = w.Button(description="inspect", layout=w.Layout(width="80px"))
        self._go.on_click(lambda _b: self._show_typed())
        self._status = w.HTML()
        self._model = w.HBox()
        self._stars = w.VBox()
        self._profile = w.Box()
        position = w.VBox(
            [
                w.HBox([self._x, self._y, self._go]),
                self._status,
                w.HBox([self._model, self._profile]),
                self._stars,
            ]
        )
        self._field = w.VBox([w.HTML("building field plots...")])
        self._field_built = False
        self._tabs = w.Tab(children=[position, self._field])
        self._tabs.set_title(0, "position")
        self._tabs.set_title(1, "field")
        self._tabs.observe(self._on_tab, names="selected_index")
        super().__init__([self._tabs])
        self.add_class("sl-psf-inspector")
        self._listening = False
        if viewer is not None:
            viewer.on_select(self._on_select)
            self._listening = True

    def show_position(self, x: float, y: float) -> PsfInspection:
        """Inspect the PSF at ``(x, y)`` (pixels); returns what is shown.

        Raises
        ------
        ValueError
            If the position is off the image.
        """
        found = inspect_psf(self.exposure, x, y, self.stars, psf=self.psf, n_stars=self.n_stars)
        self.inspection = found
        self._x.value, self._y.value = float(x), float(y)
        self._status.value = messages_html(found.messages)
        model = found.model
        png = stamp_png(model.stamp, stamp_limits(model.stamp, percentile=100.0))
        info = (
            f"<div class='sl-psf-info'><b>PSF at ({model.x:.1f}, {model.y:.1f})</b><br>"
            f"FWHM {model.fwhm_px:.3f} px (profile)<br>T {model.T:.3f} px²<br>"
            f"e1 {model.e1:+.4f}, e2 {model.e2:+.4f}</div>"
        )
        self._model.children = (w.Image(value=png, format="png"), w.HTML(info))
        rows: list[w.Widget] = []
        for star in found.stars:
            limits = star.limits
            images: list[w.Widget] = [
                w.HTML(
                    f"star {star.index}<br>({star.x:.1f}, {star.y:.1f})<br>"
                    f"d {star.distance_px:.0f} px<br>FWHM {star.star_fwhm_px:.2f} / "
                    f"{star.model_fwhm_px:.2f} px",
                    layout=w.Layout(width="140px"),
                )
            ]
            for array in (star.data, star.model, star.residual):
                image = w.Image(
                    value=stamp_png(array, limits, valid=star.valid),
                    format="png",
                    layout=w.Layout(width="110px"),
                )
                image.add_class("sl-psf-stamp")
                images.append(image)
            rows.append(w.HBox(images))
        self._stars.children = tuple(rows)
        profiles = {"model": model.profile}
        radius = model.radius_px
        if found.stars:
            star = found.stars[0]
            radius = star.radius_px
            profiles = {"nearest star": star.star_profile, "model at star": star.model_profile}
        self._profile.children = (_bokeh(plot_radial_profiles(radius, profiles)),)
        return found

    def show_field(self) -> None:
        """Build the field tab (whiskers, size maps, rho, size-magnitude) and select it."""
        self._build_field()
        self._tabs.selected_index = 1

    def close(self) -> None:
        """Stop listening to the viewer and close the widget."""
        if self._listening and self.viewer is not None:
            self._listening = False
            self.viewer.on_select(self._on_select, remove=True)
        super().close()

    # ---- internals ------------------------------------------------------------------------
    def _build_field(self) -> None:
        if self._field_built:
            return
        self._field_built = True
        try:
            figures = psf_report_figures(
                self.exposure, psf=self.psf, stars=self.stars, rho=self.rho,
                catalog=self.catalog, zero_point=self.zero_point,
            )  # fmt: skip
        except ValueError as error:
            self._field.children = (w.HTML(messages_html([str(error)])),)
            return
        from bokeh.layouts import gridplot

        # One bokeh document for all the plots: one widget to sync and one BokehJS
        # render, instead of one per figure.
        grid = gridplot(list(figures.values()), ncols=2, toolbar_location="right")
        self._field.children = (_bokeh(grid),)

    def _on_tab(self, change: dict[str, Any]) -> None:
        if change["new"] == 1:
            self._build_field()

    def _show_typed(self) -> None:
        try:
            self.show_position(float(self._x.value), float(self._y.value))
        except ValueError as error:
            self._status.value = messages_html([str(error)])

    def _on_select(self, selection: dict[str, Any]) -> None:
        table = selection.get("table")
        if table is None or len(table) == 0 or "x" not in table.colnames:
            return
        x, y = float(table["x"][-1]), float(table["y"][-1])
        try:
            self.show_position(x, y)
        except ValueError as error:
            self._status.value = messages_html([str(error)])


def _bokeh(figure: Any) -> Any:
    from jupyter_bokeh import BokehModel

    return BokehModel(figure)
