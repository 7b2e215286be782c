"""Measurement of every source: centroid, shapes, aperture, Kron, PSF and galaxy-model fluxes.

Each source is measured on its own stamp: a deblended child sees the image with
its siblings' heavy footprints removed (inside the parent footprint its pixels
are ``weight * image``), isolated sources and parents see the image.

* centroid and adaptive moments: GalSim HSM (``FindAdaptiveMom``), giving
  ``x, y`` and ``ixx, iyy, ixy`` (px²) of the elliptical Gaussian weight;
* aperture fluxes (sep ``sum_circle``) at ``aperture_radii_px``;
* Kron flux, as SExtractor's FLUX_AUTO: the Kron radius ``kron_radius`` is the
  light-weighted mean elliptical radius within the ellipse of semi-axes
  ``6 a, 6 b`` (sep ``kron_radius``), where ``a, b`` are the 1-sigma semi-axes of
  the adaptive-moment ellipse, so it is a pure number in units of ``a`` and
  ``b`` (about 1.25 for a Gaussian star), not pixels. The flux is summed in
  the ellipse of semi-axes ``2.5 kron_radius a, 2.5 kron_radius b``, or in a
  circle of 3.5 px when that ellipse's mean radius is smaller;
* PSF flux: weighted linear least squares of the PSF model drawn at the
  source, after one Gauss-Newton refinement of the position (``x_psf, y_psf``);
* model flux (CModel-like): exponential and de Vaucouleurs profiles of the
  deconvolved adaptive-moment shape, convolved with the PSF in Fourier space,
  their size scanned on a grid; the best exponential and de Vaucouleurs
  templates are then combined with non-negative amplitudes (``frac_dev``);
* extendedness: 1 when ``flux_psf < 0.985 flux_exp`` (LSST's classifier, with the
  exponential-model flux ``flux_exp``).

The batched PSF-flux and galaxy-model fits are in :mod:`._model_fits`; HSM moments
and the PSF's moments over the image (sampled where it is defined) in :mod:`._moments`;
the compiled cut-out of each source's stamp and good-pixel planes in :mod:`._stamps`.
Errors come from the variance plane. Failures become :class:`SourceFlag` bits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sep
from astropy import units as u
from astropy.table import Column, Table
from numpy.typing import NDArray

from ._model_fits import _fit_batch, _FitSource
from ._moments import _AdaptiveMoments, _psf_stamp, _PsfMomentGrid
from ._stamps import _source_planes, good_size
from .deblend import Deblended
from .exposure import Exposure
from .flags import SourceFlag
from .psf_model import PsfModel

__all__ = ["MeasurementConfig", "Measurements", "measure_sources"]

log = logging.getLogger(__name__)

_EXTENDEDNESS_RATIO = 0.985
# Sources per batch of PSF and galaxy-model fits (memory ~ 2 x 9 x batch stamps).
_FIT_BATCH = 32
# Sources measured before their PSF stamps are drawn and they are queued for the fits:
# the per-source measurements then run long stretches without the fits evicting them
# from the caches (32 -> 128 saves 3% of their time), for ~4 MB of stamps held (45 px).
_MEASURED_CHUNK = 128
# Flag bits as plain integers: IntFlag arithmetic costs microseconds per source.
_BLENDED = int(SourceFlag.BLENDED)
_PARENT = int(SourceFlag.PARENT)
_DEBLEND_SKIPPED = int(SourceFlag.DEBLEND_SKIPPED)
_SATURATED = int(SourceFlag.SATURATED)
_SATURATED_CENTER = int(SourceFlag.SATURATED_CENTER)
_CR_CENTER = int(SourceFlag.CR_CENTER)
_INTERPOLATED_CENTER = int(SourceFlag.INTERPOLATED_CENTER)
_BAD_CENTER = int(SourceFlag.BAD_CENTER)
_EDGE = int(SourceFlag.EDGE)
_BAD_MOMENTS = int(SourceFlag.BAD_MOMENTS)
_BAD_CENTROID = int(SourceFlag.BAD_CENTROID)
_APERTURE_TRUNCATED = int(SourceFlag.APERTURE_TRUNCATED)
_PSF_FLUX_FAILED = int(SourceFlag.PSF_FLUX_FAILED)
_MODEL_FLUX_FAILED = int(SourceFlag.MODEL_FLUX_FAILED)
_KRON_FAILED = int(SourceFlag.KRON_FAILED)


@dataclass(frozen=True, kw_only=True)
class MeasurementConfig:
    """Settings of :func:`measure_sources`.

    Attributes
    ----------
    aperture_radii_px : tuple of float
        Radii of the circular apertures (pixels); columns ``flux_aper_<r>``.
    kron_factor : float
        The Kron flux is summed in the ellipse of semi-axes
        ``kron_factor * kron_radius * (a, b)``, ``a, b`` the adaptive-moment
        1-sigma semi-axes (pixels) and ``kron_radius`` dimensionless.
    kron_min_radius_px : float
        Radius (pixels) of the circle that replaces the Kron ellipse when the
        ellipse's geometric-mean radius ``kron_factor * kron_radius * sqrt(a b)``
        is smaller.
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
        fluxes are NaN and flagged. It is only evaluated where there is data
        (at the sources, and at grid points where it can be): a model that
        raises ``ValueError`` or returns a non-finite stamp somewhere (a
        CoaddPsf at NO_DATA pixels) is fine; a source where it cannot be
        evaluated gets ``PSF_FLUX_FAILED`` and ``MODEL_FLUX_FAILED``.

    Returns
    -------
    Measurements
        Catalog columns: ``id, parent, n_children, x, y`` (HSM centroid, px),
        ``x_psf, y_psf``, ``ra, dec`` (deg, NaN without a WCS),
        ``peak_significance``, ``flux_psf, flux_psf_err``, ``flux_aper_<r>`` and
        ``_err``, ``kron_radius`` (dimensionless: in units of the adaptive-moment
        ellipse's semi-axes ``a, b``, as SExtractor's KRON_RADIUS; see the
        module notes), ``flux_kron, flux_kron_err``,
        ``flux_model, flux_model_err, frac_dev``, ``flux_exp``, ``ixx, iyy, ixy`` and
        ``psf_ixx, psf_iyy, psf_ixy`` (px²), ``extendedness``, ``flags``.
        Fluxes are in ADU.

    Raises
    ------
    ToolkitError
        If there are sources and a PSF, but the PSF cannot be evaluated at any
        of them nor anywhere on a grid over the image.

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
    planes_map = exposure.mask_planes
    bits = {
        name: planes_map.bitmask(name) if name in planes_map else 0
        for name in ("SAT", "CR", "INTRP", "BAD", "NO_DATA")
    }
    sat_bit, cr_bit, intrp_bit = bits["SAT"], bits["CR"], bits["INTRP"]
    bad_bit, no_data_bit = bits["BAD"], bits["NO_DATA"]
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
    # PSF moments on a grid, sampled only where the PSF can be evaluated (a coadd's
    # PSF cannot be at its NO_DATA corners); raises if it cannot be anywhere.
    psf_grid = (
        _PsfMomentGrid(psf, exposure.shape, src["peak_x"], src["peak_y"])
        if psf is not None and n
        else None
    )
    index_of = {int(i): k for k, i in enumerate(src["id"])}
    # PSF and galaxy-model fits wait for a batch of sources with stamps of one size.
    pending: dict[tuple[int, int], list[_FitSource]] = {}
    # Plain lists: indexing a Table column per source costs more than the maths.
    peak_xs, peak_ys = src["peak_x"].tolist(), src["peak_y"].tolist()
    if "template_x" in src.colnames:
        # A child's stamp is centred where the deblender centred its template: a peak
        # found on a brighter source's slope can sit 2 px from the source, and the
        # centroid may not move that far from the stamp centre.
        peak_xs = np.floor(np.asarray(src["template_x"], dtype=float) + 0.5).astype(int).tolist()
        peak_ys = np.floor(np.asarray(src["template_y"], dtype=float) + 0.5).astype(int).tolist()
    parents, n_children = src["parent"].tolist(), src["n_children"].tolist()
    skipped = src["deblend_skipped"].tolist()
    moments = _AdaptiveMoments()
    # Sources measured but for their PSF stamp, which queues them for the fits.
    measured: list[_FitSource] = []
    fixed_psf_size = type(psf) is PsfModel  # a subclass might draw stamps of other sizes
    # Per stamp size: GalSim's stamp and mask buffers and sep's data and variance,
    # refilled for each source, and a mask without bad pixels.
    stamp_buffers: dict[int, tuple[NDArray[Any], ...]] = {}
    radii_row = np.array(radii)[None, :]
    min_half, max_half = radii[-1] + 3, config.max_stamp_half_px
    xs, ys, ixxs, iyys, ixys = out["x"], out["y"], out["ixx"], out["iyy"], out["ixy"]
    for k in range(n):
        f = 0
        px0, py0 = int(peak_xs[k]), int(peak_ys[k])
        heavy = sources.heavy_footprints[k]
        parent = int(parents[k])
        if parent or n_children[k]:
            f |= _BLENDED
        if n_children[k]:
            f |= _PARENT
        if skipped[k]:
            f |= _DEBLEND_SKIPPED | _BLENDED
        parent_fp = sources.heavy_footprints[index_of[parent]] if parent else heavy
        fy, fx = heavy.weights.shape
        # np.clip's min(max(...)) on Python numbers: the same integer for less.
        half = int(min(max(max(fy, fx) // 2 + 6, min_half), max_half))
        if psf_half is not None:
            # The stamp holds the PSF kernel centred on it. A centroid a pixel or two
            # off centre moves the kernel's outermost wing column off the stamp: the
            # PSF fit leaves it out (its other pixels stay exact), and in the model
            # fits' circular convolution it wraps around, at ~2e-4 of the peak (a
            # Kolmogorov profile 4 FWHM out).
            half = max(half, psf_half)
        half = good_size(2 * half + 1) // 2  # FFT-friendly stamp size
        # Stamp, good-pixel planes and the mask tests, in one compiled pass; a child's
        # own image has its siblings' shares removed inside the parent footprint.
        # Bad pixels (left out of every sum and fit): off the image, non-finite image,
        # variance not finite and > 0, or one of the bad mask planes.
        size = 2 * half + 1
        buffers = stamp_buffers.get(size)
        if buffers is None:
            buffers = stamp_buffers[size] = (
                *moments.buffers((size, size)),
                np.empty((size, size), dtype=np.float32),
                np.empty((size, size), dtype=np.float32),
                np.zeros((size, size), dtype=bool),
            )
        hsm_stamp, keep, data, var_c, no_bad = buffers
        stamp, w, n_bad, near, footprint_sat = _source_planes(
            image, variance, exposure.mask, bad_bits, px0, py0, half,
            heavy.weights, heavy.x0, heavy.y0, parent_fp.weights, parent_fp.x0, parent_fp.y0,
            bool(parent), sat_bit, no_data_bit, hsm_stamp, keep, data, var_c,
        )  # fmt: skip
        if footprint_sat:
            f |= _SATURATED
        ox, oy = px0 - half, py0 - half
        if near & sat_bit:
            f |= _SATURATED_CENTER
        if near & cr_bit:
            f |= _CR_CENTER
        if near & intrp_bit:
            f |= _INTERPOLATED_CENTER
        if near & (bad_bit | no_data_bit):
            f |= _BAD_CENTER
        if ox < 0 or oy < 0 or px0 + half >= nx or py0 + half >= ny:
            f |= _EDGE
        # Adaptive moments and centroid.
        shape = moments.measure((size, size))
        cx, cy = float(half), float(half)
        if shape is None:
            f |= _BAD_MOMENTS
        else:
            sx, sy, ixx, iyy, ixy = shape
            ixxs[k], iyys[k], ixys[k] = ixx, iyy, ixy
            if np.hypot(sx - half, sy - half) > 2.0:
                f |= _BAD_CENTROID
            else:
                cx, cy = sx, sy
        gx, gy = cx + ox, cy + oy
        xs[k], ys[k] = gx, gy
        # Apertures (sep needs C-contiguous native arrays, as these are). Without a bad
        # pixel the mask would change nothing (sep scales a masked sum by area /
        # unmasked area, then exactly 1) but cost a quarter of the time.
        x_arr, y_arr = np.array([cx]), np.array([cy])
        bad = keep == 0 if n_bad else None
        fl, fe, ff = sep.sum_circle(
            data, x_arr, y_arr, radii_row, var=var_c, mask=bad, subpix=5
        )  # fmt: skip
        aper[k], aper_err[k] = fl[0], fe[0]
        edge, r_max = 2 * half, radii[-1]
        off_stamp = r_max > cx or r_max > cy or r_max > edge - cx or r_max > edge - cy
        # Any sep flag set (on a list: ndarray.any costs more than the test).
        if off_stamp or any(ff[0].tolist()):
            f |= _APERTURE_TRUNCATED
        # Kron.
        f |= _kron(
            data, var_c, bad, no_bad if bad is None else bad, x_arr, y_arr, shape, config, out, k
        )
        # PSF flux and the PSF's moments. The PSF stamps of a PsfModel (all of one
        # size) are drawn for a chunk of sources at once, with its code and data in
        # cache; other PSFs', and all until the first stamp sets psf_half, are drawn
        # here, as the next source's stamp size may depend on this one's.
        if psf_grid is None:
            flags[k] = f | _PSF_FLUX_FAILED | _MODEL_FLUX_FAILED
            continue
        kernel = None
        if psf_half is None or not fixed_psf_size:
            kernel = _psf_kernel(psf, gx, gy, px0, py0)
            if kernel is None:
                flags[k] = f | _PSF_FLUX_FAILED | _MODEL_FLUX_FAILED
                continue
            psf_half = kernel.shape[0] // 2
        flags[k] = f
        measured.append(
            _FitSource(
                row=k, stamp=stamp, weights=w, centre_x=cx, centre_y=cy, origin_x=ox,
                origin_y=oy, moments=shape, image_x=gx, image_y=gy, peak_x=px0, peak_y=py0,
                kernel=kernel,
            )
        )  # fmt: skip
        if len(measured) >= _MEASURED_CHUNK:
            _queue_for_fits(measured, psf, psf_grid, pending, out, flags, config)
            measured = []
    if psf_grid is not None:  # sources are only measured for the fits with a PSF
        _queue_for_fits(measured, psf, psf_grid, pending, out, flags, config)
        for batch in pending.values():
            _fit_queued(batch, psf_grid, out, flags, config)
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
    # A multiple of the adaptive ellipse's semi-axes, not a length: no unit.
    kron_doc = "Kron radius in units of the adaptive-moment ellipse's 1-sigma semi-axes a, b"
    catalog["kron_radius"] = Column(out["kron_radius"], description=kron_doc)
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


def _psf_kernel(
    psf: Any, x: float, y: float, x_peak: int, y_peak: int
) -> NDArray[np.float64] | None:
    """Return the PSF stamp at ``(x, y)``, else at the stamp centre ``(x_peak, y_peak)``.

    The centroid may sit on a NO_DATA pixel next to the data, where a coadd's PSF
    is not defined; the stamp's centre (the peak, or a deblended child's template
    centre) is the fallback. None where the PSF is defined at neither.
    """
    kernel = _psf_stamp(psf, x, y)
    if kernel is None:
        kernel = _psf_stamp(psf, float(x_peak), float(y_peak))
    return kernel


def _queue_for_fits(
    measured: list[_FitSource],
    psf: Any,
    psf_grid: _PsfMomentGrid,
    pending: dict[tuple[int, int], list[_FitSource]],
    out: dict[str, NDArray[Any]],
    flags: NDArray[np.int64],
    config: MeasurementConfig,
) -> None:
    """Draw the missing PSF stamps of ``measured`` sources and queue them, in order.

    A source whose PSF cannot be drawn gets ``PSF_FLUX_FAILED | MODEL_FLUX_FAILED``.
    Batches of stamps of one size are fitted as soon as they are full.
    """
    for source in measured:
        if source.kernel is None:
            source.kernel = _psf_kernel(
                psf, source.image_x, source.image_y, source.peak_x, source.peak_y
            )
        if source.kernel is None:
            flags[source.row] |= _PSF_FLUX_FAILED | _MODEL_FLUX_FAILED
            continue
        key = (source.stamp.shape[0], source.kernel.shape[0])
        batch = pending.setdefault(key, [])
        batch.append(source)
        if len(batch) >= _FIT_BATCH:
            _fit_queued(pending.pop(key), psf_grid, out, flags, config)


def _fit_queued(
    batch: list[_FitSource],
    psf_grid: _PsfMomentGrid,
    out: dict[str, NDArray[Any]],
    flags: NDArray[np.int64],
    config: MeasurementConfig,
) -> None:
    """Interpolate the PSF moments at a batch of queued sources, then fit them (``_fit_batch``)."""
    moments = psf_grid.at(
        np.array([source.image_x for source in batch]),
        np.array([source.image_y for source in batch]),
    )
    for source, pm in zip(batch, moments, strict=True):
        source.psf_moments = pm
        if pm is not None:
            k = source.row
            out["psf_ixx"][k], out["psf_iyy"][k], out["psf_ixy"][k] = pm[2:]
    _fit_batch(batch, out, flags, fit_models=config.fit_models)


def _kron(
    data: NDArray[np.float32],
    var: NDArray[np.float32],
    bad: NDArray[np.bool_] | None,
    ellipse_mask: NDArray[np.bool_],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    shape: tuple[float, float, float, float, float] | None,
    config: MeasurementConfig,
    out: dict[str, NDArray[Any]],
    k: int,
) -> int:
    """Measure the Kron radius (units of ``a, b``) and Kron flux into ``out[...][k]``.

    ``x, y`` are the centre (stamp pixels) as one-element arrays. ``bad`` is the
    bad-pixel mask, None when no pixel is bad: the Kron radius and a circular sum
    then need none. ``ellipse_mask`` is ``bad`` or all False: sep scales a masked
    sum by area / unmasked area, NaN for an ellipse too thin to cover a pixel
    centre. Returns the flag bits to set (``KRON_FAILED`` or 0).
    """
    if shape is None:
        return _KRON_FAILED
    _, _, ixx, iyy, ixy = shape
    # ixx + iyy > 0 for HSM moments: math.sqrt (IEEE, as np.sqrt) never sees a
    # negative number.
    mean, diff = 0.5 * (ixx + iyy), np.hypot(0.5 * (ixx - iyy), ixy)
    a = np.array([math.sqrt(mean + diff)])
    b = np.array([math.sqrt(max(mean - diff, 1e-6))])
    theta = np.array([0.5 * np.arctan2(2.0 * ixy, ixx - iyy)])
    kr, kflag = sep.kron_radius(data, x, y, a, b, theta, 6.0, mask=bad)
    kron_radius = float(kr[0])
    if not math.isfinite(kron_radius) or kron_radius <= 0 or kflag[0]:
        return _KRON_FAILED
    radius = config.kron_factor * kron_radius
    if radius * math.sqrt(a[0] * b[0]) < config.kron_min_radius_px:
        flux, err, _ = sep.sum_circle(
            data, x, y, config.kron_min_radius_px, var=var, mask=bad, subpix=1
        )
    else:
        flux, err, _ = sep.sum_ellipse(
            data, x, y, a, b, theta, radius, var=var, mask=ellipse_mask, subpix=1
        )
    out["kron_radius"][k] = kron_radius
    out["flux_kron"][k], out["flux_kron_err"][k] = flux[0], err[0]
    return 0
