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

from ._footprint_spans import _label_compact
from .exposure import Exposure
from .mask import _bits_set

__all__ = ["CosmicRayConfig", "CosmicRays", "find_cosmic_rays"]

log = logging.getLogger(__name__)

_METHODS = ("sharpness", "lacosmic")
_SAT_MARGIN_PX = 3
# Rows per block of the candidate search.
_BLOCK_ROWS = 256


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
    ignore = ~np.isfinite(exposure.image) | ~np.isfinite(exposure.variance)
    if planes:
        _bits_set(exposure.mask, exposure.mask_planes.bitmask(*planes), into=ignore)
    psf = exposure.psf if psf is None else psf
    if config.method == "sharpness":
        axis, diagonal = _psf_ratios(psf, exposure.shape, psf_fwhm_px)
        ratios = (axis * config.psf_ratio_factor, diagonal * config.psf_ratio_factor)
        crmask = _sharp_pixels(exposure, ignore, ratios, config)
    else:
        crmask = _lacosmic(exposure, ignore, background, psf_fwhm_px, config)
    crmask = np.asarray(crmask, dtype=bool)
    if config.grow_px and crmask.any():
        crmask = ndimage.binary_dilation(
            crmask, structure=np.ones((3, 3), bool), iterations=config.grow_px
        )
    crmask &= ~ignore
    _, n_hits = _label_compact(crmask, np.ones((3, 3), bool))
    mask = exposure.mask.copy()
    mask[crmask] |= np.int32(exposure.mask_planes.bitmask("CR"))
    image = exposure.image
    if config.interpolate and crmask.any():
        image = _interpolate(image, crmask | ignore, crmask)
        mask[crmask] |= np.int32(exposure.mask_planes.bitmask("INTRP"))
    log.info("found %d cosmic-ray hits (%d pixels)", n_hits, int(crmask.sum()))
    ys, xs = np.nonzero(crmask)
    return CosmicRays(
        pixels=np.column_stack([ys, xs]).astype(np.int32),
        shape=(int(exposure.shape[0]), int(exposure.shape[1])),
        n_pixels=len(ys),
        n_hits=int(n_hits),
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
    ignore: NDArray[np.bool_],
    ratios: tuple[float, float],
    config: CosmicRayConfig,
) -> NDArray[np.bool_]:
    shape = exposure.shape

    def pixels(
        rows: NDArray[np.intp] | slice, cols: NDArray[np.intp] | slice
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        # Ignored pixels count as 0 with infinite noise (as do those without variance).
        skip = ignore[rows, cols]
        var = exposure.variance[rows, cols]
        image = np.where(skip, np.float32(0.0), exposure.image[rows, cols])
        sigma = np.sqrt(np.where(skip | ~(var > 0), np.inf, var))
        return image.astype(np.float32, copy=False), sigma.astype(np.float32, copy=False)

    # Candidates block by block of rows, neighbours only at the candidates: no
    # full-size cleaned image or noise map.
    candidate = np.empty(shape, dtype=bool)
    for y0 in range(0, shape[0], _BLOCK_ROWS):
        block = slice(y0, y0 + _BLOCK_ROWS)
        image, sigma = pixels(block, slice(None))
        candidate[block] = image > config.min_sigma * sigma
    # Edges of saturated cores and bleed trails are sharp but not cosmic rays.
    if "SAT" in exposure.mask_planes:
        saturated = exposure.plane("SAT")
        if saturated.any():
            candidate &= ~_dilate_near(saturated, _SAT_MARGIN_PX)
        del saturated
    candidate[0, :] = candidate[-1, :] = candidate[:, 0] = candidate[:, -1] = False
    ys, xs = np.nonzero(candidate)
    if len(ys) == 0:
        return candidate
    del candidate
    i0, s0 = pixels(ys, xs)
    lowered = i0 - config.peak_sigma * s0
    hit = np.zeros(len(ys), dtype=bool)
    for (dy, dx), ratio in (((0, 1), ratios[0]), ((1, 0), ratios[0]), ((1, 1), ratios[1]),
                            ((1, -1), ratios[1])):  # fmt: skip
        i1, s1 = pixels(ys + dy, xs + dx)
        i2, s2 = pixels(ys - dy, xs - dx)
        # Masked neighbours (infinite noise) never make a pixel look sharp.
        noise = 0.5 * np.sqrt(s1 * s1 + s2 * s2)
        hit |= lowered * ratio > 0.5 * (i1 + i2) + config.sharpness_sigma * noise
    out = np.zeros(shape, dtype=bool)
    out[ys[hit], xs[hit]] = True
    return out


def _dilate_near(mask: NDArray[np.bool_], iterations: int) -> NDArray[np.bool_]:
    """Return ``ndimage.binary_dilation(mask, iterations=iterations)`` (3x3 cross).

    Computed on the box around the set pixels only: saturated pixels are few, the
    image is large.
    """
    ys, xs = np.nonzero(mask)
    ny, nx = mask.shape
    y0, y1 = max(int(ys.min()) - iterations, 0), min(int(ys.max()) + iterations + 1, ny)
    x0, x1 = max(int(xs.min()) - iterations, 0), min(int(xs.max()) + iterations + 1, nx)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = ndimage.binary_dilation(mask[y0:y1, x0:x1], iterations=iterations)
    return out


def _interpolate(
    image: NDArray[np.float32], unusable: NDArray[np.bool_], target: NDArray[np.bool_]
) -> NDArray[np.float32]:
    # Median of the good pixels in a growing box; boxes widen until one is found.
    # Windows are gathered around the target pixels only (no padded image copies);
    # pixels off the image count as unusable.
    out = image.copy()
    ny, nx = image.shape
    ys, xs = np.nonzero(target)
    for half in (1, 2, 3, 5, 8):
        if len(ys) == 0:
            break
        offsets = np.arange(-half, half + 1)
        wy = (ys[:, None] + offsets[None, :])[:, :, None]
        wx = (xs[:, None] + offsets[None, :])[:, None, :]
        off = (wy < 0) | (wy >= ny) | (wx < 0) | (wx >= nx)
        cy, cx = np.clip(wy, 0, ny - 1), np.clip(wx, 0, nx - 1)
        windows = np.where(off | unusable[cy, cx], np.nan, image[cy, cx]).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: widen next
            values = np.nanmedian(windows.reshape(len(ys), -1), axis=1)
        ok = np.isfinite(values)
        out[ys[ok], xs[ok]] = values[ok]
        ys, xs = ys[~ok], xs[~ok]
    return out
