"""The compiled inner loops of the deblender's templates and amplitude fit (numba).

A blend's templates, their sparse matrix and the amplitude fit cost a few dozen NumPy
and scipy.sparse calls each, repeated for every recentring iteration: on a 4096² frame
with a few hundred blends the calls' overhead was most of the deblender's time. These
kernels do the same arithmetic on the same operands in the same order (the matrix
products accumulate as scipy's CSR/CSC kernels do, the 50 amplitude updates call the
same BLAS ``dgemv`` through ``np.dot``), so the children's weights are unchanged to
the last bit. The template matrix is held as CSR arrays ``(indptr, indices, values)``:
row ``k`` is template ``k``, columns are flat stamp pixels in ascending order.
Compiled by numba (see `_jit`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._jit import _block_sum, _bucket_order, _compiled

__all__: list[str] = []


@_compiled
def _window_start(centre2: int, radius: int, size: int) -> int:  # pragma: no cover - compiled
    """Return the first pixel of ``range(size)`` in the template window about ``centre2 / 2``.

    The window holds the pixels ``p`` at most ``radius`` from the centre whose mirror
    ``centre2 - p`` is in ``range(size)`` too; it ends at ``centre2 - start``.
    """
    return max(0, centre2 - (size - 1), -((2 * radius - centre2) // 2))


@_compiled
def _monotonic_inplace(template: NDArray[np.float64]) -> None:  # pragma: no cover - compiled
    """Clip a centred template in place so that it never rises going out from its centre.

    Rings of constant Chebyshev distance from the middle of the array, innermost
    first (the middle itself left out); each pixel of a ring is limited by the pixel
    one ring closer along the ray from the centre, the offset rounded symmetrically
    about the centre (ties away from it), so that a point-symmetric template stays
    symmetric. A ring's new values are all computed before any is stored. This
    removes neighbours that the symmetry test alone lets through (a star whose
    mirror image through the peak happens to hold another star).
    """
    ny, nx = template.shape
    if ny == 0 or nx == 0:
        return
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    fy, fx = cy - np.floor(cy), cx - np.floor(cx)
    # Ring distances are multiples of 1/2: twice the distance is an exact integer key.
    key = np.empty(ny * nx, dtype=np.int64)
    max_key = 0
    min_key = ny + nx
    for y in range(ny):
        for x in range(nx):
            k = int(2.0 * max(abs(y - cy), abs(x - cx)) + 0.5)
            key[y * nx + x] = k
            max_key = max(max_key, k)
            min_key = min(min_key, k)
    start, order = _bucket_order(key, max_key + 1)
    flat = template.ravel()
    clipped = np.empty(ny * nx, dtype=template.dtype)
    for k in range(min_key + 1, max_key + 1):
        if start[k] == start[k + 1]:
            continue
        d = k / 2.0
        scale = max(d - 1.0, 0.0) / d
        for m in range(start[k], start[k + 1]):
            i = order[m]
            dy = i // nx - cy
            dx = i % nx - cx
            oy = dy * scale
            ox = dx * scale
            ry = np.sign(oy) * (np.floor(abs(oy) + 0.5 - fy) + fy)
            rx = np.sign(ox) * (np.floor(abs(ox) + 0.5 - fx) + fx)
            inner = int(cy + ry) * nx + int(cx + rx)
            clipped[m] = min(flat[i], flat[inner])
        for m in range(start[k], start[k + 1]):
            flat[order[m]] = clipped[m]


@_compiled
def _template_pixels(
    positive: NDArray[np.float64], cx2: int, cy2: int, radius: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:  # pragma: no cover - compiled
    """Symmetric, monotonic template about ``(cx2 / 2, cy2 / 2)``: its positive pixels.

    Returns the flat stamp indices (ascending) and values of the template's pixels
    above 0, within the window of pixels whose mirror is in the stamp and at most
    ``radius`` from the centre.
    """
    ny, nx = positive.shape
    y0 = _window_start(cy2, radius, ny)
    x0 = _window_start(cx2, radius, nx)
    h = max(cy2 - y0 + 1 - y0, 0)
    w = max(cx2 - x0 + 1 - x0, 0)
    template = np.empty((h, w), dtype=positive.dtype)
    for y in range(h):
        for x in range(w):
            a = positive[y0 + y, x0 + x]
            b = positive[y0 + h - 1 - y, x0 + w - 1 - x]
            template[y, x] = min(a, b)
    _monotonic_inplace(template)
    n_keep = 0
    for y in range(h):
        for x in range(w):
            if template[y, x] > 0:
                n_keep += 1
    index = np.empty(n_keep, dtype=np.int64)
    values = np.empty(n_keep, dtype=positive.dtype)
    m = 0
    for y in range(h):
        for x in range(w):
            if template[y, x] > 0:
                index[m] = (y0 + y) * nx + x0 + x
                values[m] = template[y, x]
                m += 1
    return index, values


@_compiled
def _amplitudes_csr(
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    values: NDArray[np.float64],
    target: NDArray[np.float64],
    start: NDArray[np.float64],
    iterations: int,
) -> NDArray[np.float64]:  # pragma: no cover - compiled
    """Non-negative least-squares amplitudes of the template rows for ``target``.

    Multiplicative updates (Lee & Seung) from ``start``. The numerator ``M t`` and the
    Gram matrix ``M Mᵀ`` accumulate over pixels in ascending order, as scipy's
    ``csr_matvec`` and ``csr_matmat`` do.
    """
    n = len(indptr) - 1
    # In the templates' precision (float32 from a float32 image), as scipy computes.
    numerator = np.zeros(n, dtype=values.dtype)
    for i in range(n):
        for jj in range(indptr[i], indptr[i + 1]):
            numerator[i] += values[jj] * target[indices[jj]]
    # Templates by pixel (the transpose, in CSR form), rows in ascending order.
    colptr, order = _bucket_order(indices, len(target))
    row_of = np.empty(len(indices), dtype=np.int64)
    for i in range(n):
        row_of[indptr[i] : indptr[i + 1]] = i
    rows = row_of[order]
    by_pixel = values[order]
    gram = np.zeros((n, n), dtype=values.dtype)
    for i in range(n):
        for jj in range(indptr[i], indptr[i + 1]):
            p = indices[jj]
            v = values[jj]
            for kk in range(colptr[p], colptr[p + 1]):
                gram[i, rows[kk]] += v * by_pixel[kk]
    gram64 = gram.astype(np.float64)
    amplitude = start.copy()
    for _ in range(iterations):
        denominator = np.dot(gram64, amplitude)
        for i in range(n):
            if denominator[i] > 0:
                amplitude[i] *= numerator[i] / max(denominator[i], 1e-300)
    return amplitude


@_compiled
def _normalised_weights(
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    values: NDArray[np.floating],
    amplitude: NDArray[np.float64],
    n_pixels: int,
) -> tuple[NDArray[np.floating], NDArray[np.bool_]]:  # pragma: no cover - compiled
    """Each template pixel's share ``a_k T_k(p) / sum_j a_j T_j(p)``, and the claimed pixels.

    Shares are stored in the templates' precision (as NumPy's in-place products on
    them were); pixels whose template sum is below ``1e-12`` of the largest are not
    claimed and get share 0.
    """
    n = len(indptr) - 1
    weights = np.empty(len(values), dtype=values.dtype)
    total = np.zeros(n_pixels)
    for k in range(n):
        for jj in range(indptr[k], indptr[k + 1]):
            weights[jj] = values[jj] * amplitude[k]
            total[indices[jj]] += weights[jj]
    largest = total.max() if n_pixels else 0.0
    floor = 1e-12 * max(largest, 1e-300)
    claimed = total > floor
    for jj in range(len(weights)):
        p = indices[jj]
        weights[jj] = weights[jj] * (1.0 / total[p] if claimed[p] else 0.0)
    return weights, claimed


@_compiled
def _children(
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    weights: NDArray[np.floating],
    stray_pixel: NDArray[np.int64],
    stray_near: NDArray[np.int64],
    stray_weight: NDArray[np.float64],
    nx: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:  # pragma: no cover
    """Each child's weights on its bounding box: template shares plus stray-flux shares.

    ``stray_near[j, m]`` is the ``m``-th child sharing stray pixel ``stray_pixel[j]``
    (ascending) with weight ``stray_weight[j, m]``. With stray pixels, a child's
    pixels are those of its template and stray shares whose sum is not 0 (as a sparse
    sum keeps them); without, every template pixel, 0 or not. Returns boxes
    ``(x0, y0, ny, nx)`` (stamp pixels; ``ny == 0`` for a child with no pixel), each
    box's offset in the buffer, and the buffer of the boxes' weights, row-major.
    """
    n = len(indptr) - 1
    n_stray, k_near = stray_near.shape
    # Stray shares by child, in ascending pixel order.
    stray_ptr, order = _bucket_order(stray_near.ravel(), n)
    stray_index = stray_pixel[order // k_near]
    stray_value = stray_weight.ravel()[order]
    # The merged pixels of every child (template and stray shares, ascending pixels).
    merged_ptr = np.zeros(n + 1, dtype=np.int64)
    merged_index = np.empty(len(indices) + n_stray * k_near, dtype=np.int64)
    merged_value = np.empty(len(indices) + n_stray * k_near)
    m_out = 0
    for k in range(n):
        a, a_end = indptr[k], indptr[k + 1]
        b, b_end = stray_ptr[k], stray_ptr[k + 1]
        while a < a_end or b < b_end:
            if b >= b_end or (a < a_end and indices[a] < stray_index[b]):
                p, value = indices[a], weights[a] + 0.0
                a += 1
            elif a >= a_end or stray_index[b] < indices[a]:
                p, value = stray_index[b], 0.0 + stray_value[b]
                b += 1
            else:
                p, value = indices[a], weights[a] + stray_value[b]
                a += 1
                b += 1
            if n_stray == 0 or value != 0:
                merged_index[m_out] = p
                merged_value[m_out] = value
                m_out += 1
        merged_ptr[k + 1] = m_out
    boxes = np.zeros((n, 4), dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    for k in range(n):
        lo, hi = merged_ptr[k], merged_ptr[k + 1]
        size = 0
        if hi > lo:
            y0, y1, x0, x1 = merged_index[lo] // nx, 0, nx, 0
            for m in range(lo, hi):
                y, x = merged_index[m] // nx, merged_index[m] % nx
                y0, y1 = min(y0, y), max(y1, y)
                x0, x1 = min(x0, x), max(x1, x)
            boxes[k] = (x0, y0, y1 - y0 + 1, x1 - x0 + 1)
            size = (y1 - y0 + 1) * (x1 - x0 + 1)
        offsets[k + 1] = offsets[k] + size
    buffer = np.zeros(offsets[n], dtype=np.float32)
    for k in range(n):
        x0, y0, _, w = boxes[k]
        for m in range(merged_ptr[k], merged_ptr[k + 1]):
            y, x = merged_index[m] // nx, merged_index[m] % nx
            buffer[offsets[k] + (y - y0) * w + x - x0] = merged_value[m]
    return boxes, offsets, buffer


@_compiled
def _centroid_light(
    positive: NDArray[np.floating],
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    values: NDArray[np.floating],
    amplitude: NDArray[np.float64],
    centre2: NDArray[np.int64],
    half: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:  # pragma: no cover
    """Each source's light on the box of ``half`` px about its centre, and the box's pixels.

    The light is the parent minus the other templates' fitted light (0 off the stamp,
    never negative). Returns ``light, x, y``, each ``(n, (2 half + 1)²)``, the box's
    pixels in row-major order.
    """
    ny, nx = positive.shape
    n = len(centre2)
    size = 2 * half + 1
    model = np.zeros(ny * nx)
    for k in range(n):
        for jj in range(indptr[k], indptr[k + 1]):
            model[indices[jj]] += values[jj] * amplitude[k]
    light = np.zeros((n, size * size))
    gx = np.empty((n, size * size))
    gy = np.empty((n, size * size))
    flat_positive = positive.ravel()
    for k in range(n):
        # The pixel nearest the centre (halves round up).
        by0 = int(np.floor(centre2[k, 1] / 2.0 + 0.5)) - half
        bx0 = int(np.floor(centre2[k, 0] / 2.0 + 0.5)) - half
        lo, hi = indptr[k], indptr[k + 1]
        for i in range(size):
            y = by0 + i
            for j in range(size):
                x = bx0 + j
                m = i * size + j
                gy[k, m] = y
                gx[k, m] = x
                if y < 0 or y >= ny or x < 0 or x >= nx:
                    continue
                p = y * nx + x
                at = lo + np.searchsorted(indices[lo:hi], p)
                own = 0.0
                if at < hi and indices[at] == p:
                    own = values[at] * amplitude[k]
                value = (flat_positive[p] - model[p]) + own
                light[k, m] = value if value >= 0.0 else 0.0
    return light, gx, gy


@_compiled
def _centroid_iterations(
    light: NDArray[np.float64],
    gx: NDArray[np.float64],
    gy: NDArray[np.float64],
    cx: NDArray[np.float64],
    cy: NDArray[np.float64],
    iterations: int,
    weight: float,
) -> None:  # pragma: no cover - compiled
    """Move ``(cx, cy)`` (in place) to the centroid of ``light`` under a Gaussian that follows it.

    Per source ``k`` and iteration, ``w = light * exp(-((gx - cx)² + (gy - cy)²) weight)``
    over the box ``(gx, gy)``, and the centre becomes ``(sum w gx, sum w gy) / sum w``
    where ``sum w > 0``: NumPy's row sums in its order (the exponential is libm's).
    The box holds at most 128 pixels (one block of NumPy's pairwise sums).
    """
    n, m = light.shape
    if m > 128:
        msg = "the centroid box must hold at most 128 pixels"
        raise ValueError(msg)
    w = np.empty(m)
    wx = np.empty(m)
    wy = np.empty(m)
    for k in range(n):
        x, y = cx[k], cy[k]
        for _ in range(iterations):
            for i in range(m):
                d2 = (gx[k, i] - x) ** 2 + (gy[k, i] - y) ** 2
                w[i] = light[k, i] * np.exp(-d2 * weight)
                wx[i] = w[i] * gx[k, i]
                wy[i] = w[i] * gy[k, i]
            total = _block_sum(w, m)
            if total > 0:
                x, y = _block_sum(wx, m) / total, _block_sum(wy, m) / total
        cx[k], cy[k] = x, y


@_compiled
def _nearest_centres(
    pixels: NDArray[np.int64], nx: int, centres: NDArray[np.float64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.bool_]]:  # pragma: no cover
    """Return the ``k`` centres ``(x, y)`` nearest each flat stamp pixel, nearest first.

    Returns their distances and indices (as ``cKDTree.query`` with ``k``), and whether
    a centre left out is exactly as near as the ``k``-th: which of those a k-d tree
    returns depends on its traversal, so the caller asks it for those pixels.
    """
    n = len(centres)
    dist = np.empty((len(pixels), k))
    near = np.empty((len(pixels), k), dtype=np.int64)
    tied = np.zeros(len(pixels), dtype=np.bool_)
    distance2 = np.empty(n)
    taken = np.empty(n, dtype=np.bool_)
    for i in range(len(pixels)):
        y, x = pixels[i] // nx, pixels[i] % nx
        for j in range(n):
            dx, dy = x - centres[j, 0], y - centres[j, 1]
            distance2[j] = dx * dx + dy * dy
            taken[j] = False
        for r in range(k):
            best = -1
            for j in range(n):
                if not taken[j] and (best < 0 or distance2[j] < distance2[best]):
                    best = j
            taken[best] = True
            near[i, r] = best
            dist[i, r] = np.sqrt(distance2[best])
        for j in range(n):
            if not taken[j] and distance2[j] == distance2[near[i, k - 1]]:
                tied[i] = True
    return dist, near, tied


@_compiled
def _crowded(centre2: NDArray[np.int64]) -> NDArray[np.bool_]:  # pragma: no cover - compiled
    """Centres (twice, on the half-pixel grid) within one pixel of another centre."""
    n = len(centre2)
    out = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        for j in range(i + 1, n):
            dx = centre2[i, 0] - centre2[j, 0]
            dy = centre2[i, 1] - centre2[j, 1]
            if dx * dx + dy * dy <= 4:
                out[i] = True
                out[j] = True
    return out


@_compiled
def _footprint_stamp(
    spans: NDArray[np.int32], y0: int, x0: int, ny: int, nx: int, image: NDArray[np.float32]
) -> tuple[NDArray[np.bool_], NDArray[np.float32]]:  # pragma: no cover - compiled
    """Return a footprint's pixels on its box and the image there (0 outside it).

    Non-finite pixels become 0: they carry no light to share, and an infinite one
    (as the largest float32, what ``np.nan_to_num`` makes of it) overflowed the
    templates' float32 sums into NaN weights for every child.
    ``spans`` are the footprint's rows ``(id, y, x_start, x_stop)``; the box's first
    pixel is ``(x0, y0)``.
    """
    inside = np.zeros((ny, nx), dtype=np.bool_)
    stamp = np.zeros((ny, nx), dtype=image.dtype)
    for s in range(len(spans)):
        y = spans[s, 1]
        for x in range(spans[s, 2], spans[s, 3]):
            value = image[y, x]
            if not np.isfinite(value):
                value = 0.0
            inside[y - y0, x - x0] = True
            stamp[y - y0, x - x0] = value
    return inside, stamp
