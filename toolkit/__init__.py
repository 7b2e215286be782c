"""stacklab.toolkit: processing steps on exposures, and the simulator that feeds them.

Arrays are indexed ``[y, x]``; pixel ``(x, y)`` is the centre of ``image[y, x]``, 0-based.

The names below are imported from their modules on first use (PEP 562), so that
``import stacklab.toolkit`` alone costs milliseconds rather than the 1.2 s of scipy,
astropy and galsim: every ``stacklab`` command and every Dask worker of a batch run
imports this package, and most need none of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .background import Background, BackgroundConfig, estimate_background, subtract_background
    from .coadd import Coadd, CoaddConfig, coadd
    from .coadd_psf import CoaddPsf
    from .compare_warp import CompareWarpConfig
    from .cosmic_rays import CosmicRayConfig, CosmicRays, find_cosmic_rays
    from .deblend import DeblendConfig, Deblended, HeavyFootprint, deblend_sources
    from .detection import DetectionConfig, Detections, detect_sources
    from .errors import ToolkitError
    from .exposure import Exposure, Psf, ShiftedPsf
    from .flags import SourceFlag, describe_flags
    from .forced import ForcedConfig, ForcedPhotometry, forced_photometry
    from .io import read_exposure, write_exposure
    from .mask import DEFAULT_MASK_PLANES, MaskPlanes
    from .measurement import MeasurementConfig, Measurements, measure_sources
    from .multiband import (
        MultibandCatalog,
        MultibandConfig,
        coadd_bands,
        detection_coadd,
        measure_multiband,
    )
    from .process_frame import FrameResult, ProcessFrameConfig, process_frame
    from .psf import PsfConfig, PsfFit, PsfModel, PsfShape, PsfValidation, fit_psf
    from .psf_match import PsfMatchConfig, TargetPsf
    from .rho_statistics import RhoStatistics, rho_statistics
    from .safe_clip import SafeClipConfig
    from .skymap import (
        Patch,
        SkyMap,
        SkyMapConfig,
        Tract,
        make_skymap,
        patch_covering,
        patches_overlapping,
    )
    from .warp import Warp, WarpConfig, WarpedPsf, warp_exposure

#: Submodule -> the public names it defines (imported on first use).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "background": ("Background", "BackgroundConfig", "estimate_background", "subtract_background"),
    "coadd": ("Coadd", "CoaddConfig", "coadd"),
    "coadd_psf": ("CoaddPsf",),
    "compare_warp": ("CompareWarpConfig",),
    "cosmic_rays": ("CosmicRayConfig", "CosmicRays", "find_cosmic_rays"),
    "deblend": ("DeblendConfig", "Deblended", "HeavyFootprint", "deblend_sources"),
    "detection": ("DetectionConfig", "Detections", "detect_sources"),
    "errors": ("ToolkitError",),
    "exposure": ("Exposure", "Psf", "ShiftedPsf"),
    "flags": ("SourceFlag", "describe_flags"),
    "forced": ("ForcedConfig", "ForcedPhotometry", "forced_photometry"),
    "io": ("read_exposure", "write_exposure"),
    "mask": ("DEFAULT_MASK_PLANES", "MaskPlanes"),
    "measurement": ("MeasurementConfig", "Measurements", "measure_sources"),
    "multiband": (
        "MultibandCatalog",
        "MultibandConfig",
        "coadd_bands",
        "detection_coadd",
        "measure_multiband",
    ),
    "process_frame": ("FrameResult", "ProcessFrameConfig", "process_frame"),
    "psf": ("PsfConfig", "PsfFit", "PsfModel", "PsfShape", "PsfValidation", "fit_psf"),
    "psf_match": ("PsfMatchConfig", "TargetPsf"),
    "rho_statistics": ("RhoStatistics", "rho_statistics"),
    "safe_clip": ("SafeClipConfig",),
    "skymap": (
        "Patch",
        "SkyMap",
        "SkyMapConfig",
        "Tract",
        "make_skymap",
        "patch_covering",
        "patches_overlapping",
    ),
    "warp": ("Warp", "WarpConfig", "WarpedPsf", "warp_exposure"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


__all__ = [
    "DEFAULT_MASK_PLANES",
    "Background",
    "BackgroundConfig",
    "Coadd",
    "CoaddConfig",
    "CoaddPsf",
    "CompareWarpConfig",
    "CosmicRayConfig",
    "CosmicRays",
    "DeblendConfig",
    "Deblended",
    "DetectionConfig",
    "Detections",
    "Exposure",
    "ForcedConfig",
    "ForcedPhotometry",
    "FrameResult",
    "HeavyFootprint",
    "MaskPlanes",
    "MeasurementConfig",
    "Measurements",
    "MultibandCatalog",
    "MultibandConfig",
    "Patch",
    "ProcessFrameConfig",
    "Psf",
    "PsfConfig",
    "PsfFit",
    "PsfMatchConfig",
    "PsfModel",
    "PsfShape",
    "PsfValidation",
    "RhoStatistics",
    "SafeClipConfig",
    "ShiftedPsf",
    "SkyMap",
    "SkyMapConfig",
    "SourceFlag",
    "TargetPsf",
    "ToolkitError",
    "Tract",
    "Warp",
    "WarpConfig",
    "WarpedPsf",
    "coadd",
    "coadd_bands",
    "deblend_sources",
    "describe_flags",
    "detect_sources",
    "detection_coadd",
    "estimate_background",
    "find_cosmic_rays",
    "fit_psf",
    "forced_photometry",
    "make_skymap",
    "measure_multiband",
    "measure_sources",
    "patch_covering",
    "patches_overlapping",
    "process_frame",
    "read_exposure",
    "rho_statistics",
    "subtract_background",
    "warp_exposure",
    "write_exposure",
]


class _Package(types.ModuleType):
    """The package's module type: a submodule never hides the function it is named after.

    Importing ``stacklab.toolkit.coadd`` makes the import system set the package's
    ``coadd`` attribute to the submodule; the public ``coadd`` is the function, as it was
    when this package imported everything up front (likewise ``process_frame`` and
    ``rho_statistics``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups do not come here
        return value
    # A submodule not imported yet (``stacklab.toolkit.io`` after ``import
    # stacklab.toolkit``), as when this package imported everything up front.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
