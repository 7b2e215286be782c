"""stacklab.widgets: Jupyter widgets that display exposures, regions and catalogs.

`ImageViewer` shows an exposure of any size with its mask planes, regions and
catalogs; `FootprintInspector` and `PsfInspector` answer "what did the pipeline do to
this object?" and "is the PSF model right here?"; `link_selection` ties bokeh plots of
catalog columns to a viewer, both ways. Figures for reports come from
`stacklab.widgets.plots` (bokeh or matplotlib) and `psf_report_figures`.
"""

from ._regions import RegionReport, RegionSyntaxError, UnsupportedRegion
from .footprint_inspector import FootprintInspector
from .linked import SelectionLink, link_selection
from .psf_inspector import PsfInspector, psf_report_figures
from .viewer import DEFAULT_CATALOG_LABEL, DEFAULT_IMAGE_LABEL, ImageViewer

__all__ = [
    "DEFAULT_CATALOG_LABEL",
    "DEFAULT_IMAGE_LABEL",
    "FootprintInspector",
    "ImageViewer",
    "PsfInspector",
    "RegionReport",
    "RegionSyntaxError",
    "SelectionLink",
    "UnsupportedRegion",
    "link_selection",
    "psf_report_figures",
]
