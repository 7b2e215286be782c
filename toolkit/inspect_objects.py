"""Footprint inspection: everything needed to look at one source of a single-frame catalog.

:func:`inspect_object` gathers, for one catalog ``id``, the pixels of its blend
(parent and deblended children) as stamps of image, model and residual, the
footprint outline and peaks, the catalog row with its flags in words, the
neighbours, and the apertures and adaptive-moments ellipse that were measured.
The model of a source is its PSF model scaled to ``flux_psf`` at
``(x_psf, y_psf)``; a parent's model is the sum of its children's.
:mod:`.inspect_select` lists ids by flag and steps through them.

Positions are 0-based pixel centres, ``(x, y)`` is the centre of ``image[y, x]``.
Nothing here raises for a source that cannot be shown well (image edge, no
footprint, every pixel masked): the result carries a message saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import contourpy
import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from .deblend import Deblended, HeavyFootprint
from .exposure import Exposure
from .flags import SourceFlag, describe_flags

__all__ = [
    "InspectConfig",
    "ObjectInspection",
    "SourceStamp",
    "footprint_outline",
    "inspect_object",
]

log = logging.getLogger(__name__)

_APERTURE_PREFIX = "flux_aper_"


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    """Settings of :func:`inspect_object`.

    Attributes
    ----------
    margin_px : int
        Pixels added around the parent footprint's bounding box for the stamps.
    max_stamp_px : int
        Largest stamp side (pixels); bigger blends are cut around the source.
    neighbour_radius_px : float
        Sources whose centroid lies within this distance are neighbours (pixels).
    bad_planes : tuple of str
        Mask planes whose pixels count as unusable.
    kron_factor : float
        The Kron aperture is this many Kron radii (as in the measurement).
    """

    margin_px: int = 4
    max_stamp_px: int = 201
    neighbour_radius_px: float = 20.0
    bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "CR")
    kron_factor: float = 2.5

    def __post_init__(self) -> None:
        if not isinstance(self.margin_px, int) or self.margin_px < 0:
            msg = f"margin_px must be an integer >= 0 pixels, got {self.margin_px!r}"
            raise ValueError(msg)
        if not isinstance(self.max_stamp_px, int) or self.max_stamp_px < 5:
            msg = f"max_stamp_px must be an integer >= 5 pixels, got {self.max_stamp_px!r}"
            raise ValueError(msg)
        for name in ("neighbour_radius_px", "kron_factor"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)


@dataclass(frozen=True, eq=False)
class SourceStamp:
    """One source's pixels on the stamp box shared by its blend.

    Attributes
    ----------
    source_id : int
        Catalog ``id``.
    image : numpy.ndarray of float32
        The source's own pixels (ADU): the image times its heavy-footprint weight
        inside the parent footprint, 0 elsewhere.
    model : numpy.ndarray of float32
        PSF model scaled to ``flux_psf`` (ADU); 0 where no flux was measured.
    residual : numpy.ndarray of float32
        ``image - model`` (ADU).
    weights : numpy.ndarray of float32
        Heavy-footprint weight (0-1) of each pixel.
    """

    source_id: int
    image: NDArray[np.float32]
    model: NDArray[np.float32]
    residual: NDArray[np.float32]
    weights: NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class ObjectInspection:
    """What :func:`inspect_object` found out about one source.

    Attributes
    ----------
    source_id : int
        The source asked for.
    parent_id : int
        Its blend's parent (its own id when it is a parent or isolated).
    row : int
        Index of the source in the catalog.
    values : dict of str to object
        The catalog row, column name to value.
    flags : list of str
        Names of the flag bits set (:func:`~stacklab.toolkit.describe_flags`).
    x0, y0 : int
        Image pixel of the stamps' ``[0, 0]``.
    valid : numpy.ndarray of bool or None
        Stamp pixels that are usable (finite, positive variance, not in a bad plane).
    parent : SourceStamp or None
        The blend's parent (None without a footprint).
    children : list of SourceStamp
        Deblended children (empty for an isolated source).
    outline : list of numpy.ndarray
        Footprint outline as closed polylines of ``(x, y)`` image pixels, shape (n, 2).
    peaks : numpy.ndarray, shape (n, 2)
        Peaks ``(x, y)`` of the blend (pixels).
    neighbours : astropy.table.Table
        ``id``, ``distance`` (pixels), ``x``, ``y`` of other sources within
        ``neighbour_radius_px``, nearest first (the blend's own members included).
    aperture_radii_px : tuple of float
        Radii of the catalog's circular apertures (pixels).
    kron_radius_px : float
        Kron aperture scale: multiply the ellipse axes by this (NaN when unmeasured).
    ellipse : tuple of float or None
        Adaptive-moments ellipse ``(x, y, a, b, theta_deg)``: 1-sigma semi-axes
        (pixels) and position angle from +x towards +y (degrees); None when the
        moments failed.
    messages : list of str
        Reasons the stamps may mislead (edge, no footprint, masked pixels).
    config : InspectConfig
        The settings that made it.
    """

    source_id: int
    parent_id: int
    row: int
    values: dict[str, Any]
    flags: list[str]
    x0: int
    y0: int
    valid: NDArray[np.bool_] | None
    parent: SourceStamp | None
    children: list[SourceStamp]
    outline: list[NDArray[np.float64]]
    peaks: NDArray[np.float64]
    neighbours: Table
    aperture_radii_px: tuple[float, ...]
    kron_radius_px: float
    ellipse: tuple[float, float, float, float, float] | None
    messages: list[str]
    config: InspectConfig = field(default_factory=InspectConfig)

    @property
    def stamp(self) -> SourceStamp | None:
        """The stamp of the source asked for (parent or child), None without a footprint."""
        for stamp in [self.parent, *self.children]:
            if stamp is not None and stamp.source_id == self.source_id:
                return stamp
        return None


def inspect_object(
    exposure: Exposure,
    catalog: Table,
    deblended: Deblended,
    source_id: int,
    config: InspectConfig | None = None,
    *,
    psf: Any = None,
) -> ObjectInspection:
    """Collect stamps, outline, peaks, flags, neighbours and apertures of one source.

    Parameters
    ----------
    exposure : Exposure
        The background-subtracted exposure that was measured.
    catalog : astropy.table.Table
        Its source catalog (:func:`~stacklab.toolkit.measure_sources`; needs ``id``,
        ``x``, ``y``, ``flags``; ``flux_psf``, ``x_psf``, ``y_psf`` for the model).
    deblended : Deblended
        The deblended sources the catalog was measured on (same ids).
    source_id : int
        Catalog ``id`` of the source.
    config : InspectConfig, optional
        Settings; defaults when omitted.
    psf : object with ``compute_image(x, y)``, optional
        PSF model for the model stamps; by default ``exposure.psf``. Without one the
        model is 0.

    Returns
    -------
    ObjectInspection

    Raises
    ------
    ValueError
        If ``source_id`` is not in the catalog, or the catalog lacks ``id``/``x``/``y``.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit import process_frame
    >>> sim_config = SimulationConfig(size=256, star_density_arcmin2=60.0, seed=4)
    >>> frame = process_frame(simulate_visit(make_sky(sim_config), sim_config, visit=0).exposure)
    >>> found = inspect_object(frame.exposure, frame.catalog, frame.deblended, 1)
    >>> found.source_id
    1
    """
    config = InspectConfig() if config is None else config
    psf = exposure.psf if psf is None else psf
    row = _row_of(catalog, source_id)
    values = {name: _plain(catalog[name][row]) for name in catalog.colnames}
    flag_word = int(values.get("flags", 0) or 0)
    messages: list[str] = []
    x, y = float(values["x"]), float(values["y"])
    ny, nx = exposure.shape
    if not (np.isfinite(x) and np.isfinite(y)):
        x, y = float(values.get("peak_x", np.nan)), float(values.get("peak_y", np.nan))
    if flag_word & SourceFlag.EDGE:
        messages.append(
            f"source {source_id} lies at the image edge (flag EDGE): its stamps are cut off "
            "and its measurements are suspect"
        )
    neighbours = _neighbours(catalog, row, config.neighbour_radius_px)
    radii = _aperture_radii(catalog.colnames)
    kron = float(values.get("kron_radius", np.nan))
    ellipse = _ellipse(values)
    src = deblended.sources
    match = np.flatnonzero(np.asarray(src["id"]) == int(source_id))
    empty_peaks = np.zeros((0, 2))
    if len(match) == 0:
        messages.append(
            f"source {source_id} has no footprint in the deblended sources given "
            f"({len(src)} sources, ids {_id_range(src)}); pass the Deblended that this "
            "catalog was measured on"
        )
        return ObjectInspection(
            int(source_id), int(values.get("parent", 0)) or int(source_id), row, values,
            describe_flags(flag_word), 0, 0, None, None, [], [], empty_peaks, neighbours,
            radii, kron, ellipse, messages, config,
        )  # fmt: skip
    k = int(match[0])
    parent_id = int(src["parent"][k]) or int(source_id)
    parent_row = int(np.flatnonzero(np.asarray(src["id"]) == parent_id)[0])
    family = [parent_row, *np.flatnonzero(np.asarray(src["parent"]) == parent_id).tolist()]
    parent_fp = deblended.heavy_footprints[parent_row]
    x0, y0, shape = _box(parent_fp, (ny, nx), config, x, y)
    cut = shape[0] < parent_fp.weights.shape[0] or shape[1] < parent_fp.weights.shape[1]
    if cut and not (flag_word & SourceFlag.EDGE):
        messages.append(
            f"the blend of source {source_id} is larger than max_stamp_px="
            f"{config.max_stamp_px} or touches the image edge; the stamps show part of it"
        )
    sl = (slice(y0, y0 + shape[0]), slice(x0, x0 + shape[1]))
    image = np.asarray(exposure.image[sl], dtype=np.float32)
    valid = _valid(exposure, sl, config.bad_planes)
    in_parent = parent_fp.weights_on(x0, y0, shape) > 0
    n_in = int(in_parent.sum())
    if n_in and not np.any(valid & in_parent):
        planes = ", ".join(p for p in config.bad_planes if p in exposure.mask_planes)
        messages.append(
            f"all {n_in} pixels of the footprint of source {source_id} are masked or not "
            f"finite (planes {planes}); there is nothing to show"
        )
    data = np.where(valid, np.nan_to_num(image), 0.0).astype(np.float32)
    stamps: list[SourceStamp] = []
    ids = np.asarray(catalog["id"])
    for j in family:
        sid = int(src["id"][j])
        heavy = deblended.heavy_footprints[j]
        weights = heavy.weights_on(x0, y0, shape)
        if j != parent_row:
            weights = np.where(in_parent, weights, 0.0).astype(np.float32)
        own = (data * weights).astype(np.float32)
        model = np.zeros(shape, dtype=np.float32)
        rows = np.flatnonzero(ids == sid)
        if psf is not None and len(rows) and (j != parent_row or len(family) == 1):
            model = _model(catalog, int(rows[0]), psf, x0, y0, shape)
        stamps.append(SourceStamp(sid, own, model, own - model, weights))
    parent_stamp = stamps[0]
    children = stamps[1:]
    if children:
        total = np.sum([c.model for c in children], axis=0).astype(np.float32)
        parent_stamp = SourceStamp(
            parent_stamp.source_id, parent_stamp.image, total, parent_stamp.image - total,
            parent_stamp.weights,
        )  # fmt: skip
    peaks = np.column_stack(
        [np.asarray(src["peak_x"])[family], np.asarray(src["peak_y"])[family]]
    ).astype(np.float64)
    if children:
        peaks = peaks[1:]  # the parent's peak is its first child's
    return ObjectInspection(
        source_id=int(source_id),
        parent_id=parent_id,
        row=row,
        values=values,
        flags=describe_flags(flag_word),
        x0=x0,
        y0=y0,
        valid=valid,
        parent=parent_stamp,
        children=children,
        outline=footprint_outline(parent_fp),
        peaks=peaks,
        neighbours=neighbours,
        aperture_radii_px=radii,
        kron_radius_px=kron,
        ellipse=ellipse,
        messages=messages,
        config=config,
    )


def footprint_outline(footprint: HeavyFootprint) -> list[NDArray[np.float64]]:
    """Outline of a footprint as closed polylines of ``(x, y)`` image pixels.

    The outline runs through the midpoints between inside and outside pixels
    (a contour of the footprint at half height), one polyline per boundary.

    Parameters
    ----------
    footprint : HeavyFootprint
        The footprint; pixels with weight > 0 are inside.

    Returns
    -------
    list of numpy.ndarray, each of shape (n, 2)
        Polylines in image pixel coordinates.
    """
    inside = np.pad((footprint.weights > 0).astype(np.float64), 1)
    generator = contourpy.contour_generator(z=inside, line_type=contourpy.LineType.Separate)
    lines = generator.lines(0.5)
    offset = np.array([footprint.x0 - 1.0, footprint.y0 - 1.0])
    return [np.asarray(line, dtype=np.float64) + offset for line in lines]


# ---------------------------------------------------------------------------------------
def _row_of(catalog: Table, source_id: int) -> int:
    for name in ("id", "x", "y"):
        if name not in catalog.colnames:
            msg = f"catalog has no {name!r} column; pass a measure_sources/process_frame catalog"
            raise ValueError(msg)
    ids = np.asarray(catalog["id"])
    try:
        wanted = int(source_id)
    except (TypeError, ValueError):
        msg = f"source_id must be an integer catalog id, got {source_id!r}"
        raise ValueError(msg) from None
    rows = np.flatnonzero(ids == wanted)
    if len(rows) == 0:
        msg = (
            f"source_id {source_id!r} is not in the catalog ({len(ids)} sources, ids "
            f"{_id_range(catalog)}); pass a value of the catalog's 'id' column"
        )
        raise ValueError(msg)
    return int(rows[0])


def _id_range(table: Table) -> str:
    if len(table) == 0:
        return "none"
    ids = np.asarray(table["id"])
    return f"{int(ids.min())}..{int(ids.max())}"


def _plain(value: Any) -> Any:
    if hasattr(value, "unit") and hasattr(value, "value"):  # a Quantity from a QTable
        value = value.value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _neighbours(catalog: Table, row: int, radius_px: float) -> Table:
    x = np.asarray(catalog["x"], dtype=np.float64)
    y = np.asarray(catalog["y"], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        distance = np.hypot(x - x[row], y - y[row])
        near = np.flatnonzero(distance <= radius_px)
    near = near[near != row]
    near = near[np.argsort(distance[near], kind="stable")]
    table = Table(
        {
            "id": np.asarray(catalog["id"], dtype=np.int64)[near],
            "distance": distance[near],
            "x": x[near],
            "y": y[near],
        }
    )
    table["distance"].unit = "pix"
    return table


def _aperture_radii(names: Sequence[str]) -> tuple[float, ...]:
    radii = []
    for name in names:
        if name.startswith(_APERTURE_PREFIX) and not name.endswith("_err"):
            try:
                radii.append(float(name[len(_APERTURE_PREFIX) :].replace("p", ".")))
            except ValueError:
                continue
    return tuple(sorted(radii))


def _ellipse(values: dict[str, Any]) -> tuple[float, float, float, float, float] | None:
    try:
        ixx, iyy, ixy = (float(values[n]) for n in ("ixx", "iyy", "ixy"))
    except (KeyError, TypeError, ValueError):
        return None
    if not np.all(np.isfinite([ixx, iyy, ixy])):
        return None
    mean, diff = 0.5 * (ixx + iyy), float(np.hypot(0.5 * (ixx - iyy), ixy))
    a = float(np.sqrt(max(mean + diff, 0.0)))
    b = float(np.sqrt(max(mean - diff, 0.0)))
    theta = float(np.degrees(0.5 * np.arctan2(2.0 * ixy, ixx - iyy)))
    return float(values["x"]), float(values["y"]), a, b, theta


def _box(
    footprint: HeavyFootprint,
    shape: tuple[int, int],
    config: InspectConfig,
    x: float,
    y: float,
) -> tuple[int, int, tuple[int, int]]:
    """Stamp box ``(x0, y0, (ny, nx))``: the footprint's bounding box plus margin, clipped."""
    ny, nx = shape
    fy, fx = footprint.weights.shape
    m = config.margin_px
    bounds = []
    for lo, n, limit, centre in ((footprint.x0, fx, nx, x), (footprint.y0, fy, ny, y)):
        start, stop = lo - m, lo + n + m
        if stop - start > config.max_stamp_px:
            c = int(np.clip(round(centre) if np.isfinite(centre) else lo + n // 2, lo, lo + n - 1))
            start, stop = c - config.max_stamp_px // 2, c + config.max_stamp_px // 2 + 1
        bounds.append((max(start, 0), min(stop, limit)))
    (xs, xe), (ys, ye) = bounds
    return xs, ys, (max(ye - ys, 1), max(xe - xs, 1))


def _valid(
    exposure: Exposure, sl: tuple[slice, slice], bad_planes: tuple[str, ...]
) -> NDArray[np.bool_]:
    planes = [p for p in bad_planes if p in exposure.mask_planes]
    bits = exposure.mask_planes.bitmask(*planes) if planes else 0
    variance = exposure.variance[sl]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(exposure.image[sl]) & (variance > 0) & np.isfinite(variance)
    return np.asarray(ok & ((exposure.mask[sl] & bits) == 0))


def _model(
    catalog: Table, row: int, psf: Any, x0: int, y0: int, shape: tuple[int, int]
) -> NDArray[np.float32]:
    """``flux_psf`` times the PSF drawn at ``(x_psf, y_psf)`` on the stamp box."""
    out = np.zeros(shape, dtype=np.float32)
    names = catalog.colnames
    if "flux_psf" not in names:
        return out
    flux = float(catalog["flux_psf"][row])
    cx = float(catalog["x_psf"][row]) if "x_psf" in names else np.nan
    cy = float(catalog["y_psf"][row]) if "y_psf" in names else np.nan
    if not (np.isfinite(cx) and np.isfinite(cy)):
        cx, cy = float(catalog["x"][row]), float(catalog["y"][row])
    if not (np.isfinite(flux) and np.isfinite(cx) and np.isfinite(cy)):
        return out
    stamp = _draw(psf, cx, cy)
    h = stamp.shape[0] // 2
    ix, iy = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    paste = HeavyFootprint(ix - h, iy - h, (flux * stamp).astype(np.float32))
    return paste.weights_on(x0, y0, shape)


def _draw(psf: Any, x: float, y: float) -> NDArray[np.float64]:
    """PSF centred at ``(x, y)`` (sub-pixel) when the model can, else at the nearest pixel."""
    draw = getattr(psf, "draw", None)
    stamp = draw(x, y) if callable(draw) else psf.compute_image(x, y)
    stamp = np.asarray(stamp, dtype=np.float64)
    total = stamp.sum()
    return stamp / total if total else stamp
