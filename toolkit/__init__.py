"""stacklab.toolkit: processing steps on exposures, and the simulator that feeds them.

Arrays are indexed ``[y, x]``; pixel ``(x, y)`` is the centre of ``image[y, x]``, 0-based.
"""

from .errors import ToolkitError
from .exposure import Exposure, Psf, ShiftedPsf
from .io import read_exposure, write_exposure
from .mask import DEFAULT_MASK_PLANES, MaskPlanes

__all__ = [
    "DEFAULT_MASK_PLANES",
    "Exposure",
    "MaskPlanes",
    "Psf",
    "ShiftedPsf",
    "ToolkitError",
    "read_exposure",
    "write_exposure",
]
