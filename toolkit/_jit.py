"""Compiling the few inner loops NumPy cannot express without large temporaries (numba).

Kernels are compiled on first call (about a second each) and cached on disk: in
``NUMBA_CACHE_DIR`` when set, else next to their module, else (read-only package
folder) in numba's user cache folder, ``~/.cache/numba``. Loading a cached kernel
costs about 0.3 s once per process.

The small helpers several modules' kernels call live here too: a growing list
(``_enlarged``), a stable counting sort (``_bucket_order``) and NumPy's summation
order for a short row (``_block_sum``). numba's cache tracks a kernel's own module
only: after changing one of these, clear the cache (or touch the callers' modules).
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


@_compiled
def _bucket_order(
    keys: NDArray[np.integer], n_buckets: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:  # pragma: no cover - compiled
    """Stable counting sort of ``keys`` (integers in ``0..n_buckets - 1``).

    Returns ``start`` (``n_buckets + 1``) and ``order``: the indices of bucket ``b``'s
    keys, in ascending index order, are ``order[start[b]:start[b + 1]]``.
    """
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    for i in range(len(keys)):
        start[keys[i] + 1] += 1
    for b in range(n_buckets):
        start[b + 1] += start[b]
    order = np.empty(len(keys), dtype=np.int64)
    fill = start[:-1].copy()
    for i in range(len(keys)):
        order[fill[keys[i]]] = i
        fill[keys[i]] += 1
    return start, order


@_compiled
def _block_sum(values: NDArray[np.float64], n: int) -> float:  # pragma: no cover - compiled
    """Sum ``values[:n]`` (``n <= 128``) in NumPy's order: 8 accumulators, then the rest.

    The same rounding as ``np.sum`` of a contiguous float64 row of at most 128
    values (one block of its pairwise summation, which starts from 0).
    """
    if n < 8:
        total = 0.0
        for i in range(n):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[0], values[1], values[2], values[3]
    r4, r5, r6, r7 = values[4], values[5], values[6], values[7]
    i = 8
    while i < n - n % 8:
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += values[i]
        i += 1
    return total
