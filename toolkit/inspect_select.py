"""Choosing sources to inspect: ids by flag bits, and stepping through such a list.

:func:`select_sources` lists catalog ids whose ``flags`` have any of the given
bits (e.g. every deblend failure, or all blends' parents); :func:`step_id` walks
such a list forwards and backwards, wrapping around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from .flags import SourceFlag

__all__ = ["select_sources", "step_id"]


def select_sources(
    catalog: Table,
    flags: SourceFlag | int | str | Sequence[str] = 0,
    *,
    parents_only: bool = False,
) -> NDArray[np.int64]:
    """Return the ids of catalog sources that have any of the given flag bits set.

    Parameters
    ----------
    catalog : astropy.table.Table
        Catalog with ``id`` and ``flags`` (and ``n_children`` for ``parents_only``).
    flags : SourceFlag, int, str or list of str
        Bits to look for, as a :class:`~stacklab.toolkit.SourceFlag`, an integer word,
        or flag names such as ``"DEBLEND_SKIPPED"``; 0 selects every source.
    parents_only : bool
        Keep only blends' parents (``n_children > 0``): the list to step through blends.

    Returns
    -------
    numpy.ndarray of int64
        Ids in catalog order.

    Raises
    ------
    ValueError
        For an unknown flag name or a catalog without ``id``/``flags``.

    Examples
    --------
    >>> from astropy.table import Table
    >>> cat = Table({"id": [1, 2, 3], "flags": [0, int(SourceFlag.DEBLEND_SKIPPED), 1]})
    >>> select_sources(cat, "DEBLEND_SKIPPED").tolist()
    [2]
    """
    for name in ("id", "flags"):
        if name not in catalog.colnames:
            msg = f"catalog has no {name!r} column; pass a measure_sources/process_frame catalog"
            raise ValueError(msg)
    word = _flag_word(flags)
    keep = np.ones(len(catalog), dtype=bool)
    if word:
        keep &= (np.asarray(catalog["flags"], dtype=np.int64) & word) != 0
    if parents_only:
        if "n_children" not in catalog.colnames:
            msg = "parents_only=True needs an 'n_children' column in the catalog"
            raise ValueError(msg)
        keep &= np.asarray(catalog["n_children"]) > 0
    return np.asarray(catalog["id"], dtype=np.int64)[keep]


def step_id(ids: Sequence[int] | NDArray[np.integer], current: int | None, step: int) -> int:
    """Return the id ``step`` places after ``current`` in ``ids``, wrapping around.

    When ``current`` is not in ``ids``, the first id after it (or before it, for a
    negative step) in numeric order is returned, so stepping from any source lands
    on the nearest listed one.

    Raises
    ------
    ValueError
        If ``ids`` is empty.

    Examples
    --------
    >>> step_id([3, 7, 9], 7, 1), step_id([3, 7, 9], 3, -1), step_id([3, 7, 9], 5, 1)
    (9, 9, 7)
    """
    values = np.asarray(ids, dtype=np.int64)
    if len(values) == 0:
        msg = "ids is empty: no source matches the filter; choose another flag"
        raise ValueError(msg)
    if current is None:
        return int(values[0] if step >= 0 else values[-1])
    where = np.flatnonzero(values == int(current))
    if len(where):
        return int(values[(int(where[0]) + step) % len(values)])
    order = np.sort(values)
    if step >= 0:
        after = order[order > current]
        return int(after[0] if len(after) else order[0])
    before = order[order < current]
    return int(before[-1] if len(before) else order[-1])


def _flag_word(flags: SourceFlag | int | str | Sequence[str]) -> int:
    if isinstance(flags, str):
        flags = [flags]
    if isinstance(flags, int | np.integer):
        return int(flags)
    word = 0
    for name in flags:
        key = str(name).upper()
        if key not in SourceFlag.__members__:
            known = ", ".join(SourceFlag.__members__)
            msg = f"unknown flag name {name!r}; use one of {known}"
            raise ValueError(msg)
        word |= int(SourceFlag[key])
    return word
