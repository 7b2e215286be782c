"""The background mesh and its bicubic-spline interpolation, as SExtractor and sep do it.

sep keeps the background as one value per mesh box and evaluates the full-resolution
map row by row: a natural cubic spline along y through each column of mesh values,
then a natural cubic spline along x through the interpolated row. Node ``j`` of an
axis sits at ``u = j`` of the coordinate ``u = (p + 0.5) / box - 0.5`` (``p`` the
pixel index, ``box`` the mesh size); pixels beyond the first or last node are
extrapolated from the end segment. Both splines are linear in the mesh values, so
the map is ``A_y @ mesh @ A_x.T`` with one interpolation matrix per axis. That lets
:class:`~stacklab.toolkit.Background` keep the mesh only (a few kB instead of two
float32 images) and evaluate any block of rows on demand, identically to sep.

sep does not expose its mesh; :func:`_mesh_from_map` recovers it from a map sep made
(least squares through the same matrices, exact to float32 rounding).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray

from ._jit import _compiled


@functools.lru_cache(maxsize=16)
def _interpolation_matrix(
    n_pixels: int, n_nodes: int, box: int, *, offset: float, spline: bool = True
) -> NDArray[np.float64]:
    """Return the ``(n_pixels, n_nodes)`` matrix of sep's interpolation along one axis.

    Row ``p`` holds the weights of the node values in the value at pixel ``p``,
    whose coordinate in node units is ``(p + offset) / box - 0.5`` (sep uses
    ``offset`` 0.5 along x and 0 along y). ``spline=False`` gives sep's linear
    interpolation (along x when the mesh has a single row). Read-only; cached.
    """
    if n_nodes == 1:
        out = np.ones((n_pixels, 1))
        out.flags.writeable = False
        return out
    second = _second_derivatives(n_nodes) if spline else np.zeros((n_nodes, n_nodes))
    u = (np.arange(n_pixels) + offset) / box - 0.5
    segment = np.clip(np.floor(u).astype(np.int64), 0, n_nodes - 2)
    b = u - segment
    a = 1.0 - b
    out = (a * a * a - a)[:, None] * second[segment]
    out += (b * b * b - b)[:, None] * second[segment + 1]
    rows = np.arange(n_pixels)
    out[rows, segment] += a
    out[rows, segment + 1] += b
    out.flags.writeable = False
    return out


def _second_derivatives(n_nodes: int) -> NDArray[np.float64]:
    """Linear map from node values to the spline terms sep multiplies by ``t³ - t``.

    The tridiagonal solve of a natural cubic spline with unit spacing, with
    SExtractor's back-substitution as it is: each term is ``(c_k d_{k+1} + u_k) / 6``
    with ``d_{k+1}`` already divided by 6 (not the textbook ``M''/6``; sep's maps are
    made this way, so the mesh must be read the same way).
    """
    identity = np.eye(n_nodes)
    c = np.zeros(n_nodes)
    u = np.zeros((n_nodes, n_nodes))
    for k in range(1, n_nodes - 1):
        c[k] = -1.0 / (c[k - 1] + 4.0)
        u[k] = c[k] * (u[k - 1] - 6.0 * (identity[k + 1] + identity[k - 1] - 2.0 * identity[k]))
    d = np.zeros((n_nodes, n_nodes))
    for k in range(n_nodes - 2, 0, -1):
        d[k] = (c[k] * d[k + 1] + u[k]) / 6.0
    return d


def _n_nodes(n_pixels: int, box: int) -> int:
    """Mesh boxes along an axis of ``n_pixels`` (the last one may be partial)."""
    return -(-n_pixels // box)


def _matrices(
    shape: tuple[int, int], mesh_shape: tuple[int, int], box: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Interpolation matrices along y and x (sep: no spline along x for a one-row mesh)."""
    a_y = _interpolation_matrix(shape[0], mesh_shape[0], box, offset=0.0)
    a_x = _interpolation_matrix(shape[1], mesh_shape[1], box, offset=0.5, spline=mesh_shape[0] > 1)
    return a_y, a_x


def _evaluate(
    mesh: NDArray[np.floating],
    shape: tuple[int, int],
    box: int,
    y0: int = 0,
    y1: int | None = None,
    *,
    subtract_from: NDArray[np.floating] | None = None,
) -> NDArray[np.floating]:
    """Return the float32 map of rows ``y0:y1`` interpolated from ``mesh``.

    With ``subtract_from`` (rows ``y0:y1`` of an image), return that image minus the
    float32 map instead, in the image's precision (at least float32): the map is
    never held.

    The y spline is applied through its structure rather than as the dense
    ``A_y @ along_x`` product: each pixel row is four weights times two node rows
    and two rows of second-derivative terms (4 multiply-adds a pixel instead of one
    per mesh row; the same float64 sums up to rounding, before the float32 cast).
    """
    ny, nx = shape
    y1 = ny if y1 is None else y1
    n_rows = max(y1 - y0, 0)
    # sep interpolates linearly along x when the mesh has a single row.
    a_x = _interpolation_matrix(nx, mesh.shape[1], box, offset=0.5, spline=mesh.shape[0] > 1)
    # Node rows interpolated along x, and the y spline's second-derivative terms of
    # them; a zero row after each lets a one-row mesh use the same two-node formula.
    along_x = np.zeros((mesh.shape[0] + 1, nx))
    along_x[:-1] = np.asarray(mesh, dtype=np.float64) @ a_x.T
    curvature = np.zeros_like(along_x)
    if mesh.shape[0] > 1:
        curvature[:-1] = _second_derivatives(mesh.shape[0]) @ along_x[:-1]
    segment, weights = _spline_weights(ny, mesh.shape[0], box)
    if subtract_from is None:
        result = np.empty((n_rows, nx), dtype=np.float32)
        _map_rows(along_x, curvature, segment, weights, y0, False, result, result)
    else:
        result = np.empty((n_rows, nx), dtype=np.result_type(subtract_from, np.float32))
        _map_rows(along_x, curvature, segment, weights, y0, True, subtract_from, result)
    return result


@functools.lru_cache(maxsize=16)
def _spline_weights(
    n_pixels: int, n_nodes: int, box: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Segment and weights of every pixel row of the y spline (sep's offset 0).

    Returns the first node ``s`` of each row's segment and the ``(n_pixels, 4)``
    weights of node rows ``s``, ``s + 1`` and of their second-derivative terms, the
    factors of :func:`_interpolation_matrix`. Read-only; cached.
    """
    if n_nodes == 1:
        segment = np.zeros(n_pixels, dtype=np.int64)
        weights = np.zeros((n_pixels, 4))
        weights[:, 0] = 1.0
    else:
        u = np.arange(n_pixels) / box - 0.5
        segment = np.clip(np.floor(u).astype(np.int64), 0, n_nodes - 2)
        b = u - segment
        a = 1.0 - b
        weights = np.column_stack([a, b, a * a * a - a, b * b * b - b])
    segment.flags.writeable = False
    weights.flags.writeable = False
    return segment, weights


@_compiled
def _map_rows(
    along_x: NDArray[np.float64],
    curvature: NDArray[np.float64],
    segment: NDArray[np.int64],
    weights: NDArray[np.float64],
    y0: int,
    subtract: bool,
    image: NDArray[np.floating],
    out: NDArray[np.floating],
) -> None:  # pragma: no cover - compiled; run through _evaluate
    """Write rows ``y0 : y0 + len(out)`` of the float32 map into ``out``.

    With ``subtract``, write ``image`` minus them instead (``image`` is read only
    then; pass ``out`` when there is none).
    """
    n_rows, nx = out.shape
    for i in range(n_rows):
        y = y0 + i
        s = segment[y]
        wa, wb, wc, wd = weights[y, 0], weights[y, 1], weights[y, 2], weights[y, 3]
        for x in range(nx):
            value = np.float32(
                wa * along_x[s, x] + wb * along_x[s + 1, x]
                + wc * curvature[s, x] + wd * curvature[s + 1, x]
            )  # fmt: skip
            out[i, x] = image[i, x] - value if subtract else value


def _mesh_from_map(map_: NDArray[np.floating], box: int) -> NDArray[np.float32]:
    """Return the mesh whose interpolation is ``map_`` (a full-resolution sep map).

    The map is ``A_y @ mesh @ A_x.T``; the rows and columns of pixels next to the
    nodes suffice to invert it (least squares on three rows and columns per node).
    """
    ny, nx = map_.shape
    a_y, a_x = _matrices(map_.shape, (_n_nodes(ny, box), _n_nodes(nx, box)), box)
    rows = _near_nodes(a_y.shape[1], box, 0.0, ny)
    cols = _near_nodes(a_x.shape[1], box, 0.5, nx)
    sample = np.asarray(map_[np.ix_(rows, cols)], dtype=np.float64)
    left = np.linalg.lstsq(a_y[rows], sample, rcond=None)[0]
    mesh = np.linalg.lstsq(a_x[cols], left.T, rcond=None)[0].T
    return mesh.astype(np.float32)


def _near_nodes(n_nodes: int, box: int, offset: float, n_pixels: int) -> NDArray[np.intp]:
    """Pixels within one of each node (node ``k`` is at pixel ``(k + 0.5) box - offset``)."""
    centres = np.rint((np.arange(n_nodes) + 0.5) * box - offset).astype(np.intp)
    near = (centres[:, None] + np.array([-1, 0, 1])[None, :]).ravel()
    return np.unique(np.clip(near, 0, n_pixels - 1))
