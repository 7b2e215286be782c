"""Shared state of the image viewer: synced traits, tile serving, rendering, selection."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import math
import numbers
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.visualization import (
    HistEqStretch,
)
from astropy.wcs.utils import proj_plane_pixel_scales
from numpy.typing import NDArray

from . import _render
from ._display import (
    colormap_lut,
    make_stretch,
    parse_color,
    stretch_lut,
)
from ._images import ImageRecord
from ._regions import MARKER_CODES, RegionLayerData, RegionReport, regions_to_layer

log = logging.getLogger(__name__)


_STATIC = Path(__file__).parent / "static"
#: Label used by ``load_image`` when none is given (one shared unlabeled image).
DEFAULT_IMAGE_LABEL = "default"
#: Label used by ``load_catalog`` when none is given (one shared unlabeled catalog).
DEFAULT_CATALOG_LABEL = "default"
_CATALOG_SHAPES = ("circle", "square", "crosshair", "plus", "diamond")
_DEFAULT_CATALOG_STYLE = {"shape": "circle", "color": "red", "size": 5.0}
#: afw.display's default mask-plane colours.
_MASK_COLORS = {
    "BAD": "red",
    "CR": "magenta",
    "EDGE": "yellow",
    "INTRP": "green",
    "INTERPOLATED": "green",
    "SAT": "green",
    "SATURATED": "green",
    "DETECTED": "blue",
    "DETECTED_NEGATIVE": "cyan",
    "SUSPECT": "yellow",
    "NO_DATA": "orange",
}
_OTHER_MASK_COLORS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_WCS_GRID = 33
_AFW_LAYER = "afw"


class ViewerBase(anywidget.AnyWidget):
    """Synced state, message handling and rendering shared by every vocabulary."""

    width = traitlets.Int(800).tag(sync=True)
    height = traitlets.Int(600).tag(sync=True)
    selection: traitlets.Dict[str, Any] = traitlets.Dict({"catalog": None, "rows": []}).tag(
        sync=True
    )
    _image = traitlets.Dict({}).tag(sync=True)
    _display = traitlets.Dict({}).tag(sync=True)
    _viewport = traitlets.Dict({}).tag(sync=True)
    _masks: traitlets.Dict[str, Any] = traitlets.Dict({"planes": []}).tag(sync=True)
    _layers: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._images: dict[str, ImageRecord] = {}
        self._current: str | None = None
        self._catalogs: dict[str, dict[str, Any]] = {}
        self._regions: dict[str, dict[str, Any]] = {}
        self._mask_style: dict[str, dict[str, Any]] = {}
        self._buffer_depth = 0
        self._layers_dirty = False
        self._select_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._image_rev = 0
        self.on_msg(self._handle_message)
        self.observe(self._on_browser_viewport, names="_viewport")
        self.observe(self._on_selection, names="selection")

    @contextlib.contextmanager
    def buffering(self) -> Iterator[None]:
        """Batch overlay calls: everything drawn inside is sent in one update.

        Examples
        --------
        >>> import numpy as np
        >>> from stacklab.widgets import ImageViewer
        >>> viewer = ImageViewer(np.zeros((100, 100)))
        >>> with viewer.buffering():
        ...     for i in range(10):
        ...         viewer.dot("o", 10 * i, 50, size=3)
        """
        self._buffer_depth += 1
        try:
            yield
        finally:
            self._buffer_depth -= 1
            if self._buffer_depth == 0 and self._layers_dirty:
                self._push_layers()

    # =====================================================================================
    # Selection callbacks, rendering, notebook display
    # =====================================================================================
    def on_select(self, callback: Callable[[dict[str, Any]], None], remove: bool = False) -> None:
        """Call ``callback(selection)`` whenever catalog rows are selected in the browser.

        ``selection`` is ``{"catalog": label, "rows": [indices], "table": Table of rows}``.
        """
        if remove:
            self._select_callbacks.remove(callback)
        else:
            self._select_callbacks.append(callback)

    def selected_rows(self) -> Table | None:
        """Return the selected catalog rows as a Table (None when nothing is selected)."""
        label = self.selection.get("catalog")
        rows = list(self.selection.get("rows") or [])
        if label not in self._catalogs or not rows:
            return None
        return self.get_catalog(catalog_label=label)[rows]

    def render(self, *, draft: bool = False) -> NDArray[np.uint8]:
        """Render the current view in Python as an RGBA array of shape (height, width, 4).

        The same lookup tables as the browser are used, so pixel colours match what it
        paints; overlays are drawn with Pillow.
        """
        record = self._images.get(self._current) if self._current else None
        layers = [(entry["data"], entry["visible"]) for entry in self._regions.values()]
        catalogs = [(entry["x"], entry["y"], entry["style"]) for entry in self._catalogs.values()]
        if record is None:
            return _render.render_view(
                None, width=self.width, height=self.height, layers=layers, catalogs=catalogs
            )
        cx, cy = self._pixel_center(record)
        return _render.render_view(
            record,
            width=self.width,
            height=self.height,
            center=(cx, cy),
            zoom=self._zoom(record),
            masks=list(self._mask_style.values()),
            layers=layers,
            catalogs=catalogs,
            draft=draft,
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[Any, Any], dict[Any, Any]] | None:
        # A static PNG next to the widget view, so executed notebooks (papermill, nbconvert)
        # still show the image when no kernel is attached.
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        buffer = io.BytesIO()
        _render.write_image(self.render(draft=True), buffer)
        data = {**data, "image/png": base64.b64encode(buffer.getvalue()).decode("ascii")}
        return data, metadata

    # =====================================================================================
    # internals
    # =====================================================================================
    def _resolve_image_label(self, image_label: str | None) -> str:
        if not self._images:
            msg = "No image loaded; call load_image(data) first"
            raise ValueError(msg)
        if image_label is None:
            if len(self._images) > 1:
                msg = (
                    f"Multiple image labels defined ({', '.join(map(repr, self._images))}); "
                    f"pass image_label"
                )
                raise ValueError(msg)
            return next(iter(self._images))
        if image_label not in self._images:
            msg = (
                f"Image label {image_label!r} not found; loaded labels are "
                f"{', '.join(map(repr, self._images))}"
            )
            raise ValueError(msg)
        return image_label

    def _record(self, image_label: str | None) -> ImageRecord:
        return self._images[self._resolve_image_label(image_label)]

    def _resolve_catalog_label(self, catalog_label: str | None) -> str:
        if catalog_label is None:
            if not self._catalogs:
                msg = "No catalog loaded; call load_catalog(table) first"
                raise ValueError(msg)
            if len(self._catalogs) > 1:
                msg = (
                    f"Multiple catalog labels defined ({', '.join(map(repr, self._catalogs))}); "
                    f"pass catalog_label"
                )
                raise ValueError(msg)
            return next(iter(self._catalogs))
        if catalog_label not in self._catalogs:
            known = ", ".join(map(repr, self._catalogs)) or "none"
            msg = f"Catalog label {catalog_label!r} not found; loaded catalogs are {known}"
            raise ValueError(msg)
        return catalog_label

    @staticmethod
    def _positive(value: Any, name: str) -> float:
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            msg = f"{name} must be a positive number, got {value!r}"
            raise ValueError(msg)
        return float(value)

    @staticmethod
    def _check_style(style: dict[str, Any]) -> dict[str, Any]:
        if style.get("shape") not in _CATALOG_SHAPES:
            msg = f"shape must be one of {_CATALOG_SHAPES}, got {style.get('shape')!r}"
            raise ValueError(msg)
        parse_color(style.get("color"), name="color")
        size = style.get("size")
        if not isinstance(size, numbers.Real) or not float(size) > 0:
            msg = f"size must be a positive number of screen pixels, got {size!r}"
            raise ValueError(msg)
        return dict(style)

    @staticmethod
    def _pixel_scale(record: ImageRecord) -> float:
        """Degrees per pixel along the image's longer axis."""
        scales = proj_plane_pixel_scales(record.wcs.celestial)  # type: ignore[union-attr]
        ny, nx = record.shape
        return float(scales[0] if nx >= ny else scales[1])

    def _pixel_center(self, record: ImageRecord) -> tuple[float, float]:
        center = record.center
        if isinstance(center, SkyCoord):
            x, y = record.wcs.world_to_pixel(center)  # type: ignore[union-attr]
            return float(x), float(y)
        return center

    def _pixel_fov(self, record: ImageRecord) -> float:
        fov = record.fov
        if isinstance(fov, u.Quantity):
            return float(fov.to_value(u.deg)) / self._pixel_scale(record)
        return fov

    def _zoom(self, record: ImageRecord) -> float:
        return min(self.width, self.height) / float(self._pixel_fov(record))

    def _histeq(self, record: ImageRecord) -> HistEqStretch:
        lo, hi = record.limits
        sample = record.sample()
        values = np.clip((sample - lo) / (hi - lo), 0.0, 1.0)
        return make_stretch("histeq", sample=np.asarray(values[:: max(1, values.size // 100_000)]))

    # ---- pushing state to the browser ---------------------------------------------------
    def _push_image(self) -> None:
        record = self._images[self._current] if self._current else None
        if record is None:
            return
        self._image_rev += 1
        preview, stride = record.pyramid.preview()
        ny, nx = record.shape
        info: dict[str, Any] = {
            "rev": self._image_rev,
            "label": self._current,
            "title": record.title,
            "nx": nx,
            "ny": ny,
            "tile_size": record.pyramid.tile_size,
            "n_levels": record.pyramid.n_levels,
            "has_mask": record.mask is not None,
            "preview": preview.tobytes(),
            "preview_nx": int(preview.shape[1]),
            "preview_ny": int(preview.shape[0]),
            "preview_stride": stride,
        }
        info.update(self._wcs_grid(record))
        with self.hold_sync():
            self._image = info
            self._push_display(self._current)
            self._push_masks()
            self._push_viewport()
            self._push_layers()

    def _wcs_grid(self, record: ImageRecord) -> dict[str, Any]:
        if record.wcs is None:
            return {"wcs_n": 0}
        ny, nx = record.shape
        gx = np.linspace(-0.5, nx - 0.5, _WCS_GRID)
        gy = np.linspace(-0.5, ny - 0.5, _WCS_GRID)
        xx, yy = np.meshgrid(gx, gy)
        lon, lat = record.wcs.celestial.pixel_to_world_values(xx, yy)
        lon, lat = np.radians(lon), np.radians(lat)
        vectors = np.stack(
            [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1
        )
        ctype = str(record.wcs.celestial.wcs.ctype[0]).upper()
        names = ["l", "b"] if ctype.startswith("GLON") else ["RA", "Dec"]
        return {
            "wcs_n": _WCS_GRID,
            "wcs_grid": np.nan_to_num(vectors).astype("<f8").tobytes(),
            "wcs_names": names,
            "wcs_sexagesimal": names[0] == "RA",
        }

    def _push_display(self, label: str | None) -> None:
        if label is None or label != self._current:
            return
        record = self._images[label]
        self._display = {
            "lo": record.limits[0],
            "hi": record.limits[1],
            "stretch": stretch_lut(record.stretch).tobytes(),
            "colormap": colormap_lut(record.colormap).tobytes(),
            "colormap_name": record.colormap,
            "stretch_name": type(record.stretch).__name__,
        }

    def _push_viewport(self) -> None:
        record = self._images[self._current] if self._current else None
        if record is None:
            return
        cx, cy = self._pixel_center(record)
        self._viewport = {
            "cx": float(cx),
            "cy": float(cy),
            "zoom": float(self._zoom(record)),
            "source": "python",
        }

    def _ensure_mask_styles(self, record: ImageRecord) -> None:
        if record.mask_planes is None:
            return
        for i, (name, bit) in enumerate(sorted(record.mask_planes.items(), key=lambda kv: kv[1])):
            if name not in self._mask_style:
                color = _MASK_COLORS.get(name, _OTHER_MASK_COLORS[i % len(_OTHER_MASK_COLORS)])
                self._mask_style[name] = {
                    "name": name,
                    "bit": bit,
                    "color": parse_color(color)[:3],
                    "alpha": 0.4,
                    "visible": True,
                }
            self._mask_style[name]["bit"] = bit

    def _push_masks(self) -> None:
        record = self._images.get(self._current) if self._current else None
        planes = record.mask_planes if record is not None else None
        shown = [
            {**entry, "color": list(entry["color"])}
            for name, entry in self._mask_style.items()
            if planes is not None and name in planes
        ]
        self._masks = {"planes": shown}

    def _displayed_with_mask(self) -> ImageRecord:
        record = self._record(self._current)
        if record.mask is None:
            msg = (
                f"image {self._current!r} has no mask; load an Exposure, or NDData with "
                f"integer flags, to show mask planes"
            )
            raise ValueError(msg)
        return record

    def _mask_entry(self, name: str) -> dict[str, Any]:
        record = self._displayed_with_mask()
        key = str(name).upper()
        if record.mask_planes is None or key not in record.mask_planes:
            known = ", ".join(record.mask_planes or [])
            msg = f"unknown mask plane {name!r}; planes of this image are {known}"
            raise KeyError(msg)
        return self._mask_style[key]

    def _convert_regions(
        self, regions: Any, layer: str, color: Any, width: Any, dash: Any
    ) -> tuple[RegionLayerData, RegionReport]:
        record = self._images.get(self._current) if self._current else None
        style: dict[str, Any] = {}
        if color is not None:
            parse_color(color, name="color")
            style["color"] = color
        if width is not None:
            style["width"] = self._positive(width, "width")
        if dash is not None:
            style["dash"] = bool(dash)
        data, report = regions_to_layer(
            regions,
            wcs=record.wcs if record is not None else None,
            image_shape=record.shape if record is not None else None,
            layer=layer,
            style=style,
        )
        if report.unsupported or report.n_off_image:
            log.warning("%s", report)
        return data, report

    def _region_layer(self, layer_id: str) -> dict[str, Any]:
        if layer_id not in self._regions:
            known = ", ".join(map(repr, self._regions)) or "none"
            msg = f"region layer {layer_id!r} not found; layers are {known}"
            raise ValueError(msg)
        return self._regions[layer_id]

    def _afw_layer(self) -> RegionLayerData:
        if _AFW_LAYER not in self._regions:
            self._regions[_AFW_LAYER] = {
                "data": RegionLayerData(),
                "title": "afw.display drawings",
                "visible": True,
            }
        data: RegionLayerData = self._regions[_AFW_LAYER]["data"]
        return data

    @staticmethod
    def _afw_style(ctype: str | None) -> dict[str, Any]:
        r, g, b, a = parse_color(ctype or "green", name="ctype")
        return {
            "color": f"rgba({r},{g},{b},{a / 255:.3f})",
            "width": 1.0,
            "dash": False,
            "font": "normal normal 12px helvetica",
        }

    def _push_layers(self) -> None:
        if self._buffer_depth > 0:
            self._layers_dirty = True
            return
        self._layers_dirty = False
        layers: list[dict[str, Any]] = []
        for name, entry in self._regions.items():
            layers.append(
                {
                    "kind": "regions",
                    "name": name,
                    "title": entry["title"],
                    "visible": entry["visible"],
                    **entry["data"].columns(),
                }
            )
        for name, entry in self._catalogs.items():
            if entry["x"] is None:
                continue
            if entry["columns"] is None:
                style = entry["style"]
                r, g, b, a = parse_color(style["color"])
                alpha = (
                    float(style.get("alpha", 1.0))
                    if isinstance(style.get("alpha", 1.0), numbers.Real)
                    else 1.0
                )
                entry["columns"] = {
                    "n": len(entry["x"]),
                    "x": np.asarray(entry["x"], dtype="<f4").tobytes(),
                    "y": np.asarray(entry["y"], dtype="<f4").tobytes(),
                    "color": f"rgba({r},{g},{b},{a / 255 * alpha:.3f})",
                    "marker": MARKER_CODES[style["shape"]],
                    "size": float(style["size"]),
                    "width": float(style.get("width", 1.5))
                    if isinstance(style.get("width", 1.5), numbers.Real)
                    else 1.5,
                }
            layers.append({"kind": "catalog", "name": name, "visible": True, **entry["columns"]})
        self._layers = layers

    # ---- messages from the browser ------------------------------------------------------
    def _handle_message(self, _widget: Any, content: dict[str, Any], buffers: list[Any]) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "tiles":
            self._send_tiles(content)
        elif kind == "hover":
            self._send_row(content)

    def _send_tiles(self, content: dict[str, Any]) -> None:
        if content.get("rev") != self._image_rev or self._current not in self._images:
            return
        pyramid = self._images[self._current].pyramid
        for request in content.get("tiles", [])[:64]:
            try:
                level, tx, ty = (int(v) for v in request)
                tile = pyramid.tile(level, tx, ty)
            except (TypeError, ValueError) as error:
                log.debug("ignoring tile request %r: %s", request, error)
                continue
            h, w = tile.data.shape
            buffers = [tile.data.data]
            if tile.mask is not None:
                buffers.append(tile.mask.data)
            self.send(
                {
                    "type": "tile",
                    "rev": self._image_rev,
                    "level": level,
                    "tx": tx,
                    "ty": ty,
                    "w": w,
                    "h": h,
                    "has_mask": tile.mask is not None,
                },
                buffers=buffers,
            )

    def _send_row(self, content: dict[str, Any]) -> None:
        label = content.get("catalog")
        row = content.get("row")
        if label not in self._catalogs or not isinstance(row, int):
            return
        table = self._catalogs[label]["table"]
        if not 0 <= row < len(table):
            return
        values = [[name, _format_value(table[name][row])] for name in table.colnames[:20]]
        self.send({"type": "row", "catalog": label, "row": row, "values": values})

    def _on_browser_viewport(self, change: dict[str, Any]) -> None:
        new = change["new"]
        if new.get("source") != "browser" or self._current not in self._images:
            return
        record = self._images[self._current]
        try:
            cx, cy, zoom = float(new["cx"]), float(new["cy"]), float(new["zoom"])
        except (KeyError, TypeError, ValueError):
            return
        if zoom > 0 and math.isfinite(cx) and math.isfinite(cy):
            record.center = (cx, cy)
            record.fov = min(self.width, self.height) / zoom

    def _on_selection(self, change: dict[str, Any]) -> None:
        selection = dict(change["new"])
        rows = self.selected_rows()
        selection["table"] = rows
        for callback in list(self._select_callbacks):
            callback(selection)


def _format_value(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value)
