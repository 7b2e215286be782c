"""Small image stamps as PNG bytes (for ``ipywidgets.Image``) and as a matplotlib grid.

Stamps of one object (image, model, residual) share display limits so that
they can be compared by eye; masked pixels are painted in a fixed colour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["plot_stamp_grid", "stamp_limits", "stamp_png"]

_MASKED_RGB = (200, 40, 160)


def stamp_limits(*stamps: NDArray[np.floating], percentile: float = 99.5) -> tuple[float, float]:
    """Shared display limits ``(low, high)`` for stamps: robust minimum and maximum.

    Parameters
    ----------
    *stamps : numpy.ndarray
        Stamps to show with one stretch (the first is the reference, e.g. the data).
    percentile : float
        Upper percentile of the reference's finite pixels used as ``high``.

    Examples
    --------
    >>> import numpy as np
    >>> stamp_limits(np.arange(100.0).reshape(10, 10), percentile=100.0)
    (0.0, 99.0)
    """
    if not stamps:
        return 0.0, 1.0
    values = np.asarray(stamps[0], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low = float(np.min(values))
    high = float(np.percentile(values, percentile))
    if not high > low:
        high = low + 1.0
    return low, high


def stamp_png(
    stamp: NDArray[np.floating],
    limits: tuple[float, float],
    *,
    valid: NDArray[np.bool_] | None = None,
    zoom: int | None = None,
    target_px: int = 120,
) -> bytes:
    """Render a stamp as a grey PNG with an asinh stretch between ``limits``.

    Row 0 of the array is drawn at the bottom (y up, as in the viewer); invalid
    pixels are magenta. The stamp is enlarged by pixel replication.

    Parameters
    ----------
    stamp : numpy.ndarray
        Pixel values.
    limits : tuple of float
        ``(low, high)`` mapped to black and white.
    valid : numpy.ndarray of bool, optional
        Usable pixels; others are painted magenta.
    zoom : int, optional
        Replication factor; by default the stamp is enlarged to about ``target_px``.
    target_px : int
        Wanted output size when ``zoom`` is omitted.

    Returns
    -------
    bytes
        The PNG file.
    """
    data = np.asarray(stamp, dtype=np.float64)
    low, high = limits
    span = high - low if high > low else 1.0
    scaled = np.clip((np.nan_to_num(data, nan=low) - low) / span, 0.0, 1.0)
    soft = 0.1
    grey = np.arcsinh(scaled / soft) / np.arcsinh(1.0 / soft)
    rgb = np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    bad = ~np.isfinite(data) if valid is None else ~np.asarray(valid, dtype=bool)
    rgb[bad] = _MASKED_RGB
    rgb = rgb[::-1]
    if zoom is None:
        zoom = max(1, int(target_px // max(data.shape)))
    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def plot_stamp_grid(
    rows: Sequence[tuple[str, Sequence[NDArray[np.floating]]]],
    *,
    columns: Sequence[str] = ("image", "model", "residual"),
    title: str | None = None,
) -> Any:
    """Draw a static matplotlib grid of stamps: one row per source, shared limits per row.

    Parameters
    ----------
    rows : sequence of (label, stamps)
        Row label and its stamps (e.g. image, model, residual).
    columns : sequence of str
        Column titles.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    n_rows, n_cols = max(len(rows), 1), len(columns)
    fig = Figure(figsize=(2.0 * n_cols, 2.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, (label, stamps) in enumerate(rows):
        low, high = stamp_limits(*stamps)
        for j, stamp in enumerate(stamps[:n_cols]):
            ax = axes[i, j]
            ax.imshow(stamp, origin="lower", cmap="gray", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize="small")
            if j == 0:
                ax.set_ylabel(label, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
