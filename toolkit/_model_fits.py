"""Batched PSF-flux and galaxy-model fits of the measurement step's stamps.

:func:`~stacklab.toolkit.measurement.measure_sources` cuts one stamp per source
and queues it; :func:`_fit_batch` then fits a batch of stamps of one size at
once:

* PSF flux and SPREAD_MODEL (:mod:`._psf_flux_fits`);
* model flux (CModel-like): exponential and de Vaucouleurs profiles of the
  deconvolved adaptive-moment shape, convolved with the PSF in Fourier space,
  their size scanned on a grid, the best of each combined with non-negative
  amplitudes.

Kernels are placed on stamps with sub-pixel Fourier shifts
(:func:`._psf_flux_fits._place_all`). Stamp pixels are ``(y, x)`` indexed, 0-based
pixel centres.

Most of the time goes to small inverse FFTs (``scipy.fft``): about 11 templates
per source in the size search (of the grid's 17; :func:`_search_sizes`). The
search draws them in single precision, about half the cost; every number
reported comes from double-precision templates (see :func:`_model_fluxes`). The
per-pixel loops (template spectra, weighted sums, the PSF fit's normal
equations) are compiled, in :mod:`._model_fit_kernels`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import galsim
import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft

from . import _dev_transform
from ._model_fit_kernels import (
    _search_round,
    _search_unimodal,
    _template_spectra,
    _weighted_sums,
)
from ._psf_flux_fits import _frequencies, _padded_size, _padded_transform, _place_all, _psf_fluxes
from .flags import SourceFlag

_Floats = NDArray[np.float64]

# Template half-light radii in units of the deconvolved moments' (the first, a point
# source, is shared by both profiles).
_SIZE_FACTORS = np.array([0.0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0])
_EXP_HLR_PER_SCALE = 1.6783469900166608  # half-light radius of exp(-r) in scale radii
# Bound on the relative rounding of the single-precision size scan's sums (float32's
# epsilon is 6e-8; the transforms and sums add a few hundred of them at most).
_SCAN_TOLERANCE = 1e-6
# Templates drawn per call in the size scan (bounds its work arrays to ~0.5 MB).
_TRANSFORMS_AT_ONCE = 64
# Where the size search starts (indices of _SIZE_FACTORS): the exponential's, and the
# de Vaucouleurs profile's given the exponential's best size (smaller for compact
# sources, larger for extended ones, where its wings carry more of the light).
_EXP_START = 3
_DEV_START = np.array([1, 1, 1, 1, 5, 6, 7, 7, 7])
# Sizes every search draws (see _search_sizes): the point source, twice the
# moments' size and the largest.
_ALWAYS_DRAWN = [0, 6, len(_SIZE_FACTORS) - 1]
# Templates closer than this to collinear (1 - cos² of their angle) count as one.
_COLLINEAR = 1e-12


@functools.lru_cache(maxsize=1)
def _dev_table() -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """De Vaucouleurs profile's transform on a grid of wavenumbers.

    Returns the angular wavenumbers ``q`` (:func:`_dev_nodes`) of a unit-flux
    profile of half-light radius 1, its transform there (GalSim's, kept in
    :mod:`._dev_transform` for the GalSim version that made it, else computed
    again), and the slopes between nodes (``numpy.interp``'s).
    """
    q = _dev_nodes()
    if galsim.__version__ == _dev_transform.GALSIM_VERSION:
        values = np.array(_dev_transform.VALUES)
    else:
        values = _galsim_dev_values(q)
    return q, values, np.diff(values) / np.diff(q)


def _dev_nodes() -> NDArray[np.float64]:
    """Wavenumbers of the de Vaucouleurs table: 0, then 600 uniform in ``log q`` over 1e-3..3e3."""
    return np.concatenate([[0.0], np.geomspace(1e-3, 3e3, 600)])


def _galsim_dev_values(q: NDArray[np.float64]) -> NDArray[np.float64]:
    """GalSim's transform of the unit-flux de Vaucouleurs profile (half-light radius 1) at q."""
    profile = galsim.DeVaucouleurs(half_light_radius=1.0)
    return np.array([profile.kValue(float(k), 0.0).real for k in q])


def _write_dev_transform(path: Path) -> None:
    """Rewrite the generated :mod:`._dev_transform` with the installed GalSim's values."""
    values = _galsim_dev_values(_dev_nodes()).tolist()
    rows = "\n".join(
        "    " + ", ".join(repr(v) for v in values[i : i + 4]) + ","
        for i in range(0, len(values), 4)
    )
    source = path.read_text()
    docstring = source[: source.index('"""', 3) + 3]
    path.write_text(
        f'{docstring}\n\nGALSIM_VERSION = "{galsim.__version__}"\n\n'
        f"# fmt: off\nVALUES = (\n{rows}\n)\n# fmt: on\n"
    )


_Moments = tuple[float, float, float, float, float]


@dataclass(slots=True, eq=False)
class _FitSource:
    """One source's inputs to the batched fits, completed as the measurement step gets them.

    Attributes
    ----------
    row : int
        The source's catalog row.
    stamp, weights : numpy.ndarray
        Its image (ADU) and inverse-variance weights (0 on bad pixels), float64.
    centre_x, centre_y : float
        Starting position in stamp pixels (the centroid, or the stamp centre).
    origin_x, origin_y : int
        Image pixel of the stamp's first pixel.
    moments : tuple or None
        Its adaptive moments ``(x, y, ixx, iyy, ixy)``.
    image_x, image_y : float
        The centroid in image pixels (where the PSF is drawn and its moments read).
    peak_x, peak_y : int
        The stamp's centre in image pixels (where the PSF is drawn if not at the centroid).
    kernel : numpy.ndarray or None
        The PSF there, unit sum; None until drawn.
    psf_moments : tuple or None
        The PSF's moments there; None until interpolated (or where unknown).
    """

    row: int
    stamp: NDArray[np.float64]
    weights: NDArray[np.float64]
    centre_x: float
    centre_y: float
    origin_x: int
    origin_y: int
    moments: _Moments | None
    image_x: float
    image_y: float
    peak_x: int
    peak_y: int
    kernel: NDArray[np.float64] | None = None
    psf_moments: _Moments | None = None


def _fit_batch(
    batch: list[_FitSource],
    out: dict[str, NDArray[Any]],
    flags: NDArray[np.int64],
    *,
    fit_models: bool,
) -> None:
    """PSF fluxes, then galaxy models, of a batch of sources; fill ``out`` and ``flags``.

    Every source of the batch has its ``kernel`` drawn, all of one size, and stamps of
    one size.
    """
    rows = np.array([item.row for item in batch])
    stamps = np.array([item.stamp for item in batch])
    weights = np.array([item.weights for item in batch])
    kernels = np.array([item.kernel for item in batch])
    origin = np.array([(item.origin_x, item.origin_y) for item in batch], dtype=float)
    centres = np.array([(item.centre_x, item.centre_y) for item in batch])
    ksize = kernels.shape[1]
    padded = _padded_size(ksize)
    transform = _padded_transform(kernels, (padded - ksize) // 2)
    flux, err, x, y, spread, spread_err, ok = _psf_fluxes(
        stamps, weights, kernels, centres, transform=transform
    )
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
    # A stamp the size of the padded kernel, with the kernel in its middle, is the
    # padded kernel itself: its transform is already known.
    same_grid = padded == size and (padded - ksize) // 2 == size // 2 - ksize // 2
    results = _model_fluxes(
        stamps,
        weights,
        _place_all(kernels, size, middle, middle),
        centres,
        [item.moments for item in batch],
        [item.psf_moments for item in batch],
        psf_ft=transform if same_grid else None,
    )
    for k, model in zip(rows, results, strict=True):
        if model is None:
            flags[k] |= int(SourceFlag.MODEL_FLUX_FAILED)
        else:
            out["flux_model"][k], out["flux_model_err"][k], out["frac_dev"][k] = model[:3]
            out["flux_exp"][k] = model[3]


def _model_fluxes(
    stamps: NDArray[np.float64],
    weights: NDArray[np.float64],
    psf_stamps: NDArray[np.float64],
    centres: NDArray[np.float64],
    shapes: list[tuple[float, float, float, float, float] | None],
    psf_shapes: list[tuple[float, float, float, float, float] | None],
    *,
    psf_ft: NDArray[np.complex128] | None = None,
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
    psf_ft : numpy.ndarray, optional
        ``rfft2`` of ``psf_stamps``, when known.

    Returns
    -------
    list
        Per source ``(flux, flux_err, frac_dev, flux_exp)`` (ADU), or None when the
        fit fails.

    Notes
    -----
    The size of each profile is the one that minimises chi² over the grid
    ``_SIZE_FACTORS``, found by a search that draws about two thirds of the grid's
    templates (:func:`_search_sizes`; every size where the gain curve is not
    clearly unimodal). The search draws its templates in single precision; the
    chosen template is then drawn again in double precision for the fluxes, and
    where single-precision rounding could have changed a comparison (two sizes'
    chi² within their error bound) the source's search is redone in double
    precision. The result is the double-precision search's.
    """
    n, size = stamps.shape[0], stamps.shape[1]
    # The PSF sits at the stamp centre c; the phase ramp moves it (and the profile,
    # centred on the origin) to (cx, cy) directly, with no fftshift of the results.
    psf_ft = sp_fft.rfft2(psf_stamps) if psf_ft is None else psf_ft.copy()
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
    offset = centres - size // 2
    psf_ft *= np.exp(-1j * ky * offset[:, 1, None, None])
    psf_ft *= np.exp(-1j * kx * offset[:, 0, None, None])
    templates = _template_inputs(psf_ft, unit, weights, stamps)
    radii = hlr0[:, None] * _SIZE_FACTORS
    rows = np.arange(n)
    # Sum W x² of each stamp: bounds the rounding of the single-precision sums.
    data_sq = np.einsum("nyx,nyx->n", templates.weighted_data, stamps)
    best: dict[str, tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]] = {}
    point: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
    start = np.full(n, _EXP_START)
    for dev in (False, True):
        single = functools.partial(_size_sums, templates, radii, dev=dev, dtype=np.complex64)
        # Both profiles' templates of size 0 are the PSF times F(0) (= 1): the
        # exponential's sums serve.
        f0 = float(_dev_table()[1][0])
        known = None if point is None else (f0 * f0 * point[0], f0 * point[1])
        j, den, num, ambiguous = _search_sizes(single, start, data_sq, known=known)
        if point is None:
            point = den[:, 0].copy(), num[:, 0].copy()
        if ambiguous.any():
            # Single-precision rounding could have changed a comparison: the
            # search again in double precision.
            subset = np.flatnonzero(ambiguous)
            double = functools.partial(
                _size_sums, templates, radii, dev=dev, dtype=np.complex128, subset=subset
            )
            j[subset], den[subset], num[subset], _ = _search_sizes(
                double, start[subset], data_sq[subset]
            )
        if not dev:
            start = _DEV_START[j]
        # The chosen template again, in double precision, for the fluxes.
        model, den_j, num_j = _draw_templates(templates, radii[rows, j], dev=dev)
        valid = den_j > 0
        amp = np.where(valid, num_j / np.where(valid, den_j, 1.0), 0.0)
        best["dev" if dev else "exp"] = (np.asarray((den > 0).any(axis=1)), model, amp)
    return _combine(best["exp"], best["dev"], weights, stamps)


def _search_sizes(
    draw: Callable[[NDArray[np.int64], NDArray[np.int64]], tuple[_Floats, _Floats]],
    start: NDArray[np.int64],
    data_sq: NDArray[np.float64],
    *,
    known: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> tuple[NDArray[np.int64], _Floats, _Floats, NDArray[np.bool_]]:
    """Find the size of ``_SIZE_FACTORS`` of largest gain (least chi²) of each source.

    Parameters
    ----------
    draw : callable
        ``draw(sources, sizes)`` gives ``sum W t²`` and ``sum W x t`` of the
        templates of the given (source, size index) pairs.
    start : numpy.ndarray of int, shape (n,)
        Size index where each source's search starts.
    data_sq : numpy.ndarray, shape (n,)
        ``sum W x²`` of each stamp (bounds the rounding of single-precision sums).
    known : tuple of numpy.ndarray, optional
        Sums of every source's template of size index 0, when already known.

    Returns
    -------
    tuple
        The chosen size index, the sums (n, sizes; NaN where not drawn), and
        whether a comparison of two drawn gains was within the single-precision
        rounding bound ``_SCAN_TOLERANCE`` (the caller redoes those sources in
        double precision).

    Notes
    -----
    Gain against size is almost always unimodal, so climbing finds its maximum
    drawing about two thirds of the sizes: ``_ALWAYS_DRAWN``, the start and its
    neighbours are drawn, then two climbs, from the start and from the best size
    drawn so far, each draw the neighbours of their size and step uphill until
    both neighbours are lower. Where the drawn gains, in size order, do not rise
    strictly to the best and fall strictly after it, every size is drawn. The
    sizes always drawn are there to show a second maximum as a dip between drawn
    sizes: at size 0 (a point source) or at large sizes (a template reaching a
    neighbour's light). On the 4096² scene's 3985 sources (7970 profile fits, 58
    gain curves with two maxima) and on 16400 simulated ones, 30% with a
    brighter neighbour 12-18 px away, the search chose the full scan's size for
    every source; always drawing only the grid's ends instead missed 10 of the
    simulated sources, the ends and size 5 missed 4 (their second maximum at
    size 6 or 7).
    """
    n, m = len(start), len(_SIZE_FACTORS)
    den, num = np.full((n, m), np.nan), np.full((n, m), np.nan)
    drawn = np.zeros((n, m), dtype=bool)

    def add(wanted: NDArray[np.bool_]) -> None:
        sources, sizes = np.nonzero(wanted & ~drawn)
        if len(sources):
            den[sources, sizes], num[sources, sizes] = draw(sources, sizes)
            drawn[sources, sizes] = True

    # chi2 = sum W x² - gain (the first term is common to all sizes). A
    # single-precision gain is within _SCAN_TOLERANCE * (sqrt(gain sum W x²)
    # + gain) of the double-precision one (Cauchy-Schwarz on sum W x t): every
    # comparison the search makes closer than that marks the source ambiguous.
    ambiguous = np.zeros(n, dtype=bool)
    top = np.zeros(n, dtype=np.int64)
    if known is not None:
        den[:, 0], num[:, 0] = known
        drawn[:, 0] = True
    first = np.zeros((n, m), dtype=bool)
    first[:, _ALWAYS_DRAWN] = True
    first[np.arange(n)[:, None], np.clip(start[:, None] + np.array([-1, 0, 1]), 0, m - 1)] = True
    add(first)
    # Two climbs: from the start, and from the best size drawn so far.
    climb = np.clip(start, 0, m - 1).astype(np.int64)
    wanted = np.zeros((n, m), dtype=bool)
    while _search_round(den, num, drawn, data_sq, _SCAN_TOLERANCE, climb, top, wanted, ambiguous):
        add(wanted)
        wanted[:] = False
    # Not clearly unimodal: every size.
    unimodal = np.ones(n, dtype=bool)
    _search_unimodal(den, num, drawn, top, data_sq, _SCAN_TOLERANCE, unimodal, ambiguous)
    if not unimodal.all():
        add(~unimodal[:, None])
        _search_round(den, num, drawn, data_sq, _SCAN_TOLERANCE, climb, top, wanted, ambiguous)
    return top, den, num, ambiguous


@dataclass(frozen=True)
class _TemplateInputs:
    """What drawing a batch's galaxy templates needs, per source.

    Attributes
    ----------
    psf_ft, psf_ft_single : numpy.ndarray, shape (n, size, size // 2 + 1)
        PSF transform with the phase ramp to the model centre (complex128, and
        rounded to complex64 for the single-precision size scan).
    kk : numpy.ndarray, shape (n, size, size // 2 + 1)
        ``sqrt(k' U k)`` at each frequency ``k``, ``U`` the shape matrix of
        determinant 1: the profiles' transforms are functions of ``kk`` times the
        half-light radius.
    position : numpy.ndarray, shape (n, size, size // 2 + 1)
        Where ``kk`` falls in the de Vaucouleurs table (see ``_template_spectra``).
    weights, weighted_data : numpy.ndarray, shape (n, size, size)
        Inverse-variance weights ``W`` and ``W x``.
    """

    psf_ft: NDArray[np.complex128]
    psf_ft_single: NDArray[np.complex64]
    kk: NDArray[np.float64]
    position: NDArray[np.float64]
    weights: NDArray[np.float64]
    weighted_data: NDArray[np.float64]


def _template_inputs(
    psf_ft: NDArray[np.complex128],
    unit: NDArray[np.float64],
    weights: NDArray[np.float64],
    stamps: NDArray[np.float64],
) -> _TemplateInputs:
    ky, kx = _frequencies(psf_ft.shape[1])
    u00, u01, u11 = (unit[:, i, j, None, None] for i, j in ((0, 0), (0, 1), (1, 1)))
    kk = np.sqrt(u00 * kx * kx + 2 * u01 * kx * ky + u11 * ky * ky)
    grid = _dev_table()[0]
    with np.errstate(divide="ignore"):
        position = (np.log(kk) - np.log(grid[1])) * _dev_steps_per_log()
    psf_ft = np.ascontiguousarray(psf_ft)
    return _TemplateInputs(
        psf_ft, psf_ft.astype(np.complex64), kk, position, weights, weights * stamps
    )


@functools.lru_cache(maxsize=1)
def _dev_steps_per_log() -> float:
    """Nodes per unit of ``log q`` of the de Vaucouleurs table (after its first, 0)."""
    grid = _dev_table()[0]
    return float((len(grid) - 2) / (np.log(grid[-1]) - np.log(grid[1])))


def _spectra(
    inputs: _TemplateInputs,
    rows: NDArray[np.int64],
    radii: NDArray[np.float64],
    *,
    dev: bool,
    dtype: type[np.complexfloating[Any, Any]],
) -> NDArray[np.complexfloating[Any, Any]]:
    """Draw the transforms of templates of half-light radii ``radii`` (p, m) of sources ``rows``."""
    size = inputs.psf_ft.shape[1]
    out = np.empty((radii.shape[0], radii.shape[1], size, size // 2 + 1), dtype=dtype)
    grid, values, slopes = _dev_table()
    single = dtype == np.complex64
    psf_ft = inputs.psf_ft_single if single else inputs.psf_ft
    work = np.empty(size // 2 + 1, dtype=np.float32 if single else np.float64)
    _template_spectra(
        psf_ft, inputs.kk, inputs.position, rows, np.ascontiguousarray(radii),
        dev, grid, values, slopes, _dev_steps_per_log(), work, out,
    )  # fmt: skip
    return out


def _size_sums(
    inputs: _TemplateInputs,
    radii: NDArray[np.float64],
    sources: NDArray[np.int64],
    sizes: NDArray[np.int64],
    *,
    dev: bool,
    dtype: type[np.complexfloating[Any, Any]],
    subset: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``sum W t²`` and ``sum W x t`` of the templates ``t`` of (source, size index) pairs.

    ``radii`` (n, sizes) are the half-light radii of each source's size grid.
    The templates are drawn a few at a time and only their sums kept.
    ``subset`` gives the batch rows of ``sources`` (default: the batch's own).
    """
    rows = np.asarray(sources if subset is None else subset[sources], dtype=np.int64)
    pair_radii = radii[rows, sizes]
    size = inputs.psf_ft.shape[1]
    den, num = np.empty((len(rows), 1)), np.empty((len(rows), 1))
    for start in range(0, len(rows), _TRANSFORMS_AT_ONCE):
        part = slice(start, start + _TRANSFORMS_AT_ONCE)
        spectra = _spectra(inputs, rows[part], pair_radii[part, None], dev=dev, dtype=dtype)
        models = sp_fft.irfft2(spectra, s=(size, size), overwrite_x=True)
        _weighted_sums(
            models, inputs.weights, inputs.weighted_data, rows[part], den[part], num[part]
        )
    return den[:, 0], num[:, 0]


def _draw_templates(
    inputs: _TemplateInputs, radii: NDArray[np.float64], *, dev: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """One template per source (half-light radius ``radii[i]``, double precision).

    Returns the templates ``t`` (n, size, size), ``sum W t²`` and ``sum W x t``.
    """
    n = len(radii)
    rows = np.arange(n)
    size = inputs.psf_ft.shape[1]
    spectra = _spectra(inputs, rows, radii[:, None], dev=dev, dtype=np.complex128)
    models = np.asarray(sp_fft.irfft2(spectra, s=(size, size), overwrite_x=True))
    den, num = np.empty((n, 1)), np.empty((n, 1))
    _weighted_sums(models, inputs.weights, inputs.weighted_data, rows, den, num)
    return models[:, 0], den[:, 0], num[:, 0]


def _combine(
    exp: tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]],
    dev: tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]],
    weights: NDArray[np.float64],
    stamps: NDArray[np.float64],
) -> list[tuple[float, float, float, float] | None]:
    """Non-negative least-squares combination of each source's best exp and deV templates.

    With two columns the problem has a closed form: the unconstrained solution of
    the 2x2 normal equations when both amplitudes are positive (the minimum of a
    convex quadratic then lies inside the feasible quadrant), else the better of
    the two one-template fits with a non-negative amplitude (the minimum is on
    the boundary). Of collinear templates (the exp and deV templates of a point
    source are both the PSF) the one of larger gradient ``t'Wx`` is used alone,
    the exponential on a tie, as Lawson and Hanson's active-set NNLS does.
    """
    e, d = exp[1], dev[1]
    we, wd = weights * e, weights * d
    a_ee = np.einsum("nyx,nyx->n", we, e)
    a_dd = np.einsum("nyx,nyx->n", wd, d)
    a_ed = np.einsum("nyx,nyx->n", we, d)
    b_e = np.einsum("nyx,nyx->n", we, stamps)
    b_d = np.einsum("nyx,nyx->n", wd, stamps)
    det = a_ee * a_dd - a_ed * a_ed
    collinear = ~(det > _COLLINEAR * a_ee * a_dd)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_e = (a_dd * b_e - a_ed * b_d) / det
        c_d = (a_ee * b_d - a_ed * b_e) / det
        inside = ~collinear & (c_e > 0) & (c_d > 0)
        only_e = np.where(a_ee > 0, np.maximum(b_e / a_ee, 0.0), 0.0)
        only_d = np.where(a_dd > 0, np.maximum(b_d / a_dd, 0.0), 0.0)
    # On the boundary the better one-template fit; between collinear templates (equally
    # good fits) the one NNLS starts from, of the larger gradient b.
    use_e = np.where(collinear, b_e >= b_d, only_e * b_e >= only_d * b_d)
    c_e = np.where(inside, c_e, np.where(use_e, only_e, 0.0))
    c_d = np.where(inside, c_d, np.where(use_e, 0.0, only_d))
    flux = c_e + c_d
    chi_den = c_e * c_e * a_ee + 2.0 * c_e * c_d * a_ed + c_d * c_d * a_dd
    usable = exp[0] & dev[0] & np.any(weights > 0, axis=(1, 2)) & (flux > 0)
    out: list[tuple[float, float, float, float] | None] = [None] * len(flux)
    for i in np.flatnonzero(usable):
        # Each template has unit total flux: the combination is flux * t, t of unit flux.
        out[i] = (
            float(flux[i]),
            float(flux[i] / np.sqrt(chi_den[i])),
            float(c_d[i] / flux[i]),
            float(exp[2][i]),
        )
    return out


if __name__ == "__main__":
    _write_dev_transform(Path(_dev_transform.__file__))
