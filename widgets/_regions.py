"""Region layers: DS9 text, files and astropy ``regions`` objects to drawable columns.

Everything is converted once, in Python, to pixel coordinates of the displayed
image (0-based pixel centres, ``x`` along columns) and packed in columns: one
shape code per region, float32 geometry, a style index, and a flat vertex list
for polygons and lines. Shapes that cannot be drawn are listed in the
:class:`RegionReport`, never dropped silently.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray
from regions import (
    CircleAnnulusPixelRegion,
    CirclePixelRegion,
    EllipseAnnulusPixelRegion,
    EllipsePixelRegion,
    LinePixelRegion,
    PixelRegion,
    PointPixelRegion,
    PolygonPixelRegion,
    RectangleAnnulusPixelRegion,
    RectanglePixelRegion,
    Region,
    Regions,
    SkyRegion,
    TextPixelRegion,
)

from ._display import parse_color

__all__ = [
    "SHAPE_CODES",
    "RegionLayerData",
    "RegionReport",
    "RegionSyntaxError",
    "UnsupportedRegion",
    "regions_to_layer",
]

#: Shape codes shared with the JavaScript renderer.
SHAPE_CODES = {
    "circle": 0,
    "ellipse": 1,
    "box": 2,
    "polygon": 3,
    "polyline": 4,
    "point": 5,
    "text": 6,
}
#: Marker codes for points (shared with catalogs and the JavaScript renderer).
MARKER_CODES = {"circle": 0, "square": 1, "diamond": 2, "plus": 3, "x": 4, "crosshair": 5}
_MPL_MARKERS = {"o": "circle", "s": "square", "D": "diamond", "+": "plus", "x": "x"}
_DEFAULT_COLOR = "green"  # DS9's default region colour
_UNSUPPORTED_WARNING = re.compile(r'"(?P<shape>[^"]*)" frame or shape is (?P<why>not [^;,]*)')
_LINE_WARNING = re.compile(r'unable to parse line "(?P<line>[^"]*)"')


class RegionSyntaxError(ValueError):
    """A DS9 region string that cannot be parsed; names the line and column."""


@dataclass(frozen=True)
class UnsupportedRegion:
    """One region that was not drawn, and why.

    Attributes
    ----------
    index : int
        Position among the input regions (or the 1-based line for DS9 text, when known).
    shape : str
        Shape or class name.
    reason : str
        Why it was not drawn.
    """

    index: int
    shape: str
    reason: str


@dataclass(frozen=True)
class RegionReport:
    """What happened to the regions given to a layer.

    Attributes
    ----------
    layer : str
        Layer name.
    n_drawn : int
        Regions drawn (an annulus counts once).
    unsupported : tuple of UnsupportedRegion
        Regions that could not be drawn.
    n_off_image : int
        Drawn regions lying entirely outside the image.
    """

    layer: str
    n_drawn: int
    unsupported: tuple[UnsupportedRegion, ...] = ()
    n_off_image: int = 0

    def __str__(self) -> str:
        parts = [f"layer {self.layer!r}: {self.n_drawn} regions drawn"]
        if self.n_off_image:
            parts.append(f"{self.n_off_image} entirely outside the image")
        if self.unsupported:
            listed = "; ".join(f"#{u.index} {u.shape}: {u.reason}" for u in self.unsupported[:5])
            more = f" (+{len(self.unsupported) - 5} more)" if len(self.unsupported) > 5 else ""
            parts.append(f"{len(self.unsupported)} not drawn ({listed}{more})")
        return ", ".join(parts)


@dataclass
class RegionLayerData:
    """Columns of one drawable layer (pixel coordinates, radians counter-clockwise from +x)."""

    shape: list[int] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    angle: list[float] = field(default_factory=list)
    style: list[int] = field(default_factory=list)
    text: list[int] = field(default_factory=list)
    vertex_start: list[int] = field(default_factory=list)
    vertices: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    styles: list[dict[str, Any]] = field(default_factory=list)
    _style_index: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.shape)

    def add(
        self,
        code: str,
        x: float,
        y: float,
        a: float = 0.0,
        b: float = 0.0,
        angle: float = 0.0,
        *,
        style: dict[str, Any],
        label: str | None = None,
        vertices: NDArray[np.float64] | None = None,
    ) -> None:
        """Append one shape."""
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in style.items()))
        if key not in self._style_index:
            self._style_index[key] = len(self.styles)
            self.styles.append(style)
        self.shape.append(SHAPE_CODES[code])
        self.x.append(float(x))
        self.y.append(float(y))
        self.a.append(float(a))
        self.b.append(float(b))
        self.angle.append(float(angle))
        self.style.append(self._style_index[key])
        if label:
            self.text.append(len(self.texts))
            self.texts.append(str(label))
        else:
            self.text.append(-1)
        self.vertex_start.append(len(self.vertices) // 2)
        if vertices is not None:
            self.vertices.extend(np.asarray(vertices, dtype=np.float64).ravel().tolist())

    def extend(self, other: RegionLayerData) -> None:
        """Append all shapes of ``other`` (restyled into this layer's style table)."""
        for i in range(len(other)):
            start = other.vertex_start[i]
            stop = other.vertex_start[i + 1] if i + 1 < len(other) else len(other.vertices) // 2
            verts = np.asarray(other.vertices[2 * start : 2 * stop]).reshape(-1, 2)
            code = next(k for k, v in SHAPE_CODES.items() if v == other.shape[i])
            self.add(
                code,
                other.x[i],
                other.y[i],
                other.a[i],
                other.b[i],
                other.angle[i],
                style=other.styles[other.style[i]],
                label=other.texts[other.text[i]] if other.text[i] >= 0 else None,
                vertices=verts if len(verts) else None,
            )

    def bounds(self, i: int) -> tuple[float, float, float, float]:
        """Return ``(xmin, xmax, ymin, ymax)`` of shape ``i`` in pixels (points: their centre)."""
        code = self.shape[i]
        if code in (SHAPE_CODES["polygon"], SHAPE_CODES["polyline"]):
            start = self.vertex_start[i]
            stop = self.vertex_start[i + 1] if i + 1 < len(self) else len(self.vertices) // 2
            verts = np.asarray(self.vertices[2 * start : 2 * stop]).reshape(-1, 2)
            return (
                float(verts[:, 0].min()),
                float(verts[:, 0].max()),
                float(verts[:, 1].min()),
                float(verts[:, 1].max()),
            )
        if code == SHAPE_CODES["circle"]:
            r = self.a[i]
        elif code == SHAPE_CODES["ellipse"]:
            r = max(self.a[i], self.b[i])
        elif code == SHAPE_CODES["box"]:
            r = 0.5 * math.hypot(self.a[i], self.b[i])
        else:
            r = 0.0
        return self.x[i] - r, self.x[i] + r, self.y[i] - r, self.y[i] + r

    def columns(self) -> dict[str, Any]:
        """Return the layer as binary columns (bytes) plus small JSON lists, for the browser."""
        return {
            "n": len(self),
            "shape": np.asarray(self.shape, dtype=np.uint8).tobytes(),
            "x": np.asarray(self.x, dtype="<f4").tobytes(),
            "y": np.asarray(self.y, dtype="<f4").tobytes(),
            "a": np.asarray(self.a, dtype="<f4").tobytes(),
            "b": np.asarray(self.b, dtype="<f4").tobytes(),
            "angle": np.asarray(self.angle, dtype="<f4").tobytes(),
            "style": np.asarray(self.style, dtype="<u2").tobytes(),
            "text": np.asarray(self.text, dtype="<i4").tobytes(),
            "vertex_start": np.asarray(
                [*self.vertex_start, len(self.vertices) // 2], "<u4"
            ).tobytes(),
            "vertices": np.asarray(self.vertices, dtype="<f4").tobytes(),
            "texts": list(self.texts),
            "styles": list(self.styles),
        }


# ---- parsing -----------------------------------------------------------------------
def _read_ds9_text(text: str, *, context: str) -> tuple[list[Region], list[UnsupportedRegion]]:
    """Parse DS9 text with ``regions``; pixel frame assumed when none is given."""
    regions, unsupported, missing_frame = _parse_ds9(text, context=context)
    if missing_frame and not regions:
        # Firefly (and the talk's example) treat frame-less shapes as image pixels.
        regions, unsupported, _ = _parse_ds9("image\n" + text, context=context, line_offset=-1)
    return regions, unsupported


def _parse_ds9(
    text: str, *, context: str, line_offset: int = 0
) -> tuple[list[Region], list[UnsupportedRegion], bool]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parsed = list(Regions.parse(text, format="ds9"))
        except Exception as error:  # regions raises bare TypeError/ValueError
            raise _locate_syntax_error(text, error, context, line_offset) from None
    unsupported: list[UnsupportedRegion] = []
    missing_frame = False
    lines = text.splitlines()
    for warning in caught:
        message = str(warning.message)
        if "coordinate frame was not found" in message:
            missing_frame = True
            continue
        match = _UNSUPPORTED_WARNING.search(message)
        shape = match.group("shape") if match else "region"
        line = _LINE_WARNING.search(message)
        number = _line_number(lines, line.group("line") if line else shape) + line_offset
        unsupported.append(UnsupportedRegion(number, shape, message))
    return parsed, unsupported, missing_frame


def _line_number(lines: list[str], needle: str) -> int:
    for i, line in enumerate(lines):
        if needle and needle in line:
            return i + 1
    return 0


def _locate_syntax_error(
    text: str, error: Exception, context: str, line_offset: int
) -> RegionSyntaxError:
    """Find the first line whose inclusion makes parsing fail (binary search on prefixes)."""
    lines = text.splitlines()
    lo, hi = 0, len(lines)  # prefix of lo lines parses; prefix of hi lines fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Regions.parse("\n".join(lines[:mid]), format="ds9")
            lo = mid
        except Exception:
            hi = mid
    bad = lines[hi - 1] if lines else ""
    token = re.search(r"'([^']*)'", str(error))
    column = bad.find(token.group(1)) + 1 if token and token.group(1) in bad else 0
    if column <= 0:
        column = len(bad) - len(bad.lstrip()) + 1
    number = hi + line_offset
    return RegionSyntaxError(
        f"cannot parse DS9 region {context} at line {number}, column {column}: {bad.strip()!r} "
        f"({type(error).__name__}: {error}); fix the shape's arguments, e.g. "
        f"'circle(x, y, radius)'"
    )


def _as_region_list(regions: Any, *, name: str) -> tuple[list[Region], list[UnsupportedRegion]]:
    """Accept DS9 text, a path, lines, Regions or Region objects."""
    if isinstance(regions, Region):
        return [regions], []
    if isinstance(regions, Regions):
        return list(regions), []
    if isinstance(regions, os.PathLike) or (
        isinstance(regions, str) and "\n" not in regions and regions.strip().endswith(".reg")
    ):
        path = Path(regions)
        if not path.is_file():
            msg = f"{name} file {str(path)!r} does not exist; pass DS9 text or an existing file"
            raise FileNotFoundError(msg)
        return _read_ds9_text(path.read_text(errors="replace"), context=f"file {path.name}")
    if isinstance(regions, str):
        return _read_ds9_text(regions, context="string")
    if isinstance(regions, Iterable):
        items = list(regions)
        if all(isinstance(item, str) for item in items):
            return _read_ds9_text("\n".join(items), context="list")
        if all(isinstance(item, Region) for item in items):
            return items, []
    msg = (
        f"{name} must be DS9 region text, a .reg path, a list of DS9 strings, or astropy "
        f"regions objects; got {type(regions).__name__}"
    )
    raise TypeError(msg)


# ---- conversion --------------------------------------------------------------------
def _style_of(region: Region, defaults: dict[str, Any]) -> dict[str, Any]:
    visual = dict(getattr(region, "visual", {}) or {})
    color = defaults.get("color") or visual.get("edgecolor") or visual.get("color")
    r, g, b, alpha = parse_color(color or _DEFAULT_COLOR, name="region color")
    width = float(defaults.get("width") or visual.get("linewidth") or 1)
    dashed = defaults.get("dash")
    if dashed is None:
        dashed = visual.get("linestyle") in ("dashed", "--")
    size = float(visual.get("fontsize") or 10)
    font = f"{visual.get('fontstyle', 'normal')} {visual.get('fontweight', 'normal')} {size:g}px "
    font += str(visual.get("fontname") or "helvetica")
    return {
        "color": f"rgba({r},{g},{b},{alpha / 255:.3f})",
        "width": width,
        "dash": bool(dashed),
        "font": font,
    }


def _marker_of(region: PointPixelRegion) -> float:
    marker = (getattr(region, "visual", {}) or {}).get("marker", "o")
    name = _MPL_MARKERS.get(marker, "circle") if isinstance(marker, str) else "square"
    return float(MARKER_CODES[name])


def regions_to_layer(
    regions: Any,
    *,
    wcs: WCS | None,
    image_shape: tuple[int, int] | None,
    layer: str,
    style: dict[str, Any] | None = None,
) -> tuple[RegionLayerData, RegionReport]:
    """Convert regions in any accepted form into drawable columns, with a report.

    Parameters
    ----------
    regions : str, path, list of str, regions.Region, regions.Regions or list of Region
        DS9 region text (a frame-less shape is in image pixels), a ``.reg`` file,
        or astropy ``regions`` objects (sky regions need ``wcs``).
    wcs : astropy.wcs.WCS or None
        WCS of the displayed image, for sky regions.
    image_shape : tuple of int or None
        ``(ny, nx)`` of the image, to count regions that fall entirely outside it.
    layer : str
        Layer name, for the report.
    style : dict, optional
        Overrides for every region: ``color``, ``width`` (screen pixels), ``dash`` (bool).

    Raises
    ------
    RegionSyntaxError
        If DS9 text cannot be parsed (the message names the line and column).
    TypeError
        If ``regions`` has none of the accepted forms.
    """
    defaults = dict(style or {})
    items, unsupported = _as_region_list(regions, name="regions")
    data = RegionLayerData()
    n_drawn = 0
    for index, region in enumerate(items):
        reason = None
        pixel: Any = region
        if isinstance(region, SkyRegion):
            if wcs is None:
                reason = "sky region but the image has no WCS; load an image with a WCS first"
            else:
                try:
                    pixel = region.to_pixel(wcs)
                except Exception as error:
                    reason = f"cannot convert to pixels: {error}"
        if reason is None:
            reason = _add_pixel_region(data, pixel, _style_of(region, defaults))
        if reason is None:
            n_drawn += 1
        else:
            unsupported.append(UnsupportedRegion(index, type(region).__name__, reason))
    n_off = 0
    if image_shape is not None and len(data):
        ny, nx = image_shape
        for i in range(len(data)):
            xmin, xmax, ymin, ymax = data.bounds(i)
            if xmax < -0.5 or ymax < -0.5 or xmin > nx - 0.5 or ymin > ny - 0.5:
                n_off += 1
    return data, RegionReport(layer, n_drawn, tuple(unsupported), n_off)


def _add_pixel_region(data: RegionLayerData, region: Any, style: dict[str, Any]) -> str | None:
    """Append one pixel region; return a reason string when it cannot be drawn."""
    if not isinstance(region, PixelRegion):
        return f"{type(region).__name__} is not a pixel region"
    label = (getattr(region, "meta", {}) or {}).get("text")
    deg = math.pi / 180.0
    if isinstance(region, CirclePixelRegion):
        data.add(
            "circle", region.center.x, region.center.y, region.radius, style=style, label=label
        )
    elif isinstance(region, EllipsePixelRegion):
        data.add(
            "ellipse",
            region.center.x,
            region.center.y,
            region.width / 2,
            region.height / 2,
            region.angle.to_value("deg") * deg,
            style=style,
            label=label,
        )
    elif isinstance(region, RectanglePixelRegion):
        data.add(
            "box",
            region.center.x,
            region.center.y,
            region.width,
            region.height,
            region.angle.to_value("deg") * deg,
            style=style,
            label=label,
        )
    elif isinstance(region, PolygonPixelRegion):
        verts = np.column_stack([region.vertices.x, region.vertices.y])
        data.add("polygon", *verts.mean(axis=0), style=style, label=label, vertices=verts)
    elif isinstance(region, LinePixelRegion):
        verts = np.array([[region.start.x, region.start.y], [region.end.x, region.end.y]])
        data.add("polyline", *verts.mean(axis=0), style=style, label=label, vertices=verts)
    elif isinstance(region, PointPixelRegion):
        data.add(
            "point",
            region.center.x,
            region.center.y,
            11.0,
            _marker_of(region),
            style=style,
            label=label,
        )
    elif isinstance(region, TextPixelRegion):
        data.add("text", region.center.x, region.center.y, style=style, label=region.text)
    elif isinstance(region, CircleAnnulusPixelRegion):
        x, y = region.center.x, region.center.y
        data.add("circle", x, y, region.inner_radius, style=style, label=label)
        data.add("circle", x, y, region.outer_radius, style=style)
    elif isinstance(region, EllipseAnnulusPixelRegion | RectangleAnnulusPixelRegion):
        code = "ellipse" if isinstance(region, EllipseAnnulusPixelRegion) else "box"
        half = 0.5 if code == "ellipse" else 1.0
        angle = region.angle.to_value("deg") * deg
        x, y = region.center.x, region.center.y
        data.add(
            code,
            x,
            y,
            region.inner_width * half,
            region.inner_height * half,
            angle,
            style=style,
            label=label,
        )
        data.add(
            code,
            x,
            y,
            region.outer_width * half,
            region.outer_height * half,
            angle,
            style=style,
        )
    else:
        return f"{type(region).__name__} shapes are not drawn by this viewer"
    return None
