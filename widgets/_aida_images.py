"""Image, display and viewport methods of the Astronomical Image Display API (0.3.0)."""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import Any

from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.visualization import (
    BaseInterval,
    BaseStretch,
    HistEqStretch,
)

from . import _render
from ._base import DEFAULT_IMAGE_LABEL, ViewerBase
from ._display import (
    colormap_lut,
    cut_limits,
    make_interval,
    make_stretch,
)
from ._images import load_image_data

log = logging.getLogger(__name__)


class ImageMethods(ViewerBase):
    """AIDA methods for images: loading, cuts, stretch, colormap, viewport, save."""

    def load_image(self, data: Any, image_label: str | None = None, **kwargs: Any) -> None:
        """Load an image and display it, with a viewport that shows all of it.

        Parameters
        ----------
        data : array_like, Exposure, NDData, CCDData, str or path
            A 2-D array (any real dtype or byte order, kept by reference), a stacklab
            ``Exposure`` (its mask planes become overlays), an astropy ``NDData`` or
            ``CCDData`` (integer ``flags`` or ``mask`` become mask planes), or a FITS
            file path (memory-mapped).
        image_label : str, optional
            Label of the image. Without one, the shared default label is used, so
            loading unlabeled images repeatedly replaces the previous unlabeled one.
        **kwargs
            ``title`` (str) to show in the readout; other keywords are ignored.

        Raises
        ------
        FileNotFoundError
            If ``data`` is a path that does not exist.
        TypeError, ValueError
            If ``data`` is not a 2-D real image, or is empty or all NaN.
        """
        label = DEFAULT_IMAGE_LABEL if image_label is None else str(image_label)
        title = kwargs.get("title")
        record = load_image_data(data, title=title if isinstance(title, str) else "")
        record.limits = cut_limits(record.interval, record.sample())
        self._images[label] = record
        self._current = label
        self._ensure_mask_styles(record)
        self._push_image()

    def get_image(self, image_label: str | None = None, **kwargs: Any) -> Any:
        """Get the data of a loaded image, as it was loaded.

        Parameters
        ----------
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        image_data : numpy.ndarray, Exposure or NDData
            The array, ``Exposure`` or ``NDData`` that was loaded; for a FITS path, an
            ``NDData`` (or an ``Exposure`` for stacklab files) with the file's data.
            It can be passed back to :meth:`load_image`.

        Raises
        ------
        ValueError
            If no image is loaded, ``image_label`` is omitted while several images
            are loaded, or it names no loaded image.
        """
        return self._record(image_label).source

    @property
    def image_labels(self) -> tuple[str, ...]:
        """Labels of the loaded images, in loading order (tuple of str)."""
        return tuple(self._images)

    def set_cuts(
        self,
        cuts: tuple[numbers.Real, numbers.Real] | BaseInterval,
        image_label: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Set the cut levels: pixel values mapped to the ends of the colormap.

        Parameters
        ----------
        cuts : astropy.visualization.BaseInterval, tuple of 2 numbers, or str
            Any astropy interval (``ZScaleInterval()``, ``PercentileInterval(99)``,
            ...), explicit ``(lo, hi)`` in image units (a ``ManualInterval``), or the
            shortcuts ``"zscale"``, ``"minmax"`` or ``"99.5%"``.
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Raises
        ------
        TypeError
            If ``cuts`` is none of these.
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        label = self._resolve_image_label(image_label)
        interval = make_interval(cuts)
        record = self._images[label]
        record.interval = interval
        record.limits = cut_limits(interval, record.sample())
        if isinstance(record.stretch, HistEqStretch):
            record.stretch = self._histeq(record)
        self._push_display(label)

    def get_cuts(self, image_label: str | None = None, **kwargs: Any) -> BaseInterval:
        """Get the current cuts as an astropy interval.

        Parameters
        ----------
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        cuts : astropy.visualization.BaseInterval
            The interval last set (``ZScaleInterval`` after loading).

        Raises
        ------
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        return self._record(image_label).interval

    def set_stretch(
        self, stretch: BaseStretch, image_label: str | None = None, **kwargs: Any
    ) -> None:
        """Set the stretch applied between the cut levels.

        Parameters
        ----------
        stretch : astropy.visualization.BaseStretch or str
            Any astropy stretch (``LogStretch()``, ``AsinhStretch(0.05)``, ...), or a
            name: ``linear``, ``log``, ``sqrt``, ``asinh``, ``sinh``, ``power``,
            ``squared``, ``histeq`` (histogram equalization over the cut range).
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Options for named stretches: ``a`` (log, asinh, sinh), ``power``.

        Raises
        ------
        TypeError
            If ``stretch`` is not a valid stretch object or name.
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        label = self._resolve_image_label(image_label)
        record = self._images[label]
        options = {k: kwargs[k] for k in ("a", "power", "gamma") if k in kwargs}
        new = make_stretch(stretch, **options)
        if isinstance(stretch, str) and isinstance(new, HistEqStretch):
            new = self._histeq(record)
        record.stretch = new
        self._push_display(label)

    def get_stretch(self, image_label: str | None = None, **kwargs: Any) -> BaseStretch:
        """Get the current stretch.

        Parameters
        ----------
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        stretch : astropy.visualization.BaseStretch
            The stretch last set (``LinearStretch`` after loading).

        Raises
        ------
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        return self._record(image_label).stretch

    def set_colormap(self, map_name: str, image_label: str | None = None, **kwargs: Any) -> None:
        """Set the colormap, by matplotlib name.

        Parameters
        ----------
        map_name : str
            Any name in ``matplotlib.colormaps`` (``"gray"``, ``"viridis"``, ...).
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Raises
        ------
        ValueError
            If ``map_name`` is not a matplotlib colormap, no image is loaded, or
            ``image_label`` is ambiguous or unknown.
        """
        label = self._resolve_image_label(image_label)
        colormap_lut(map_name)
        self._images[label].colormap = map_name
        self._push_display(label)

    def get_colormap(self, image_label: str | None = None, **kwargs: Any) -> str | None:
        """Get the name of the current colormap.

        Parameters
        ----------
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        map_name : str
            The matplotlib colormap name (``"gray"`` after loading).

        Raises
        ------
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        return self._record(image_label).colormap

    def save(
        self, filename: str | os.PathLike[str], overwrite: bool = False, **kwargs: Any
    ) -> None:
        """Save the current view, rendered in Python, to a PNG file.

        The picture is what the browser shows at the same viewport: same cuts,
        stretch, colormap, mask overlays, region layers and catalogs, at the
        widget's size in pixels (``width`` x ``height``).

        Parameters
        ----------
        filename : str or os.PathLike
            Output path; the format comes from the extension (``.png``, or any other
            format Pillow writes, such as ``.jpg``).
        overwrite : bool
            Replace an existing file.
        **kwargs
            Ignored.

        Raises
        ------
        FileExistsError
            If the file exists and ``overwrite`` is False.
        """
        path = Path(filename)
        if path.exists() and not overwrite:
            msg = f"{str(path)!r} exists; pass overwrite=True to replace it"
            raise FileExistsError(msg)
        image = self.render()
        _render.write_image(image, path)

    def set_viewport(
        self,
        center: SkyCoord | tuple[float, float] | None = None,
        fov: u.Quantity | float | None = None,
        image_label: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Set the centre and field of view, and display that image.

        Parameters
        ----------
        center : SkyCoord or tuple of 2 floats, optional
            Sky position, or pixel ``(x, y)`` (0-based); unchanged when omitted.
        fov : astropy.units.Quantity or float, optional
            Angular size, or size in image pixels, shown across the shorter side of
            the display; unchanged when omitted.
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Raises
        ------
        TypeError
            "Invalid value for center/fov", or "Center must be a tuple"/"FOV must be a
            float" for sky values on an image without WCS.
        astropy.units.UnitTypeError
            "Incorrect unit for fov" when ``fov`` is not an angle.
        ValueError
            If no image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        label = self._resolve_image_label(image_label)
        record = self._images[label]
        center = record.center if center is None else center
        fov = record.fov if fov is None else fov
        if isinstance(center, list):
            center = tuple(center)
        if not isinstance(center, SkyCoord | tuple) or (
            isinstance(center, tuple)
            and (len(center) != 2 or not all(isinstance(c, numbers.Real) for c in center))
        ):
            msg = f"Invalid value for center: {center!r}; pass a SkyCoord or a pixel tuple (x, y)"
            raise TypeError(msg)
        if isinstance(fov, u.Quantity):
            if not fov.unit.is_equivalent(u.deg):
                msg = f"Incorrect unit for fov: {fov}; pass an angle (e.g. 2 * u.arcmin) or pixels"
                raise u.UnitTypeError(msg)
        elif not isinstance(fov, numbers.Real) or isinstance(fov, bool):
            msg = f"Invalid value for fov: {fov!r}; pass an angular Quantity or a number of pixels"
            raise TypeError(msg)
        if record.wcs is None:
            if isinstance(center, SkyCoord):
                msg = "Center must be a tuple of pixels (x, y) for this image: its WCS is not set"
                raise TypeError(msg)
            if isinstance(fov, u.Quantity):
                msg = "FOV must be a float (pixels) for this image: its WCS is not set"
                raise TypeError(msg)
        if not isinstance(fov, u.Quantity) and not float(fov) > 0:
            msg = f"Invalid value for fov: {fov!r}; the field of view must be positive"
            raise TypeError(msg)
        record.center, record.fov = center, fov
        if label != self._current:
            self._current = label
            self._push_image()
        else:
            self._push_viewport()

    def get_viewport(
        self, sky_or_pixel: str | None = None, image_label: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Get the centre and field of view.

        Parameters
        ----------
        sky_or_pixel : {"sky", "pixel", None}
            Units of the answer; None gives sky when the image has a WCS.
        image_label : str, optional
            Label of the image; optional when exactly one image is loaded.
        **kwargs
            Ignored.

        Returns
        -------
        dict
            ``center`` (SkyCoord or pixel tuple), ``fov`` (angular Quantity or pixels
            across the shorter side of the display) and ``image_label``.

        Raises
        ------
        ValueError
            If ``sky_or_pixel`` is invalid, "WCS is not set" for sky without WCS, no
            image is loaded, or ``image_label`` is ambiguous or unknown.
        """
        if sky_or_pixel not in (None, "sky", "pixel"):
            msg = f"sky_or_pixel must be 'sky', 'pixel' or None, got {sky_or_pixel!r}"
            raise ValueError(msg)
        label = self._resolve_image_label(image_label)
        record = self._images[label]
        if sky_or_pixel is None:
            sky_or_pixel = "sky" if record.wcs is not None else "pixel"
        if sky_or_pixel == "sky" and record.wcs is None:
            msg = f"WCS is not set for image {label!r}; ask for sky_or_pixel='pixel'"
            raise ValueError(msg)
        if sky_or_pixel == "sky":
            center = record.center
            if not isinstance(center, SkyCoord):
                center = record.wcs.pixel_to_world(center[0], center[1])  # type: ignore[union-attr]
            fov = record.fov
            if not isinstance(fov, u.Quantity):
                fov = float(fov) * self._pixel_scale(record) * u.deg
            return {"center": center, "fov": fov, "image_label": label}
        return {
            "center": self._pixel_center(record),
            "fov": self._pixel_fov(record),
            "image_label": label,
        }
