"""stacklab.widgets: Jupyter widgets that display exposures, regions and catalogs."""

from ._regions import RegionReport, RegionSyntaxError, UnsupportedRegion
from .viewer import DEFAULT_CATALOG_LABEL, DEFAULT_IMAGE_LABEL, ImageViewer

__all__ = [
    "DEFAULT_CATALOG_LABEL",
    "DEFAULT_IMAGE_LABEL",
    "ImageViewer",
    "RegionReport",
    "RegionSyntaxError",
    "UnsupportedRegion",
]
