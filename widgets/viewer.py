"""ImageViewer: a Jupyter image viewer whose pixels stay in the kernel.

The browser asks for the tiles it shows; Python answers with raw float32 (and
int32 mask) buffers from a lazily built pyramid (:mod:`._pyramid`). Cuts,
stretch and colormap travel as small lookup tables, so changing them never
re-sends pixels. One object speaks three vocabularies over one implementation:

* the Astronomical Image Display API (``astro-image-display-api`` 0.3.0,
  ``ImageViewerInterface``): ``load_image``, ``set_cuts``, ``set_stretch``,
  ``set_colormap``, ``load_catalog``, ``set_viewport``, ``save``, ...;
* Firefly-style: ``show_fits``, ``set_pan``, ``set_zoom``,
  ``overlay_region_layer``, ``add_region_data``, ``remove_region_data``,
  ``delete_region_layer``, ``add_mask``;
* LSST afw.display-style: ``mtv``, ``dot``, ``line``, ``erase``, ``scale``,
  ``zoom``, ``pan``, ``set_mask_plane_color``, ``set_mask_transparency``,
  ``buffering``.

Pixel coordinates are 0-based with ``(x, y)`` the centre of ``image[y, x]``; the
display shows ``y`` increasing upwards, as DS9 does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._afw import AfwMethods
from ._aida_catalogs import CatalogMethods
from ._base import DEFAULT_CATALOG_LABEL, DEFAULT_IMAGE_LABEL
from ._firefly import FireflyMethods

__all__ = ["DEFAULT_CATALOG_LABEL", "DEFAULT_IMAGE_LABEL", "ImageViewer"]

_STATIC = Path(__file__).parent / "static"


class ImageViewer(AfwMethods, FireflyMethods, CatalogMethods):
    """Show a large image with mask planes, region layers and catalogs in Jupyter.

    Parameters
    ----------
    data : array_like, Exposure, NDData, CCDData, str or path, optional
        Image to show straight away (see :meth:`load_image`).
    width, height : int
        Size of the display in CSS pixels.
    **kwargs
        Passed to :class:`anywidget.AnyWidget`.

    Attributes
    ----------
    selection : dict
        ``{"catalog": label or None, "rows": [row indices]}``: catalog rows selected by
        clicking markers in the browser (shift-click adds). Observe it, or register a
        callback with :meth:`on_select`.

    Examples
    --------
    >>> import numpy as np
    >>> viewer = ImageViewer(np.random.default_rng(1).normal(size=(300, 400)))
    >>> viewer.set_stretch("asinh")
    >>> viewer.set_cuts("zscale")
    >>> report = viewer.overlay_region_layer("box 100 100 50 50 0 # color=red", layer_id="boxes")
    >>> report.n_drawn
    1
    """

    _esm = _STATIC / "viewer.js"
    _css = _STATIC / "viewer.css"

    _esm = _STATIC / "viewer.js"
    _css = _STATIC / "viewer.css"

    def __init__(self, data: Any = None, *, width: int = 800, height: int = 600, **kwargs: Any):
        super().__init__(width=width, height=height, **kwargs)
        if data is not None:
            self.load_image(data)
