"""PSF modelling in the spirit of PSFEx: a pixel-basis model whose pixels vary over the detector.

Model (:mod:`.psf_model`). The PSF at detector position ``(x, y)`` is a stamp of
``N x N`` pixel values ``P_p(x, y) = sum_k c_pk t_k(u, v)``, where ``t_k`` are the
monomials ``u^i v^j`` (``i + j <= spatial_order``) of the scaled position.

Fit. PSF stars are chosen automatically: isolated (undeblended) sources with
peak S/N above ``min_snr``, no saturated, cosmic-ray, interpolated, bad or edge
pixel in their stamp, lying on the stellar locus of the size-flux diagram
(the densest narrow band of adaptive-moment size ``T``). A fraction
``reserve_fraction`` of them is set aside for validation. Each star is
re-centred on its adaptive-moment centroid by a Fourier phase shift (sinc
interpolation, exact for a well-sampled PSF), divided by its flux, and every
model pixel's polynomial is fitted by weighted least squares to all stars at
once (weights ``flux² / variance``). Fluxes are re-fitted with the model and
outliers are rejected: stars whose reduced chi² is high, and stars whose shape
disagrees with the model's beyond their noise (:func:`_shape_residuals`; an
unresolved companion star does this without raising the chi² of a whole
stamp). This repeats ``n_iterations`` times. An undersampled PSF (FWHM under
2.5 px) cannot be re-centred so: it is modelled on a finer grid, each star's
pixels where they fall, and band-limited (:mod:`._psf_fine`).

Validation. At the reserved stars, adaptive moments (GalSim HSM) of the star
and of the model drawn at the same sub-pixel position give ``dT/T`` and
``de1, de2``; rho statistics 1-5 (:mod:`.rho_statistics`) are their correlation
functions.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from ._moments import _AdaptiveMoments
from ._psf_fine import _fine_samples, _fit_fine, _shifted, _star_models
from ._stamps import boxes, fft_shift, inside_fraction, inverse_variance
from .deblend import Deblended
from .exposure import Exposure
from .psf_model import PsfModel, PsfShape, _hsm, _n_terms, _term_normal_matrices, _terms
from .rho_statistics import RhoStatistics, rho_statistics

__all__ = [
    "PsfConfig",
    "PsfFit",
    "PsfModel",
    "PsfShape",
    "PsfValidation",
    "fit_psf",
]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# Below this FWHM (px) the sinc re-centring of stars is no longer exact: on noise-free
# stars of a simulator-like field the model's size is off by up to 5e-4 at 2.5 px and
# 1.4% at 2 px, and its moments fail at 1.5 px (1e-5 at 3.5 px).
_UNDERSAMPLED_FWHM_PX = 2.5
# A child's pixel enters its PSF stamp only if the deblender gave it this share or more.
_CHILD_MIN_WEIGHT = 0.98
# ... and a child is a PSF candidate only if it holds this share of its parent's flux.
_CHILD_MIN_FLUX_SHARE = 0.5
# Fewest stars for any fitted model (order 0); below it the Gaussian fallback is used.
_MIN_STARS = 2
_STAR_REJECT_PLANES = ("SAT", "CR", "INTRP", "BAD", "NO_DATA", "EDGE", "SUSPECT", "STREAK")


@dataclass(frozen=True, kw_only=True)
class PsfConfig:
    """Settings of :func:`fit_psf`.

    Attributes
    ----------
    spatial_order : int
        Polynomial order of the variation over the detector.
    stamp_size : int or None
        Model stamp width (odd pixels); by default about 8 FWHM, between 15 and 51.
    oversampling : int or None
        Model values per pixel along each axis. By default 1 for a well-sampled
        PSF and ``ceil(2.5 / FWHM)`` below 2.5 px FWHM, where stars cannot be
        re-centred by sinc interpolation (:mod:`._psf_fine`).
    min_snr : float
        Smallest peak significance of a PSF star (noise units).
    max_peak_fraction : float
        Reject stars whose brightest pixel exceeds this fraction of the
        ``SATURATE`` level in the metadata (avoids the non-linear regime).
    size_tolerance : float
        Stars lie within this fractional distance in ``T`` of the stellar locus.
    reserve_fraction : float
        Fraction of PSF stars kept out of the fit for validation.
    max_stars : int
        Use at most this many stars (the brightest) in the fit.
    n_iterations : int
        Fit / re-flux / reject rounds.
    reject_sigma : float
        Stars whose reduced chi² exceeds the median by this many robust sigmas,
        or either of whose shape residuals (:func:`_shape_residuals`) lies this
        many robust sigmas from the median, are rejected.
    min_stars_per_term : int
        Fitted stars needed per polynomial term; the order is lowered (with a
        warning) when there are too few.
    fallback_fwhm_px : float
        FWHM of the Gaussian used when there are too few PSF stars for any model.
    compute_rho : bool
        Compute rho statistics on the reserved stars (needs >= 20 of them).
    seed : int
        Seed of the random choice of reserved stars.
    """

    spatial_order: int = 2
    stamp_size: int | None = None
    oversampling: int | None = None
    min_snr: float = 50.0
    max_peak_fraction: float = 0.8
    size_tolerance: float = 0.12
    reserve_fraction: float = 0.2
    max_stars: int = 1000
    n_iterations: int = 3
    reject_sigma: float = 4.0
    min_stars_per_term: int = 3
    fallback_fwhm_px: float = 3.0
    compute_rho: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.spatial_order, int) or not 0 <= self.spatial_order <= 6:
            msg = f"spatial_order must be an integer in 0..6, got {self.spatial_order!r}"
            raise ValueError(msg)
        if self.oversampling is not None and (
            not isinstance(self.oversampling, int) or not 1 <= self.oversampling <= 8
        ):
            msg = f"oversampling must be None or an integer in 1..8, got {self.oversampling!r}"
            raise ValueError(msg)
        if self.stamp_size is not None and (
            not isinstance(self.stamp_size, int) or self.stamp_size < 7 or self.stamp_size % 2 == 0
        ):
            msg = f"stamp_size must be None or an odd integer >= 7, got {self.stamp_size!r}"
            raise ValueError(msg)
        for name in ("min_snr", "size_tolerance", "reject_sigma", "fallback_fwhm_px"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not 0 < self.max_peak_fraction <= 1:
            msg = f"max_peak_fraction must be in (0, 1], got {self.max_peak_fraction!r}"
            raise ValueError(msg)
        if not 0 <= self.reserve_fraction < 1:
            msg = f"reserve_fraction must be in [0, 1), got {self.reserve_fraction!r}"
            raise ValueError(msg)
        for name in ("max_stars", "n_iterations", "min_stars_per_term"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)


@dataclass(frozen=True)
class PsfValidation:
    """Model-versus-star residuals at the reserved stars.

    Attributes
    ----------
    n_reserved : int
        Reserved stars with valid moments.
    size_residual_mean, size_residual_rms : float
        Mean and rms of ``(T_star - T_model) / T_star``.
    de1_rms, de2_rms : float
        Rms of the distortion residuals ``e_star - e_model``.
    rho : RhoStatistics or None
        Rho statistics (None with fewer than 20 reserved stars).
    """

    n_reserved: int
    size_residual_mean: float
    size_residual_rms: float
    de1_rms: float
    de2_rms: float
    rho: RhoStatistics | None


@dataclass(frozen=True, eq=False)
class PsfFit:
    """Result of :func:`fit_psf`.

    Attributes
    ----------
    model : PsfModel
        The fitted model.
    stars : astropy.table.Table
        PSF candidates on the stellar locus: ``id``, ``x``, ``y`` (adaptive
        centroid, px), ``flux`` (ADU), ``T``, ``e1``, ``e2`` (star moments),
        ``model_T``, ``model_e1``, ``model_e2`` (model at the star), ``chi2``
        (reduced), ``shape_z1``, ``shape_z2`` (shape residuals in noise units,
        :func:`_shape_residuals`), ``reserved``, ``used`` (in the final fit).
    validation : PsfValidation
        Residuals at the reserved stars.
    fallback : bool
        True when there were too few stars and the model is a Gaussian of
        ``config.fallback_fwhm_px`` (a warning was issued).
    config : PsfConfig
        The settings that made it.
    """

    model: PsfModel
    stars: Table
    validation: PsfValidation
    fallback: bool
    config: PsfConfig = field(default_factory=PsfConfig)


def _gaussian_model(fwhm_px: float, size: int) -> PsfModel:
    sigma = fwhm_px / _FWHM_PER_SIGMA
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    # Integrate over the pixel (4x4 sub-samples) so it is a pixelized PSF.
    sub = (np.arange(4) + 0.5) / 4.0 - 0.5
    stamp = np.zeros((size, size))
    for sy in sub:
        for sx in sub:
            stamp += np.exp(-0.5 * ((xx + sx) ** 2 + (yy + sy) ** 2) / sigma**2)
    return PsfModel((stamp / stamp.sum())[None], spatial_order=0)


def fit_psf(
    exposure: Exposure,
    sources: Deblended,
    config: PsfConfig | None = None,
    *,
    labels: NDArray[np.integer] | None = None,
) -> PsfFit:
    """Select PSF stars, fit a spatially varying pixel-basis model and validate it.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted exposure (ADU) with its variance and mask planes
        (cosmic rays already flagged).
    sources : Deblended
        Sources from :func:`~stacklab.toolkit.deblend_sources`; only isolated
        ones can be PSF stars.
    config : PsfConfig, optional
        Settings; defaults when omitted.
    labels : numpy.ndarray, optional
        Footprint label image (:attr:`Detections.labels`); pixels of other
        footprints are left out of each star's stamp.

    Returns
    -------
    PsfFit

    Warns
    -----
    UserWarning
        When there are too few PSF stars for ``spatial_order`` (the order is
        lowered) or for any model (a Gaussian fallback is returned).

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> from stacklab.toolkit import process_frame
    >>> sim_config = SimulationConfig(size=512, star_density_arcmin2=60.0, seed=4)
    >>> sim = simulate_visit(make_sky(sim_config), sim_config, visit=0)
    >>> result = process_frame(sim.exposure)
    >>> result.psf_fit.fallback
    False
    """
    config = PsfConfig() if config is None else config
    ny, nx = exposure.shape
    # Stamps are cut from the float32 planes and converted one by one: no
    # full-size float64 copies.
    image = exposure.image
    variance = exposure.variance
    reject_planes = [p for p in _STAR_REJECT_PLANES if p in exposure.mask_planes]
    reject_bits = exposure.mask_planes.bitmask(*reject_planes)
    saturate = float(exposure.meta.get("SATURATE", np.inf) or np.inf)

    src = sources.sources
    # Isolated sources and deblended children (their siblings' pixels are left out).
    single = (src["n_children"] == 0) & ~src["deblend_skipped"]
    # A child is a candidate only if it dominates its blend: a star on a bright
    # galaxy inherits part of the galaxy's symmetric light.
    parent_flux = np.zeros(len(src))
    parent_rows = np.searchsorted(src["id"], src["parent"])
    is_child = np.asarray(src["parent"]) > 0
    parent_flux[is_child] = np.asarray(src["flux_footprint"])[parent_rows[is_child]]
    own = np.asarray(src["flux_footprint"])
    single &= ~is_child | (own >= _CHILD_MIN_FLUX_SHARE * parent_flux)
    bright = np.asarray(src["peak_significance"]) >= config.min_snr
    cand = np.flatnonzero(single & bright)
    # A stable sort: candidates of equal significance keep their catalogue order, so the
    # stars chosen do not depend on the sort algorithm's handling of ties.
    cand = cand[np.argsort(-np.asarray(src["peak_significance"])[cand], kind="stable")]
    # Plain arrays for the loops: indexing Table columns per star is slow.
    parent_row_of = np.where(is_child, parent_rows, -1)
    peak_x, peak_y = np.asarray(src["peak_x"]), np.asarray(src["peak_y"])
    footprint_of, id_of = np.asarray(src["footprint"]), np.asarray(src["id"])
    # One set of HSM buffers for every stamp of the fit.
    hsm = _AdaptiveMoments()
    mask = exposure.mask
    # First pass: moments of candidates in a generous stamp to find the locus. The
    # stamps (inside the image) are cut all at once; those with a rejected or too
    # bright pixel are dropped before any moments.
    guess_half = 12
    first = cand[: 4 * config.max_stars]
    fx, fy = peak_x[first].astype(np.intp), peak_y[first].astype(np.intp)
    keep_first = _inside(fx, fy, guess_half, (ny, nx))
    first, fx, fy = first[keep_first], fx[keep_first], fy[keep_first]
    keep_first = ~np.any(boxes(mask, fx, fy, guess_half) & reject_bits, axis=(1, 2))
    first, fx, fy = first[keep_first], fx[keep_first], fy[keep_first]
    stamps = np.nan_to_num(boxes(image, fx, fy, guess_half).astype(np.float64))
    keep_first = ~(stamps.max(axis=(1, 2), initial=-np.inf) > config.max_peak_fraction * saturate)
    first, fx, fy = first[keep_first], fx[keep_first], fy[keep_first]
    stamps = stamps[keep_first]
    bad_first = _neighbours(labels, fx, fy, guess_half, footprint_of[first])
    rows = []
    for k, (i, ix, iy) in enumerate(zip(first.tolist(), fx.tolist(), fy.tolist(), strict=True)):
        bad = bad_first[k]
        if parent_row_of[i] >= 0:
            bad = bad | _siblings(sources, parent_row_of, i, ix, iy, guess_half)
        found = hsm.size(hsm.load(stamps[k], bad))
        if found is None:
            continue
        T, cx, cy = found
        rows.append((int(id_of[i]), ix - guess_half + cx, iy - guess_half + cy, T, i))
    stamp_size = config.stamp_size
    if len(rows) < _MIN_STARS:
        return _fallback(config, f"only {len(rows)} PSF star candidates", stamp_size)
    T_all = np.array([r[3] for r in rows])
    T_locus = _locus(T_all, config.size_tolerance)
    on_locus = np.abs(T_all / T_locus - 1.0) <= config.size_tolerance
    rows = [r for r, keep_row in zip(rows, on_locus, strict=True) if keep_row][: config.max_stars]
    fwhm = np.sqrt(T_locus / 2.0) * _FWHM_PER_SIGMA
    if stamp_size is None:
        stamp_size = int(np.clip(2 * int(np.ceil(4.0 * fwhm)) + 1, 15, 51))
    if len(rows) < _MIN_STARS:
        return _fallback(config, f"only {len(rows)} stars on the stellar locus", stamp_size, fwhm)
    over = config.oversampling
    if over is None:
        over = 1 if fwhm >= _UNDERSAMPLED_FWHM_PX else int(np.ceil(_UNDERSAMPLED_FWHM_PX / fwhm))
    half = stamp_size // 2
    pad = 3
    # Cut stamps (all at once), re-centre on the adaptive centroid (all stars'
    # Fourier shifts in one batch) and measure flux.
    ids, xs, ys, rows_in = [], [], [], []
    for star_id, x, y, _T, i in rows:
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if inside_fraction((ny, nx), ix, iy, half + pad):
            ids.append(star_id)
            xs.append(x)
            ys.append(y)
            rows_in.append((i, ix, iy))
    n = len(ids)
    if n < _MIN_STARS:
        return _fallback(config, f"only {n} PSF stars away from the edges", stamp_size, fwhm)
    rng = np.random.default_rng(config.seed)
    reserved = np.zeros(n, dtype=bool)
    n_reserve = round(config.reserve_fraction * n)
    if n - n_reserve >= 3:
        reserved[rng.choice(n, size=n_reserve, replace=False)] = True
    n_fit = int((~reserved).sum())
    # A star's pixels fall on one in over² of a fine grid's nodes: each node needs
    # min_stars_per_term stars even for a constant model.
    few = n_fit < config.min_stars_per_term * over**2
    if over > 1 and few and config.oversampling is None:
        over = 1
    if over == 1 and fwhm < _UNDERSAMPLED_FWHM_PX:
        why = "oversampling=1" if config.oversampling == 1 else f"only {n} PSF stars"
        warnings.warn(
            f"the PSF (FWHM {fwhm:.2f} px) is undersampled, but it is modelled at the pixel "
            f"scale ({why}): stars are re-centred by sinc interpolation, exact only for FWHM "
            f">= {_UNDERSAMPLED_FWHM_PX} px, so the model's size and shape are biased (size "
            "by up to 1.4% at 2 px FWHM)",
            UserWarning,
            stacklevel=2,
        )
    star_rows, ixs, iys = (np.array(column, dtype=np.intp) for column in zip(*rows_in, strict=True))
    big = np.nan_to_num(boxes(image, ixs, iys, half + pad).astype(np.float64))
    var = boxes(variance, ixs, iys, half + pad).astype(np.float64)
    bad = _neighbours(labels, ixs, iys, half + pad, footprint_of[star_rows])
    bad |= (boxes(mask, ixs, iys, half + pad) & reject_bits) != 0
    for k, (i, ix, iy) in enumerate(rows_in):
        if parent_row_of[i] >= 0:
            bad[k] |= _siblings(sources, parent_row_of, i, ix, iy, half + pad)
    x_arr, y_arr = np.array(xs), np.array(ys)
    crop = slice(pad, pad + stamp_size)
    raw, raw_bad = big[:, crop, crop], bad[:, crop, crop]
    remainders = np.zeros((n, 2))
    if over == 1:
        # Integer box centres as floats: what x - ix does per star.
        dx, dy = -(x_arr - ixs.astype(np.float64)), -(y_arr - iys.astype(np.float64))
        shifted = fft_shift(np.where(bad, 0.0, big), dx, dy)
        bad_c = bad[:, crop, crop]
        bad_c = bad_c | np.roll(bad_c, 1, 1) | np.roll(bad_c, -1, 1)
        bad_c = bad_c | np.roll(bad_c, 1, 2) | np.roll(bad_c, -1, 2)
        var_c = var[:, crop, crop]
        d = np.ascontiguousarray(shifted[:, crop, crop])
        inv_var = inverse_variance(var_c, bad_c)
    else:
        d, inv_var, remainders = _fine_samples(
            raw, raw_bad, var[:, crop, crop], x_arr - ixs, y_arr - iys, over
        )
    order = config.spatial_order
    # On a fine grid a star's pixels fall on one in over² of the nodes' lattices.
    per_term = config.min_stars_per_term * over**2
    while order > 0 and n_fit < per_term * _n_terms(order):
        order -= 1
    if order < config.spatial_order:
        warnings.warn(
            f"only {n_fit} PSF stars: too few for spatial_order={config.spatial_order} "
            f"(needs {per_term * _n_terms(config.spatial_order)}"
            f"{f' at oversampling {over}' if over > 1 else ''}); fitting order {order} instead",
            UserWarning,
            stacklevel=2,
        )
    x_c, y_c, scale = (nx - 1) / 2.0, (ny - 1) / 2.0, max(nx, ny) / 2.0
    terms = _terms((x_arr - x_c) / scale, (y_arr - y_c) / scale, order)
    flux = np.array([s[w > 0].sum() for s, w in zip(d, inv_var, strict=True)])
    flux = np.where(flux > 0, flux, np.nan)
    used = ~reserved & np.isfinite(flux)
    chi2 = np.full(n, np.nan)
    size = d.shape[1]  # the model's grid: stamp_size, or over (stamp_size - 1) + 1
    coeffs = np.zeros((terms.shape[1], size, size))
    core, quadrupoles = _shape_weights(size, over * fwhm / _FWHM_PER_SIGMA)
    leverage = np.zeros((n, quadrupoles.shape[1]))
    for iteration in range(config.n_iterations + 1):
        if over == 1:
            coeffs = _fit_pixels(d[used], inv_var[used], flux[used], terms[used])
            leverage[:] = 0.0
            leverage[used] = _leverage(inv_var[used][:, core], flux[used], terms[used])
        else:
            if iteration == 0:  # first guess: each sample taken as at its node
                coeffs = _fit_pixels(d[used], inv_var[used], flux[used], terms[used])
            # No leverage here (the nodes' fits are coupled): the shape test compares
            # each star with a model that includes it.
            coeffs, remainders = _fit_fine(
                d, inv_var, flux, terms, used, remainders, coeffs, over, fwhm, first=iteration == 0
            )
        # On a fine grid, each star's model is compared at its samples' places.
        model = _star_models(terms, coeffs, over)
        if over > 1:
            model = _shifted(model, remainders)
        num = np.sum(inv_var * d * model, axis=(1, 2))
        den = np.sum(inv_var * model * model, axis=(1, 2))
        flux = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        resid = inv_var * (d - flux[:, None, None] * model) ** 2
        dof = np.maximum(np.sum(inv_var > 0, axis=(1, 2)) - 1, 1)
        chi2 = resid.sum(axis=(1, 2)) / dof
        shape_z = _shape_residuals(
            d[:, core], inv_var[:, core], flux, model[:, core], quadrupoles, leverage
        )
        if iteration == config.n_iterations:
            break
        med, spread = _robust_centre_and_spread(chi2[used])
        outlier = chi2 > med + config.reject_sigma * max(spread, 1e-3 * med)
        for z in shape_z.T:
            # In noise units: a spread below 1 means the variance plane overstates
            # the noise, and deviations under reject_sigma noise sigmas are no evidence.
            med, spread = _robust_centre_and_spread(z[used])
            outlier |= np.abs(z - med) > config.reject_sigma * max(spread, 1.0)
        new_used = ~reserved & np.isfinite(flux) & (flux > 0) & ~outlier
        if new_used.sum() < config.min_stars_per_term * terms.shape[1]:
            break
        if np.array_equal(new_used, used) and iteration > 0:
            break
        used = new_used
    psf_model = PsfModel(
        coeffs, spatial_order=order, x_center=x_c, y_center=y_c, scale=scale, oversampling=over
    )
    star_T, star_e1, star_e2 = (np.full(n, np.nan) for _ in range(3))
    mod_T, mod_e1, mod_e2 = (np.full(n, np.nan) for _ in range(3))
    drawn = psf_model._draw_many(x_arr, y_arr)  # psf_model.draw at each star
    for k in range(n):
        s = _hsm(raw[k], raw_bad[k], guess_sigma=fwhm / _FWHM_PER_SIGMA, moments=hsm)
        m = _hsm(drawn[k], None, guess_sigma=fwhm / _FWHM_PER_SIGMA, moments=hsm)
        if s is not None and m is not None:
            star_T[k], star_e1[k], star_e2[k] = s[:3]
            mod_T[k], mod_e1[k], mod_e2[k] = m[:3]
    stars = Table(
        {
            "id": np.array(ids, dtype=np.int64),
            "x": x_arr,
            "y": y_arr,
            "flux": flux,
            "T": star_T,
            "e1": star_e1,
            "e2": star_e2,
            "model_T": mod_T,
            "model_e1": mod_e1,
            "model_e2": mod_e2,
            "chi2": chi2,
            "shape_z1": shape_z[:, 0],
            "shape_z2": shape_z[:, 1],
            "reserved": reserved,
            "used": used,
        }
    )
    stars["flux"].unit = "adu"
    validation = _validate(stars, exposure, config)
    log.info(
        "PSF model order %d from %d stars (%d reserved): dT/T = %.2e +- %.2e",
        order, int(used.sum()), int(reserved.sum()), validation.size_residual_mean,
        validation.size_residual_rms,
    )  # fmt: skip
    return PsfFit(
        model=psf_model, stars=stars, validation=validation, fallback=False, config=config
    )


def _inside(
    ix: NDArray[np.intp], iy: NDArray[np.intp], half: int, shape: tuple[int, int]
) -> NDArray[np.bool_]:
    # inside_fraction of each box.
    ny, nx = shape
    return np.asarray((ix - half >= 0) & (iy - half >= 0) & (ix + half < nx) & (iy + half < ny))


def _neighbours(
    labels: NDArray[np.integer] | None,
    ix: NDArray[np.intp],
    iy: NDArray[np.intp],
    half: int,
    own: NDArray[np.integer],
) -> NDArray[np.bool_]:
    # Pixels of other footprints in the boxes (inside the image) around the stars of
    # footprints ``own``.
    size = 2 * half + 1
    if labels is None:
        return np.zeros((len(ix), size, size), dtype=bool)
    stamps = boxes(labels, ix, iy, half)
    return np.asarray((stamps != 0) & (stamps != np.asarray(own)[:, None, None]))


def _siblings(
    sources: Deblended, parent_rows: NDArray[np.intp], index: int, ix: int, iy: int, half: int
) -> NDArray[np.bool_]:
    # Pixels of a child's stamp that mostly belong to its siblings (parent_rows: the
    # row of each source's parent, -1 for none).
    size = 2 * half + 1
    if parent_rows[index] < 0:
        return np.zeros((size, size), dtype=bool)
    heavy = sources.heavy_footprints[index]
    parent = sources.heavy_footprints[int(parent_rows[index])]
    box = (ix - half, iy - half, (size, size))
    return np.asarray((parent.weights_on(*box) > 0) & (heavy.weights_on(*box) < _CHILD_MIN_WEIGHT))


def _locus(T: NDArray[np.float64], tolerance: float) -> float:
    # The stellar locus is the densest narrow band in log T (galaxies spread widely).
    logT = np.sort(np.log(T))
    width = np.log1p(tolerance)
    counts = np.searchsorted(logT, logT + width, side="right") - np.arange(len(logT))
    best = int(np.argmax(counts))
    members = logT[best : best + counts[best]]
    return float(np.exp(np.median(members)))


def _fit_pixels(
    data: NDArray[np.float64],
    inv_var: NDArray[np.float64],
    flux: NDArray[np.float64],
    terms: NDArray[np.float64],
) -> NDArray[np.float64]:
    # Per pixel p: minimise sum_s w_sp (d_sp / f_s - sum_k c_pk t_sk)^2 with w = f^2 / var.
    w = inv_var * flux[:, None, None] ** 2
    y = data / flux[:, None, None]
    # As matrix products over the stars (three-operand einsums loop slowly).
    n_stars, ny, nx = w.shape
    normal = _term_normal_matrices(w, terms)
    rhs = ((w * y).reshape(n_stars, -1).T @ terms).reshape(ny, nx, terms.shape[1])
    ridge = 1e-12 * np.trace(normal, axis1=2, axis2=3)[..., None, None] * np.eye(terms.shape[1])
    coeffs = np.linalg.solve(normal + ridge + 1e-300, rhs[..., None])[..., 0]
    return np.moveaxis(coeffs, -1, 0)


def _shape_weights(size: int, sigma: float) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Pixels and quadrupole weights of :func:`_shape_residuals` on a ``size`` stamp.

    Returns the pixels where a round Gaussian ``W`` of ``sigma`` (px), centred on
    the middle pixel, exceeds 1e-4 of its peak, and there the two weights
    ``W (x² - y²)`` and ``W 2xy``, shape ``(2, n_pixels)``.
    """
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    weight = np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2)
    core = weight > 1e-4
    x, y, w = xx[core], yy[core], weight[core]
    return core, np.stack([w * (x * x - y * y), w * 2.0 * x * y])


def _leverage(
    inv_var: NDArray[np.float64], flux: NDArray[np.float64], terms: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Leverage of each fitted star on each pixel's polynomial (:func:`_fit_pixels`).

    ``inv_var`` is ``(n_stars, n_pixels)``. For pixel ``p`` with normal matrix
    ``N_p = sum_s w_sp t_s t_s^T`` (``w = flux² inv_var``), star ``s`` has
    ``h_sp = w_sp t_s^T N_p^-1 t_s``: the share of the fitted value that is its
    own datum (0 to 1; near 1 where one bright star alone sets the pixel).
    """
    w = inv_var * flux[:, None] ** 2
    n_terms = terms.shape[1]
    normal = _term_normal_matrices(w, terms)
    ridge = 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(n_terms)
    inverse = np.linalg.inv(normal + ridge + 1e-300 * np.eye(n_terms))
    quadratic = np.einsum("sk,pkl,sl->sp", terms, inverse, terms, optimize=True)
    return np.asarray(w * quadratic)


def _shape_residuals(
    data: NDArray[np.float64],
    inv_var: NDArray[np.float64],
    flux: NDArray[np.float64],
    model: NDArray[np.float64],
    quadrupoles: NDArray[np.float64],
    leverage: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Shape residuals of stars against the model, in units of their noise.

    For each star (re-centred on the stamp's middle pixel), the data minus its
    fitted model ``flux * model`` is summed with the quadrupole weights of
    :func:`_shape_weights`: divided by ``sum W (x² + y²) flux * model``, these
    would be the star's distortions ``e1, e2`` minus the model's, to first
    order; here each is divided by its standard deviation instead. A fitted star
    is compared with the model fitted without it: its residual in pixel ``p`` is
    divided by ``1 - h`` (``h``, its :func:`_leverage`; the deleted residual of
    linear least squares), whose variance is the pixel's over ``1 - h``. Without
    that, a bright star that sets the model around it would match it however
    wrong it is. Pixels of zero weight (masked) are left out.

    Parameters
    ----------
    data, inv_var, model : numpy.ndarray, shape (n, n_pixels)
        The stars' pixels (ADU), inverse variances and unit-sum models, on the
        pixels of :func:`_shape_weights`.
    flux : numpy.ndarray, shape (n,)
        The stars' fluxes (ADU).
    quadrupoles : numpy.ndarray, shape (2, n_pixels)
        From :func:`_shape_weights`.
    leverage : numpy.ndarray, shape (n, n_pixels)
        Each star's leverage (0 for stars not in the fit).

    Returns
    -------
    numpy.ndarray, shape (n, 2)
        ``z1, z2``: about N(0, 1) for stars that are the PSF (NaN where a star has
        no flux or no pixel near its centre). An unresolved companion moves them
        while hardly changing the chi² of the whole stamp: a star of the bench's
        seed-11 scene (1.3e6 ADU, a companion 0.5 FWHM away with 2% of its light,
        its e2 off by 8e-3) had a reduced chi² of 0.69.
    """
    good = inv_var > 0
    kept = 1.0 - np.minimum(leverage, 0.99)
    residual = np.where(good, (data - flux[:, None] * model) / kept, 0.0)
    variance = np.where(good, 1.0 / np.where(good, inv_var * kept, 1.0), 0.0)
    value = residual @ quadrupoles.T
    noise = np.sqrt(variance @ (quadrupoles * quadrupoles).T)
    z = np.full(value.shape, np.nan)
    fine = np.isfinite(value) & (noise > 0)
    z[fine] = value[fine] / noise[fine]
    return z


def _robust_centre_and_spread(values: NDArray[np.float64]) -> tuple[float, float]:
    """Median and normalised median absolute deviation (a sigma for Gaussian values)."""
    med = float(np.nanmedian(values))
    return med, 1.4826 * float(np.nanmedian(np.abs(values - med)))


def _validate(stars: Table, exposure: Exposure, config: PsfConfig) -> PsfValidation:
    res = stars[stars["reserved"] & np.isfinite(stars["T"]) & np.isfinite(stars["model_T"])]
    if len(res) == 0:
        return PsfValidation(0, np.nan, np.nan, np.nan, np.nan, None)
    dT = (res["T"] - res["model_T"]) / res["T"]
    de1 = res["e1"] - res["model_e1"]
    de2 = res["e2"] - res["model_e2"]
    rho = None
    if config.compute_rho and len(res) >= 20:
        rho = rho_statistics(
            np.asarray(res["x"]), np.asarray(res["y"]),
            star_T=np.asarray(res["T"]), star_e1=np.asarray(res["e1"]),
            star_e2=np.asarray(res["e2"]), model_T=np.asarray(res["model_T"]),
            model_e1=np.asarray(res["model_e1"]), model_e2=np.asarray(res["model_e2"]),
            pixel_scale_arcsec=_pixel_scale(exposure),
        )  # fmt: skip
    return PsfValidation(
        n_reserved=len(res),
        size_residual_mean=float(np.mean(dT)),
        size_residual_rms=float(np.sqrt(np.mean(dT**2))),
        de1_rms=float(np.sqrt(np.mean(de1**2))),
        de2_rms=float(np.sqrt(np.mean(de2**2))),
        rho=rho,
    )


def _pixel_scale(exposure: Exposure) -> float:
    if exposure.wcs is not None and exposure.wcs.has_celestial:
        scales = exposure.wcs.celestial.proj_plane_pixel_scales()
        return float(np.sqrt(abs(scales[0].to_value("arcsec") * scales[1].to_value("arcsec"))))
    return 1.0


def _fallback(
    config: PsfConfig, reason: str, stamp_size: int | None, fwhm: float | None = None
) -> PsfFit:
    fwhm_px = config.fallback_fwhm_px if fwhm is None else float(fwhm)
    size = stamp_size or int(np.clip(2 * int(np.ceil(4.0 * fwhm_px)) + 1, 15, 51))
    warnings.warn(
        f"{reason}: cannot fit a PSF model; falling back to a Gaussian of FWHM {fwhm_px:.2f} px. "
        "PSF fluxes and shapes are approximate (catalog flag PSF_FALLBACK); lower "
        "PsfConfig.min_snr or supply a PSF",
        UserWarning,
        stacklevel=3,
    )
    empty = Table(
        names=("id", "x", "y", "flux", "T", "e1", "e2", "model_T", "model_e1", "model_e2",
               "chi2", "shape_z1", "shape_z2", "reserved", "used"),
        dtype=(np.int64,) + (float,) * 12 + (bool, bool),
    )  # fmt: skip
    return PsfFit(
        model=_gaussian_model(fwhm_px, size),
        stars=empty,
        validation=PsfValidation(0, np.nan, np.nan, np.nan, np.nan, None),
        fallback=True,
        config=config,
    )
