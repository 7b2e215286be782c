"""Footprints as pixel spans: runs of pixels along x within one row.

A span is ``(footprint id, y, x_start, x_stop)`` with ``x_stop`` exclusive. Spans
cost 16 bytes per footprint row, where a label image costs 4 bytes per image pixel
whether or not anything was detected there. Label images are made as uint16
while the labels fit (``_label_compact``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

# Rows of a label image read per block, and spans drawn per block: the block's
# temporaries stay a small fraction of an image.
_LABEL_BLOCK_ROWS = 512
_SPANS_PER_CHUNK = 16384


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


def _span_pixel_chunks(
    spans: NDArray[np.integer],
) -> Iterator[tuple[NDArray[np.integer], NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]]:
    """Yield ``(chunk, ys, xs, which)`` for chunks of ``_SPANS_PER_CHUNK`` spans.

    The pixels of each chunk as :func:`_span_pixels` gives them (``which`` indexes the
    chunk): the pixel lists of a whole image's spans would be several images' worth
    of int64 at once.
    """
    for start in range(0, len(spans), _SPANS_PER_CHUNK):
        chunk = spans[start : start + _SPANS_PER_CHUNK]
        yield (chunk, *_span_pixels(chunk))


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
