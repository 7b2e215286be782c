"""PSF inspection: the model at a position, the stars near it, and the model over the field.

* :func:`inspect_psf` - at one position: the model stamp, its FWHM and moments,
  and the nearest stars as data, model and residual stamps with radial profiles;
* :func:`psf_field` - over the image: model size ``T`` and ellipticity on a grid,
  and star-versus-model residuals (the data of whisker plots and size maps);
* :func:`star_shapes` - adaptive moments of stars and of the model at them, for
  exposures without a :class:`~stacklab.toolkit.PsfFit` (e.g. coadds with a
  :class:`~stacklab.toolkit.CoaddPsf`);
* :func:`size_magnitude` - the size-magnitude diagram with the PSF-star selection.

Works with any PSF that has ``compute_image(x, y)`` (``PsfModel``, ``CoaddPsf``).
Sizes are ``T = Ixx + Iyy`` (px²); ellipticities are distortions ``e1, e2``;
positions are 0-based pixel centres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from ._stamps import cutout, fft_shift_padded
from .exposure import Exposure
from .flags import SourceFlag
from .psf_model import _hsm

__all__ = [
    "SRD_RHO1_REQUIREMENTS",
    "PsfFieldMap",
    "PsfInspection",
    "PsfStamp",
    "StarStamp",
    "fwhm_from_profile",
    "inspect_psf",
    "psf_field",
    "radial_profile",
    "size_magnitude",
    "star_shapes",
    "whiskers",
]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: LSST Science Requirements Document (LPM-17, table 27) limits on the median residual
#: PSF ellipticity correlation (rho1): ``(name, design value, min_arcmin, max_arcmin)``;
#: TE1 holds for separations up to 1 arcmin, TE2 from 5 arcmin outward (the upper
#: bound here is just the plot range).
SRD_RHO1_REQUIREMENTS: tuple[tuple[str, float, float, float], ...] = (
    ("TE1", 2.0e-5, 0.0, 1.0),
    ("TE2", 1.0e-7, 5.0, 60.0),
)


@dataclass(frozen=True, eq=False)
class PsfStamp:
    """The PSF model at one position.

    Attributes
    ----------
    x, y : float
        Position (pixels).
    stamp : numpy.ndarray
        Model stamp, unit sum, centred on the middle pixel.
    T, e1, e2 : float
        Adaptive moments of the model: size (px²) and distortion (NaN if they failed).
    fwhm_px : float
        FWHM of the model's radial profile (pixels).
    radius_px, profile : numpy.ndarray
        Radial profile: mean value in rings around the centre, by ring radius (px).
    """

    x: float
    y: float
    stamp: NDArray[np.float64]
    T: float
    e1: float
    e2: float
    fwhm_px: float
    radius_px: NDArray[np.float64]
    profile: NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class StarStamp:
    """A star next to the model drawn at its position, on the same pixels.

    Attributes
    ----------
    index : int
        Row of the star in the stars table given.
    x, y : float
        Star position (pixels).
    distance_px : float
        Distance from the inspected position (pixels).
    data, model, residual : numpy.ndarray
        Star pixels (ADU), model scaled to the fitted flux, and their difference.
    valid : numpy.ndarray of bool
        Usable pixels (finite, not masked); the flux fit uses only these.
    flux : float
        Fitted flux (ADU).
    limits : tuple of float
        ``(low, high)`` display limits shared by data, model and residual (ADU).
    radius_px, star_profile, model_profile : numpy.ndarray
        Radial profiles of the star and of the model (fraction of the flux per pixel).
    star_fwhm_px, model_fwhm_px : float
        FWHM of each profile (pixels).
    """

    index: int
    x: float
    y: float
    distance_px: float
    data: NDArray[np.float64]
    model: NDArray[np.float64]
    residual: NDArray[np.float64]
    valid: NDArray[np.bool_]
    flux: float
    limits: tuple[float, float]
    radius_px: NDArray[np.float64]
    star_profile: NDArray[np.float64]
    model_profile: NDArray[np.float64]
    star_fwhm_px: float
    model_fwhm_px: float


@dataclass(frozen=True, eq=False)
class PsfInspection:
    """Result of :func:`inspect_psf`: the model at a position and the nearest stars."""

    model: PsfStamp
    stars: list[StarStamp]
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class PsfFieldMap:
    """The PSF over the image (:func:`psf_field`).

    Attributes
    ----------
    grid_x, grid_y : numpy.ndarray, shape (n, n)
        Grid positions (pixels).
    grid_T, grid_e1, grid_e2 : numpy.ndarray, shape (n, n)
        Model size (px²) and distortion on the grid.
    stars : astropy.table.Table
        ``x, y, T, e1, e2, model_T, model_e1, model_e2`` and the residuals
        ``dT_over_T = (T - model_T) / T``, ``de1``, ``de2`` (one row per star).
    """

    grid_x: NDArray[np.float64]
    grid_y: NDArray[np.float64]
    grid_T: NDArray[np.float64]  # noqa: N815 (T is the standard name of the size)
    grid_e1: NDArray[np.float64]
    grid_e2: NDArray[np.float64]
    stars: Table


def radial_profile(
    stamp: NDArray[np.floating],
    x: float,
    y: float,
    *,
    valid: NDArray[np.bool_] | None = None,
    max_radius_px: float | None = None,
    bin_px: float = 0.5,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean pixel value in rings of width ``bin_px`` around ``(x, y)`` (stamp pixels).

    Parameters
    ----------
    stamp : numpy.ndarray
        The image.
    x, y : float
        Centre in stamp pixels.
    valid : numpy.ndarray of bool, optional
        Pixels to use (all by default).
    max_radius_px : float, optional
        Outermost radius; half the stamp width by default.
    bin_px : float
        Ring width (pixels).

    Returns
    -------
    radius_px, mean : numpy.ndarray
        Mean radius of the pixels of each ring and their mean value (NaN for empty rings).

    Examples
    --------
    >>> import numpy as np
    >>> r, v = radial_profile(np.ones((11, 11)), 5.0, 5.0)
    >>> bool(np.all(v[np.isfinite(v)] == 1.0))
    True
    """
    if not bin_px > 0:
        msg = f"bin_px must be > 0 pixels, got {bin_px!r}"
        raise ValueError(msg)
    ny, nx = stamp.shape
    rmax = min(nx, ny) / 2.0 if max_radius_px is None else float(max_radius_px)
    yy, xx = np.indices((ny, nx))
    r = np.hypot(xx - x, yy - y).ravel()
    values = np.asarray(stamp, dtype=np.float64).ravel()
    use = r < rmax
    if valid is not None:
        use &= np.asarray(valid).ravel()
    use &= np.isfinite(values)
    n_bins = max(int(np.ceil(rmax / bin_px)), 1)
    index = np.minimum((r[use] / bin_px).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sums = np.bincount(index, weights=values[use], minlength=n_bins)
    rsum = np.bincount(index, weights=r[use], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
        radius = np.where(counts > 0, rsum / counts, np.nan)
    return radius, mean


def fwhm_from_profile(radius_px: NDArray[np.floating], profile: NDArray[np.floating]) -> float:
    """FWHM (pixels) of a radial profile: twice the radius where it falls to half its peak.

    The crossing is linearly interpolated between rings; NaN when the profile
    never falls below half its central value.

    Examples
    --------
    >>> import numpy as np
    >>> r = np.linspace(0.0, 10.0, 201)
    >>> round(fwhm_from_profile(r, np.exp(-0.5 * (r / 2.0) ** 2)), 2)
    4.71
    """
    r = np.asarray(radius_px, dtype=np.float64)
    v = np.asarray(profile, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(v)
    r, v = r[ok], v[ok]
    if len(v) < 2 or not v[0] > 0:
        return float("nan")
    half = 0.5 * v[0]
    below = np.flatnonzero(v <= half)
    if len(below) == 0 or below[0] == 0:
        return float("nan")
    i = int(below[0])
    r0, r1, v0, v1 = r[i - 1], r[i], v[i - 1], v[i]
    crossing = r0 + (v0 - half) * (r1 - r0) / (v0 - v1) if v0 != v1 else r1
    return float(2.0 * crossing)


def whiskers(
    e1: NDArray[np.floating], e2: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Length ``|e|`` and position angle (radians, from +x towards +y) of ellipticities."""
    a1, a2 = np.asarray(e1, dtype=np.float64), np.asarray(e2, dtype=np.float64)
    return np.hypot(a1, a2), 0.5 * np.arctan2(a2, a1)


def inspect_psf(
    exposure: Exposure,
    x: float,
    y: float,
    stars: Table | None = None,
    *,
    psf: Any = None,
    n_stars: int = 4,
    half_size_px: int | None = None,
) -> PsfInspection:
    """Return the PSF model at ``(x, y)`` and the nearest stars with data, model and residual.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure (single frame or coadd).
    x, y : float
        Position (pixels).
    stars : astropy.table.Table, optional
        Stars with ``x`` and ``y`` columns (e.g. ``PsfFit.stars`` or catalog rows of
        PSF stars); without it only the model is returned.
    psf : object with ``compute_image(x, y)``, optional
        The model; ``exposure.psf`` by default.
    n_stars : int
        How many of the nearest stars to return.
    half_size_px : int, optional
        Half-width of the star stamps; the model stamp's by default.

    Returns
    -------
    PsfInspection

    Raises
    ------
    ValueError
        If there is no PSF, the position is off the image, or ``stars`` lacks ``x``/``y``.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit import process_frame
    >>> sim_config = SimulationConfig(size=256, star_density_arcmin2=60.0, seed=4)
    >>> frame = process_frame(simulate_visit(make_sky(sim_config), sim_config, visit=0).exposure)
    >>> found = inspect_psf(frame.exposure, 128.0, 128.0, frame.psf_fit.stars, n_stars=2)
    >>> 2.0 < found.model.fwhm_px < 6.0
    True
    """
    psf = _require_psf(exposure, psf)
    _check_position(exposure.shape, x, y, "(x, y)")
    if not isinstance(n_stars, int) or n_stars < 0:
        msg = f"n_stars must be an integer >= 0, got {n_stars!r}"
        raise ValueError(msg)
    model = _psf_stamp(psf, float(x), float(y))
    out: list[StarStamp] = []
    messages: list[str] = []
    if stars is not None and n_stars:
        for name in ("x", "y"):
            if name not in stars.colnames:
                msg = f"stars has no {name!r} column; pass a table of star positions in pixels"
                raise ValueError(msg)
        sx = np.asarray(stars["x"], dtype=np.float64)
        sy = np.asarray(stars["y"], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            distance = np.hypot(sx - x, sy - y)
        order = np.argsort(np.where(np.isfinite(distance), distance, np.inf), kind="stable")
        half = model.stamp.shape[0] // 2 if half_size_px is None else int(half_size_px)
        for i in order[:n_stars]:
            if not np.isfinite(distance[i]):
                continue
            out.append(_star_stamp(exposure, psf, int(i), sx[i], sy[i], distance[i], half))
        if not out:
            messages.append("no stars with finite positions were given; only the model is shown")
    elif stars is None:
        messages.append("no stars given: pass PsfFit.stars or catalog rows of PSF stars")
    return PsfInspection(model=model, stars=out, messages=messages)


def psf_field(
    shape: tuple[int, int],
    psf: Any,
    stars: Table | None = None,
    *,
    n_grid: int = 9,
) -> PsfFieldMap:
    """Model size and ellipticity on a grid, and star-minus-model residuals at stars.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    psf : object with ``compute_image(x, y)``
        The model.
    stars : astropy.table.Table, optional
        Stars with ``x, y, T, e1, e2, model_T, model_e1, model_e2`` (``PsfFit.stars`` or
        :func:`star_shapes`); rows with non-finite moments are dropped.
    n_grid : int
        Grid points per side.

    Returns
    -------
    PsfFieldMap
    """
    if not isinstance(n_grid, int) or n_grid < 2:
        msg = f"n_grid must be an integer >= 2, got {n_grid!r}"
        raise ValueError(msg)
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0.0, nx - 1.0, n_grid), np.linspace(0.0, ny - 1.0, n_grid))
    moments = np.full((n_grid, n_grid, 3), np.nan)
    for j in range(n_grid):
        for i in range(n_grid):
            try:
                moments[j, i] = _moments(psf, float(gx[j, i]), float(gy[j, i]))[:3]
            except ValueError:  # e.g. a coadd pixel no input covers
                continue
    names = ("x", "y", "T", "e1", "e2", "model_T", "model_e1", "model_e2")
    if stars is None:
        table = Table(names=names, dtype=[float] * len(names))
    else:
        missing = [n for n in names if n not in stars.colnames]
        if missing:
            msg = f"stars lacks columns {missing}; pass PsfFit.stars or a star_shapes() table"
            raise ValueError(msg)
        table = Table({n: np.asarray(stars[n], dtype=np.float64) for n in names})
        ok = np.all([np.isfinite(table[n]) for n in names], axis=0)
        table = table[ok]
    table["dT_over_T"] = (table["T"] - table["model_T"]) / table["T"]
    table["de1"] = table["e1"] - table["model_e1"]
    table["de2"] = table["e2"] - table["model_e2"]
    return PsfFieldMap(gx, gy, moments[..., 0], moments[..., 1], moments[..., 2], table)


def star_shapes(
    exposure: Exposure, x: NDArray[np.floating], y: NDArray[np.floating], *, psf: Any = None
) -> Table:
    """Adaptive moments of stars and of the PSF model drawn at each star.

    For exposures whose PSF was not fitted here (coadds): pick stars from the
    catalog (e.g. ``extendedness == 0`` and bright) and pass their positions.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure.
    x, y : array_like
        Star positions (pixels).
    psf : object with ``compute_image(x, y)``, optional
        The model; ``exposure.psf`` by default.

    Returns
    -------
    astropy.table.Table
        ``x, y, T, e1, e2, model_T, model_e1, model_e2`` (NaN where moments failed).
    """
    psf = _require_psf(exposure, psf)
    xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if xs.shape != ys.shape:
        msg = f"x and y must have the same length, got {xs.shape} and {ys.shape}"
        raise ValueError(msg)
    n = len(xs)
    cols = {
        name: np.full(n, np.nan) for name in ("T", "e1", "e2", "model_T", "model_e1", "model_e2")
    }
    image = exposure.image
    bad = ~np.isfinite(image) | ((exposure.mask & _bad_bits(exposure)) != 0)
    for k in range(n):
        if not (np.isfinite(xs[k]) and np.isfinite(ys[k])):
            continue
        try:
            model = _draw_at(psf, xs[k], ys[k])
        except ValueError:
            continue
        half = model.shape[0] // 2
        ix, iy = int(np.floor(xs[k] + 0.5)), int(np.floor(ys[k] + 0.5))
        data = np.nan_to_num(cutout(image, ix, iy, half).astype(np.float64))
        star = _hsm(data, cutout(bad, ix, iy, half, fill=True), guess_sigma=2.0)
        mod = _hsm(model, None, guess_sigma=2.0)
        if star is not None and mod is not None:
            cols["T"][k], cols["e1"][k], cols["e2"][k] = star[:3]
            cols["model_T"][k], cols["model_e1"][k], cols["model_e2"][k] = mod[:3]
    return Table({"x": xs, "y": ys, **cols})


def size_magnitude(catalog: Table, *, zero_point: float | None = None) -> Table:
    """Size-magnitude diagram data with the PSF-star selection.

    Parameters
    ----------
    catalog : astropy.table.Table
        Catalog with ``id``, ``flux_psf``, ``ixx``, ``iyy`` and ``flags``.
    zero_point : float, optional
        AB magnitude of 1 ADU; instrumental magnitudes (zero point 0) when omitted.

    Returns
    -------
    astropy.table.Table
        ``id``, ``mag`` (AB or instrumental), ``T`` (px²), ``psf_star`` (used in the
        fit), ``psf_reserved`` (kept for validation), one row per catalog row.
    """
    for name in ("id", "flux_psf", "ixx", "iyy", "flags"):
        if name not in catalog.colnames:
            msg = f"catalog has no {name!r} column; pass a process_frame catalog"
            raise ValueError(msg)
    flux = np.asarray(catalog["flux_psf"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    mag = mag + (0.0 if zero_point is None else float(zero_point))
    flags = np.asarray(catalog["flags"], dtype=np.int64)
    return Table(
        {
            "id": np.asarray(catalog["id"], dtype=np.int64),
            "mag": mag,
            "T": np.asarray(catalog["ixx"], dtype=np.float64)
            + np.asarray(catalog["iyy"], dtype=np.float64),
            "psf_star": (flags & int(SourceFlag.PSF_STAR)) != 0,
            "psf_reserved": (flags & int(SourceFlag.PSF_RESERVED)) != 0,
        }
    )


# ---------------------------------------------------------------------------------------
def _require_psf(exposure: Exposure, psf: Any) -> Any:
    psf = exposure.psf if psf is None else psf
    if psf is None or not callable(getattr(psf, "compute_image", None)):
        msg = (
            "no PSF: the exposure has none and psf= was not given; pass the PsfModel "
            "(FrameResult.psf) or the coadd's CoaddPsf"
        )
        raise ValueError(msg)
    return psf


def _check_position(shape: tuple[int, int], x: float, y: float, name: str) -> None:
    ny, nx = shape
    try:
        xf, yf = float(x), float(y)
    except (TypeError, ValueError):
        msg = f"{name} must be numbers (pixels), got ({x!r}, {y!r})"
        raise ValueError(msg) from None
    if not (np.isfinite(xf) and np.isfinite(yf)) or not (
        -0.5 <= xf < nx - 0.5 and -0.5 <= yf < ny - 0.5
    ):
        msg = (
            f"{name} = ({x!r}, {y!r}) is off the image of {nx} x {ny} pixels; pass a "
            f"position with 0 <= x <= {nx - 1} and 0 <= y <= {ny - 1}"
        )
        raise ValueError(msg)


def _bad_bits(exposure: Exposure) -> int:
    planes = [p for p in ("BAD", "SAT", "NO_DATA", "CR") if p in exposure.mask_planes]
    return int(exposure.mask_planes.bitmask(*planes)) if planes else 0


def _draw_at(psf: Any, x: float, y: float) -> NDArray[np.float64]:
    """Return the model centred at ``(x, y)``, on a stamp whose middle pixel is the nearest."""
    draw = getattr(psf, "draw", None)
    if callable(draw):
        stamp = np.asarray(draw(x, y), dtype=np.float64)
    else:
        base = np.asarray(psf.compute_image(x, y), dtype=np.float64)
        dx, dy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
        stamp = fft_shift_padded(base, dx, dy)
    total = stamp.sum()
    return stamp / total if total else stamp


def _moments(psf: Any, x: float, y: float) -> tuple[float, float, float]:
    stamp = np.asarray(psf.compute_image(x, y), dtype=np.float64)
    shape = _hsm(np.pad(stamp / stamp.sum(), stamp.shape[0] // 2), None)
    if shape is None:
        return (np.nan, np.nan, np.nan)
    return shape[0], shape[1], shape[2]


def _psf_stamp(psf: Any, x: float, y: float) -> PsfStamp:
    stamp = np.asarray(psf.compute_image(x, y), dtype=np.float64)
    stamp = stamp / stamp.sum()
    c = stamp.shape[0] // 2
    radius, profile = radial_profile(stamp, float(c), float(c))
    T, e1, e2 = _moments(psf, x, y)
    return PsfStamp(x, y, stamp, T, e1, e2, fwhm_from_profile(radius, profile), radius, profile)


def _star_stamp(
    exposure: Exposure, psf: Any, index: int, x: float, y: float, distance: float, half: int
) -> StarStamp:
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    data = cutout(exposure.image, ix, iy, half, fill=np.nan).astype(np.float64)
    masked = (cutout(exposure.mask, ix, iy, half) & _bad_bits(exposure)) != 0
    valid = np.isfinite(data) & ~masked
    data = np.where(valid, data, 0.0)
    try:
        unit = _draw_at(psf, x, y)
    except ValueError:  # a coadd position no input covers
        unit = np.zeros((1, 1))
    model_unit = np.zeros_like(data)
    h = unit.shape[0] // 2
    size = 2 * half + 1
    lo, hi = max(half - h, 0), min(half + h + 1, size)
    model_unit[lo:hi, lo:hi] = unit[lo - half + h : hi - half + h, lo - half + h : hi - half + h]
    den = float(np.sum(model_unit[valid] ** 2))
    flux = float(np.sum(model_unit[valid] * data[valid]) / den) if den > 0 else float("nan")
    model = model_unit * (flux if np.isfinite(flux) else 0.0)
    residual = np.where(valid, data - model, 0.0)
    cx, cy = half + (x - ix), half + (y - iy)
    scale = flux if np.isfinite(flux) and flux > 0 else 1.0
    radius, star_profile = radial_profile(data / scale, cx, cy, valid=valid)
    _, model_profile = radial_profile(model_unit, cx, cy)
    finite = data[valid]
    limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return StarStamp(
        index=index,
        x=float(x),
        y=float(y),
        distance_px=float(distance),
        data=data,
        model=model,
        residual=residual,
        valid=valid,
        flux=flux,
        limits=limits,
        radius_px=radius,
        star_profile=star_profile,
        model_profile=model_profile,
        star_fwhm_px=fwhm_from_profile(radius, star_profile),
        model_fwhm_px=fwhm_from_profile(radius, model_profile),
    )
