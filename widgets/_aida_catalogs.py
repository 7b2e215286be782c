"""Catalog methods of the Astronomical Image Display API (0.3.0): markers, styles, selection."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from numpy.typing import NDArray

from ._base import _DEFAULT_CATALOG_STYLE, DEFAULT_CATALOG_LABEL, ViewerBase

log = logging.getLogger(__name__)


class CatalogMethods(ViewerBase):
    """AIDA methods for catalogs drawn as markers."""

    def load_catalog(
        self,
        table: Table,
        x_colname: str = "x",
        y_colname: str = "y",
        skycoord_colname: str = "coord",
        use_skycoord: bool = False,
        catalog_label: str | None = None,
        catalog_style: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Draw a table as markers; hover shows a row, click selects it.

        Loading with an existing label replaces that catalog (keeping its style
        unless ``catalog_style`` is given).

        Parameters
        ----------
        table : astropy.table.Table
            Positions in pixel columns and/or a ``SkyCoord`` column; other columns are
            kept and shown on hover.
        x_colname, y_colname : str
            Pixel position columns (0-based pixel centres).
        skycoord_colname : str
            Sky position column (``SkyCoord``). Without it, columns named ``ra`` and
            ``dec`` (any case; degrees unless they carry units) are used as ICRS.
        use_skycoord : bool
            Take positions from the sky column (converted with the displayed image's
            WCS), or compute the sky column from the pixels when it is missing. When
            False (default), pixel columns are used, or computed from the sky column.
        catalog_label : str, optional
            Name of the catalog; without one the shared default label is used.
        catalog_style : dict, optional
            Marker style, see :meth:`set_catalog_style`.
        **kwargs
            Ignored.

        Raises
        ------
        ValueError
            "Cannot use pixel coordinates without pixel columns ..." or "Cannot use sky
            coordinates without ..." when positions cannot be found.
        TypeError
            If ``table`` is not an astropy Table.
        """
        if not isinstance(table, Table):
            msg = f"table must be an astropy.table.Table, got {type(table).__name__}"
            raise TypeError(msg)
        label = DEFAULT_CATALOG_LABEL if catalog_label is None else str(catalog_label)
        names = table.colnames
        wcs = self._images[self._current].wcs if self._current in self._images else None
        has_xy = x_colname in names and y_colname in names
        has_sky = skycoord_colname in names
        xs: NDArray[np.float64] | None = None
        ys: NDArray[np.float64] | None = None
        coords: SkyCoord | None = None
        coords = SkyCoord(table[skycoord_colname]) if has_sky else _radec_columns(table)
        if has_xy:
            xs = np.asarray(table[x_colname], dtype=np.float64)
            ys = np.asarray(table[y_colname], dtype=np.float64)
        if use_skycoord:
            if coords is None:
                if wcs is None or xs is None or ys is None:
                    msg = (
                        f"Cannot use sky coordinates without a {skycoord_colname!r} column or "
                        f"a WCS to compute one from pixel columns; columns are {names}"
                    )
                    raise ValueError(msg)
                coords = wcs.pixel_to_world(xs, ys)
            if wcs is not None:
                px, py = wcs.world_to_pixel(coords)
                xs, ys = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
            elif xs is None:
                msg = (
                    f"Cannot use sky coordinates without a WCS: the displayed image has none, "
                    f"and the table has no pixel columns {x_colname!r}/{y_colname!r}"
                )
                raise ValueError(msg)
        elif xs is None or ys is None:
            if coords is None or wcs is None:
                msg = (
                    f"Cannot use pixel coordinates without pixel columns {x_colname!r} and "
                    f"{y_colname!r} (or a sky column and an image WCS); columns are {names}"
                )
                raise ValueError(msg)
            px, py = wcs.world_to_pixel(coords)
            xs, ys = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
        elif coords is None and wcs is not None:
            coords = wcs.pixel_to_world(xs, ys)
        if catalog_style is not None:
            style = self._check_style({**_DEFAULT_CATALOG_STYLE, **catalog_style})
        elif label in self._catalogs:
            style = dict(self._catalogs[label]["style"])
        else:
            style = dict(_DEFAULT_CATALOG_STYLE)
        style["catalog_label"] = label
        self._catalogs[label] = {
            "table": table.copy(),
            "names": (x_colname, y_colname, skycoord_colname),
            "x": xs,
            "y": ys,
            "coord": coords,
            "style": style,
            "columns": None,
        }
        self._push_layers()

    def set_catalog_style(
        self,
        catalog_label: str | None = None,
        shape: str = "circle",
        color: str = "red",
        size: float = 5.0,
        **kwargs: Any,
    ) -> None:
        """Set the marker style of a catalog.

        Parameters
        ----------
        catalog_label : str, optional
            The catalog; optional when exactly one is loaded.
        shape : str
            ``"circle"``, ``"square"``, ``"crosshair"``, ``"plus"`` or ``"diamond"``.
        color : str
            Any CSS4 colour name, or ``#rrggbb``/``#rrggbbaa``.
        size : float
            Marker size in screen (CSS) pixels.
        **kwargs
            Kept with the style; ``alpha`` (0-1) and ``width`` (line width, pixels)
            are used when drawing.

        Raises
        ------
        ValueError
            "Must load a catalog before setting a catalog style" when none is loaded;
            if the label is ambiguous or unknown; or for an unknown shape or colour.
        """
        if not self._catalogs:
            msg = "Must load a catalog before setting a catalog style; call load_catalog first"
            raise ValueError(msg)
        label = self._resolve_catalog_label(catalog_label)
        style = self._check_style({"shape": shape, "color": color, "size": size, **kwargs})
        style["catalog_label"] = label
        self._catalogs[label]["style"] = style
        self._catalogs[label]["columns"] = None
        self._push_layers()

    def get_catalog_style(self, catalog_label: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Get the marker style of a catalog.

        Parameters
        ----------
        catalog_label : str, optional
            The catalog; optional when at most one is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        dict
            ``shape``, ``color``, ``size``, any extra keys set, and ``catalog_label``
            (None for the default style returned when no catalog is loaded).

        Raises
        ------
        ValueError
            If several catalogs are loaded and no label is given, or the label is unknown.
        """
        if not self._catalogs and catalog_label is None:
            return {**_DEFAULT_CATALOG_STYLE, "catalog_label": None}
        return dict(self._catalogs[self._resolve_catalog_label(catalog_label)]["style"])

    def remove_catalog(self, catalog_label: str | None = None, **kwargs: Any) -> None:
        """Remove a catalog's markers (``"*"`` removes all).

        Parameters
        ----------
        catalog_label : str, optional
            The catalog; optional when exactly one is loaded; ``"*"`` for all.
        **kwargs
            Ignored.

        Raises
        ------
        ValueError
            If no catalog is loaded, the label is ambiguous or unknown.
        TypeError
            If ``catalog_label`` is a list.
        """
        if isinstance(catalog_label, list | tuple | set):
            msg = (
                f"Cannot remove multiple catalogs from a list ({catalog_label!r}); call "
                f"remove_catalog once per label, or pass '*' to remove all"
            )
            raise TypeError(msg)
        if catalog_label == "*":
            self._catalogs.clear()
        else:
            del self._catalogs[self._resolve_catalog_label(catalog_label)]
        if self.selection.get("catalog") not in self._catalogs:
            self.selection = {"catalog": None, "rows": []}
        self._push_layers()

    def get_catalog(
        self,
        x_colname: str = "x",
        y_colname: str = "y",
        skycoord_colname: str = "coord",
        catalog_label: str | None = None,
        **kwargs: Any,
    ) -> Table:
        """Get a copy of a catalog with its position columns under the names asked for.

        Parameters
        ----------
        x_colname, y_colname, skycoord_colname : str
            Names to give the pixel and sky position columns.
        catalog_label : str, optional
            The catalog; optional when at most one is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        astropy.table.Table
            The catalog (a copy); empty with the three position columns when no
            catalog is loaded. The sky column holds None when it cannot be computed.

        Raises
        ------
        ValueError
            If several catalogs are loaded and no label is given, or the label is unknown.
        """
        if not self._catalogs and catalog_label is None:
            return Table(
                names=[x_colname, y_colname, skycoord_colname], dtype=[float, float, object]
            )
        entry = self._catalogs[self._resolve_catalog_label(catalog_label)]
        table = entry["table"].copy()
        old_x, old_y, old_sky = entry["names"]
        for old, new, values in (
            (old_x, x_colname, entry["x"]),
            (old_y, y_colname, entry["y"]),
            (old_sky, skycoord_colname, entry["coord"]),
        ):
            if old not in table.colnames:
                table[old] = values if values is not None else [None] * len(table)
            if new != old:
                if new in table.colnames:
                    table.remove_column(new)
                table.rename_column(old, new)
        return table

    @property
    def catalog_labels(self) -> tuple[str, ...]:
        """Labels of the loaded catalogs (tuple of str)."""
        return tuple(self._catalogs)


def _radec_columns(table: Table) -> SkyCoord | None:
    """Return ICRS positions from ``ra``/``dec`` columns (any case), or None."""
    lower = {name.lower(): name for name in table.colnames}
    if "ra" not in lower or "dec" not in lower:
        return None
    ra, dec = table[lower["ra"]], table[lower["dec"]]
    ra_q = ra.quantity if getattr(ra, "unit", None) is not None else np.asarray(ra) * u.deg
    dec_q = dec.quantity if getattr(dec, "unit", None) is not None else np.asarray(dec) * u.deg
    return SkyCoord(ra_q, dec_q, frame="icrs")
