"""Pixel values to colours: cuts, stretches and colormaps as lookup tables.

Python computes every lookup table and the browser only indexes them, so what the
browser paints and what :func:`render_rgba` returns for ``save()`` are the same
numbers. A value ``v`` becomes a colour in three steps:

1. ``q = clip(floor((v - lo) / (hi - lo) * (N_LEVELS - 1) + 0.5), 0, N_LEVELS - 1)``
   with the cut levels ``lo, hi`` (image units);
2. ``s = stretch_lut[q]``, the astropy stretch evaluated at ``q / (N_LEVELS - 1)``;
3. ``rgba = colormap_lut[round(s * 255)]``. NaN pixels are transparent.
"""

from __future__ import annotations

import numbers
from typing import Any

import matplotlib as mpl
import numpy as np
from astropy.visualization import (
    AsinhStretch,
    BaseInterval,
    BaseStretch,
    HistEqStretch,
    LinearStretch,
    LogStretch,
    ManualInterval,
    MinMaxInterval,
    PercentileInterval,
    PowerStretch,
    SinhStretch,
    SqrtStretch,
    SquaredStretch,
    ZScaleInterval,
)
from matplotlib.colors import to_rgba
from numpy.typing import NDArray

__all__ = [
    "N_LEVELS",
    "colormap_lut",
    "cut_limits",
    "make_interval",
    "make_stretch",
    "parse_color",
    "render_rgba",
    "stretch_lut",
]

#: Number of quantization levels between the cuts (the stretch table's length).
N_LEVELS = 4096

_STRETCH_NAMES = {
    "linear": "linear",
    "log": "log",
    "sqrt": "sqrt",
    "asinh": "asinh",
    "sinh": "sinh",
    "power": "power",
    "powerlaw_gamma": "power",
    "squared": "squared",
    "histeq": "histeq",
    "equal": "histeq",
    "histogram": "histeq",
}


def make_stretch(
    stretch: BaseStretch | str, *, sample: NDArray[np.float32] | None = None, **options: Any
) -> BaseStretch:
    """Return an astropy stretch from a stretch object or a name.

    Parameters
    ----------
    stretch : astropy.visualization.BaseStretch or str
        A stretch object (returned as is) or one of ``linear``, ``log``, ``sqrt``,
        ``asinh``, ``sinh``, ``power`` (``powerlaw_gamma``), ``squared`` or ``histeq``
        (``equal``, histogram equalization).
    sample : numpy.ndarray, optional
        Pixel values already normalized to 0..1, needed by ``histeq``.
    **options
        ``a`` for log/asinh/sinh, ``power`` (or ``gamma``) for power.

    Raises
    ------
    TypeError
        If ``stretch`` is neither a stretch object nor a known name.
    """
    if isinstance(stretch, BaseStretch):
        return stretch
    name = _STRETCH_NAMES.get(stretch.lower()) if isinstance(stretch, str) else None
    if name is None:
        msg = (
            f"Stretch {stretch!r} is not valid; pass an astropy.visualization stretch "
            f"(e.g. LogStretch()) or one of {sorted(_STRETCH_NAMES)}"
        )
        raise TypeError(msg)
    a = options.get("a")
    if name == "linear":
        return LinearStretch()
    if name == "log":
        return LogStretch(a=a) if a is not None else LogStretch()
    if name == "sqrt":
        return SqrtStretch()
    if name == "asinh":
        return AsinhStretch(a=a) if a is not None else AsinhStretch()
    if name == "sinh":
        return SinhStretch(a=a) if a is not None else SinhStretch()
    if name == "squared":
        return SquaredStretch()
    if name == "power":
        power = options.get("power", options.get("gamma", 2.0))
        return PowerStretch(float(power))
    values = np.linspace(0.0, 1.0, 256) if sample is None or sample.size == 0 else sample
    return HistEqStretch(np.clip(values, 0.0, 1.0))


def make_interval(cuts: Any) -> BaseInterval:
    """Return an astropy interval from an interval object, ``(lo, hi)`` or a name.

    Parameters
    ----------
    cuts : astropy.visualization.BaseInterval, tuple of 2 numbers, or str
        An interval (returned as is); explicit limits ``(lo, hi)`` in image units;
        ``"minmax"``, ``"zscale"``, or a percentile such as ``"99.5%"``.

    Raises
    ------
    TypeError
        If ``cuts`` has none of these forms.
    """
    if isinstance(cuts, BaseInterval):
        return cuts
    if isinstance(cuts, str):
        text = cuts.strip().lower()
        if text == "minmax":
            return MinMaxInterval()
        if text == "zscale":
            return ZScaleInterval()
        if text.endswith("%"):
            try:
                return PercentileInterval(float(text[:-1]))
            except ValueError:
                pass
    elif (
        isinstance(cuts, tuple | list)
        and len(cuts) == 2
        and all(isinstance(v, numbers.Real) for v in cuts)
    ):
        return ManualInterval(float(cuts[0]), float(cuts[1]))
    msg = (
        f"cuts must be an astropy.visualization interval, a (lo, hi) tuple of numbers, "
        f"'minmax', 'zscale' or a percentile like '99.5%'; got {cuts!r}"
    )
    raise TypeError(msg)


def cut_limits(interval: BaseInterval, sample: NDArray[np.float32]) -> tuple[float, float]:
    """Return finite cut levels ``(lo, hi)`` with ``hi > lo`` from a pixel sample.

    Manual intervals keep their numbers; data-driven ones use the sample. Degenerate
    results (flat or all-NaN images) are widened by one unit so that nothing divides
    by zero.
    """
    if isinstance(interval, ManualInterval) and None not in (interval.vmin, interval.vmax):
        lo, hi = float(interval.vmin), float(interval.vmax)
    elif sample.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in interval.get_limits(sample))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def stretch_lut(stretch: BaseStretch) -> NDArray[np.float32]:
    """Evaluate ``stretch`` on ``N_LEVELS`` evenly spaced inputs in 0..1 (clipped to 0..1)."""
    values = np.asarray(
        stretch(np.linspace(0.0, 1.0, N_LEVELS), clip=True), dtype=np.float64
    ).ravel()
    return np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0).astype(np.float32)


def colormap_lut(name: str) -> NDArray[np.uint8]:
    """Return a matplotlib colormap as a (256, 4) uint8 RGBA table.

    Raises
    ------
    ValueError
        If ``name`` is not a matplotlib colormap name.
    """
    if not isinstance(name, str) or name not in mpl.colormaps:
        msg = (
            f"{name!r} is not a valid matplotlib colormap name; pick one of "
            f"matplotlib.colormaps, e.g. 'gray', 'viridis' or 'magma'"
        )
        raise ValueError(msg)
    table = mpl.colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(np.asarray(table) * 255).astype(np.uint8)


def parse_color(color: Any, *, name: str = "color") -> tuple[int, int, int, int]:
    """Return a colour (CSS name, ``#rgb``, ``#rrggbb``, DS9 12-digit hex) as RGBA bytes.

    Raises
    ------
    ValueError
        If the colour cannot be understood; the message names the argument.
    """
    text = color.strip() if isinstance(color, str) else color
    if isinstance(text, str) and text.startswith("#") and len(text) == 13:
        # DS9 writes 16 bits per channel: keep the top byte of each.
        text = "#" + "".join(text[1 + 4 * i : 3 + 4 * i] for i in range(3))
    if isinstance(text, str) and text.startswith("#") and len(text) == 4:
        text = "#" + "".join(c * 2 for c in text[1:])
    try:
        rgba = to_rgba(text)
    except (ValueError, TypeError):
        msg = (
            f"{name} {color!r} is not a colour; use a CSS name ('red'), '#rrggbb', "
            f"or an (r, g, b[, a]) tuple of 0..1 floats"
        )
        raise ValueError(msg) from None
    r, g, b, a = (round(c * 255) for c in rgba)
    return r, g, b, a


def render_rgba(
    values: NDArray[np.floating],
    *,
    limits: tuple[float, float],
    stretch_table: NDArray[np.float32],
    colormap_table: NDArray[np.uint8],
) -> NDArray[np.uint8]:
    """Map pixel values to RGBA exactly as the browser does (see the module docstring).

    Returns
    -------
    numpy.ndarray of uint8, shape values.shape + (4,)
        Colours; NaN pixels get alpha 0.
    """
    lo, hi = limits
    scale = (N_LEVELS - 1) / (hi - lo)
    # float64 arithmetic, as JavaScript numbers, so both sides round identically.
    with np.errstate(invalid="ignore"):
        q = np.floor((np.asarray(values, dtype=np.float64) - lo) * scale + 0.5)
    finite = np.isfinite(q)
    index = np.clip(np.where(finite, q, 0), 0, N_LEVELS - 1).astype(np.intp)
    color_index = np.floor(stretch_table[index].astype(np.float64) * 255.0 + 0.5).astype(np.intp)
    rgba = colormap_table[np.clip(color_index, 0, 255)]
    rgba[~finite] = 0
    return rgba
