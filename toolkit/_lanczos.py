"""The Lanczos kernel of the warps: exact taps, and a table of normalized taps.

A warp needs the ``2a`` taps of the Lanczos-``a`` kernel at every output pixel's
sub-pixel offset. They are tabulated once per order at ``_TABLE_STEPS`` offsets per
pixel, each row normalized to unit sum so that flux is conserved whichever row is used.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray


def _lanczos_taps(frac: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    """Lanczos weights of taps ``k = 1 - order .. order`` for offsets ``frac`` in [0, 1).

    ``L(t) = order sin(pi t) sin(pi t / order) / (pi t)**2`` with ``t = frac - k``.
    Both sines follow from three per-offset values by angle addition,
    ``sin(pi (frac - k)) = (-1)**k sin(pi frac)`` and
    ``sin(pi (frac - k) / order) = sin(pi frac / order) cos(pi k / order)
    - cos(pi frac / order) sin(pi k / order)``, so each output pixel costs three
    transcendental calls instead of one per tap.
    """
    offsets = np.arange(1 - order, order + 1)
    t = frac[:, None] - offsets[None, :]
    phase = np.pi * frac / order
    angle = np.pi * offsets / order
    sin_t_over_order = np.sin(phase)[:, None] * np.cos(angle) - np.cos(phase)[:, None] * np.sin(
        angle
    )
    sign = np.where(offsets % 2 == 0, 1.0, -1.0)
    numerator = (order * np.sin(np.pi * frac))[:, None] * sign * sin_t_over_order
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / (np.pi * t) ** 2
    # frac is in [0, 1): only the k = 0 and k = 1 taps can come near t = 0, where L = 1
    # (and where the angle addition loses relative precision).
    for k in (order - 1, order):
        out[:, k] = np.where(np.abs(t[:, k]) < 1e-9, 1.0, out[:, k])
    return np.asarray(out)


#: Sub-pixel steps per pixel of the tabulated kernel used to warp pixels.
_TABLE_STEPS = 16384


@functools.lru_cache(maxsize=8)
def _tap_table(order: int) -> NDArray[np.float32]:
    """Return normalized Lanczos taps at ``frac = q / _TABLE_STEPS``, ``q = 0 .. _TABLE_STEPS``.

    Each row sums to 1, so flux is conserved exactly whichever row is used.
    """
    frac = np.arange(_TABLE_STEPS + 1, dtype=np.float64) / _TABLE_STEPS
    # frac = 1 is the frac = 0 row shifted by one tap (the last row of the table).
    taps = _lanczos_taps(np.minimum(frac, 1.0 - 1e-15), order)
    taps[-1] = np.roll(_lanczos_taps(np.zeros(1), order)[0], 1)
    return np.asarray(taps / taps.sum(axis=1, keepdims=True), dtype=np.float32)


def _table_index(frac: NDArray[np.float64]) -> NDArray[np.intp]:
    """Row of the tap table nearest ``frac`` in [0, 1)."""
    return np.asarray((frac * _TABLE_STEPS + 0.5).astype(np.intp))


def _table_taps(frac: NDArray[np.float64], order: int) -> NDArray[np.float32]:
    """Return normalized Lanczos taps for ``frac`` in [0, 1) from the nearest table row.

    The kernel is the exact one at a position at most ``0.5 / _TABLE_STEPS`` px
    (3e-5 px) away: far below the astrometric errors of any input, and six times
    cheaper than interpolating between rows.
    """
    return np.asarray(np.take(_tap_table(order), _table_index(frac), axis=0))
