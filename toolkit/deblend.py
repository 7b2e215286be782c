"""Deblending: split footprints with several peaks into children that share the flux.

The method is the symmetric-template deblender of SDSS (Lupton's "photo"),
simplified: each peak gets a template made of the pixels whose mirror image
through its centre ``c_k`` is also bright, ``T_k(p) = max(0, min(I(p), I(2 c_k - p)))``,
within a box of ``template_radius_px`` around it, and made monotonic
(never rising outward along rays from the centre, as in SDSS/LSST); template amplitudes
``a_k >= 0`` are fitted to the parent by non-negative least squares
(multiplicative updates on a sparse template matrix, so crowded footprints stay
cheap). Each centre then moves to its source's centroid on the parent minus the
other fitted templates, on the half-pixel grid (where ``2 c_k - p`` is still a
pixel), and the templates and amplitudes are rebuilt (``recentre_iterations``
times): a template centred on the peak's pixel cuts a star centred up to 0.7 px
away (~20% of a 4 px FWHM star), and a peak found on a brighter source's slope
can sit 2-4 px off its source; either way the neighbour took the missing light.
Every parent pixel is then shared among the children in proportion to
``a_k T_k(p)``. Pixels that no template claims ("stray flux") are shared among
the four nearest centres in proportion to ``1 / (1 + d²)``. The weights of the
children sum to one on every pixel of the parent, so the children's fluxes add
up to the parent's exactly (the heavy footprints are flux-conserving).

Ids follow LSST catalogs: every source has an ``id``; a deblended child has
``parent`` set to its parent's id; isolated sources and parents have
``parent == 0``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray
from scipy import sparse
from scipy.spatial import cKDTree

from .detection import Detections
from .exposure import Exposure

__all__ = ["DeblendConfig", "Deblended", "HeavyFootprint", "deblend_sources"]

log = logging.getLogger(__name__)

_AMPLITUDE_ITERATIONS = 50
_STRAY_NEIGHBOURS = 4
# Re-centring: half-width of the box (px) and Gaussian weight exp(-r² w), w = 1 / (2 sigma²)
# with sigma = 1.5 px (no PSF is needed: a moving Gaussian weight converges on the centre of
# any symmetric source), iterations, and the largest move away from the detected peak (px;
# symmetry-search peaks were seen up to ~4.5 px from a star 1.35 FWHM from a 10x brighter one).
_CENTROID_BOX_PX = 5
_CENTROID_WEIGHT = 1.0 / (2 * 1.5**2)
_CENTROID_ITERATIONS = 6
_MAX_SHIFT_PX = 4.0


@dataclass(frozen=True, kw_only=True)
class DeblendConfig:
    """Settings of :func:`deblend_sources`.

    Attributes
    ----------
    max_children : int
        Footprints with more peaks than this are not deblended (the parent is
        kept alone and flagged ``deblend_skipped``).
    max_footprint_pixels : int
        Footprints larger than this many pixels are not deblended either.
    template_radius_px : int
        Half-width of the box in which each peak's symmetric template is built
        (pixels); light farther out is shared as stray flux.
    stray_flux : bool
        Share pixels no template claims by inverse squared distance to the
        children's centres (True), or give them to the nearest (False).
    recentre_iterations : int
        Times each template is moved to its source's centroid (on the half-pixel
        grid) and the templates and amplitudes rebuilt; 0 keeps templates centred
        on the detected peaks' pixels.
    """

    max_children: int = 1000
    max_footprint_pixels: int = 1_000_000
    template_radius_px: int = 60
    stray_flux: bool = True
    recentre_iterations: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.max_children, int) or self.max_children < 2:
            msg = f"max_children must be an integer >= 2, got {self.max_children!r}"
            raise ValueError(msg)
        if not isinstance(self.max_footprint_pixels, int) or self.max_footprint_pixels < 1:
            msg = (
                "max_footprint_pixels must be a positive integer, "
                f"got {self.max_footprint_pixels!r}"
            )
            raise ValueError(msg)
        if not isinstance(self.template_radius_px, int) or self.template_radius_px < 2:
            msg = f"template_radius_px must be an integer >= 2, got {self.template_radius_px!r}"
            raise ValueError(msg)
        if not isinstance(self.recentre_iterations, int) or self.recentre_iterations < 0:
            msg = (
                f"recentre_iterations must be an integer >= 0, got {self.recentre_iterations!r}; "
                "pass 0 to keep templates on the detected peaks"
            )
            raise ValueError(msg)


@dataclass(frozen=True, eq=False)
class HeavyFootprint:
    """The pixels of one source: weights over a bounding box of the image.

    The source's own image is ``weights * image[y0:y0+ny, x0:x0+nx]``; weights
    are 1 for an undeblended footprint and a child's share (0-1) after
    deblending, 0 outside the footprint.
    """

    x0: int
    y0: int
    weights: NDArray[np.float32]

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice_y, slice_x)`` of the bounding box in the image."""
        ny, nx = self.weights.shape
        return slice(self.y0, self.y0 + ny), slice(self.x0, self.x0 + nx)

    def weights_on(self, x0: int, y0: int, shape: tuple[int, int]) -> NDArray[np.float32]:
        """Return the weights on the box of ``shape`` whose first pixel is ``(x0, y0)``.

        Pixels of the box outside this footprint's bounding box get 0.
        """
        out = np.zeros(shape, dtype=np.float32)
        ny, nx = self.weights.shape
        oy, ox = self.y0 - y0, self.x0 - x0
        ys, xs = max(oy, 0), max(ox, 0)
        ye, xe = min(oy + ny, shape[0]), min(ox + nx, shape[1])
        if ys < ye and xs < xe:
            out[ys:ye, xs:xe] = self.weights[ys - oy : ye - oy, xs - ox : xe - ox]
        return out

    def flux(self, image: NDArray[np.floating]) -> float:
        """Sum of the source's pixels of ``image`` (ADU), non-finite pixels as 0."""
        return float(np.sum(self.weights * np.nan_to_num(image[self.slices]), dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Deblended:
    """Sources after deblending.

    Attributes
    ----------
    sources : astropy.table.Table
        One row per source: ``id``, ``parent``, ``footprint``, ``n_children``,
        ``peak_x``, ``peak_y`` (integer pixels), ``peak_significance``,
        ``deblend_skipped`` (bool), ``flux_footprint`` (ADU, sum over the
        heavy footprint) and ``template_x``, ``template_y`` (pixels: the centre of
        a child's template, on the half-pixel grid within 4 px of its peak; the
        peak for parents and isolated sources).
    heavy_footprints : list of HeavyFootprint
        One per row of ``sources``, same order.
    config : DeblendConfig
        The settings that made it.
    """

    sources: Table
    heavy_footprints: list[HeavyFootprint]
    config: DeblendConfig = field(default_factory=DeblendConfig)

    def __len__(self) -> int:
        return len(self.sources)


def deblend_sources(
    exposure: Exposure, detections: Detections, config: DeblendConfig | None = None
) -> Deblended:
    """Split blended footprints into children.

    Parameters
    ----------
    exposure : Exposure
        The background-subtracted exposure the detections were made on.
    detections : Detections
        From :func:`~stacklab.toolkit.detect_sources`.
    config : DeblendConfig, optional
        Settings; defaults when omitted.

    Returns
    -------
    Deblended
        Parents, children and isolated sources with their heavy footprints.

    Raises
    ------
    ValueError
        If the detections were made on an image of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> from stacklab.toolkit.detection import detect_sources
    >>> yy, xx = np.mgrid[0:64, 0:64]
    >>> image = 100 * (np.exp(-((xx - 25) ** 2 + (yy - 32) ** 2) / 4.0)
    ...                + np.exp(-((xx - 33) ** 2 + (yy - 32) ** 2) / 4.0))
    >>> exp = Exposure(image, variance=np.ones((64, 64)))
    >>> blend = deblend_sources(exp, detect_sources(exp))
    >>> blend.sources["parent"].tolist()
    [0, 1, 1]
    """
    config = DeblendConfig() if config is None else config
    if detections.exposure.shape != exposure.shape:
        msg = (
            f"detections were made on an image of shape {detections.exposure.shape}, "
            f"the exposure has {exposure.shape}; deblend the exposure they came from"
        )
        raise ValueError(msg)
    image = exposure.image  # non-finite pixels become 0 footprint by footprint, not in a copy
    peaks = detections.peaks
    by_footprint = np.searchsorted(peaks["footprint"], np.arange(1, len(detections) + 2))
    rows: list[tuple[int, int, int, int, int, int, float, bool, float, float, float]] = []
    heavy: list[HeavyFootprint] = []
    next_id = 1
    # Plain arrays: Table rows and column slices cost more per footprint than the maths.
    footprints = detections.footprints
    boxes = zip(
        *(footprints[name].tolist() for name in ("id", "y_min", "y_max", "x_min", "x_max")),
        strict=True,
    )
    n_pixels = footprints["n_pixels"].tolist()
    peak_x, peak_y = np.asarray(peaks["x"]), np.asarray(peaks["y"])
    peak_significance = np.asarray(peaks["significance"])
    for row, (fid, y0, y1, x0, x1) in enumerate(boxes):
        inside = detections.footprint_mask(fid, box=(y0, y1, x0, x1))
        stamp = np.where(inside, np.nan_to_num(image[y0 : y1 + 1, x0 : x1 + 1]), 0.0)
        lo, hi = by_footprint[fid - 1], by_footprint[fid]
        px = peak_x[lo:hi] - x0
        py = peak_y[lo:hi] - y0
        sig = peak_significance[lo:hi]
        if len(px) == 0:  # a footprint whose only maxima were culled: use its brightest pixel
            iy, ix = np.unravel_index(int(np.argmax(np.where(inside, stamp, -np.inf))), stamp.shape)
            px, py, sig = np.array([ix]), np.array([iy]), np.array([np.nan])
        parent_weights = inside.astype(np.float32)
        parent_flux = float(stamp.sum(dtype=np.float64))
        n_peaks = len(px)
        skipped = n_peaks > config.max_children or n_pixels[row] > config.max_footprint_pixels
        parent_id = next_id
        next_id += 1
        if n_peaks == 1 or skipped:
            rows.append(
                (parent_id, 0, fid, 0, int(px[0]) + x0, int(py[0]) + y0, float(sig[0]),
                 bool(skipped and n_peaks > 1), parent_flux, float(px[0] + x0),
                 float(py[0] + y0))
            )  # fmt: skip
            heavy.append(HeavyFootprint(x0, y0, parent_weights))
            continue
        children, centres = _share(stamp, inside, px, py, config)
        rows.append(
            (parent_id, 0, fid, n_peaks, int(px[0]) + x0, int(py[0]) + y0, float(sig[0]), False,
             parent_flux, float(px[0] + x0), float(py[0] + y0))
        )  # fmt: skip
        heavy.append(HeavyFootprint(x0, y0, parent_weights))
        for k, (cx0, cy0, w) in enumerate(children):
            ny_k, nx_k = w.shape
            flux = float(np.sum(w * stamp[cy0 : cy0 + ny_k, cx0 : cx0 + nx_k], dtype=np.float64))
            rows.append(
                (next_id, parent_id, fid, 0, int(px[k]) + x0, int(py[k]) + y0, float(sig[k]),
                 False, flux, centres[k, 0] + x0, centres[k, 1] + y0)
            )  # fmt: skip
            heavy.append(HeavyFootprint(x0 + cx0, y0 + cy0, w))
            next_id += 1
    names = (
        "id", "parent", "footprint", "n_children", "peak_x", "peak_y", "peak_significance",
        "deblend_skipped", "flux_footprint", "template_x", "template_y",
    )  # fmt: skip
    dtypes = (
        np.int64, np.int64, np.int64, np.int64, np.int64, np.int64, float, bool, float, float,
        float,
    )  # fmt: skip
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    sources = Table(
        [np.asarray(c, dtype=d) for c, d in zip(columns, dtypes, strict=True)], names=names
    )
    sources["flux_footprint"].unit = "adu"
    sources["template_x"].unit = sources["template_y"].unit = "pix"
    n_parents = int(np.sum(sources["n_children"] > 0))
    log.info("deblended %d parents into %d children", n_parents, int(np.sum(sources["parent"] > 0)))
    return Deblended(sources=sources, heavy_footprints=heavy, config=config)


def _monotonic(template: NDArray[np.float64]) -> NDArray[np.float64]:
    """Clip a centred template so that it never rises going out from its centre.

    Each pixel is limited by the pixel one ring closer to the centre along the ray
    from the centre (rings of constant Chebyshev distance, innermost first); the
    centre is the middle of the array: a pixel, or a pixel edge or corner. This
    removes neighbours that the symmetry test alone lets through (a star whose
    mirror image through the peak happens to hold another star).
    """
    ny, nx = template.shape
    out = template.ravel().copy()
    for outer, inner in _rings(ny, nx):
        out[outer] = np.minimum(out[outer], out[inner])
    return out.reshape(ny, nx)


@functools.lru_cache(maxsize=512)
def _rings(ny: int, nx: int) -> tuple[tuple[NDArray[np.intp], NDArray[np.intp]], ...]:
    """Flat indices of each ring of an ``(ny, nx)`` box about its middle, and of their inner ones.

    Innermost ring first; the middle (one pixel, or 2 or 4 about a pixel edge) is
    left out.
    """
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    iy, ix = np.floor(cy), np.floor(cx)
    fy, fx = cy - iy, cx - ix  # 0 on a pixel centre, 0.5 on a pixel edge
    gy, gx = np.mgrid[0:ny, 0:nx]
    dy, dx = gy - cy, gx - cx
    ring = np.maximum(np.abs(dy), np.abs(dx))
    out = []
    for d in np.unique(ring)[1:]:
        ys, xs = np.nonzero(ring == d)
        scale = max(d - 1.0, 0.0) / d
        # The pixel one Chebyshev step inward along the ray (within half a pixel),
        # its offset from the centre rounded the same way on both sides of it, so
        # that a point-symmetric template stays symmetric.
        inner_y = (cy + _symmetric_round(dy[ys, xs] * scale, fy)).astype(np.intp)
        inner_x = (cx + _symmetric_round(dx[ys, xs] * scale, fx)).astype(np.intp)
        out.append((ys * nx + xs, inner_y * nx + inner_x))
    return tuple(out)


def _symmetric_round(offset: NDArray[np.float64], fraction: float) -> NDArray[np.float64]:
    """Round offsets from a centre to the nearest pixel, ties away from the centre.

    ``fraction`` is 0 for a centre on a pixel (pixel offsets are integers) and 0.5
    for one on a pixel edge (offsets are half-integers). Unlike ``np.rint``, which
    rounds ties to even, ``-t`` always rounds to minus what ``t`` rounds to.
    """
    magnitude = np.floor(np.abs(offset) + 0.5 - fraction) + fraction
    return np.asarray(np.sign(offset) * magnitude)


def _window(centre2: int, radius: int, size: int) -> slice:
    """Slice of the pixels ``p`` of ``range(size)`` whose mirror ``centre2 - p`` is in it too.

    At most ``radius`` from the centre ``centre2 / 2`` (a pixel centre or a pixel edge).
    """
    lo = max(0, centre2 - (size - 1), -((2 * radius - centre2) // 2))
    return slice(lo, centre2 - lo + 1)


def _template(
    positive: NDArray[np.float64], cx2: int, cy2: int, radius: int
) -> tuple[tuple[slice, slice], NDArray[np.float64]]:
    """Symmetric, monotonic template about ``(cx2 / 2, cy2 / 2)``: its window and values.

    With the centre on the half-pixel grid the mirror ``2c - p`` of a pixel is a
    pixel, so no interpolation is needed.
    """
    ny, nx = positive.shape
    window = (_window(cy2, radius, ny), _window(cx2, radius, nx))
    data = positive[window]
    return window, _monotonic(np.minimum(data, data[::-1, ::-1]))


def _amplitudes(
    matrix: sparse.csr_matrix, target: NDArray[np.float64], start: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Non-negative least-squares amplitudes of the template rows of ``matrix`` for ``target``.

    Multiplicative updates (Lee & Seung) keep them >= 0 and only need the
    templates' n x n Gram matrix: one sparse product instead of two per iteration.
    """
    amplitude = start.copy()
    numerator = matrix @ target
    gram = (matrix @ matrix.T).toarray()
    for _ in range(_AMPLITUDE_ITERATIONS):
        denominator = gram @ amplitude
        amplitude *= np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), 1.0)
    return amplitude


def _recentred(
    positive: NDArray[np.float64],
    matrix: sparse.csr_matrix,
    amplitude: NDArray[np.float64],
    centre2: NDArray[np.int64],
    peaks: NDArray[np.float64],
) -> NDArray[np.int64]:
    """Template centres (twice, on the half-pixel grid) moved to their source's centroid.

    Each source is centroided on the parent minus its siblings' fitted templates
    (so that a faint source on a bright one's slope is not pulled up the slope),
    with a Gaussian weight that follows the centroid, which converges on the centre
    of a symmetric source. A template centred on a pixel while the source is
    centred half a pixel away is cut by the symmetry test (a 0.7 px offset loses
    about 20% of a 4 px FWHM star); its neighbours then take that light.
    """
    ny, nx = positive.shape
    n = len(centre2)
    r = _CENTROID_BOX_PX
    offsets = np.arange(-r, r + 1)
    base = np.floor(centre2 / 2.0 + 0.5).astype(np.int64)  # nearest pixel to each centre
    by = base[:, 1, None, None] + offsets[None, :, None]
    bx = base[:, 0, None, None] + offsets[None, None, :]
    valid = (by >= 0) & (by < ny) & (bx >= 0) & (bx < nx)
    flat = (np.clip(by, 0, ny - 1) * nx + np.clip(bx, 0, nx - 1)).reshape(n, -1)
    valid = valid.reshape(n, -1)
    model = np.asarray(matrix.T @ amplitude).ravel()
    rows = np.repeat(np.arange(n), flat.shape[1])
    own = np.asarray(matrix[rows, flat.ravel()]).reshape(n, -1) * amplitude[:, None]
    light = np.where(valid, positive.ravel()[flat] - model[flat] + own, 0.0)
    light = np.maximum(light, 0.0)
    gy = np.broadcast_to(by, (n, len(offsets), len(offsets))).reshape(n, -1).astype(float)
    gx = np.broadcast_to(bx, (n, len(offsets), len(offsets))).reshape(n, -1).astype(float)
    cx, cy = centre2[:, 0] / 2.0, centre2[:, 1] / 2.0
    for _ in range(_CENTROID_ITERATIONS):
        w = light * np.exp(-((gx - cx[:, None]) ** 2 + (gy - cy[:, None]) ** 2) * _CENTROID_WEIGHT)
        total = w.sum(axis=1)
        ok = total > 0
        safe = np.where(ok, total, 1.0)
        cx = np.where(ok, (w * gx).sum(axis=1) / safe, cx)
        cy = np.where(ok, (w * gy).sum(axis=1) / safe, cy)
    # Never wander far from the detected peak: a peak whose light is mostly a
    # brighter neighbour's would otherwise climb onto it.
    dx, dy = cx - peaks[:, 0], cy - peaks[:, 1]
    shift = np.hypot(dx, dy)
    scale = np.minimum(1.0, _MAX_SHIFT_PX / np.maximum(shift, 1e-12))
    out = np.column_stack(
        [np.rint(2 * (peaks[:, 0] + dx * scale)), np.rint(2 * (peaks[:, 1] + dy * scale))]
    ).astype(np.int64)
    # Two centres within a pixel of each other would make the same template twice:
    # those peaks keep their detected positions.
    if n > 1:
        pairs = cKDTree(out / 2.0).query_pairs(1.0, output_type="ndarray")
        if len(pairs):
            back = np.unique(pairs.ravel())
            out[back] = np.rint(2 * peaks[back]).astype(np.int64)
    return out


def _share(
    stamp: NDArray[np.float64],
    inside: NDArray[np.bool_],
    px: NDArray[np.int64],
    py: NDArray[np.int64],
    config: DeblendConfig,
) -> tuple[list[tuple[int, int, NDArray[np.float32]]], NDArray[np.float64]]:
    """Children's weights and their templates' centres.

    Returns each child's weights as ``(x0, y0, weights)`` cropped to where they are
    non-zero, and the templates' centres ``(x, y)`` (stamp pixels, half-pixel grid).
    """
    ny, nx = stamp.shape
    n = len(px)
    positive = np.where(inside, np.maximum(stamp, 0.0), 0.0)
    target = positive.ravel()
    flat_index = np.arange(ny * nx).reshape(ny, nx)
    peaks = np.column_stack([px, py]).astype(np.float64)
    centre2 = np.column_stack([2 * px, 2 * py]).astype(np.int64)
    parts: list[tuple[NDArray[np.intp], NDArray[np.float64]]] = []

    def build(k: int) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        window, template = _template(
            positive, int(centre2[k, 0]), int(centre2[k, 1]), config.template_radius_px
        )
        keep = template > 0
        return flat_index[window][keep], template[keep]

    def assemble() -> sparse.csr_matrix:
        counts = [len(c) for c, _ in parts]
        return sparse.csr_matrix(
            (
                np.concatenate([v for _, v in parts]),
                (np.repeat(np.arange(n), counts), np.concatenate([c for c, _ in parts])),
            ),
            shape=(n, ny * nx),
        )

    parts = [build(k) for k in range(n)]
    matrix = assemble()
    amplitude = _amplitudes(matrix, target, np.ones(n))
    for _ in range(config.recentre_iterations):
        moved = _recentred(positive, matrix, amplitude, centre2, peaks)
        changed = np.flatnonzero(np.any(moved != centre2, axis=1))
        if len(changed) == 0:
            break
        centre2 = moved
        for row in changed.tolist():
            parts[row] = build(row)
        matrix = assemble()
        amplitude = _amplitudes(matrix, target, np.maximum(amplitude, 1e-3))
    # A peak whose template the fit rejects still keeps its share near its centre.
    amplitude = np.maximum(amplitude, 1e-3)
    # Scale rows and columns on the stored values (same structure, no sparse products).
    weights = matrix
    weights.data *= np.repeat(amplitude, np.diff(weights.indptr))
    total = np.bincount(weights.indices, weights=weights.data, minlength=ny * nx)
    claimed = total > 1e-12 * max(float(total.max()), 1e-300)
    inv_total = np.where(claimed, 1.0 / np.where(claimed, total, 1.0), 0.0)
    weights.data *= inv_total[weights.indices]
    centres = centre2 / 2.0
    # Stray flux: inside pixels no template claims, shared by the nearest children.
    stray = inside.ravel() & ~claimed
    stray_idx = np.flatnonzero(stray)
    if len(stray_idx):
        sy, sx = np.divmod(stray_idx, nx)
        k_near = min(n, _STRAY_NEIGHBOURS if config.stray_flux else 1)
        dist, near = cKDTree(centres).query(np.column_stack([sx, sy]), k=k_near)
        dist, near = dist.reshape(len(sy), k_near), near.reshape(len(sy), k_near)
        w = 1.0 / (1.0 + dist**2)
        w /= w.sum(axis=1, keepdims=True)
        stray_w = sparse.csr_matrix(
            (w.ravel(), (near.ravel(), np.repeat(stray_idx, k_near))), shape=(n, ny * nx)
        )
        weights = (weights + stray_w).tocsr()
    out = []
    indptr, indices, values = weights.indptr, weights.indices, weights.data
    for k in range(n):
        idx = indices[indptr[k] : indptr[k + 1]]
        if len(idx) == 0:  # nothing at all: a one-pixel child at its peak
            out.append((int(px[k]), int(py[k]), np.zeros((1, 1), dtype=np.float32)))
            continue
        ry, rx = np.divmod(idx, nx)
        y0, x0 = int(ry.min()), int(rx.min())
        child = np.zeros((int(ry.max()) - y0 + 1, int(rx.max()) - x0 + 1), dtype=np.float32)
        child[ry - y0, rx - x0] = values[indptr[k] : indptr[k + 1]]
        out.append((x0, y0, child))
    return out, centres
