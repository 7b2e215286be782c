"""Cosmic rays on single frames: pixels sharper than the PSF allows.

Two methods:

* ``"sharpness"`` (default, vectorized over the image): the test of the SDSS and
  LSST pipelines. A pixel of value ``I0`` (sky subtracted, noise ``s0`` from the
  variance plane) above ``min_sigma`` noise is a cosmic ray if, along any of the
  four directions (two axes, two diagonals), with ``I1, I2`` its two neighbours
  and ``r`` the PSF's neighbour-to-centre ratio at that distance,
  ``(I0 - c2 s0) r > (I1 + I2) / 2 + c1 s`` (``c1 = sharpness_sigma``,
  ``c2 = peak_sigma``; ``s`` the neighbours' mean noise). No real source can
  satisfy this, because its light went through the PSF. ``r`` is taken from the
  sharpest place of the PSF model, so stars are safe wherever they are.
* ``"lacosmic"``: L.A.Cosmic (van Dokkum 2001) through astroscrappy, with the
  noise from the variance plane (slower, PSF-agnostic).

Hit pixels are grown by ``grow_px`` and get the CR plane; when ``interpolate``
is set they are replaced by the median of their unmasked neighbours and also
get the INTRP plane.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import astroscrappy
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ._footprint_spans import _connect_runs
from ._jit import _compiled, _enlarged
from .exposure import Exposure
from .mask import _bits_set

__all__ = ["CosmicRayConfig", "CosmicRays", "find_cosmic_rays"]

log = logging.getLogger(__name__)

_METHODS = ("sharpness", "lacosmic")
_SAT_MARGIN_PX = 3


@dataclass(frozen=True, kw_only=True)
class CosmicRayConfig:
    """Settings of :func:`find_cosmic_rays`.

    Attributes
    ----------
    method : str
        ``"sharpness"`` (PSF-based test, fast) or ``"lacosmic"`` (astroscrappy).
    min_sigma : float
        Sharpness method: a cosmic-ray pixel is at least this many noise sigmas
        above the sky.
    sharpness_sigma : float
        Sharpness method: margin ``c1`` (noise units) by which the pixel must beat
        what the PSF allows from its neighbours.
    peak_sigma : float
        Sharpness method: the pixel value is lowered by this many sigmas ``c2``
        before the comparison (protects noisy star peaks).
    psf_ratio_factor : float
        Sharpness method: the PSF's neighbour-to-centre ratios are multiplied by
        this (< 1) so that an imperfect PSF model never makes stars look sharp.
    sigma_clip : float
        L.A.Cosmic: Laplacian-to-noise threshold for a CR pixel (noise units).
    sigma_fraction : float
        Neighbouring pixels join a CR above ``sigma_fraction * sigma_clip``.
    object_limit : float
        Minimum contrast between the Laplacian and the fine structure image;
        raise it if star cores are flagged.
    n_iterations : int
        L.A.Cosmic iterations.
    grow_px : int
        Grow the CR mask by this many pixels (0 for none).
    interpolate : bool
        Replace CR pixels by an estimate from their neighbours (and set INTRP).
    ignore_planes : tuple of str
        Pixels of these planes are neither flagged nor used.
    """

    method: str = "sharpness"
    min_sigma: float = 6.0
    sharpness_sigma: float = 5.0
    peak_sigma: float = 2.0
    psf_ratio_factor: float = 0.7
    sigma_clip: float = 5.0
    sigma_fraction: float = 0.3
    object_limit: float = 5.0
    n_iterations: int = 2
    grow_px: int = 1
    interpolate: bool = True
    ignore_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            msg = f"method must be one of {_METHODS}, got {self.method!r}"
            raise ValueError(msg)
        if not 0 < self.psf_ratio_factor <= 1:
            msg = f"psf_ratio_factor must be in (0, 1], got {self.psf_ratio_factor!r}"
            raise ValueError(msg)
        for name in ("min_sigma", "sharpness_sigma", "sigma_clip", "sigma_fraction",
                     "object_limit"):  # fmt: skip
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not isinstance(self.n_iterations, int) or self.n_iterations < 1:
            msg = f"n_iterations must be an integer >= 1, got {self.n_iterations!r}"
            raise ValueError(msg)
        if not isinstance(self.grow_px, int) or self.grow_px < 0:
            msg = f"grow_px must be an integer >= 0, got {self.grow_px!r}"
            raise ValueError(msg)
        object.__setattr__(self, "ignore_planes", tuple(self.ignore_planes))


@dataclass(frozen=True, eq=False)
class CosmicRays:
    """Cosmic rays found on one exposure.

    Attributes
    ----------
    pixels : numpy.ndarray
        int32 array of shape ``(n_pixels, 2)``: ``(y, x)`` of every pixel flagged
        as a cosmic ray (after growing), in row-major order.
    shape : tuple of int
        ``(ny, nx)`` of the exposure (pixels).
    n_pixels : int
        Number of flagged pixels.
    n_hits : int
        Number of connected groups of flagged pixels.
    exposure : Exposure
        A new exposure with the CR plane set (and, if interpolating, the pixels
        replaced and INTRP set); the input is untouched.
    config : CosmicRayConfig
        The settings that made it.
    """

    pixels: NDArray[np.int32]
    shape: tuple[int, int]
    n_pixels: int
    n_hits: int
    exposure: Exposure
    config: CosmicRayConfig = field(default_factory=CosmicRayConfig)

    @property
    def mask(self) -> NDArray[np.bool_]:
        """Boolean image of the flagged pixels (drawn from :attr:`pixels`; a new array)."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.pixels[:, 0], self.pixels[:, 1]] = True
        return out


def find_cosmic_rays(
    exposure: Exposure,
    config: CosmicRayConfig | None = None,
    *,
    background: NDArray[np.floating] | float = 0.0,
    psf_fwhm_px: float | None = None,
    psf: Any = None,
) -> CosmicRays:
    """Find, mask and optionally repair cosmic rays.

    Parameters
    ----------
    exposure : Exposure
        Image in ADU with its variance plane (background-subtracted or not).
    config : CosmicRayConfig, optional
        Settings; defaults when omitted.
    background : array_like or float
        Sky level already subtracted from the image (ADU); it is only used so
        that the noise model sees the true counts.
    psf_fwhm_px : float, optional
        PSF FWHM (pixels) when no ``psf`` is given (a Gaussian); 2.5 px when omitted.
    psf : object with ``compute_image(x, y)``, optional
        PSF model; by default ``exposure.psf``. The sharpness test takes its
        neighbour-to-centre ratios from it.

    Returns
    -------
    CosmicRays

    Raises
    ------
    ValueError
        If ``psf_fwhm_px`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> image = rng.normal(0.0, 5.0, (64, 64)); image[20, 30] = 500.0
    >>> crs = find_cosmic_rays(Exposure(image, variance=np.full((64, 64), 25.0)))
    >>> bool(crs.mask[20, 30])
    True
    """
    config = CosmicRayConfig() if config is None else config
    if psf_fwhm_px is not None and not psf_fwhm_px > 0:
        msg = f"psf_fwhm_px must be > 0 pixels, got {psf_fwhm_px!r}"
        raise ValueError(msg)
    planes = [p for p in config.ignore_planes if p in exposure.mask_planes]
    ignore_bits = exposure.mask.dtype.type(exposure.mask_planes.bitmask(*planes) if planes else 0)
    psf = exposure.psf if psf is None else psf
    if config.method == "sharpness":
        axis, diagonal = _psf_ratios(psf, exposure.shape, psf_fwhm_px)
        ratios = (axis * config.psf_ratio_factor, diagonal * config.psf_ratio_factor)
        hits = _sharp_pixels(exposure, ignore_bits, ratios, config)
    else:
        ignore = ~np.isfinite(exposure.image) | ~np.isfinite(exposure.variance)
        if planes:
            _bits_set(exposure.mask, int(ignore_bits), into=ignore)
        hits = np.flatnonzero(_lacosmic(exposure, ignore, background, psf_fwhm_px, config))
        del ignore
    # The mask is handled as the sorted flat indices of its pixels: cosmic rays
    # cover a tiny fraction of the image, so no full-size pass is made after the search.
    ny, nx = exposure.shape
    if config.grow_px and len(hits):
        hits = _grown(hits, (ny, nx), config.grow_px)
    ys, xs = hits // nx, hits % nx
    keep = ~_ignored_at(exposure, ignore_bits, ys, xs)
    ys, xs, hits = ys[keep], xs[keep], hits[keep]
    n_hits = _count_groups(hits, (ny, nx))
    mask = exposure.mask.copy()
    mask[ys, xs] |= np.int32(exposure.mask_planes.bitmask("CR"))
    image = exposure.image
    if config.interpolate and len(hits):
        image = _interpolate(exposure, ignore_bits, hits)
        mask[ys, xs] |= np.int32(exposure.mask_planes.bitmask("INTRP"))
    log.info("found %d cosmic-ray hits (%d pixels)", n_hits, len(hits))
    return CosmicRays(
        pixels=np.column_stack([ys, xs]).astype(np.int32),
        shape=(int(exposure.shape[0]), int(exposure.shape[1])),
        n_pixels=len(ys),
        n_hits=n_hits,
        exposure=exposure.replace(image=image, mask=mask),
        config=config,
    )


def _lacosmic(
    exposure: Exposure,
    ignore: NDArray[np.bool_],
    background: NDArray[np.floating] | float,
    psf_fwhm_px: float | None,
    config: CosmicRayConfig,
) -> NDArray[np.bool_]:
    back = np.broadcast_to(np.asarray(background, dtype=np.float32), exposure.shape)
    data = np.where(ignore, 0.0, exposure.image + back).astype(np.float32)
    var = np.where(ignore, np.nanmedian(exposure.variance), exposure.variance).astype(np.float32)
    var = np.maximum(var, np.float32(1e-6))
    crmask, _ = astroscrappy.detect_cosmics(
        data,
        inmask=ignore,
        inbkg=np.ascontiguousarray(back),
        invar=var,
        sigclip=config.sigma_clip,
        sigfrac=config.sigma_fraction,
        objlim=config.object_limit,
        niter=config.n_iterations,
        satlevel=np.inf,
        psffwhm=2.5 if psf_fwhm_px is None else float(psf_fwhm_px),
        psfsize=7,
    )
    return np.asarray(crmask, dtype=bool)


def _psf_ratios(psf: Any, shape: tuple[int, int], fwhm_px: float | None) -> tuple[float, float]:
    """Smallest neighbour-to-centre ratios of the PSF: along an axis, and along a diagonal."""
    if psf is None:
        sigma = (2.5 if fwhm_px is None else fwhm_px) / 2.3548200450309493
        # A pixelized Gaussian: sample 5x5 points per pixel.
        sub = (np.arange(5) + 0.5) / 5 - 0.5

        def pix(dx: float, dy: float) -> float:
            return float(
                np.sum(
                    np.exp(-0.5 * ((sub[None, :] + dx) ** 2 + (sub[:, None] + dy) ** 2) / sigma**2)
                )
            )

        centre = pix(0.0, 0.0)
        return pix(1.0, 0.0) / centre, pix(1.0, 1.0) / centre
    ny, nx = shape
    axis, diagonal = 1.0, 1.0
    for fx in (0.0, 0.5, 1.0):
        for fy in (0.0, 0.5, 1.0):
            stamp = np.asarray(psf.compute_image(fx * (nx - 1), fy * (ny - 1)), dtype=float)
            c = stamp.shape[0] // 2
            peak = stamp[c, c]
            axis = min(axis, stamp[c, c - 1] / peak, stamp[c, c + 1] / peak,
                       stamp[c - 1, c] / peak, stamp[c + 1, c] / peak)  # fmt: skip
            diagonal = min(diagonal, stamp[c - 1, c - 1] / peak, stamp[c + 1, c + 1] / peak,
                           stamp[c - 1, c + 1] / peak, stamp[c + 1, c - 1] / peak)  # fmt: skip
    return float(axis), float(diagonal)


def _sharp_pixels(
    exposure: Exposure,
    ignore_bits: np.integer,
    ratios: tuple[float, float],
    config: CosmicRayConfig,
) -> NDArray[np.int64]:
    """Flat indices (sorted) of the pixels that pass the sharpness test."""
    sat_bit = exposure.mask_planes.bitmask("SAT") if "SAT" in exposure.mask_planes else 0
    # float32 thresholds: the test is made in float32, on the float32 planes.
    return _sharp_kernel(
        exposure.image, exposure.variance, exposure.mask, ignore_bits,
        exposure.mask.dtype.type(sat_bit), _SAT_MARGIN_PX,
        np.float32(config.min_sigma), np.float32(config.peak_sigma),
        np.float32(config.sharpness_sigma), np.float32(ratios[0]), np.float32(ratios[1]),
    )  # fmt: skip


@_compiled
def _pixel(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.integer],
    ignore_bits: np.integer,
    y: int,
    x: int,
) -> tuple[np.float32, np.float32]:  # pragma: no cover - compiled; run through _sharp_kernel
    """Return the value and the noise of pixel ``(y, x)``.

    Ignored pixels count as 0 with infinite noise (as do those without a positive
    variance).
    """
    value = image[y, x]
    var = variance[y, x]
    if not np.isfinite(value) or not np.isfinite(var) or (mask[y, x] & ignore_bits) != 0:
        return np.float32(0.0), np.float32(np.inf)
    if not var > 0:
        return value, np.float32(np.inf)
    return value, np.float32(np.sqrt(var))


@_compiled
def _sharp_kernel(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.integer],
    ignore_bits: np.integer,
    sat_bit: np.integer,
    sat_margin: int,
    min_sigma: np.float32,
    peak_sigma: np.float32,
    sharpness_sigma: np.float32,
    ratio_axis: np.float32,
    ratio_diagonal: np.float32,
) -> NDArray[np.int64]:  # pragma: no cover - compiled; run through _sharp_pixels
    """Flat indices, in row-major order, of the pixels that pass the sharpness test.

    One pass over the image; the neighbours are read at the candidates only (pixels
    ``min_sigma`` above their noise, off the image border and further than
    ``sat_margin`` pixels, along the grid, from a saturated one: the edges of
    saturated cores and bleed trails are sharp but not cosmic rays). All arithmetic
    of the test is float32, in the order of the formulas in the module docstring, so
    that pixels at the threshold pass as they always have (the thresholds are the
    float32 values of the settings).
    """
    ny, nx = image.shape
    half = np.float32(0.5)
    steps_y, steps_x = (0, 1, 1, 1), (1, 0, 1, -1)
    # A candidate has value > min_sigma * sqrt(var) (float32, a few roundings), so
    # value² > 0.999 min_sigma² var (float64) for every candidate: a branch-free
    # test without square roots that drops nearly every other pixel.
    loose = 0.999 * np.float64(min_sigma) * np.float64(min_sigma)
    maybe = np.zeros(nx, dtype=np.bool_)
    capacity = 1024
    found = np.empty(capacity, dtype=np.int64)
    n_found = 0
    for y in range(1, ny - 1):
        for x in range(1, nx - 1):
            v = np.float64(image[y, x])
            maybe[x] = (v > 0) & (v * v > loose * np.float64(variance[y, x]))
        for x in range(1, nx - 1):
            if not maybe[x]:
                continue
            i0, s0 = _pixel(image, variance, mask, ignore_bits, y, x)
            if not i0 > min_sigma * s0:
                continue
            if sat_bit != 0 and _near_bit(mask, sat_bit, y, x, sat_margin):
                continue
            lowered = i0 - peak_sigma * s0
            hit = False
            # Along x, y and the two diagonals, each with its PSF ratio.
            for direction in range(4):
                dy, dx = steps_y[direction], steps_x[direction]
                ratio = ratio_axis if direction < 2 else ratio_diagonal
                i1, s1 = _pixel(image, variance, mask, ignore_bits, y + dy, x + dx)
                i2, s2 = _pixel(image, variance, mask, ignore_bits, y - dy, x - dx)
                # Masked neighbours (infinite noise) never make a pixel look sharp.
                noise = half * np.float32(np.sqrt(s1 * s1 + s2 * s2))
                if lowered * ratio > half * (i1 + i2) + sharpness_sigma * noise:
                    hit = True
            if hit:
                if n_found == capacity:
                    capacity *= 2
                    found = _enlarged(found, capacity)
                found[n_found] = y * nx + x
                n_found += 1
    return found[:n_found].copy()


@_compiled
def _near_bit(
    mask: NDArray[np.integer], bit: np.integer, y: int, x: int, margin: int
) -> bool:  # pragma: no cover - compiled; run through _sharp_kernel
    """Whether a pixel within ``margin`` steps along the grid (``|dy| + |dx|``) has ``bit``.

    The same as ``ndimage.binary_dilation(plane, iterations=margin)`` (3x3 cross) at
    that pixel.
    """
    ny, nx = mask.shape
    for dy in range(-margin, margin + 1):
        yy = y + dy
        if yy < 0 or yy >= ny:
            continue
        reach = margin - abs(dy)
        for xx in range(max(x - reach, 0), min(x + reach + 1, nx)):
            if (mask[yy, xx] & bit) != 0:
                return True
    return False


def _ignored_at(
    exposure: Exposure, ignore_bits: np.integer, ys: NDArray[np.integer], xs: NDArray[np.integer]
) -> NDArray[np.bool_]:
    """Whether pixels ``(ys, xs)`` are left out: non-finite image or variance, or ignored planes."""
    return (
        ~np.isfinite(exposure.image[ys, xs])
        | ~np.isfinite(exposure.variance[ys, xs])
        | ((exposure.mask[ys, xs] & ignore_bits) != 0)
    )


def _dense(n_pixels: int, shape: tuple[int, int]) -> bool:
    """Whether a list of ``n_pixels`` flat indices is better handled as a boolean image.

    Index lists win while cosmic rays cover a tiny fraction of the image; on a frame
    with many hot pixels (or an underestimated variance) they would hold many times
    the image's size in int64 indices.
    """
    return n_pixels > shape[0] * shape[1] // 64


def _grown(hits: NDArray[np.int64], shape: tuple[int, int], grow_px: int) -> NDArray[np.int64]:
    """Sorted flat indices of ``hits`` grown by a ``(2 grow_px + 1)``-pixel square.

    The same pixels as ``ndimage.binary_dilation`` with a 3x3 square iterated
    ``grow_px`` times (pixels off the image are not set).
    """
    ny, nx = shape
    box = (2 * grow_px + 1) ** 2
    if _dense(len(hits) * box, shape):
        image = np.zeros(ny * nx, dtype=bool)
        image[hits] = True
        square = np.ones((3, 3), dtype=bool)
        grown = ndimage.binary_dilation(image.reshape(ny, nx), square, iterations=grow_px)
        return np.flatnonzero(grown)
    offsets = np.arange(-grow_px, grow_px + 1)
    ys = (hits // nx)[:, None, None] + offsets[None, :, None]
    xs = (hits % nx)[:, None, None] + offsets[None, None, :]
    inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
    return np.unique((ys * nx + xs)[inside])


def _count_groups(flat: NDArray[np.int64], shape: tuple[int, int]) -> int:
    """Count the 8-connected groups among the pixels of sorted flat indices ``flat``.

    The pixels are cut into runs along x (raster order, as the indices are sorted)
    and joined as detection joins its footprints' runs.
    """
    if len(flat) == 0:
        return 0
    nx = shape[1]
    y, x = flat // nx, flat % nx
    starts = np.flatnonzero(np.r_[True, (np.diff(flat) != 1) | (y[1:] != y[:-1])])
    last = np.r_[starts[1:], len(flat)] - 1
    runs = np.zeros((len(starts), 4), dtype=np.int32)
    runs[:, 1], runs[:, 2], runs[:, 3] = y[starts], x[starts], x[last] + 1
    return int(_connect_runs(runs)[1])


def _interpolate(
    exposure: Exposure, ignore_bits: np.integer, target: NDArray[np.int64]
) -> NDArray[np.float32]:
    """Image with the pixels of flat indices ``target`` (sorted) repaired.

    Each becomes the median of the usable pixels (not ignored, not a target) in a
    growing box; boxes widen until one is found. Windows are gathered around the
    target pixels only (no padded image copies); pixels off the image count as
    unusable.
    """
    image = exposure.image
    out = image.copy()
    ny, nx = image.shape
    is_target = np.zeros(image.shape, dtype=bool)  # zero pages: only touched ones cost
    is_target.flat[target] = True
    ys, xs = target // nx, target % nx
    for half in (1, 2, 3, 5, 8):
        if len(ys) == 0:
            break
        offsets = np.arange(-half, half + 1)
        wy = (ys[:, None] + offsets[None, :])[:, :, None]
        wx = (xs[:, None] + offsets[None, :])[:, None, :]
        off = (wy < 0) | (wy >= ny) | (wx < 0) | (wx >= nx)
        cy, cx = np.clip(wy, 0, ny - 1), np.clip(wx, 0, nx - 1)
        unusable = off | is_target[cy, cx] | _ignored_at(exposure, ignore_bits, cy, cx)
        windows = np.where(unusable, np.nan, image[cy, cx]).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: widen next
            values = np.nanmedian(windows.reshape(len(ys), -1), axis=1)
        ok = np.isfinite(values)
        out[ys[ok], xs[ok]] = values[ok]
        ys, xs = ys[~ok], xs[~ok]
    return out
