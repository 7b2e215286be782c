"""Render the viewer's current view in Python, exactly as the browser composes it.

Screen pixel ``(sx, sy)`` (CSS pixels from the top-left corner) shows image point
``x = cx + (sx + 0.5 - W / 2) / zoom``, ``y = cy - (sy + 0.5 - H / 2) / zoom``,
read from pyramid level ``L = clip(floor(log2(1 / zoom)), 0, n_levels - 1)`` at
index ``floor((x + 0.5) / 2**L)``. ``viewer.js`` uses the same formulas, so the
browser's pixels and :func:`render_view`'s are the same numbers.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from ._display import colormap_lut, render_rgba, stretch_lut
from ._regions import MARKER_CODES, SHAPE_CODES, RegionLayerData

if TYPE_CHECKING:
    from ._images import ImageRecord

__all__ = ["render_view", "view_level", "write_image"]

#: Background colour where there is no image (matches viewer.css).
BACKGROUND = (34, 34, 34, 255)


def view_level(zoom: float, n_levels: int) -> int:
    """Pyramid level shown at ``zoom`` screen pixels per image pixel."""
    if zoom >= 1:
        return 0
    return int(min(max(math.floor(math.log2(1.0 / zoom)), 0), n_levels - 1))


def _screen_to_index(
    n_screen: int, center: float, zoom: float, level: int, n_level: int, *, flip: bool
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    offsets = (np.arange(n_screen) + 0.5 - n_screen / 2) / zoom
    coords = center - offsets if flip else center + offsets
    index = np.floor((coords + 0.5) / 2**level).astype(np.intp)
    inside = (index >= 0) & (index < n_level)
    return np.clip(index, 0, n_level - 1), inside


def render_view(
    record: ImageRecord | None,
    *,
    width: int,
    height: int,
    center: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
    masks: list[dict[str, Any]] | None = None,
    layers: list[tuple[RegionLayerData, bool]] | None = None,
    catalogs: list[tuple[Any, Any, dict[str, Any]]] | None = None,
    draft: bool = False,
) -> NDArray[np.uint8]:
    """Return the view as an RGBA array of shape ``(height, width, 4)``.

    Parameters
    ----------
    record : ImageRecord or None
        The displayed image with its cuts, stretch and colormap (None: background only).
    width, height : int
        Output size in pixels.
    center : tuple of float
        Image pixel ``(x, y)`` at the centre of the view.
    zoom : float
        Screen pixels per image pixel.
    masks : list of dict, optional
        Mask plane styles (``bit``, ``color`` RGB bytes, ``alpha`` 0-1, ``visible``).
    layers : list of (RegionLayerData, visible), optional
        Region layers.
    catalogs : list of (x, y, style), optional
        Catalog positions (pixels) and styles.
    draft : bool
        When the pyramid level for ``zoom`` is not built yet, sample full-resolution
        pixels instead of building it (milliseconds instead of a pass over the image;
        used for the notebook's static PNG).
    """
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[:] = BACKGROUND
    if record is not None:
        level = view_level(zoom, record.pyramid.n_levels)
        ny, nx = record.pyramid.level_shape(level)
        ix, in_x = _screen_to_index(width, center[0], zoom, level, nx, flip=False)
        iy, in_y = _screen_to_index(height, center[1], zoom, level, ny, flip=True)
        if draft and not record.pyramid.has_level(level):
            rows, cols = np.ix_(
                np.minimum(iy << level, record.shape[0] - 1),
                np.minimum(ix << level, record.shape[1] - 1),
            )
            pixels = np.asarray(record.pyramid.image[rows, cols])
            mask_source = record.mask[rows, cols] if record.mask is not None else None
        else:
            pixels = np.asarray(record.pyramid.level(level))[np.ix_(iy, ix)]
            mask_level = record.pyramid.mask_level(level)
            mask_source = None if mask_level is None else np.asarray(mask_level)[np.ix_(iy, ix)]
        rgba = render_rgba(
            pixels,
            limits=record.limits,
            stretch_table=stretch_lut(record.stretch),
            colormap_table=colormap_lut(record.colormap),
        )
        inside = in_y[:, None] & in_x[None, :]
        shown = inside & (rgba[..., 3] > 0)
        out[shown] = rgba[shown]
        if mask_source is not None and masks:
            bits = mask_source
            blended = out[..., :3].astype(np.float64)
            for plane in sorted(masks, key=lambda p: p["bit"]):
                if not plane["visible"] or plane["alpha"] <= 0:
                    continue
                hit = shown & ((bits >> plane["bit"]) & 1).astype(bool)
                alpha = float(plane["alpha"])
                blended[hit] = blended[hit] * (1 - alpha) + np.asarray(plane["color"]) * alpha
            out[..., :3] = np.floor(blended + 0.5).astype(np.uint8)
    if layers or catalogs:
        _draw_overlays(out, center, zoom, layers or [], catalogs or [])
    return out


def _draw_overlays(
    out: NDArray[np.uint8],
    center: tuple[float, float],
    zoom: float,
    layers: list[tuple[RegionLayerData, bool]],
    catalogs: list[tuple[Any, Any, dict[str, Any]]],
) -> None:
    height, width = out.shape[:2]
    canvas = Image.fromarray(out, mode="RGBA")
    draw = ImageDraw.Draw(canvas)

    def screen(x: Any, y: Any) -> tuple[Any, Any]:
        sx = (np.asarray(x, dtype=np.float64) - center[0]) * zoom + width / 2
        sy = height / 2 - (np.asarray(y, dtype=np.float64) - center[1]) * zoom
        return sx, sy

    for data, visible in layers:
        if not visible:
            continue
        for i in range(len(data)):
            style = data.styles[data.style[i]]
            color = _rgba(style["color"])
            line_width = max(1, round(style["width"]))
            code = data.shape[i]
            x, y = data.x[i], data.y[i]
            if code in (SHAPE_CODES["polygon"], SHAPE_CODES["polyline"]):
                start = data.vertex_start[i]
                stop = data.vertex_start[i + 1] if i + 1 < len(data) else len(data.vertices) // 2
                verts = np.asarray(data.vertices[2 * start : 2 * stop]).reshape(-1, 2)
                sx, sy = screen(verts[:, 0], verts[:, 1])
                points = list(zip(sx.tolist(), sy.tolist(), strict=True))
                if code == SHAPE_CODES["polygon"]:
                    points.append(points[0])
                draw.line(points, fill=color, width=line_width)
            elif code in (SHAPE_CODES["circle"], SHAPE_CODES["ellipse"], SHAPE_CODES["box"]):
                t = np.linspace(0, 2 * np.pi, 65)
                if code == SHAPE_CODES["box"]:
                    hx, hy = data.a[i] / 2, data.b[i] / 2
                    local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy], [-hx, -hy]])
                else:
                    ra = data.a[i]
                    rb = data.a[i] if code == SHAPE_CODES["circle"] else data.b[i]
                    local = np.column_stack([ra * np.cos(t), rb * np.sin(t)])
                c, s = math.cos(data.angle[i]), math.sin(data.angle[i])
                gx = x + local[:, 0] * c - local[:, 1] * s
                gy = y + local[:, 0] * s + local[:, 1] * c
                sx, sy = screen(gx, gy)
                draw.line(
                    list(zip(sx.tolist(), sy.tolist(), strict=True)), fill=color, width=line_width
                )
            elif code == SHAPE_CODES["point"]:
                sx, sy = screen(x, y)
                _marker(draw, float(sx), float(sy), int(data.b[i]), data.a[i], color, line_width)
            if data.text[i] >= 0:
                sx, sy = screen(x, y)
                draw.text((float(sx), float(sy)), data.texts[data.text[i]], fill=color)
    for xs, ys, style in catalogs:
        if xs is None:
            continue
        color = _rgba_from_any(style["color"])
        sx, sy = screen(xs, ys)
        keep = (sx > -20) & (sx < width + 20) & (sy > -20) & (sy < height + 20)
        marker = MARKER_CODES[style["shape"]]
        for px, py in zip(sx[keep].tolist(), sy[keep].tolist(), strict=True):
            _marker(draw, px, py, marker, float(style["size"]), color, 1)
    out[:] = np.asarray(canvas)


def _marker(
    draw: ImageDraw.ImageDraw,
    x: float,
    y: float,
    marker: int,
    size: float,
    color: tuple[int, int, int, int],
    line_width: int,
) -> None:
    r = size / 2
    if marker == MARKER_CODES["circle"]:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=line_width)
    elif marker == MARKER_CODES["square"]:
        draw.rectangle([x - r, y - r, x + r, y + r], outline=color, width=line_width)
    elif marker == MARKER_CODES["diamond"]:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], outline=color)
    elif marker == MARKER_CODES["x"]:
        draw.line([(x - r, y - r), (x + r, y + r)], fill=color, width=line_width)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=color, width=line_width)
    else:
        gap = r / 2 if marker == MARKER_CODES["crosshair"] else 0.0
        for sign in (-1, 1):
            draw.line([(x + sign * gap, y), (x + sign * r, y)], fill=color, width=line_width)
            draw.line([(x, y + sign * gap), (x, y + sign * r)], fill=color, width=line_width)


def _rgba(css: str) -> tuple[int, int, int, int]:
    """Parse the ``rgba(r,g,b,a)`` strings the region columns carry."""
    r, g, b, a = css[css.index("(") + 1 : css.index(")")].split(",")
    return int(r), int(g), int(b), round(float(a) * 255)


def _rgba_from_any(color: Any) -> tuple[int, int, int, int]:
    from ._display import parse_color

    return parse_color(color)


def write_image(rgba: NDArray[np.uint8], target: str | os.PathLike[str] | io.BytesIO) -> None:
    """Write an RGBA view (opaque) as PNG, or in the format of ``target``'s extension."""
    # The view is opaque (background colour where there is no image): RGB is enough.
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), mode="RGB")
    if isinstance(target, io.BytesIO):
        # Fast compression: this PNG sits on the path to the first paint of the widget.
        image.save(target, format="PNG", compress_level=1)
        return
    path = Path(target)
    image.save(path, format=None if path.suffix else "PNG")
