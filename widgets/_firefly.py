"""Firefly-style methods: show_fits, set_pan, set_zoom, region layers, add_mask."""

from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from stacklab.toolkit import MaskPlanes

from ._aida_images import ImageMethods
from ._display import (
    parse_color,
)
from ._regions import RegionLayerData, RegionReport

log = logging.getLogger(__name__)


class FireflyMethods(ImageMethods):
    """Firefly (firefly_client) vocabulary over the same viewer state."""

    def show_fits(self, file_input: Any, plot_id: str | None = None, **kwargs: Any) -> None:
        """Show a FITS file (or any image :meth:`load_image` takes), Firefly-style.

        Parameters
        ----------
        file_input : str, path or image
            The FITS file or image.
        plot_id : str, optional
            Label of the image (``image_label``).
        **kwargs
            Passed to :meth:`load_image`.
        """
        self.load_image(file_input, image_label=plot_id, **kwargs)

    def set_pan(self, x: float, y: float, coord: str = "image", plot_id: str | None = None) -> None:
        """Centre the view on a position.

        Parameters
        ----------
        x, y : float
            Pixel position (0-based) when ``coord="image"``; RA and Dec in degrees
            (ICRS) when ``coord`` is ``"J2000"``, ``"icrs"`` or ``"fk5"``.
        coord : str
            Coordinate system of ``x, y``.
        plot_id : str, optional
            Label of the image.

        Raises
        ------
        ValueError
            For an unknown ``coord``.
        """
        system = coord.lower()
        if system == "image":
            center: Any = (float(x), float(y))
        elif system in ("j2000", "icrs", "fk5"):
            frame = "fk5" if system in ("j2000", "fk5") else "icrs"
            center = SkyCoord(float(x) * u.deg, float(y) * u.deg, frame=frame)
        else:
            msg = f"coord must be 'image', 'J2000', 'icrs' or 'fk5', got {coord!r}"
            raise ValueError(msg)
        self.set_viewport(center=center, image_label=plot_id)

    def set_zoom(self, factor: float, plot_id: str | None = None) -> None:
        """Set the zoom: screen (CSS) pixels per image pixel (1 is 1:1).

        Raises
        ------
        ValueError
            If ``factor`` is not a positive number.
        """
        factor = self._positive(factor, "factor")
        record = self._record(plot_id)
        self.set_viewport(fov=min(self.width, self.height) / factor, image_label=plot_id)
        del record

    def overlay_region_layer(
        self,
        regions: Any,
        layer_id: str | None = None,
        title: str | None = None,
        *,
        color: str | None = None,
        width: float | None = None,
        dash: bool | None = None,
    ) -> RegionReport:
        """Draw regions in a named layer (replacing a layer of the same name).

        Parameters
        ----------
        regions : str, path, list of str, regions.Region, regions.Regions or list of Region
            DS9 region text (frame-less shapes are image pixels, as in
            ``"box 100 100 50 50 0 # color=red"``), a ``.reg`` file, a list of DS9
            strings, or astropy ``regions`` objects (sky regions need the image WCS).
        layer_id : str, optional
            Layer name; ``"regions"`` when omitted.
        title : str, optional
            Human-readable title of the layer.
        color, width, dash : optional
            Style for every region, overriding the DS9 properties (width in screen
            pixels).

        Returns
        -------
        RegionReport
            Counts of drawn regions, regions entirely off the image, and every region
            that could not be drawn with the reason.

        Raises
        ------
        RegionSyntaxError
            For malformed DS9 text; the message names the line and column.
        """
        layer = layer_id or "regions"
        data, report = self._convert_regions(regions, layer, color, width, dash)
        self._regions[layer] = {"data": data, "title": title or layer, "visible": True}
        self._push_layers()
        return report

    def add_region_data(self, regions: Any, layer_id: str, **style: Any) -> RegionReport:
        """Add regions to an existing layer (or create it); see :meth:`overlay_region_layer`."""
        if layer_id not in self._regions:
            return self.overlay_region_layer(regions, layer_id, **style)
        data, report = self._convert_regions(
            regions, layer_id, style.get("color"), style.get("width"), style.get("dash")
        )
        self._regions[layer_id]["data"].extend(data)
        self._push_layers()
        return report

    def remove_region_data(self, regions: Any, layer_id: str) -> int:
        """Remove regions equal (same shape and geometry) to the given ones from a layer.

        Returns
        -------
        int
            Number of shapes removed.

        Raises
        ------
        ValueError
            If the layer does not exist.
        """
        entry = self._region_layer(layer_id)
        drop, _ = self._convert_regions(regions, layer_id, None, None, None)
        old: RegionLayerData = entry["data"]
        keys = {
            (drop.shape[i], *np.round([drop.x[i], drop.y[i], drop.a[i], drop.b[i]], 4))
            for i in range(len(drop))
        }
        kept = RegionLayerData()
        removed = 0
        for i in range(len(old)):
            key = (old.shape[i], *np.round([old.x[i], old.y[i], old.a[i], old.b[i]], 4))
            if key in keys:
                removed += 1
                continue
            single = RegionLayerData()
            single.shape, single.x, single.y = [old.shape[i]], [old.x[i]], [old.y[i]]
            single.a, single.b, single.angle = [old.a[i]], [old.b[i]], [old.angle[i]]
            single.style, single.styles = [0], [old.styles[old.style[i]]]
            has_text = old.text[i] >= 0
            single.text, single.texts = ([0], [old.texts[old.text[i]]]) if has_text else ([-1], [])
            stop = old.vertex_start[i + 1] if i + 1 < len(old) else len(old.vertices) // 2
            single.vertex_start = [0]
            single.vertices = old.vertices[2 * old.vertex_start[i] : 2 * stop]
            kept.extend(single)
        entry["data"] = kept
        self._push_layers()
        return removed

    def delete_region_layer(self, layer_id: str) -> None:
        """Delete a region layer.

        Raises
        ------
        ValueError
            If the layer does not exist.
        """
        self._region_layer(layer_id)
        del self._regions[layer_id]
        self._push_layers()

    def set_region_layer_style(
        self,
        layer_id: str,
        *,
        visible: bool | None = None,
        color: str | None = None,
        width: float | None = None,
        dash: bool | None = None,
    ) -> None:
        """Show, hide or restyle a whole region layer.

        Raises
        ------
        ValueError
            If the layer does not exist, or the colour is not understood.
        """
        entry = self._region_layer(layer_id)
        if visible is not None:
            entry["visible"] = bool(visible)
        data: RegionLayerData = entry["data"]
        if color is not None:
            r, g, b, a = parse_color(color, name="color")
        for style in data.styles:
            if color is not None:
                style["color"] = f"rgba({r},{g},{b},{a / 255:.3f})"
            if width is not None:
                style["width"] = self._positive(width, "width")
            if dash is not None:
                style["dash"] = bool(dash)
        self._push_layers()

    @property
    def region_layers(self) -> tuple[str, ...]:
        """Names of the region layers (tuple of str)."""
        return tuple(self._regions)

    def add_mask(self, bit_number: int, color: str | None = None, title: str | None = None) -> str:
        """Show one mask bit as a coloured overlay, Firefly-style.

        Parameters
        ----------
        bit_number : int
            Bit of the mask (0-30).
        color : str, optional
            Overlay colour; the plane's default when omitted.
        title : str, optional
            Plane name to use when the bit has none.

        Returns
        -------
        str
            Name of the plane shown.

        Raises
        ------
        ValueError
            If no image with a mask is displayed, or the bit is out of range.
        """
        if not isinstance(bit_number, numbers.Integral) or not 0 <= int(bit_number) <= 30:
            msg = f"bit_number must be an integer in 0..30, got {bit_number!r}"
            raise ValueError(msg)
        record = self._displayed_with_mask()
        planes = record.mask_planes or MaskPlanes()
        name = next((n for n, b in planes.items() if b == bit_number), None)
        if name is None:
            name = (title or f"BIT{bit_number}").upper()
            record.mask_planes = MaskPlanes({**planes.bits, name: int(bit_number)})
            self._ensure_mask_styles(record)
        self._mask_style[name]["visible"] = True
        if color is not None:
            self._mask_style[name]["color"] = parse_color(color, name="color")[:3]
        self._push_masks()
        return name
