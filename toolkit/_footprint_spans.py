"""Footprints as pixel spans: runs of pixels along x within one row.

A span is ``(footprint id, y, x_start, x_stop)`` with ``x_stop`` exclusive. Spans
cost 16 bytes per footprint row, where a label image costs 4 bytes per image pixel
whether or not anything was detected there. Label images are made as uint16
while the labels fit (``_label_compact``). ``_label_runs`` labels the 8-connected
regions of a boolean image straight into spans (runs joined by union-find, compiled
with numba), numbered as ``ndimage.label`` numbers them, at a tenth of the cost of
labelling and then reading the label image.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ._jit import _bucket_order, _compiled

# Rows of a label image read per block: the block's temporaries stay a small
# fraction of an image.
_LABEL_BLOCK_ROWS = 512


def _label_spans(labels: NDArray[np.integer]) -> NDArray[np.int32]:
    """Return the spans of every label > 0 of ``labels``, sorted by label, y, x.

    Returns an int32 array of shape ``(n_spans, 4)``: ``(label, y, x_start, x_stop)``.
    """
    ny, _ = labels.shape
    chunks = [np.zeros((0, 4), dtype=np.int32)]
    for y0 in range(0, ny, _LABEL_BLOCK_ROWS):
        block = labels[y0 : y0 + _LABEL_BLOCK_ROWS]
        inside = block != 0
        # A run starts where the label differs from its left neighbour and ends
        # where it differs from its right one (a row's ends always bound a run).
        start = inside.copy()
        start[:, 1:] &= block[:, 1:] != block[:, :-1]
        end = inside
        end[:, :-1] &= block[:, :-1] != block[:, 1:]
        ys, xs = np.nonzero(start)
        _, xe = np.nonzero(end)  # row-major order: the i-th end closes the i-th start
        chunks.append(
            np.column_stack([block[ys, xs], ys + y0, xs, xe + 1]).astype(np.int32, copy=False)
        )
    spans = np.concatenate(chunks)
    order = np.lexsort((spans[:, 2], spans[:, 1], spans[:, 0]))
    return np.ascontiguousarray(spans[order])


def _span_pixels(
    spans: NDArray[np.integer],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Return ``(ys, xs, which)``: every pixel of ``spans`` and the span it belongs to."""
    lengths = (spans[:, 3] - spans[:, 2]).astype(np.intp)
    which = np.repeat(np.arange(len(spans)), lengths)
    first = np.cumsum(lengths) - lengths
    xs = np.arange(int(lengths.sum()), dtype=np.intp) - first[which] + spans[which, 2]
    return spans[which, 1].astype(np.intp), xs, which


def _label_compact(
    image: NDArray[np.bool_], structure: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.integer], int]:
    """``ndimage.label`` into uint16 labels (half an int32 image) while they fit, else int32."""
    try:
        labels, n = ndimage.label(image, structure=structure, output=np.uint16)
    except RuntimeError:  # more than 65535 regions
        labels, n = ndimage.label(image, structure=structure)
    return labels, int(n)


def _grow(mask: NDArray[np.bool_], radius: float) -> NDArray[np.bool_]:
    """Dilate ``mask`` by an octagon of the given radius (pixels), close to a disk.

    Alternating 3x3 cross and square dilations grow an octagon one pixel per
    step; this costs a few passes over the image instead of one large structuring
    element.
    """
    if radius <= 0 or not mask.any():
        return mask
    steps = round(radius)
    # A disk of radius r holds the octagon that has ~0.41 r diagonal (square) steps.
    n_square = round(steps * (np.sqrt(2.0) - 1.0))
    out = mask.copy()
    for i in range(steps):
        _dilate_once(out, square=i < n_square)
    return out


def _dilate_once(mask: NDArray[np.bool_], *, square: bool) -> None:
    """Dilate ``mask`` in place by the 3x3 square or cross (outside the image is False).

    Shifted ORs of whole rows and columns: several times faster than
    ``ndimage.binary_dilation``, whose column pass strides through memory.
    """
    if square:  # the square is separable: rows, then columns of the result
        vertical = mask.copy()
        vertical[1:] |= mask[:-1]
        vertical[:-1] |= mask[1:]
        mask[:, 1:] |= vertical[:, :-1]
        mask[:, :-1] |= vertical[:, 1:]
        mask |= vertical
        return
    original = mask.copy()
    mask[1:] |= original[:-1]
    mask[:-1] |= original[1:]
    mask[:, 1:] |= original[:, :-1]
    mask[:, :-1] |= original[:, 1:]


def _grown_runs(image: NDArray[np.bool_], radius: float) -> NDArray[np.int32]:
    """Return the runs of ``_grow(image, radius)`` (as `_runs` gives them), with no grown image.

    The dilations of `_grow` make one octagon: each row of the image's runs, widened
    by the octagon's half-width at each row offset, lands on the rows around it. Runs
    are merged row by row from those of up to ``2 round(radius) + 1`` rows.
    """
    runs = _runs(np.ascontiguousarray(image))
    if radius <= 0 or len(runs) == 0 or round(radius) == 0:
        return runs
    steps = round(radius)
    n_square = round(steps * (np.sqrt(2.0) - 1.0))
    octagon = np.zeros((2 * steps + 1, 2 * steps + 1), dtype=bool)
    octagon[steps, steps] = True
    for i in range(steps):
        _dilate_once(octagon, square=i < n_square)
    # Row dy - steps of the octagon spans x offsets -width..width (it is convex).
    widths = octagon.sum(axis=1).astype(np.int64) // 2
    return _widen_runs(runs, widths, image.shape[0], image.shape[1])


@_compiled
def _widen_runs(
    runs: NDArray[np.int32], widths: NDArray[np.int64], ny: int, nx: int
) -> NDArray[np.int32]:  # pragma: no cover - compiled
    """Return the runs (raster order) of ``runs`` moved by ``dy`` rows and ``widths[dy]`` wider.

    ``dy`` runs over ``-steps..steps`` (``len(widths) == 2 steps + 1``); runs that
    overlap or touch merge, clipped to the image, in raster order as `_runs` gives them.
    """
    steps = (len(widths) - 1) // 2
    row_first = np.zeros(ny + 1, dtype=np.int64)
    for r in range(len(runs)):
        row_first[runs[r, 1] + 1] += 1
    for y in range(ny):
        row_first[y + 1] += row_first[y]
    out = np.zeros((len(runs) * len(widths), 4), dtype=np.int32)
    head = np.empty(len(widths), dtype=np.int64)
    stop = np.empty(len(widths), dtype=np.int64)
    n_out = 0
    y_low = max(runs[0, 1] - steps, 0)
    y_high = min(runs[len(runs) - 1, 1] + steps + 1, ny)
    for y in range(y_low, y_high):
        for k in range(len(widths)):
            source = y - (k - steps)
            if 0 <= source < ny:
                head[k], stop[k] = row_first[source], row_first[source + 1]
            else:
                head[k], stop[k] = 0, 0
        current_start, current_stop = -1, -1
        while True:
            # The source run that starts leftmost once widened.
            best, best_start = -1, 0
            for k in range(len(widths)):
                if head[k] < stop[k]:
                    start = max(runs[head[k], 2] - widths[k], 0)
                    if best < 0 or start < best_start:
                        best, best_start = k, start
            if best < 0:
                break
            end = min(runs[head[best], 3] + widths[best], nx)
            head[best] += 1
            if current_stop >= best_start:  # overlaps or touches: one run
                current_stop = max(current_stop, end)
                continue
            if current_start >= 0:
                out[n_out, 1], out[n_out, 2], out[n_out, 3] = y, current_start, current_stop
                n_out += 1
            current_start, current_stop = best_start, end
        if current_start >= 0:
            out[n_out, 1], out[n_out, 2], out[n_out, 3] = y, current_start, current_stop
            n_out += 1
    return out[:n_out].copy()


def _label_runs(image: NDArray[np.bool_]) -> tuple[NDArray[np.int32], int]:
    """8-connected regions of ``image`` as spans, numbered as ``ndimage.label`` numbers them.

    Returns the spans ``(label, y, x_start, x_stop)`` sorted by label, y and x, and the
    number of regions. Regions are numbered in raster order of their first pixel, as
    :func:`_label_compact` with a 3x3 structure numbers them; this works on the runs
    of the image, not on a label image.
    """
    runs = _runs(np.ascontiguousarray(image))
    return _connect_runs(runs)


@_compiled
def _runs(image: NDArray[np.bool_]) -> NDArray[np.int32]:  # pragma: no cover - compiled
    """Return the runs of True pixels along x in raster order: rows ``(0, y, x_start, x_stop)``."""
    ny, nx = image.shape
    count = 0
    for y in range(ny):
        inside = False
        for x in range(nx):
            if image[y, x] and not inside:
                count += 1
            inside = image[y, x]
    runs = np.zeros((count, 4), dtype=np.int32)
    i = 0
    for y in range(ny):
        x = 0
        while x < nx:
            if image[y, x]:
                start = x
                while x < nx and image[y, x]:
                    x += 1
                runs[i, 1], runs[i, 2], runs[i, 3] = y, start, x
                i += 1
            else:
                x += 1
    return runs


@_compiled
def _root(parent: NDArray[np.int64], i: int) -> int:  # pragma: no cover - compiled
    """Root of ``i``'s group in the union-find forest ``parent``, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@_compiled
def _join_rows(
    parent: NDArray[np.int64],
    x_start: NDArray[np.integer],
    x_stop: NDArray[np.integer],
    above_lo: int,
    above_hi: int,
    row_lo: int,
    row_hi: int,
    diagonal: bool,
) -> None:  # pragma: no cover - compiled
    """Join each run ``row_lo..row_hi - 1`` with the runs ``above_lo..above_hi - 1`` it touches.

    The two ranges are the runs of a row and of the row above, each sorted by x
    (``x_stop`` exclusive); ``parent`` is their union-find forest, each group rooted
    at its earliest run. Runs touch when they share a column, or with ``diagonal``
    (8-connectivity) also a corner.
    """
    reach = 1 if diagonal else 0
    j = above_lo
    for b in range(row_lo, row_hi):
        while j < above_hi and x_stop[j] + reach <= x_start[b]:
            j += 1
        k = j
        while k < above_hi and x_start[k] < x_stop[b] + reach:
            ra, rb = _root(parent, k), _root(parent, b)
            if ra < rb:
                parent[rb] = ra
            elif rb < ra:
                parent[ra] = rb
            k += 1


@_compiled
def _connect_runs(runs: NDArray[np.int32]) -> tuple[NDArray[np.int32], int]:  # pragma: no cover
    """Label runs (raster order) by 8-connected region; return them sorted by label and n.

    Union-find keeps the earliest run of a region as its root, so numbering the roots
    in raster order numbers regions by their first pixel.
    """
    n_runs = len(runs)
    parent = np.arange(n_runs)
    x_start, x_stop = runs[:, 2], runs[:, 3]
    previous_start, previous_stop = 0, 0  # runs of the previous row
    i = 0
    while i < n_runs:
        y = runs[i, 1]
        row_start = i
        while i < n_runs and runs[i, 1] == y:
            i += 1
        if row_start > 0 and runs[row_start - 1, 1] == y - 1:
            previous_stop = row_start
            previous_start = row_start - 1
            while previous_start > 0 and runs[previous_start - 1, 1] == y - 1:
                previous_start -= 1
        else:
            previous_start = previous_stop = row_start
        _join_rows(parent, x_start, x_stop, previous_start, previous_stop, row_start, i, True)
    label = np.zeros(n_runs, dtype=np.int64)
    n = 0
    for r in range(n_runs):
        root = _root(parent, r)
        if root == r:
            n += 1
            label[r] = n
        else:
            label[r] = label[root]
    # Stable counting sort by label: raster order within each region.
    order = _bucket_order(label, n + 1)[1]
    out = np.empty_like(runs)
    for at in range(n_runs):
        r = order[at]
        out[at, 0] = label[r]
        out[at, 1], out[at, 2], out[at, 3] = runs[r, 1], runs[r, 2], runs[r, 3]
    return out, n


@_compiled
def _paint(
    spans: NDArray[np.int32], out: NDArray[np.integer], value: NDArray[np.integer]
) -> None:  # pragma: no cover - compiled
    """Set ``out`` to ``value[span's label]`` on every span's pixels (in place)."""
    for s in range(len(spans)):
        v = value[spans[s, 0]]
        y = spans[s, 1]
        for x in range(spans[s, 2], spans[s, 3]):
            out[y, x] = v


def _label_image(spans: NDArray[np.int32], shape: tuple[int, int], n: int) -> NDArray[np.integer]:
    """Draw the label image of labelled spans: uint16 while labels fit (as `_label_compact`)."""
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.int32
    out = np.zeros(shape, dtype=dtype)
    _paint(spans, out, np.arange(n + 1, dtype=dtype))
    return out
