"""Compiling the few inner loops NumPy cannot express without large temporaries (numba).

Kernels are compiled on first call (about a second each) and cached on disk: in
``NUMBA_CACHE_DIR`` when set, else next to their module, else (read-only package
folder) in numba's user cache folder, ``~/.cache/numba``. Loading a cached kernel
costs about 0.3 s once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

__all__: list[str] = []

log = logging.getLogger(__name__)


def _compiled(function: Callable[..., Any]) -> Any:
    """Compile ``function`` with numba on first call, cached on disk where a folder allows.

    numba refuses ``cache=True`` outright (at import) when neither the package folder
    nor its user cache folder is writable; the kernel is then compiled in every
    process rather than making the module unimportable. The NumPy error model makes
    a division by zero give inf or NaN, as in NumPy, instead of raising.
    """
    options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as err:
        if "no locator available" not in str(err):
            raise
        log.warning(
            "numba cannot cache %s (%s); it is compiled in every process: set "
            "NUMBA_CACHE_DIR to a writable folder",
            function.__name__, err,
        )  # fmt: skip
        return numba.njit(**options)(function)


@_compiled
def _enlarged(array: NDArray[Any], capacity: int) -> NDArray[Any]:  # pragma: no cover
    """``array`` copied into a new array of ``capacity`` elements (a list growing in a kernel).

    Elements past ``len(array)`` are uninitialised; any dtype (one compiled copy each).
    """
    out = np.empty(capacity, dtype=array.dtype)
    out[: len(array)] = array
    return out
