"""The mapping between an input's pixel grid and a target grid (a patch), for warps.

`_exact_map` goes through the sky with the full WCS of both grids; `_PixelMap` evaluates
it on a coarse grid and splines it in between (positions and ``|det J|``); `_output_box`
and `_Outline` bound the part of the target grid an input can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray
from scipy.interpolate import BSpline, RectBivariateSpline


def _exact_map(
    input_wcs: WCS, output_wcs: WCS, x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    ra, dec = output_wcs.all_pix2world(x, y, 0)
    xin, yin = input_wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(xin, dtype=np.float64), np.asarray(yin, dtype=np.float64)


def _jacobian(input_wcs: WCS, output_wcs: WCS, x: float, y: float) -> NDArray[np.float64]:
    """``d(x_in, y_in) / d(x_out, y_out)`` at one output position (exact WCS)."""
    h = 0.5
    px, py = np.array([x + h, x - h, x, x]), np.array([y, y, y + h, y - h])
    xin, yin = _exact_map(input_wcs, output_wcs, px, py)
    return np.array(
        [[(xin[0] - xin[1]) / (2 * h), (xin[2] - xin[3]) / (2 * h)],
         [(yin[0] - yin[1]) / (2 * h), (yin[2] - yin[3]) / (2 * h)]]
    )  # fmt: skip


class _PixelMap:
    """Output pixel -> input pixel mapping: exact WCS on a coarse grid, bicubic splines between.

    The grid covers output rows ``y0 .. y0 + ny - 1`` and columns ``x0 .. x0 + nx - 1``
    (a box of the target grid); positions passed to :meth:`rows` are box-relative.
    """

    def __init__(
        self,
        input_wcs: WCS,
        output_wcs: WCS,
        shape: tuple[int, int],
        step: int,
        origin: tuple[int, int] = (0, 0),
    ) -> None:
        ny, nx = shape
        self.input_wcs, self.output_wcs = input_wcs, output_wcs
        y0, x0 = origin

        def axis(n: int) -> NDArray[np.float64]:
            # Cubic splines need >= 4 knots; extend one step past the edges for safety.
            s = max(1, min(step, (n + 1) // 4))
            return np.unique(np.concatenate([np.arange(-s, n + s, s), [n - 1 + s]])).astype(float)

        gx, gy = axis(nx), axis(ny)
        xx, yy = np.meshgrid(gx + x0, gy + y0)
        xin, yin = _exact_map(input_wcs, output_wcs, xx.ravel(), yy.ravel())
        if not (np.all(np.isfinite(xin)) and np.all(np.isfinite(yin))):
            msg = (
                "the input WCS cannot place every point of the target grid (NaN positions); "
                "the WCS is inconsistent or the grids are on opposite sides of the sky"
            )
            raise ValueError(msg)
        self.sx = RectBivariateSpline(gy, gx, xin.reshape(xx.shape), kx=3, ky=3)
        self.sy = RectBivariateSpline(gy, gx, yin.reshape(xx.shape), kx=3, ky=3)
        # |det J| varies slowly: spline it from the knots rather than evaluating four
        # derivative splines at every pixel. RectBivariateSpline's first axis is y, so
        # dx=1 differentiates along y.
        det = self.sx(gy, gx, dy=1) * self.sy(gy, gx, dx=1) - self.sx(gy, gx, dx=1) * self.sy(
            gy, gx, dy=1
        )
        self.sdet = RectBivariateSpline(gy, gx, np.abs(det), kx=3, ky=3)
        # The splines are evaluated as B_y C B_x^T with the (sparse) B-spline design
        # matrices of every row and column: a few sparse-dense products per chunk
        # instead of a 4x4 basis sum at every pixel.
        ty, tx = self.sx.tck[0], self.sx.tck[1]
        self._by = BSpline.design_matrix(np.arange(ny, dtype=float), ty, 3).tocsr()
        self._bx = BSpline.design_matrix(np.arange(nx, dtype=float), tx, 3).tocsr()
        shape = (len(ty) - 4, len(tx) - 4)
        self._coeffs = [
            np.asarray(spline.tck[2]).reshape(shape) for spline in (self.sx, self.sy, self.sdet)
        ]

    def rows(
        self, y0: int, y1: int, x0: int, x1: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Input x, y and |det J| for box rows y0..y1-1, columns x0..x1-1."""
        by, bx = self._by[y0:y1], self._bx[x0:x1]
        xin, yin, det = (np.ascontiguousarray((bx @ (by @ coeffs).T).T) for coeffs in self._coeffs)
        return xin, yin, det


def _output_box(
    input_wcs: WCS, output_wcs: WCS, input_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[tuple[int, int, int, int], _Outline | None]:
    """Box ``(y0, y1, x0, x1)`` of the target grid that can receive data from the input.

    The input's outline (pixel edges, sampled every half input pixel) is mapped to
    target pixels; the box is its bounding box grown by 2 px, clipped to the grid
    (empty when they do not overlap). The outline is returned too, to bound each
    row's columns. When the mapping fails anywhere, the whole grid is returned
    without an outline and the per-pixel test decides.
    """
    in_ny, in_nx = input_shape
    ny, nx = shape
    whole = (0, ny, 0, nx)

    def edge(n: int) -> NDArray[np.float64]:
        return np.linspace(-0.5, n - 0.5, 2 * n + 1)

    ex, ey = edge(in_nx), edge(in_ny)
    xs = np.concatenate([ex, ex, np.full(ey.size, -0.5), np.full(ey.size, in_nx - 0.5)])
    ys = np.concatenate([np.full(ex.size, -0.5), np.full(ex.size, in_ny - 0.5), ey, ey])
    with np.errstate(invalid="ignore"):
        ra, dec = input_wcs.all_pix2world(xs, ys, 0)
        try:
            xo, yo = output_wcs.all_world2pix(ra, dec, 0, quiet=True)
        except Exception:  # any failure of the inverse: no box, test every pixel
            return whole, None
    xo, yo = np.asarray(xo, dtype=float), np.asarray(yo, dtype=float)
    if not (np.all(np.isfinite(xo)) and np.all(np.isfinite(yo))):
        return whole, None
    # A sky grid folding over (e.g. the input beyond 90 degrees of the tangent point)
    # maps its outline wrongly; then also test every pixel.
    back = _exact_map(input_wcs, output_wcs, xo, yo)
    if not np.allclose(back[0], xs, atol=0.1) or not np.allclose(back[1], ys, atol=0.1):
        return whole, None
    margin = 2
    x0 = max(0, int(np.floor(np.min(xo))) - margin)
    x1 = min(nx, int(np.ceil(np.max(xo))) + margin + 1)
    y0 = max(0, int(np.floor(np.min(yo))) - margin)
    y1 = min(ny, int(np.ceil(np.max(yo))) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        return (0, 0, 0, 0), None
    ends = np.cumsum([ex.size, ex.size, ey.size])
    gaps = [np.hypot(np.diff(px), np.diff(py)) for px, py in zip(
        np.split(xo, ends), np.split(yo, ends), strict=True
    )]  # fmt: skip
    return (y0, y1, x0, x1), _Outline(xo, yo, float(max(g.max() for g in gaps)))


@dataclass(frozen=True)
class _Outline:
    """An input's outline in target pixels, to find the columns each row band can reach."""

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    spacing: float

    def columns(self, y0: float, y1: float) -> tuple[float, float] | None:
        """Range of target x that the input covers in rows ``y0 .. y1``; None if none.

        A row crossing the input crosses its outline on both sides, so the row's
        pixels with data lie between the outline points near it (within the spacing
        of the outline's samples and a 2 px margin).
        """
        reach = max(2.0, self.spacing + 1.0)
        near = (self.y >= y0 - reach) & (self.y <= y1 + reach)
        if not near.any():
            return None
        xs = self.x[near]
        return float(xs.min()) - reach, float(xs.max()) + reach
