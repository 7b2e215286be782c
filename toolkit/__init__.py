"""stacklab.toolkit: processing steps on exposures, and the simulator that feeds them.

Arrays are indexed ``[y, x]``; pixel ``(x, y)`` is the centre of ``image[y, x]``, 0-based.
"""

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
