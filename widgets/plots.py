"""Figures of catalogs and PSF diagnostics, in bokeh (interactive) or matplotlib (static).

Every ``plot_*`` function builds one description of the plot and renders it with
``backend="bokeh"`` (default; a :class:`bokeh.plotting.figure`, never shown) or
``backend="matplotlib"`` (a :class:`matplotlib.figure.Figure` for papermill
reports, made without pyplot). Catalog scatter plots keep each point's catalog
row in a ``row`` column of a data source named ``"catalog"``, which is what
:func:`~stacklab.widgets.link_selection` links to the image viewer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from stacklab.toolkit.inspect_psf import (
    SRD_RHO1_REQUIREMENTS,
    PsfFieldMap,
    size_magnitude,
    whiskers,
)
from stacklab.toolkit.rho_statistics import RhoStatistics

__all__ = [
    "CATALOG_SOURCE_NAME",
    "plot_catalog",
    "plot_colour_magnitude",
    "plot_flux_comparison",
    "plot_psf_size_map",
    "plot_psf_whiskers",
    "plot_radial_profiles",
    "plot_rho_statistics",
    "plot_size_magnitude",
]

Backend = Literal["bokeh", "matplotlib"]
#: Name of the bokeh data source holding catalog rows (what linking looks for).
CATALOG_SOURCE_NAME = "catalog"
_TOOLS = "pan,wheel_zoom,box_select,lasso_select,tap,reset,save"
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass
class _Layer:
    kind: Literal["scatter", "line", "segments", "image", "hline"]
    data: dict[str, NDArray[Any]]
    label: str | None = None
    color: str = _COLORS[0]
    size: float = 5.0
    dash: bool = False
    value_label: str | None = None  # colour-mapped scatter/image: the colour bar's label
    linked: bool = False


@dataclass
class _Spec:
    title: str
    x_label: str
    y_label: str
    layers: list[_Layer] = field(default_factory=list)
    y_log: bool = False
    x_log: bool = False
    y_reversed: bool = False
    equal_aspect: bool = False
    width: int = 420
    height: int = 360


def plot_catalog(
    catalog: Table,
    x: str,
    y: str,
    *,
    rows: NDArray[np.integer] | None = None,
    title: str | None = None,
    backend: Backend = "bokeh",
) -> Any:
    """Scatter plot of two catalog columns; points carry their catalog row.

    Parameters
    ----------
    catalog : astropy.table.Table
        The catalog (the same table, in the same order, as loaded in the viewer).
    x, y : str
        Column names.
    rows : numpy.ndarray of int, optional
        Only these rows.
    title : str, optional
        Plot title.
    backend : {"bokeh", "matplotlib"}
        Figure library.

    Returns
    -------
    bokeh.plotting.figure or matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For a column the catalog lacks.
    """
    _need(catalog, x, y)
    index = np.arange(len(catalog)) if rows is None else np.asarray(rows, dtype=np.int64)
    xs = np.asarray(catalog[x], dtype=np.float64)[index]
    ys = np.asarray(catalog[y], dtype=np.float64)[index]
    spec = _Spec(title or f"{y} vs {x}", _unit_label(catalog, x), _unit_label(catalog, y))
    spec.layers.append(_scatter(xs, ys, index, "sources", linked=True))
    return _render(spec, backend)


def plot_size_magnitude(
    catalog: Table, *, zero_point: float | None = None, backend: Backend = "bokeh"
) -> Any:
    """Size ``T = Ixx + Iyy`` against PSF magnitude, PSF stars and reserved stars marked.

    Parameters
    ----------
    catalog : astropy.table.Table
        A process_frame catalog (``flux_psf``, ``ixx``, ``iyy``, ``flags``).
    zero_point : float, optional
        AB zero point; instrumental magnitudes when omitted.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    data = size_magnitude(catalog, zero_point=zero_point)
    mag_name = "PSF magnitude (AB)" if zero_point is not None else "instrumental PSF magnitude"
    spec = _Spec("Size-magnitude: PSF-star selection", mag_name, "T = Ixx + Iyy (px²)", y_log=True)
    rows = np.arange(len(data))
    star, reserved = np.asarray(data["psf_star"]), np.asarray(data["psf_reserved"])
    other = ~star & ~reserved
    mag, size = np.asarray(data["mag"]), np.asarray(data["T"])
    for mask, label, color in (
        (other, "all sources", "#7f7f7f"),
        (star, "PSF stars (fit)", _COLORS[1]),
        (reserved, "PSF stars (reserved)", _COLORS[2]),
    ):
        layer = _scatter(mag[mask], size[mask], rows[mask], label, linked=True)
        layer.color = color
        spec.layers.append(layer)
    return _render(spec, backend)


def plot_colour_magnitude(
    table: Table, blue: str, red: str, *, magnitude: str | None = None, backend: Backend = "bokeh"
) -> Any:
    """Colour-magnitude diagram: ``blue - red`` against ``magnitude`` (``red`` by default).

    Parameters
    ----------
    table : astropy.table.Table
        A matched multi-band catalog with magnitude columns.
    blue, red : str
        Magnitude columns of the bluer and redder band.
    magnitude : str, optional
        Column on the horizontal axis.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    magnitude = red if magnitude is None else magnitude
    _need(table, blue, red, magnitude)
    b, r = np.asarray(table[blue], np.float64), np.asarray(table[red], np.float64)
    m = np.asarray(table[magnitude], np.float64)
    spec = _Spec("Colour-magnitude", magnitude, f"{blue} - {red}")
    spec.layers.append(_scatter(m, b - r, np.arange(len(table)), "sources", linked=True))
    return _render(spec, backend)


def plot_flux_comparison(
    catalog: Table, flux_a: str, flux_b: str, *, backend: Backend = "bokeh"
) -> Any:
    """Magnitude difference ``-2.5 log10(flux_a / flux_b)`` against the magnitude of ``flux_a``.

    Parameters
    ----------
    catalog : astropy.table.Table
        Catalog with both flux columns (ADU).
    flux_a, flux_b : str
        Flux columns, e.g. ``"flux_psf"`` and ``"flux_kron"``.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    _need(catalog, flux_a, flux_b)
    a = np.asarray(catalog[flux_a], np.float64)
    b = np.asarray(catalog[flux_b], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = -2.5 * np.log10(a)
        diff = -2.5 * np.log10(a / b)
    spec = _Spec(
        f"{flux_a} vs {flux_b}", f"instrumental mag ({flux_a})", f"Δmag {flux_a} - {flux_b}"
    )
    spec.layers.append(_scatter(mag, diff, np.arange(len(catalog)), "sources", linked=True))
    spec.layers.append(_Layer("hline", {"y": np.array([0.0])}, color="#000000", dash=True))
    return _render(spec, backend)


def plot_rho_statistics(rho: RhoStatistics, *, backend: Backend = "bokeh") -> Any:
    """|rho 1-5| against separation with the LSST SRD requirements on rho1 (TE1, TE2).

    Negative values are drawn with open markers; rho1's shot-noise error as bars.
    """
    spec = _Spec("Rho statistics", "θ (arcmin)", "|ρ(θ)|", y_log=True, x_log=True)
    theta = np.asarray(rho.theta_arcmin, dtype=np.float64)
    for k, name in enumerate(("rho1", "rho2", "rho3", "rho4", "rho5")):
        values = np.asarray(getattr(rho, name), dtype=np.float64)
        good = np.isfinite(values) & (values != 0) & np.isfinite(theta)
        data: dict[str, NDArray[Any]] = {
            "x": theta[good],
            "y": np.abs(values[good]),
            "fill": np.where(values[good] < 0, 0.0, 1.0),
        }
        if name == "rho1":
            sigma = np.asarray(rho.sigma1, dtype=np.float64)[good]
            data["low"] = np.maximum(np.abs(values[good]) - sigma, 1e-12)
            data["high"] = np.abs(values[good]) + sigma
        spec.layers.append(_Layer("line", data, label=f"ρ{k + 1}", color=_COLORS[k]))
    for name, value, lo, hi in SRD_RHO1_REQUIREMENTS:
        data = {"x": np.array([max(lo, 0.1), hi]), "y": np.array([value, value])}
        spec.layers.append(
            _Layer("line", data, label=f"SRD {name} (ρ1)", color="#000000", dash=True)
        )
    return _render(spec, backend)


def plot_psf_whiskers(
    field_map: PsfFieldMap, *, scale_px: float | None = None, backend: Backend = "bokeh"
) -> Any:
    """Whiskers of PSF ellipticity: the model on its grid and the star residuals.

    Each whisker is ``|e|`` long (times ``scale_px``) along the position angle.

    Parameters
    ----------
    field_map : PsfFieldMap
        From :func:`~stacklab.toolkit.inspect_psf.psf_field`.
    scale_px : float, optional
        Pixels per unit ellipticity; chosen so the longest model whisker spans
        about a grid cell when omitted.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    gx, gy = field_map.grid_x.ravel(), field_map.grid_y.ravel()
    length, angle = whiskers(field_map.grid_e1.ravel(), field_map.grid_e2.ravel())
    cell = float(gx.max() - gx.min()) / max(field_map.grid_x.shape[1] - 1, 1)
    if scale_px is None:
        top = float(np.nanmax(length)) if np.any(np.isfinite(length)) else 0.0
        scale_px = 0.9 * cell / top if top > 0 else 1.0
    spec = _Spec("PSF ellipticity", "x (px)", "y (px)", equal_aspect=True)
    spec.layers.append(_segments(gx, gy, length * scale_px, angle, "model", _COLORS[0]))
    stars = field_map.stars
    if len(stars):
        slen, sang = whiskers(np.asarray(stars["de1"]), np.asarray(stars["de2"]))
        sx, sy = np.asarray(stars["x"]), np.asarray(stars["y"])
        spec.layers.append(_segments(sx, sy, slen * scale_px, sang, "star - model", _COLORS[1]))
    return _render(spec, backend)


def plot_psf_size_map(
    field_map: PsfFieldMap,
    *,
    which: Literal["model", "stars", "residual"] = "model",
    backend: Backend = "bokeh",
) -> Any:
    """Map of PSF size: the model ``T`` on its grid, the stars' ``T``, or ``dT/T``.

    Parameters
    ----------
    field_map : PsfFieldMap
        From :func:`~stacklab.toolkit.inspect_psf.psf_field`.
    which : {"model", "stars", "residual"}
        What to map.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    spec = _Spec(f"PSF size ({which})", "x (px)", "y (px)", equal_aspect=True)
    stars = field_map.stars
    if which == "model":
        data = {
            "image": field_map.grid_T,
            "x0": np.array([field_map.grid_x.min()]),
            "y0": np.array([field_map.grid_y.min()]),
            "dw": np.array([np.ptp(field_map.grid_x)]),
            "dh": np.array([np.ptp(field_map.grid_y)]),
        }
        spec.layers.append(_Layer("image", data, value_label="model T (px²)"))
    elif which in ("stars", "residual"):
        column = "T" if which == "stars" else "dT_over_T"
        data = {
            "x": np.asarray(stars["x"], np.float64),
            "y": np.asarray(stars["y"], np.float64),
            "value": np.asarray(stars[column], np.float64),
        }
        label = "star T (px²)" if which == "stars" else "(T_star - T_model) / T_star"
        spec.layers.append(_Layer("scatter", data, size=8.0, value_label=label))
    else:
        msg = f"which must be 'model', 'stars' or 'residual', got {which!r}"
        raise ValueError(msg)
    return _render(spec, backend)


def plot_radial_profiles(
    radius_px: NDArray[np.floating],
    profiles: Mapping[str, NDArray[np.floating]],
    *,
    title: str = "Radial profile",
    backend: Backend = "bokeh",
) -> Any:
    """Radial profiles (e.g. star and model) against radius, log scale.

    Parameters
    ----------
    radius_px : numpy.ndarray
        Ring radii (pixels).
    profiles : dict of str to numpy.ndarray
        Label to profile (fraction of the flux per pixel).
    title : str
        Plot title.
    backend : {"bokeh", "matplotlib"}
        Figure library.
    """
    spec = _Spec(title, "r (px)", "fraction of flux per pixel", y_log=True, width=360, height=300)
    r = np.asarray(radius_px, np.float64)
    for k, (label, values) in enumerate(profiles.items()):
        v = np.asarray(values, np.float64)
        good = np.isfinite(r) & np.isfinite(v) & (v > 0)
        spec.layers.append(
            _Layer("line", {"x": r[good], "y": v[good]}, label=label, color=_COLORS[k % 6])
        )
    return _render(spec, backend)


# ---------------------------------------------------------------------------------------
def _need(table: Table, *names: str) -> None:
    missing = [n for n in names if n not in table.colnames]
    if missing:
        msg = f"the table has no column(s) {missing}; available: {table.colnames}"
        raise ValueError(msg)


def _unit_label(table: Table, name: str) -> str:
    unit = getattr(table[name], "unit", None)
    return f"{name} ({unit})" if unit is not None and str(unit) else name


def _scatter(
    x: NDArray[Any], y: NDArray[Any], rows: NDArray[Any], label: str, *, linked: bool = False
) -> _Layer:
    good = np.isfinite(x) & np.isfinite(y)
    data = {"x": np.asarray(x)[good], "y": np.asarray(y)[good], "row": np.asarray(rows)[good]}
    return _Layer("scatter", data, label=label, linked=linked)


def _segments(
    x: NDArray[Any],
    y: NDArray[Any],
    length: NDArray[Any],
    angle: NDArray[Any],
    label: str,
    color: str,
) -> _Layer:
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(length) & np.isfinite(angle)
    dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
    data = {
        "x0": (x - dx)[good],
        "y0": (y - dy)[good],
        "x1": (x + dx)[good],
        "y1": (y + dy)[good],
    }
    return _Layer("segments", data, label=label, color=color)


def _render(spec: _Spec, backend: Backend) -> Any:
    if backend == "bokeh":
        return _render_bokeh(spec)
    if backend == "matplotlib":
        return _render_matplotlib(spec)
    msg = f"backend must be 'bokeh' or 'matplotlib', got {backend!r}"
    raise ValueError(msg)


def _render_bokeh(spec: _Spec) -> Any:
    from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
    from bokeh.models.annotations import ColorBar, Span
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    fig = figure(
        title=spec.title,
        x_axis_label=spec.x_label,
        y_axis_label=spec.y_label,
        tools=_TOOLS,
        width=spec.width,
        height=spec.height,
        y_axis_type="log" if spec.y_log else "linear",
        x_axis_type="log" if spec.x_log else "linear",
        match_aspect=spec.equal_aspect,
        output_backend="canvas",
    )
    legend = False
    for layer in spec.layers:
        kwargs: dict[str, Any] = {"legend_label": layer.label} if layer.label else {}
        legend |= bool(layer.label)
        if layer.kind == "scatter":
            source = ColumnDataSource({k: np.asarray(v) for k, v in layer.data.items()})
            if layer.linked:
                source.name = CATALOG_SOURCE_NAME
            if layer.value_label is not None:
                values = layer.data["value"]
                finite = values[np.isfinite(values)]
                mapper = LinearColorMapper(
                    palette=Viridis256,
                    low=float(finite.min()) if finite.size else 0.0,
                    high=float(finite.max()) if finite.size else 1.0,
                )
                fig.scatter("x", "y", source=source, size=layer.size,
                            color={"field": "value", "transform": mapper}, **kwargs)  # fmt: skip
                fig.add_layout(ColorBar(color_mapper=mapper, title=layer.value_label), "right")
            else:
                fig.scatter(
                    "x", "y", source=source, size=layer.size, color=layer.color, alpha=0.7,
                    nonselection_alpha=0.15, selection_color="#ffbf00", **kwargs,
                )  # fmt: skip
        elif layer.kind == "line":
            source = ColumnDataSource({k: np.asarray(v) for k, v in layer.data.items()})
            fig.line("x", "y", source=source, color=layer.color,
                     line_dash="dashed" if layer.dash else "solid", **kwargs)  # fmt: skip
            if "fill" in layer.data:
                fig.scatter("x", "y", source=source, color=layer.color, size=6, fill_alpha="fill")
            if "low" in layer.data:
                fig.segment("x", "low", "x", "high", source=source, color=layer.color)
        elif layer.kind == "segments":
            source = ColumnDataSource({k: np.asarray(v) for k, v in layer.data.items()})
            fig.segment("x0", "y0", "x1", "y1", source=source, color=layer.color,
                        line_width=2, **kwargs)  # fmt: skip
        elif layer.kind == "image":
            d = layer.data
            image = np.asarray(d["image"], dtype=np.float64)
            finite = image[np.isfinite(image)]
            mapper = LinearColorMapper(
                palette=Viridis256,
                low=float(finite.min()) if finite.size else 0.0,
                high=float(finite.max()) if finite.size else 1.0,
            )
            mapped: dict[str, Any] = {"color_mapper": mapper}
            fig.image(image=[image], x=float(d["x0"][0]), y=float(d["y0"][0]),
                      dw=float(d["dw"][0]), dh=float(d["dh"][0]), **mapped)  # fmt: skip
            fig.add_layout(ColorBar(color_mapper=mapper, title=layer.value_label), "right")
            fig.x_range = Range1d(start=float(d["x0"][0]), end=float(d["x0"][0] + d["dw"][0]))
            fig.y_range = Range1d(start=float(d["y0"][0]), end=float(d["y0"][0] + d["dh"][0]))
        elif layer.kind == "hline":
            fig.add_layout(Span(location=float(layer.data["y"][0]), dimension="width",
                                line_color=layer.color, line_dash="dashed"))  # fmt: skip
    if legend:
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "8pt"
    return fig


def _render_matplotlib(spec: _Spec) -> Any:
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(spec.width / 90, spec.height / 90), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(spec.title)
    ax.set_xlabel(spec.x_label)
    ax.set_ylabel(spec.y_label)
    legend = False
    for layer in spec.layers:
        d = layer.data
        legend |= bool(layer.label)
        if layer.kind == "scatter":
            if layer.value_label is not None:
                points = ax.scatter(d["x"], d["y"], c=d["value"], s=layer.size * 4, cmap="viridis")
                fig.colorbar(points, ax=ax, label=layer.value_label)
            else:
                ax.scatter(d["x"], d["y"], s=layer.size * 2, color=layer.color, alpha=0.7,
                           label=layer.label, linewidths=0)  # fmt: skip
        elif layer.kind == "line":
            ax.plot(d["x"], d["y"], color=layer.color, linestyle="--" if layer.dash else "-",
                    label=layer.label)  # fmt: skip
            if "fill" in d:
                filled = d["fill"] > 0
                ax.scatter(d["x"][filled], d["y"][filled], color=layer.color, s=12)
                ax.scatter(d["x"][~filled], d["y"][~filled], facecolors="none",
                           edgecolors=layer.color, s=12)  # fmt: skip
            if "low" in d:
                ax.vlines(d["x"], d["low"], d["high"], color=layer.color)
        elif layer.kind == "segments":
            lines = np.stack([np.column_stack([d["x0"], d["y0"]]),
                              np.column_stack([d["x1"], d["y1"]])], axis=1)  # fmt: skip
            ax.add_collection(LineCollection(list(lines), colors=layer.color, label=layer.label))
            ax.autoscale_view()
        elif layer.kind == "image":
            x0, y0 = float(d["x0"][0]), float(d["y0"][0])
            extent = (x0, x0 + float(d["dw"][0]), y0, y0 + float(d["dh"][0]))
            shown = ax.imshow(d["image"], origin="lower", extent=extent, cmap="viridis")
            fig.colorbar(shown, ax=ax, label=layer.value_label)
        elif layer.kind == "hline":
            ax.axhline(float(d["y"][0]), color=layer.color, linestyle="--")
    if spec.y_log:
        ax.set_yscale("log")
    if spec.x_log:
        ax.set_xscale("log")
    if spec.equal_aspect:
        ax.set_aspect("equal")
    if legend:
        ax.legend(fontsize="small")
    return fig
