"""LSST afw.display-style methods: mtv, dot, line, erase, scale, zoom, pan, mask colours."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.visualization import (
    AsymmetricPercentileInterval,
    BaseInterval,
    ManualInterval,
    MinMaxInterval,
    ZScaleInterval,
)

from ._aida_images import ImageMethods
from ._base import _AFW_LAYER
from ._display import (
    parse_color,
)

log = logging.getLogger(__name__)


class AfwMethods(ImageMethods):
    """afw.display vocabulary over the same viewer state."""

    def mtv(self, data: Any, title: str = "", wcs: Any = None) -> None:
        """Display an image (afw.display's ``mtv``); an Exposure's mask planes are overlaid.

        Parameters
        ----------
        data : array_like, Exposure, NDData or path
            The image (see :meth:`load_image`).
        title : str
            Title shown in the readout.
        wcs : astropy.wcs.WCS, optional
            WCS for a plain array.
        """
        if wcs is not None and isinstance(data, np.ndarray):
            from astropy.nddata import NDData

            data = NDData(data, wcs=wcs)
        self.load_image(data, title=title)

    def dot(
        self,
        symb: str,
        c: float,
        r: float,
        size: float = 2.0,
        ctype: str | None = None,
    ) -> None:
        """Draw a symbol at column ``c``, row ``r`` (afw.display's ``dot``).

        Parameters
        ----------
        symb : str
            ``"+"``, ``"x"``, ``"*"``, ``"o"`` (circle of radius ``size``), an ellipse
            from second moments ``"@:Mxx,Mxy,Myy"``, or any other text to write.
        c, r : float
            Column (x) and row (y), 0-based pixels.
        size : float
            Half-size (radius) of the symbol, in image pixels.
        ctype : str, optional
            Colour (default green).

        Raises
        ------
        ValueError
            For an unreadable ellipse specification or colour.
        """
        style = self._afw_style(ctype)
        layer = self._afw_layer()
        x, y, s = float(c), float(r), float(size)
        if symb in ("+", "*"):
            for dx, dy in ((s, 0.0), (0.0, s)):
                verts = np.array([[x - dx, y - dy], [x + dx, y + dy]])
                layer.add("polyline", x, y, style=style, vertices=verts)
        if symb in ("x", "*"):
            d = s / math.sqrt(2)
            for sign in (1.0, -1.0):
                verts = np.array([[x - d, y - sign * d], [x + d, y + sign * d]])
                layer.add("polyline", x, y, style=style, vertices=verts)
        if symb == "o":
            layer.add("circle", x, y, s, style=style)
        elif symb.startswith("@:"):
            try:
                mxx, mxy, myy = (float(v) for v in symb[2:].split(","))
            except ValueError:
                msg = f"symb {symb!r} is not an ellipse '@:Mxx,Mxy,Myy' of three numbers"
                raise ValueError(msg) from None
            eigen, vectors = np.linalg.eigh(np.array([[mxx, mxy], [mxy, myy]]))
            a, b = np.sqrt(np.clip(eigen[::-1], 0.0, None))
            angle = math.atan2(vectors[1, 1], vectors[0, 1])
            layer.add("ellipse", x, y, float(a), float(b), angle, style=style)
        elif symb not in ("+", "x", "*"):
            layer.add("text", x, y, style=style, label=symb)
        self._push_layers()

    def line(
        self,
        points: Sequence[tuple[float, float]],
        symbs: bool | str = False,
        ctype: str | None = None,
    ) -> None:
        """Draw a polyline through ``(x, y)`` points (afw.display's ``line``).

        Parameters
        ----------
        points : sequence of (x, y)
            Vertices in 0-based pixels.
        symbs : bool or str
            Also draw a symbol at each vertex: True for ``"o"``, or any :meth:`dot` symbol.
        ctype : str, optional
            Colour (default green).

        Raises
        ------
        ValueError
            If fewer than two points are given.
        """
        verts = np.asarray(points, dtype=np.float64)
        if verts.ndim != 2 or verts.shape[1] != 2 or len(verts) < 2:
            msg = f"points must be at least two (x, y) pairs, got shape {verts.shape}"
            raise ValueError(msg)
        with self.buffering():
            self._afw_layer().add(
                "polyline", *verts.mean(axis=0), style=self._afw_style(ctype), vertices=verts
            )
            if symbs:
                symbol = "o" if symbs is True else str(symbs)
                for x, y in verts:
                    self.dot(symbol, x, y, ctype=ctype)
            self._push_layers()

    def erase(self) -> None:
        """Remove everything drawn with :meth:`dot` and :meth:`line`."""
        self._regions.pop(_AFW_LAYER, None)
        self._push_layers()

    def scale(
        self,
        algorithm: str,
        min: float | str,
        max: float | None = None,
        unit: str | None = None,
    ) -> None:
        """Set stretch and cuts together (afw.display's ``scale``).

        Parameters
        ----------
        algorithm : str
            Stretch name (``linear``, ``log``, ``sqrt``, ``asinh``, ``histeq``, ...).
        min : float or str
            Lower cut, or ``"zscale"``/``"minmax"`` for automatic cuts.
        max : float, optional
            Upper cut (required with a numeric ``min``).
        unit : {None, "absolute", "percent", "sigma"}
            Meaning of numeric ``min``/``max``: image units, percentiles, or multiples
            of the robust standard deviation about the median.

        Raises
        ------
        ValueError
            For an unknown unit or a missing ``max``.
        """
        record = self._record(None)
        if isinstance(min, str):
            interval: BaseInterval = ZScaleInterval() if min == "zscale" else MinMaxInterval()
            if min not in ("zscale", "minmax"):
                msg = f"min must be a number, 'zscale' or 'minmax', got {min!r}"
                raise ValueError(msg)
        else:
            if max is None:
                msg = "max is required with a numeric min; e.g. scale('linear', 0, 1000)"
                raise ValueError(msg)
            if unit in (None, "absolute"):
                interval = ManualInterval(float(min), float(max))
            elif unit == "percent":
                interval = AsymmetricPercentileInterval(float(min), float(max))
            elif unit == "sigma":
                sample = record.sample()
                median = float(np.median(sample)) if sample.size else 0.0
                sigma = 1.4826 * float(np.median(np.abs(sample - median))) if sample.size else 1.0
                interval = ManualInterval(median + float(min) * sigma, median + float(max) * sigma)
            else:
                msg = f"unit must be None, 'absolute', 'percent' or 'sigma', got {unit!r}"
                raise ValueError(msg)
        with self.hold_sync():
            self.set_cuts(interval, image_label=self._current)
            self.set_stretch(algorithm, image_label=self._current)

    def zoom(
        self, zoomfac: float | None = None, colc: float | None = None, rowc: float | None = None
    ) -> None:
        """Zoom by setting screen pixels per image pixel, optionally re-centring.

        Parameters
        ----------
        zoomfac : float, optional
            Screen (CSS) pixels per image pixel; unchanged when omitted.
        colc, rowc : float, optional
            New centre (column, row), 0-based pixels.
        """
        center = (float(colc), float(rowc)) if colc is not None and rowc is not None else None
        fov = None
        if zoomfac is not None:
            fov = min(self.width, self.height) / self._positive(zoomfac, "zoomfac")
        self.set_viewport(center=center, fov=fov, image_label=self._current)

    def pan(self, colc: float | None = None, rowc: float | None = None) -> None:
        """Centre the view on column ``colc``, row ``rowc`` (0-based pixels)."""
        if colc is None or rowc is None:
            return
        self.set_viewport(center=(float(colc), float(rowc)), image_label=self._current)

    def set_mask_plane_color(self, name: str, color: str) -> None:
        """Set the overlay colour of one mask plane (``"ignore"`` hides it).

        Raises
        ------
        KeyError
            If the displayed image has no such plane.
        ValueError
            If the colour is not understood.
        """
        entry = self._mask_entry(name)
        if str(color).lower() in ("ignore", "none"):
            entry["visible"] = False
        else:
            entry["color"] = parse_color(color, name="color")[:3]
            entry["visible"] = True
        self._push_masks()

    def set_mask_transparency(self, transparency: float, name: str | None = None) -> None:
        """Set mask overlay transparency in percent (0 opaque, 100 invisible).

        Parameters
        ----------
        transparency : float
            Percent, 0-100.
        name : str, optional
            One plane; all planes when omitted.

        Raises
        ------
        ValueError
            If ``transparency`` is outside 0-100.
        """
        if not isinstance(transparency, numbers.Real) or not 0 <= transparency <= 100:
            msg = f"transparency must be a percentage in 0..100, got {transparency!r}"
            raise ValueError(msg)
        entries = [self._mask_entry(name)] if name is not None else self._mask_style.values()
        for entry in entries:
            entry["alpha"] = 1.0 - float(transparency) / 100.0
        self._push_masks()

    def set_mask_plane_visible(self, name: str, visible: bool = True) -> None:
        """Show or hide one mask plane's overlay.

        Raises
        ------
        KeyError
            If the displayed image has no such plane.
        """
        self._mask_entry(name)["visible"] = bool(visible)
        self._push_masks()
