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

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from ._deblend_kernels import (
    _amplitudes_csr,
    _centroid_iterations,
    _centroid_light,
    _children,
    _crowded,
    _footprint_stamp,
    _nearest_centres,
    _normalised_weights,
    _template_pixels,
)
from .detection import Detections
from .exposure import Exposure

__all__ = ["DeblendConfig", "Deblended", "HeavyFootprint", "deblend_sources"]

log = logging.getLogger(__name__)

# The templates as one sparse matrix: CSR arrays (indptr, indices, values), a row each.
_Csr = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.floating]]
# Multiplicative updates of the template amplitudes (non-negative least squares).
_AMPLITUDE_ITERATIONS = 50
_STRAY_NEIGHBOURS = 4
# Re-centring: half-width of the box (px) and Gaussian weight exp(-r² w), w = 1 / (2 sigma²)
# with sigma = 1.5 px (no PSF is needed: a moving Gaussian weight converges on the centre of
# any symmetric source), iterations, and the largest move away from the detected peak (px;
# symmetry-search peaks were seen up to ~4.5 px from a star 1.35 FWHM from a 10x brighter one).
_CENTROID_BOX_PX = 5  # a box of at most 128 pixels (_centroid_iterations)
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
    exposure: Exposure,
    detections: Detections,
    config: DeblendConfig | None = None,
    *,
    footprint_ids: ArrayLike | None = None,
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
    footprint_ids : array_like of int, optional
        Deblend only these footprints (``id`` of :attr:`Detections.footprints`) and
        leave the others out of the result, for a caller that needs a few of them
        (:func:`~stacklab.toolkit.process_frame` fits the PSF on bright ones only);
        all footprints when omitted. Sources are numbered 1, 2, ... either way.

    Returns
    -------
    Deblended
        Parents, children and isolated sources with their heavy footprints.

    Raises
    ------
    ValueError
        If the detections were made on an image of another shape, or
        ``footprint_ids`` holds an id that is not a footprint's.

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
    chosen = _chosen_footprints(footprint_ids, len(detections))
    for row, (fid, y0, y1, x0, x1) in enumerate(boxes):
        if not chosen[row]:
            continue
        inside, stamp = _footprint_stamp(
            detections._spans_of(fid), y0, x0, y1 - y0 + 1, x1 - x0 + 1, image
        )
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


def _chosen_footprints(footprint_ids: ArrayLike | None, n: int) -> NDArray[np.bool_]:
    """Which of footprints ``1..n`` to deblend (row ``k`` for footprint ``k + 1``)."""
    if footprint_ids is None:
        return np.ones(n, dtype=bool)
    ids = np.asarray(footprint_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        msg = f"footprint_ids must be a 1-d array of integer ids, got {footprint_ids!r}"
        raise TypeError(msg)
    if ids.size and not (ids.min() >= 1 and ids.max() <= n):
        msg = (
            f"footprint_ids must be footprint ids between 1 and {n}, got values from "
            f"{ids.min()} to {ids.max()}; pass ids of the detections' footprints"
        )
        raise ValueError(msg)
    chosen = np.zeros(n, dtype=bool)
    chosen[ids.astype(np.intp) - 1] = True
    return chosen


def _recentred(
    positive: NDArray[np.float64],
    matrix: _Csr,
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
    light, gx, gy = _centroid_light(positive, *matrix, amplitude, centre2, _CENTROID_BOX_PX)
    cx, cy = centre2[:, 0] / 2.0, centre2[:, 1] / 2.0
    _centroid_iterations(light, gx, gy, cx, cy, _CENTROID_ITERATIONS, _CENTROID_WEIGHT)
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
    back = _crowded(out)
    out[back] = np.rint(2 * peaks[back]).astype(np.int64)
    return out


def _csr(parts: list[tuple[NDArray[np.int64], NDArray[np.floating]]]) -> _Csr:
    """Stack the templates ``(flat pixels, values)`` as the CSR arrays of one matrix."""
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(index) for index, _ in parts], out=indptr[1:])
    indices = np.concatenate([index for index, _ in parts])
    return indptr, indices, np.concatenate([values for _, values in parts])


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
    peaks = np.column_stack([px, py]).astype(np.float64)
    centre2 = np.column_stack([2 * px, 2 * py]).astype(np.int64)
    radius = config.template_radius_px
    # Each template's (flat stamp pixels, values); its rows of the CSR matrix.
    parts = [_template_pixels(positive, int(c[0]), int(c[1]), radius) for c in centre2]
    matrix = _csr(parts)
    amplitude = _amplitudes_csr(*matrix, target, np.ones(n), _AMPLITUDE_ITERATIONS)
    for _ in range(config.recentre_iterations):
        moved = _recentred(positive, matrix, amplitude, centre2, peaks)
        changed = np.flatnonzero(np.any(moved != centre2, axis=1))
        if len(changed) == 0:
            break
        centre2 = moved
        for row in changed.tolist():
            parts[row] = _template_pixels(
                positive, int(centre2[row, 0]), int(centre2[row, 1]), radius
            )
        matrix = _csr(parts)
        amplitude = _amplitudes_csr(
            *matrix, target, np.maximum(amplitude, 1e-3), _AMPLITUDE_ITERATIONS
        )
    # A peak whose template the fit rejects still keeps its share near its centre.
    amplitude = np.maximum(amplitude, 1e-3)
    weights, claimed = _normalised_weights(*matrix, amplitude, ny * nx)
    centres = centre2 / 2.0
    # Stray flux: inside pixels no template claims, shared by the nearest children.
    stray_idx = np.flatnonzero(inside.ravel() & ~claimed)
    k_near = min(n, _STRAY_NEIGHBOURS if config.stray_flux else 1)
    w = np.zeros((len(stray_idx), k_near))
    near = np.zeros((len(stray_idx), k_near), dtype=np.int64)
    if len(stray_idx):
        dist, near, tied = _nearest_centres(stray_idx, nx, centres, k_near)
        if tied.any():  # the k-d tree's choice among equally near centres
            rows = np.flatnonzero(tied)
            sy, sx = np.divmod(stray_idx[rows], nx)
            tree_dist, tree_near = cKDTree(centres).query(np.column_stack([sx, sy]), k=k_near)
            dist[rows] = tree_dist.reshape(len(rows), k_near)
            near[rows] = tree_near.reshape(len(rows), k_near)
        w = 1.0 / (1.0 + dist**2)
        w /= w.sum(axis=1, keepdims=True)
    boxes, offsets, buffer = _children(
        matrix[0], matrix[1], weights, stray_idx.astype(np.int64), near.astype(np.int64), w, nx
    )
    out = []
    for k, (x0, y0, box_ny, box_nx) in enumerate(boxes.tolist()):
        if box_ny == 0:  # nothing at all: a one-pixel child at its peak
            out.append((int(px[k]), int(py[k]), np.zeros((1, 1), dtype=np.float32)))
            continue
        child = buffer[offsets[k] : offsets[k + 1]].reshape(box_ny, box_nx)
        out.append((x0, y0, child))
    return out, centres
