"""Measurement of every source: centroid, shapes, aperture, Kron, PSF and galaxy-model fluxes.

Each source is measured on its own stamp: a deblended child sees the image with
its siblings' heavy footprints removed (inside the parent footprint its pixels
are ``weight * image``), isolated sources and parents see the image.

* centroid and adaptive moments: GalSim HSM (``FindAdaptiveMom``), giving
  ``x, y`` and ``ixx, iyy, ixy`` (px²) of the elliptical Gaussian weight;
* aperture fluxes (sep ``sum_circle``) at ``aperture_radii_px``;
* Kron flux: sep's Kron radius on the adaptive ellipse within ``6 a``, flux in
  ``2.5`` Kron radii (minimum radius 3.5 px, as SExtractor's FLUX_AUTO);
* PSF flux: weighted linear least squares of the PSF model drawn at the
  source, after one Gauss-Newton refinement of the position (``x_psf, y_psf``);
* model flux (CModel-like): exponential and de Vaucouleurs profiles of the
  deconvolved adaptive-moment shape, convolved with the PSF in Fourier space,
  their size scanned on a grid; the best exponential and de Vaucouleurs
  templates are then combined with non-negative amplitudes (``frac_dev``);
* extendedness: 1 when ``flux_psf < 0.985 flux_exp`` (LSST's classifier, with the
  exponential-model flux ``flux_exp``).

Errors come from the variance plane. Failures become :class:`SourceFlag` bits.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import galsim
import numpy as np
import sep
from astropy import units as u
from astropy.table import Table
from numpy.typing import NDArray
from scipy import optimize

from ._stamps import cutout, good_size
from .deblend import Deblended
from .exposure import Exposure
from .flags import SourceFlag

__all__ = ["MeasurementConfig", "Measurements", "measure_sources"]

log = logging.getLogger(__name__)

_EXTENDEDNESS_RATIO = 0.985
_PSF_GRID = 9
_PSF_FIT_ITERATIONS = 2
# Sources per batch of PSF and galaxy-model fits (memory ~ 2 x 9 x batch stamps).
_FIT_BATCH = 32
_SIZE_FACTORS = np.array([0.0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0])
_EXP_HLR_PER_SCALE = 1.6783469900166608  # half-light radius of exp(-r) in scale radii


@dataclass(frozen=True, kw_only=True)
class MeasurementConfig:
    """Settings of :func:`measure_sources`.

    Attributes
    ----------
    aperture_radii_px : tuple of float
        Radii of the circular apertures (pixels); columns ``flux_aper_<r>``.
    kron_factor : float
        Kron flux is summed within this many Kron radii.
    kron_min_radius_px : float
        Smallest Kron aperture radius (pixels).
    max_stamp_half_px : int
        Largest stamp half-width (pixels) used for one source.
    fit_models : bool
        Fit the exponential/de Vaucouleurs galaxy models (the slowest part).
    bad_planes : tuple of str
        Mask planes whose pixels are left out of every sum and fit.
    """

    aperture_radii_px: tuple[float, ...] = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0)
    kron_factor: float = 2.5
    kron_min_radius_px: float = 3.5
    max_stamp_half_px: int = 64
    fit_models: bool = True
    bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "CR")

    def __post_init__(self) -> None:
        radii = tuple(float(r) for r in self.aperture_radii_px)
        if not radii or any(not r > 0 for r in radii):
            msg = (
                "aperture_radii_px must be positive radii in pixels, "
                f"got {self.aperture_radii_px!r}"
            )
            raise ValueError(msg)
        object.__setattr__(self, "aperture_radii_px", tuple(sorted(radii)))
        for name in ("kron_factor", "kron_min_radius_px"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not isinstance(self.max_stamp_half_px, int) or self.max_stamp_half_px < 8:
            msg = f"max_stamp_half_px must be an integer >= 8, got {self.max_stamp_half_px!r}"
            raise ValueError(msg)
        object.__setattr__(self, "bad_planes", tuple(self.bad_planes))


@dataclass(frozen=True, eq=False)
class Measurements:
    """The source catalog of :func:`measure_sources`.

    Attributes
    ----------
    catalog : astropy.table.Table
        One row per source (see :func:`measure_sources` for the columns).
    config : MeasurementConfig
        The settings that made it.
    """

    catalog: Table
    config: MeasurementConfig = field(default_factory=MeasurementConfig)


def aperture_column(radius_px: float) -> str:
    """Catalog column name of the aperture flux of radius ``radius_px``."""
    return f"flux_aper_{radius_px:g}".replace(".", "p")


@functools.lru_cache(maxsize=1)
def _dev_table() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # Fourier transform of a unit-flux de Vaucouleurs profile of half-light radius 1,
    # as a function of angular wavenumber, tabulated once.
    profile = galsim.DeVaucouleurs(half_light_radius=1.0)
    q = np.concatenate([[0.0], np.geomspace(1e-3, 3e3, 600)])
    values = np.array([profile.kValue(float(k), 0.0).real for k in q])
    return q, values


def _profile_ft(kind: str, q: NDArray[np.float64]) -> NDArray[np.float64]:
    if kind == "exp":
        return np.asarray((1.0 + (q / _EXP_HLR_PER_SCALE) ** 2) ** -1.5)
    grid, values = _dev_table()
    return np.asarray(np.interp(q, grid, values, right=0.0))


def measure_sources(
    exposure: Exposure,
    sources: Deblended,
    config: MeasurementConfig | None = None,
    *,
    psf: Any = None,
) -> Measurements:
    """Measure every source (parents, children and isolated sources).

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure with variance and mask planes.
    sources : Deblended
        From :func:`~stacklab.toolkit.deblend_sources`.
    config : MeasurementConfig, optional
        Settings; defaults when omitted.
    psf : object with ``compute_image(x, y)``, optional
        PSF model; by default ``exposure.psf``. Without one, PSF and model
        fluxes are NaN and flagged.

    Returns
    -------
    Measurements
        Catalog columns: ``id, parent, n_children, x, y`` (HSM centroid, px),
        ``x_psf, y_psf``, ``ra, dec`` (deg, NaN without a WCS),
        ``peak_significance``, ``flux_psf, flux_psf_err``, ``flux_aper_<r>`` and
        ``_err``, ``kron_radius`` (px), ``flux_kron, flux_kron_err``,
        ``flux_model, flux_model_err, frac_dev``, ``flux_exp``, ``ixx, iyy, ixy`` and
        ``psf_ixx, psf_iyy, psf_ixy`` (px²), ``extendedness``, ``flags``.
        Fluxes are in ADU.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit import detect_sources, deblend_sources
    >>> sim_config = SimulationConfig(size=128, galaxy_density_arcmin2=5.0, seed=2)
    >>> exp = simulate_visit(make_sky(sim_config), sim_config, visit=0).exposure
    >>> exp = exp.replace(image=exp.image - float(exp.meta["SKYLEVEL"]))
    >>> cat = measure_sources(exp, deblend_sources(exp, detect_sources(exp))).catalog
    >>> "flux_psf" in cat.colnames
    True
    """
    config = MeasurementConfig() if config is None else config
    psf = exposure.psf if psf is None else psf
    ny, nx = exposure.shape
    planes = [p for p in config.bad_planes if p in exposure.mask_planes]
    bad_bits = exposure.mask_planes.bitmask(*planes) if planes else 0
    # float32 planes as they are (no full-size float64 copies); stamps are float64.
    image = exposure.image
    variance = exposure.variance
    # Pixels left out of every sum and fit, as one boolean image (one cut-out per source).
    unusable = ~np.isfinite(exposure.image) | ~(variance > 0) | ~np.isfinite(variance)
    if bad_bits:
        unusable |= (exposure.mask & bad_bits) != 0
    planes_map = exposure.mask_planes
    bits = {
        name: planes_map.bitmask(name) if name in planes_map else 0
        for name in ("SAT", "CR", "INTRP", "BAD", "NO_DATA")
    }
    src = sources.sources
    n = len(src)
    radii = config.aperture_radii_px
    out: dict[str, NDArray[Any]] = {
        name: np.full(n, np.nan)
        for name in (
            "x", "y", "x_psf", "y_psf", "flux_psf", "flux_psf_err", "kron_radius", "flux_kron",
            "flux_kron_err", "flux_model", "flux_exp", "flux_model_err", "frac_dev", "ixx", "iyy",
            "ixy",
            "psf_ixx", "psf_iyy", "psf_ixy", "spread_model", "spread_model_err",
        )
    }  # fmt: skip
    aper = np.full((n, len(radii)), np.nan)
    aper_err = np.full((n, len(radii)), np.nan)
    flags = np.zeros(n, dtype=np.int64)
    psf_half = None
    psf_grid: _PsfMomentGrid | None = None
    index_of = {int(i): k for k, i in enumerate(src["id"])}
    # PSF and galaxy-model fits wait for a batch of sources with stamps of one size.
    pending: dict[tuple[int, int], list[_FitInput]] = {}
    # Plain lists: indexing a Table column per source costs more than the maths.
    peak_xs, peak_ys = src["peak_x"].tolist(), src["peak_y"].tolist()
    parents, n_children = src["parent"].tolist(), src["n_children"].tolist()
    skipped = src["deblend_skipped"].tolist()
    for k in range(n):
        f = 0
        px0, py0 = int(peak_xs[k]), int(peak_ys[k])
        heavy = sources.heavy_footprints[k]
        parent = int(parents[k])
        if parent or n_children[k]:
            f |= SourceFlag.BLENDED
        if n_children[k]:
            f |= SourceFlag.PARENT
        if skipped[k]:
            f |= SourceFlag.DEBLEND_SKIPPED | SourceFlag.BLENDED
        sl = heavy.slices
        parent_fp = sources.heavy_footprints[index_of[parent]] if parent else None
        if np.any(exposure.mask[sl][heavy.weights > 0] & bits["SAT"]):
            f |= SourceFlag.SATURATED
        fy, fx = heavy.weights.shape
        half = int(np.clip(max(fy, fx) // 2 + 6, radii[-1] + 3, config.max_stamp_half_px))
        if psf_half is not None:
            half = max(half, psf_half + 2)
        half = good_size(2 * half + 1) // 2  # FFT-friendly stamp size
        stamp = np.nan_to_num(cutout(image, px0, py0, half).astype(np.float64))
        var = cutout(variance, px0, py0, half, fill=np.inf).astype(np.float64)
        bad = cutout(unusable, px0, py0, half, fill=True)
        if parent_fp is not None:
            # A child's own image: siblings' shares removed inside the parent footprint.
            box = (px0 - half, py0 - half, stamp.shape)
            in_parent = parent_fp.weights_on(*box) > 0
            stamp = stamp * np.where(in_parent, heavy.weights_on(*box), 1.0)
        ox, oy = px0 - half, py0 - half
        near = int(
            np.bitwise_or.reduce(
                cutout(exposure.mask, px0, py0, 2, fill=bits["NO_DATA"]), axis=None
            )
        )
        if near & bits["SAT"]:
            f |= SourceFlag.SATURATED_CENTER
        if near & bits["CR"]:
            f |= SourceFlag.CR_CENTER
        if near & bits["INTRP"]:
            f |= SourceFlag.INTERPOLATED_CENTER
        if near & (bits["BAD"] | bits["NO_DATA"]):
            f |= SourceFlag.BAD_CENTER
        if px0 - half < 0 or py0 - half < 0 or px0 + half >= nx or py0 + half >= ny:
            f |= SourceFlag.EDGE
        # Adaptive moments and centroid.
        shape = _hsm_moments(stamp, bad)
        cx, cy = float(half), float(half)
        if shape is None:
            f |= SourceFlag.BAD_MOMENTS
        else:
            sx, sy, ixx, iyy, ixy = shape
            out["ixx"][k], out["iyy"][k], out["ixy"][k] = ixx, iyy, ixy
            if np.hypot(sx - half, sy - half) > 2.0:
                f |= SourceFlag.BAD_CENTROID
            else:
                cx, cy = sx, sy
        out["x"][k], out["y"][k] = cx + ox, cy + oy
        # Apertures (sep needs C-contiguous native float arrays).
        data = np.ascontiguousarray(np.where(bad, 0.0, stamp))
        var_c = np.ascontiguousarray(np.where(bad | ~np.isfinite(var), 0.0, var))
        bad_c = np.ascontiguousarray(bad)
        fl, fe, ff = sep.sum_circle(
            data, np.array([cx]), np.array([cy]), np.array(radii)[None, :], var=var_c,
            mask=bad_c, subpix=5,
        )  # fmt: skip
        aper[k], aper_err[k] = fl[0], fe[0]
        if np.any(ff) or np.any(radii[-1] > np.array([cx, cy, 2 * half - cx, 2 * half - cy])):
            f |= SourceFlag.APERTURE_TRUNCATED
        # Kron.
        f |= _kron(data, var_c, bad_c, cx, cy, shape, config, out, k)
        # PSF flux and the PSF's moments.
        if psf is None:
            f |= SourceFlag.PSF_FLUX_FAILED | SourceFlag.MODEL_FLUX_FAILED
            flags[k] = f
            continue
        gx, gy = cx + ox, cy + oy
        kernel = np.asarray(psf.compute_image(gx, gy), dtype=np.float64)
        kernel /= kernel.sum()
        psf_half = kernel.shape[0] // 2
        if psf_grid is None:
            psf_grid = _PsfMomentGrid(psf, exposure.shape)
        pm = psf_grid(gx, gy)
        if pm is not None:
            out["psf_ixx"][k], out["psf_iyy"][k], out["psf_ixy"][k] = pm[2:]
        # Inverse-variance weights, 0 on bad pixels: shared by the PSF and model fits.
        w = np.where(bad | ~np.isfinite(var) | ~(var > 0), 0.0, 1.0 / np.where(var > 0, var, 1.0))
        flags[k] = f
        # PSF and galaxy-model fits go by batches of stamps of one size.
        key = (stamp.shape[0], kernel.shape[0])
        batch = pending.setdefault(key, [])
        batch.append((k, stamp, w, kernel, cx, cy, ox, oy, shape, pm))
        if len(batch) >= _FIT_BATCH:
            _fit_batch(pending.pop(key), out, flags, fit_models=config.fit_models)
    for batch in pending.values():
        _fit_batch(batch, out, flags, fit_models=config.fit_models)
    catalog = Table()
    catalog["id"] = np.asarray(src["id"])
    catalog["parent"] = np.asarray(src["parent"])
    catalog["n_children"] = np.asarray(src["n_children"])
    catalog["x"] = out["x"] * u.pix
    catalog["y"] = out["y"] * u.pix
    ra = dec = np.full(n, np.nan)
    if exposure.wcs is not None and exposure.wcs.has_celestial and n:
        ra, dec = exposure.wcs.celestial.pixel_to_world_values(out["x"], out["y"])
    catalog["ra"] = np.asarray(ra) * u.deg
    catalog["dec"] = np.asarray(dec) * u.deg
    catalog["x_psf"] = out["x_psf"] * u.pix
    catalog["y_psf"] = out["y_psf"] * u.pix
    catalog["peak_significance"] = np.asarray(src["peak_significance"])
    catalog["flux_psf"] = out["flux_psf"] * u.adu
    catalog["flux_psf_err"] = out["flux_psf_err"] * u.adu
    for j, r in enumerate(radii):
        catalog[aperture_column(r)] = aper[:, j] * u.adu
        catalog[aperture_column(r) + "_err"] = aper_err[:, j] * u.adu
    catalog["kron_radius"] = out["kron_radius"] * u.pix
    catalog["flux_kron"] = out["flux_kron"] * u.adu
    catalog["flux_kron_err"] = out["flux_kron_err"] * u.adu
    catalog["flux_model"] = out["flux_model"] * u.adu
    catalog["flux_model_err"] = out["flux_model_err"] * u.adu
    catalog["frac_dev"] = out["frac_dev"]
    catalog["flux_exp"] = out["flux_exp"] * u.adu
    for name in ("ixx", "iyy", "ixy", "psf_ixx", "psf_iyy", "psf_ixy"):
        catalog[name] = out[name] * u.pix**2
    # The exponential fit, not the exp+deV combination, classifies: a faint deV
    # component can take up PSF-wing light and push stars over the threshold.
    catalog["spread_model"] = out["spread_model"]
    catalog["spread_model_err"] = out["spread_model_err"]
    catalog["extendedness"] = extendedness(out["flux_psf"], out["flux_exp"])
    catalog["flags"] = flags
    log.info("measured %d sources", n)
    return Measurements(catalog=catalog, config=config)


def extendedness(
    flux_psf: NDArray[np.floating], flux_model: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Star/galaxy classifier: 1.0 where ``flux_psf < 0.985 flux_model``, else 0.0.

    NaN where either flux is unknown.
    """
    fp = np.asarray(flux_psf, dtype=np.float64)
    fm = np.asarray(flux_model, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        value = (fp < _EXTENDEDNESS_RATIO * fm).astype(np.float64)
    return np.where(np.isfinite(fp) & np.isfinite(fm), value, np.nan)


class _PsfMomentGrid:
    """PSF adaptive moments on a grid over the image, bilinearly interpolated.

    The PSF varies smoothly (a low-order polynomial), so a grid of
    ``_PSF_GRID`` x ``_PSF_GRID`` HSM measurements replaces one per source.
    """

    def __init__(self, psf: Any, shape: tuple[int, int]) -> None:
        ny, nx = shape
        self.gx = np.linspace(0.0, nx - 1.0, _PSF_GRID)
        self.gy = np.linspace(0.0, ny - 1.0, _PSF_GRID)
        self.values = np.full((_PSF_GRID, _PSF_GRID, 5), np.nan)
        for j, y in enumerate(self.gy):
            for i, x in enumerate(self.gx):
                kernel = np.asarray(psf.compute_image(x, y), dtype=np.float64)
                moments = _hsm_moments(np.pad(kernel / kernel.sum(), kernel.shape[0] // 2), None)
                if moments is not None:
                    self.values[j, i] = moments

    def __call__(self, x: float, y: float) -> tuple[float, float, float, float, float] | None:
        fx = float(np.interp(x, self.gx, np.arange(_PSF_GRID)))
        fy = float(np.interp(y, self.gy, np.arange(_PSF_GRID)))
        i0, j0 = min(int(fx), _PSF_GRID - 2), min(int(fy), _PSF_GRID - 2)
        tx, ty = fx - i0, fy - j0
        v = self.values
        value = ((1 - tx) * (1 - ty) * v[j0, i0] + tx * (1 - ty) * v[j0, i0 + 1]
                 + (1 - tx) * ty * v[j0 + 1, i0] + tx * ty * v[j0 + 1, i0 + 1])  # fmt: skip
        if not np.all(np.isfinite(value)):
            return None
        a, b, c, d, e = (float(v) for v in value)
        return a, b, c, d, e


def _paste(target: NDArray[np.float64], source: NDArray[np.float64], x0: int, y0: int) -> None:
    ty, tx = target.shape
    sy, sx = source.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + sy, ty), min(x0 + sx, tx)
    if ys < ye and xs < xe:
        target[ys:ye, xs:xe] = source[ys - y0 : ye - y0, xs - x0 : xe - x0]


_Moments = tuple[float, float, float, float, float]
# Row, stamp, weights, PSF kernel, centre x, y (stamp px), stamp origin x, y, moments, PSF moments.
_FitInput = tuple[
    int,
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    float,
    float,
    int,
    int,
    _Moments | None,
    _Moments | None,
]


def _fit_batch(
    batch: list[_FitInput],
    out: dict[str, NDArray[Any]],
    flags: NDArray[np.int64],
    *,
    fit_models: bool,
) -> None:
    """PSF fluxes, then galaxy models, of a batch of sources; fill ``out`` and ``flags``."""
    rows = np.array([item[0] for item in batch])
    stamps = np.array([item[1] for item in batch])
    weights = np.array([item[2] for item in batch])
    kernels = np.array([item[3] for item in batch])
    origin = np.array([(item[6], item[7]) for item in batch], dtype=float)
    centres = np.array([(item[4], item[5]) for item in batch])
    flux, err, x, y, spread, spread_err, ok = _psf_fluxes(stamps, weights, kernels, centres)
    flags[rows[~ok]] |= int(SourceFlag.PSF_FLUX_FAILED)
    good = rows[ok]
    out["flux_psf"][good], out["flux_psf_err"][good] = flux[ok], err[ok]
    out["x_psf"][good], out["y_psf"][good] = x[ok] + origin[ok, 0], y[ok] + origin[ok, 1]
    out["spread_model"][good], out["spread_model_err"][good] = spread[ok], spread_err[ok]
    if not fit_models:
        return
    # Centred where the PSF fit put the source, so that a star's exponential fit at
    # zero size is exactly its PSF fit.
    centres = np.where(ok[:, None], np.column_stack([x, y]), centres)
    size = stamps.shape[1]
    middle = np.full(len(batch), float(size // 2))
    results = _model_fluxes(
        stamps,
        weights,
        _place_all(kernels, size, middle, middle),
        centres,
        [item[8] for item in batch],
        [item[9] for item in batch],
    )
    for k, model in zip(rows, results, strict=True):
        if model is None:
            flags[k] |= int(SourceFlag.MODEL_FLUX_FAILED)
        else:
            out["flux_model"][k], out["flux_model_err"][k], out["frac_dev"][k] = model[:3]
            out["flux_exp"][k] = model[3]


def _hsm_moments(
    stamp: NDArray[np.float64], bad: NDArray[np.bool_] | None
) -> tuple[float, float, float, float, float] | None:
    image = galsim.ImageD(np.ascontiguousarray(stamp), scale=1.0)
    badpix = None if bad is None else galsim.ImageI(bad.astype(np.int32), scale=1.0)
    try:
        result = galsim.hsm.FindAdaptiveMom(image, badpix=badpix, strict=False, guess_sig=2.0)
    except galsim.GalSimError:  # e.g. every pixel masked
        return None
    if result.moments_status != 0 or not result.moments_sigma > 0:
        return None
    sigma2 = result.moments_sigma**2
    e1, e2 = result.observed_shape.e1, result.observed_shape.e2
    norm = sigma2 / np.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-12))
    return (
        result.moments_centroid.x - 1.0,
        result.moments_centroid.y - 1.0,
        norm * (1.0 + e1),
        norm * (1.0 - e1),
        norm * e2,
    )


def _kron(
    data: NDArray[np.float64],
    var: NDArray[np.float64],
    bad: NDArray[np.bool_],
    cx: float,
    cy: float,
    shape: tuple[float, float, float, float, float] | None,
    config: MeasurementConfig,
    out: dict[str, NDArray[Any]],
    k: int,
) -> int:
    if shape is None:
        return int(SourceFlag.KRON_FAILED)
    _, _, ixx, iyy, ixy = shape
    mean, diff = 0.5 * (ixx + iyy), np.hypot(0.5 * (ixx - iyy), ixy)
    a = np.array([np.sqrt(mean + diff)])
    b = np.array([np.sqrt(max(mean - diff, 1e-6))])
    theta = np.array([0.5 * np.arctan2(2.0 * ixy, ixx - iyy)])
    x, y = np.array([cx]), np.array([cy])
    kr, kflag = sep.kron_radius(data, x, y, a, b, theta, 6.0, mask=bad)
    if not np.isfinite(kr[0]) or kr[0] <= 0 or kflag[0]:
        return int(SourceFlag.KRON_FAILED)
    radius = config.kron_factor * kr[0]
    if radius * np.sqrt(a[0] * b[0]) < config.kron_min_radius_px:
        flux, err, _ = sep.sum_circle(
            data, x, y, config.kron_min_radius_px, var=var, mask=bad, subpix=1
        )
    else:
        flux, err, _ = sep.sum_ellipse(data, x, y, a, b, theta, radius, var=var, mask=bad, subpix=1)
    out["kron_radius"][k] = kr[0]
    out["flux_kron"][k], out["flux_kron_err"][k] = flux[0], err[0]
    return 0


def _place(kernel: NDArray[np.float64], size: int, cx: float, cy: float) -> NDArray[np.float64]:
    """Put the centred ``kernel`` on a ``size x size`` stamp, centred at ``(cx, cy)``."""
    return _place_all(kernel[None], size, np.array([cx]), np.array([cy]))[0]


def _place_all(
    kernels: NDArray[np.float64],
    size: int,
    cx: NDArray[np.float64],
    cy: NDArray[np.float64],
    transform: NDArray[np.complex128] | None = None,
) -> NDArray[np.float64]:
    """Put centred kernels on ``size x size`` stamps, kernel ``i`` centred at ``(cx[i], cy[i])``.

    The sub-pixel part of each shift is a Fourier phase ramp on the kernel padded
    by a few pixels (``transform`` is that padded kernel's ``rfft2``, when already
    known); whole-pixel positions need no transform.
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    n, ksize = kernels.shape[0], kernels.shape[1]
    half = ksize // 2
    pad = (good_size(ksize + 6) - ksize) // 2
    ix, iy = np.floor(cx + 0.5).astype(np.int64), np.floor(cy + 0.5).astype(np.int64)
    dx, dy = cx - ix, cy - iy
    shifted = kernels.copy()
    moved = (dx != 0.0) | (dy != 0.0)
    if moved.any():
        if transform is None:
            transform = _padded_transform(kernels, pad)
        ky, kx = _frequencies(ksize + 2 * pad)
        phase = np.exp(-1j * (kx * dx[moved, None, None] + ky * dy[moved, None, None]))
        whole = np.fft.irfft2(transform[moved] * phase, s=(ksize + 2 * pad,) * 2)
        shifted[moved] = whole[:, pad:-pad, pad:-pad]
    out = np.zeros((n, size, size))
    for i in range(n):
        _paste(out[i], shifted[i], int(ix[i]) - half, int(iy[i]) - half)
    return out


def _padded_transform(kernels: NDArray[np.float64], pad: int) -> NDArray[np.complex128]:
    return np.fft.rfft2(np.pad(kernels, ((0, 0), (pad, pad), (pad, pad))))


@functools.lru_cache(maxsize=64)
def _frequencies(size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Angular wavenumbers ``(ky, kx)`` (rad/px) of a ``size x size`` real transform."""
    ky = np.fft.fftfreq(size)[:, None] * 2 * np.pi
    kx = np.fft.rfftfreq(size)[None, :] * 2 * np.pi
    return np.asarray(ky, dtype=np.float64), np.asarray(kx, dtype=np.float64)


_Floats = NDArray[np.float64]


def _psf_fluxes(
    stamps: NDArray[np.float64],
    weights: NDArray[np.float64],
    kernels: NDArray[np.float64],
    centres: NDArray[np.float64],
) -> tuple[_Floats, _Floats, _Floats, _Floats, _Floats, _Floats, NDArray[np.bool_]]:
    """PSF fluxes of a batch of sources: position refined by Gauss-Newton, then a linear fit.

    Parameters
    ----------
    stamps, weights : numpy.ndarray, shape (n, size, size)
        Each source's image (ADU) and inverse-variance weights (0 on bad pixels).
    kernels : numpy.ndarray, shape (n, k, k)
        The PSF at each source, unit sum, centred on the middle pixel.
    centres : numpy.ndarray, shape (n, 2)
        Starting positions ``(x, y)`` in stamp pixels.

    Returns
    -------
    tuple of numpy.ndarray
        ``flux, flux_err`` (ADU), ``x, y`` (stamp pixels), ``spread, spread_err``
        (SExtractor's SPREAD_MODEL) and ``ok`` (False where the fit failed).
    """
    n, size = stamps.shape[0], stamps.shape[1]
    transform = _padded_transform(
        kernels, (good_size(kernels.shape[1] + 6) - kernels.shape[1]) // 2
    )
    cx, cy = centres[:, 0].copy(), centres[:, 1].copy()
    active = np.arange(n)
    for _ in range(_PSF_FIT_ITERATIONS):
        if len(active) == 0:
            break
        model = _place_all(kernels[active], size, cx[active], cy[active], transform[active])
        support = model != 0
        gy, gx = _gradient(model)
        # The design rows are the model's support pixels: zero weight elsewhere.
        design = np.stack([model, -gx, -gy], axis=-1)
        w = np.where(support, weights[active], 0.0)
        # Batched matrix products (three-operand einsums loop slowly).
        design = design.reshape(len(active), -1, 3)
        weighted = np.swapaxes(design * w.reshape(len(active), -1, 1), 1, 2)
        normal = weighted @ design
        rhs = (weighted @ stamps[active].reshape(len(active), -1, 1))[..., 0]
        solvable = np.all(np.isfinite(normal), axis=(1, 2))
        solvable[solvable] = _condition(normal[solvable]) <= 1e12
        sol = np.zeros((len(active), 3))
        if solvable.any():
            sol[solvable] = np.linalg.solve(normal[solvable], rhs[solvable][..., None])[..., 0]
        step = solvable & (sol[:, 0] > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx, dy = sol[:, 1] / sol[:, 0], sol[:, 2] / sol[:, 0]
        step &= np.hypot(dx, dy) <= 1.0
        # A source whose step fails keeps its position and stops iterating.
        cx[active[step]] += dx[step]
        cy[active[step]] += dy[step]
        active = active[step]
    model = _place_all(kernels, size, cx, cy, transform)
    weighted_model = weights * model
    den = np.einsum("nyx,nyx->n", weighted_model, model)
    ok = den > 0
    safe_den = np.where(ok, den, 1.0)
    flux = np.einsum("nyx,nyx->n", weighted_model, stamps) / safe_den
    # SExtractor's SPREAD_MODEL: a PSF fit versus a fit of the PSF convolved with
    # an exponential of scale FWHM/16; 0 for point sources, > 0 for resolved ones.
    ky, kx = _frequencies(size)
    scale = np.array([_spread_scale(kernel) for kernel in kernels])[:, None, None]
    broad = np.fft.irfft2(
        np.fft.rfft2(model) * (1.0 + (kx * kx + ky * ky) * scale**2) ** -1.5, s=(size, size)
    )
    # spread = G'Wx / P'Wx - G'WP / P'WP, its error propagated from the variance.
    u, v = weights * broad, weighted_model
    numerator = np.einsum("nyx,nyx->n", u, stamps)
    denominator = np.einsum("nyx,nyx->n", v, stamps)
    positive = denominator > 0
    safe = np.where(positive, denominator, 1.0)
    spread = np.where(
        positive, numerator / safe - np.einsum("nyx,nyx->n", u, model) / safe_den, np.nan
    )
    gradient = (u - (numerator / safe)[:, None, None] * v) / safe[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread_var = np.sum(np.where(weights > 0, gradient**2 / weights, 0.0), axis=(1, 2))
    spread_err = np.where(positive, np.sqrt(spread_var), np.nan)
    return flux, 1.0 / np.sqrt(safe_den), cx, cy, spread, spread_err, ok


def _gradient(image: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``numpy.gradient`` over the last two axes (central, one-sided at the edges), lighter."""
    gy = np.empty_like(image)
    gy[..., 1:-1, :] = (image[..., 2:, :] - image[..., :-2, :]) / 2.0
    gy[..., 0, :] = image[..., 1, :] - image[..., 0, :]
    gy[..., -1, :] = image[..., -1, :] - image[..., -2, :]
    gx = np.empty_like(image)
    gx[..., 1:-1] = (image[..., 2:] - image[..., :-2]) / 2.0
    gx[..., 0] = image[..., 1] - image[..., 0]
    gx[..., -1] = image[..., -1] - image[..., -2]
    return gy, gx


def _condition(matrices: NDArray[np.float64]) -> NDArray[np.float64]:
    """2-norm condition numbers of a stack of matrices (``numpy.linalg.cond``)."""
    singular = np.linalg.svd(matrices, compute_uv=False)
    with np.errstate(divide="ignore"):
        return np.asarray(singular[..., 0] / singular[..., -1])


def _spread_scale(kernel: NDArray[np.float64]) -> float:
    """Scale radius (px) of the exponential of SPREAD_MODEL: FWHM / 16 of the PSF."""
    c = kernel.shape[0] // 2
    peak = kernel[c, c]
    # FWHM from the area above half maximum (exact for a round Gaussian-like core).
    area = float(np.sum(kernel >= 0.5 * peak))
    return float(2.0 * np.sqrt(area / np.pi) / 16.0)


def _model_fluxes(
    stamps: NDArray[np.float64],
    weights: NDArray[np.float64],
    psf_stamps: NDArray[np.float64],
    centres: NDArray[np.float64],
    shapes: list[tuple[float, float, float, float, float] | None],
    psf_shapes: list[tuple[float, float, float, float, float] | None],
) -> list[tuple[float, float, float, float] | None]:
    """Galaxy-model fluxes of a batch of sources with stamps of one size.

    Parameters
    ----------
    stamps, weights : numpy.ndarray, shape (n, size, size)
        Each source's image (ADU) and inverse-variance weights (0 on bad pixels).
    psf_stamps : numpy.ndarray, shape (n, size, size)
        Each source's PSF, unit sum, centred on the stamp's middle pixel.
    centres : numpy.ndarray, shape (n, 2)
        Model centres ``(x, y)`` in stamp pixels.
    shapes, psf_shapes : list
        Adaptive moments of each source and of its PSF (or None).

    Returns
    -------
    list
        Per source ``(flux, flux_err, frac_dev, flux_exp)`` (ADU), or None when the
        fit fails. Batching turns a few dozen small transforms per source into a
        few large ones.
    """
    n, size = stamps.shape[0], stamps.shape[1]
    # The PSF sits at the stamp centre c; the phase ramp moves it (and the profile,
    # centred on the origin) to (cx, cy) directly, with no fftshift of the results.
    psf_ft = np.fft.rfft2(psf_stamps)
    # Deconvolved shape (px²); unresolved sources get a small round guess.
    c = np.tile(np.eye(2) * 0.25, (n, 1, 1))
    for i, (shape, psf_shape) in enumerate(zip(shapes, psf_shapes, strict=True)):
        if shape is not None and psf_shape is not None:
            c[i] = [[shape[2] - psf_shape[2], shape[4] - psf_shape[4]],
                    [shape[4] - psf_shape[4], shape[3] - psf_shape[3]]]  # fmt: skip
    evals, evecs = np.linalg.eigh(c)
    evals = np.maximum(evals, 0.05 * np.maximum(evals.max(axis=1), 0.25)[:, None])
    c = (evecs * evals[:, None, :]) @ np.swapaxes(evecs, 1, 2)
    det = np.linalg.det(c)
    unit = c / np.sqrt(det)[:, None, None]  # shape matrices of determinant 1
    hlr0 = 1.2 * det**0.25
    ky, kx = _frequencies(size)
    u00, u01, u11 = (unit[:, i, j, None, None] for i, j in ((0, 0), (0, 1), (1, 1)))
    kk = np.sqrt(u00 * kx * kx + 2 * u01 * kx * ky + u11 * ky * ky)
    offset = centres - size // 2
    phase = np.exp(-1j * (kx * offset[:, 0, None, None] + ky * offset[:, 1, None, None]))
    shifted_psf = (psf_ft * phase)[:, None]
    q = kk[:, None] * (hlr0[:, None] * _SIZE_FACTORS)[:, :, None, None]
    rows = np.arange(n)
    best: dict[str, tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]] = {}
    for kind in ("exp", "dev"):
        # All sources and sizes at once: one batched inverse FFT.
        models = np.fft.irfft2(_profile_ft(kind, q) * shifted_psf, s=(size, size))
        # Batched matrix-vector products over the pixels (three-operand einsums loop slowly).
        flat = models.reshape(n, len(_SIZE_FACTORS), -1)
        den = ((flat * flat) @ weights.reshape(n, -1, 1))[..., 0]
        num = (flat @ (weights * stamps).reshape(n, -1, 1))[..., 0]
        valid = den > 0
        amp = np.where(valid, num / np.where(valid, den, 1.0), 0.0)
        # chi2 = sum w d² - num²/den; the first term is common to all sizes.
        gain = np.where(valid, amp * num, -np.inf)
        j = np.argmax(gain, axis=1)
        best[kind] = (np.asarray(valid.any(axis=1)), models[rows, j], amp[rows, j])
    out: list[tuple[float, float, float, float] | None] = []
    for i in range(n):
        w = weights[i].ravel()
        if not best["exp"][0][i] or not best["dev"][0][i] or not np.any(w > 0):
            out.append(None)
            continue
        a = np.stack([best["exp"][1][i].ravel(), best["dev"][1][i].ravel()], axis=1)
        sw = np.sqrt(w)
        coeffs, _ = optimize.nnls(a * sw[:, None], stamps[i].ravel() * sw)
        if not np.any(coeffs > 0):
            out.append(None)
            continue
        combined = a @ coeffs
        den_i = float(np.sum(w * combined * combined))
        flux = float(coeffs.sum())
        frac_dev = float(coeffs[1] / coeffs.sum())
        # Each template has unit total flux: the combination is flux * t, t of unit flux.
        out.append((flux, flux / np.sqrt(den_i), frac_dev, float(best["exp"][2][i])))
    return out
