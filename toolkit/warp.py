"""Warping: resample an Exposure onto another pixel grid (a patch), planes and PSF included.

The resampling kernel is a separable Lanczos kernel of order ``a`` (3 by default).
Input positions of output pixels are computed with the exact WCS on a coarse
grid and interpolated by bicubic splines in between, which also give the local
Jacobian ``J = d(x_in, y_in) / d(x_out, y_out)``.

For output pixel ``p`` at input position ``q(p)`` with kernel weights ``w_k``
over input pixels ``k`` that are usable (inside the sensor and free of
``bad_mask_planes``)::

    I_out = |det J| * sum_k w_k I_k / sum_k w_k           (surface brightness -> flux per pixel)
    V_out = |det J|**2 * sum_k w_k**2 V_k / (sum_k w_k)**2

so star fluxes are conserved and ``V_out`` is the exact per-pixel variance of
the warped noise. Resampling correlates neighbouring pixels; the variance of a
sum over many warped pixels is ``covariance_factor`` times the sum of their
``V_out`` (the factor is reported per warp and used for coadd weights).

Mask bits of input pixels whose kernel weight exceeds ``mask_weight_threshold``
are OR'ed into the output pixel (the mask grows by the kernel's core). Output
pixels whose input position falls outside the input are ``NO_DATA``; pixels
whose kernel reaches beyond the sensor get ``SENSOR_EDGE``.

Only the box of the target grid that the input's outline maps into is resampled
(the rest is ``NO_DATA``), so the work follows the input's area, not the grid's.
There, a compiled kernel (`_warp_kernel`, numba) sums each output pixel's ``(2a)**2``
taps (weights tabulated every 1/16384 px, rows normalized) over the input planes in
one pass.

The PSF is carried as a :class:`WarpedPsf` (module `warped_psf`): the input model's
stamp at the matching input position, resampled through the local Jacobian. The kernel
tables are in `_lanczos`, the mapping between the grids in `_grid_map`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray

from ._grid_map import _output_box, _PixelMap
from ._lanczos import _tap_table
from ._warp_kernel import _resample_block
from .exposure import Exposure
from .mask import MaskPlanes
from .warped_psf import WarpedPsf

__all__ = ["Warp", "WarpConfig", "WarpedPsf", "warp_exposure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WarpConfig:
    """How to resample an exposure.

    Attributes
    ----------
    lanczos_order : int
        Order ``a`` of the Lanczos kernel (2 to 5); the kernel spans ``2a`` input pixels.
    grid_step_px : int
        The exact WCS is evaluated every this many output pixels (and splined between).
    chunk_rows : int
        Output rows resampled at a time (bounds the temporary memory).
    bad_mask_planes : tuple of str
        Input pixels with any of these planes are left out of the kernel sums.
    mask_weight_threshold : float
        Input mask bits reach an output pixel when the input pixel's kernel
        weight is larger than this in absolute value.
    min_good_weight : float
        Output pixels whose usable kernel weight (of a total of 1) is below this
        become ``NO_DATA``: too little of the input is left to interpolate.
    """

    lanczos_order: int = 3
    grid_step_px: int = 32
    chunk_rows: int = 64
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA")
    mask_weight_threshold: float = 0.05
    min_good_weight: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.lanczos_order, int) or not 2 <= self.lanczos_order <= 5:
            msg = f"lanczos_order must be an integer in 2..5, got {self.lanczos_order!r}"
            raise ValueError(msg)
        if not isinstance(self.grid_step_px, int) or self.grid_step_px < 1:
            msg = f"grid_step_px must be an integer >= 1, got {self.grid_step_px!r}"
            raise ValueError(msg)
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            msg = f"chunk_rows must be an integer >= 1, got {self.chunk_rows!r}"
            raise ValueError(msg)
        if not 0.0 <= self.mask_weight_threshold < 1.0:
            msg = f"mask_weight_threshold must be in [0, 1), got {self.mask_weight_threshold!r}"
            raise ValueError(msg)
        if not 0.0 < self.min_good_weight <= 1.0:
            msg = f"min_good_weight must be in (0, 1], got {self.min_good_weight!r}"
            raise ValueError(msg)
        object.__setattr__(self, "bad_mask_planes", tuple(self.bad_mask_planes))


@dataclass(frozen=True, eq=False)
class Warp:
    """An exposure resampled onto a target grid.

    Attributes
    ----------
    exposure : Exposure
        Image (ADU per output pixel), variance (ADU²), mask, the target WCS, a
        :class:`WarpedPsf`, and the input's zero point, band and visit.
    covariance_factor : float
        Variance of a sum over many warped pixels divided by the sum of their
        variance-plane values (>= 1 for interpolating kernels): the noise
        correlation the resampling introduced.
    n_good_pixels : int
        Output pixels with data.
    config : WarpConfig
        The configuration used.
    """

    exposure: Exposure
    covariance_factor: float
    n_good_pixels: int
    config: WarpConfig


def warp_exposure(
    exposure: Exposure,
    wcs: WCS,
    shape: tuple[int, int],
    config: WarpConfig | None = None,
) -> Warp:
    """Resample ``exposure`` onto the pixel grid ``(wcs, shape)``.

    Parameters
    ----------
    exposure : Exposure
        Input image with a celestial WCS (a PSF is carried when present).
    wcs : astropy.wcs.WCS
        Celestial WCS of the target grid, e.g. a patch's.
    shape : tuple of int
        ``(ny, nx)`` of the target grid (pixels).
    config : WarpConfig, optional
        Kernel and masking options.

    Returns
    -------
    Warp

    Raises
    ------
    ValueError
        If the exposure has no WCS, or does not overlap the target grid, or the
        WCS cannot map the grid.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> config = SimulationConfig(size=96, galaxy_density_arcmin2=1.0, bands=("r",))
    >>> exposure = simulate_visit(make_sky(config), config, visit=0).exposure
    >>> warp = warp_exposure(exposure, exposure.wcs, exposure.shape)
    >>> bool(abs(warp.exposure.image[48, 48] - exposure.image[48, 48]) < 1e-2)
    True
    """
    config = WarpConfig() if config is None else config
    box = _warp_box(exposure, wcs, shape, config)
    ny, nx = int(shape[0]), int(shape[1])
    y0, y1, x0, x1 = box.box
    out_image = np.zeros((ny, nx), dtype=np.float32)
    out_var = np.full((ny, nx), np.inf, dtype=np.float32)
    out_mask = np.full((ny, nx), box.mask_planes.bitmask("NO_DATA"), dtype=np.int32)
    out_image[y0:y1, x0:x1] = box.image
    out_var[y0:y1, x0:x1] = box.variance
    out_mask[y0:y1, x0:x1] = box.mask
    warped = Exposure(
        out_image,
        variance=out_var,
        mask=out_mask,
        wcs=wcs,
        psf=box.psf,
        zero_point=exposure.zero_point,
        band=exposure.band,
        visit=exposure.visit,
        detector=exposure.detector,
        mask_planes=box.mask_planes,
        meta={**exposure.meta, "WARPCOV": box.covariance_factor},
    )
    return Warp(warped, box.covariance_factor, box.n_good, config)


@dataclass(frozen=True, eq=False)
class _WarpBox:
    """A warp held only on the box of the target grid the input can reach (private).

    Outside ``box = (y0, y1, x0, x1)`` the warp is NO_DATA (image 0, variance inf).
    The coadd keeps warps in this form so that work and scratch space follow the
    inputs' footprints, not the patch area times the number of inputs.
    """

    box: tuple[int, int, int, int]
    image: NDArray[np.float32]
    variance: NDArray[np.float32]
    mask: NDArray[np.int32]
    mask_planes: MaskPlanes
    covariance_factor: float
    n_good: int
    psf: WarpedPsf | None


def _window_reach(special: NDArray[np.bool_], taps: int) -> NDArray[np.bool_]:
    """``out[r, c]``: any of ``special[r : r + taps, c : c + taps]`` (separable box OR)."""
    h, w = special.shape
    rows = special[:, : w - taps + 1].copy()
    for i in range(1, taps):
        rows |= special[:, i : w - taps + 1 + i]
    out = rows[: h - taps + 1].copy()
    for j in range(1, taps):
        out |= rows[j : h - taps + 1 + j]
    return out


def _warp_box(exposure: Exposure, wcs: WCS, shape: tuple[int, int], config: WarpConfig) -> _WarpBox:
    """Resample ``exposure`` onto the part of ``(wcs, shape)`` it can reach.

    The input planes are padded once; the compiled kernel then resamples the box in
    row chunks (positions from the splined mapping). Where a kernel touches no bad
    pixel its usable weight is its full weight, 1; only the pixels whose kernel
    touches a masked or bad pixel or the sensor edge get a tap-by-tap pass for their
    usable weight and mask bits.
    """
    if exposure.wcs is None:
        msg = f"{exposure!r} has no WCS; warping needs one"
        raise ValueError(msg)
    if not isinstance(wcs, WCS):
        msg = f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}"
        raise TypeError(msg)
    if len(shape) != 2 or min(shape) < 1:
        msg = f"shape must be (ny, nx) with positive sizes, got {shape!r}"
        raise ValueError(msg)
    ny, nx = int(shape[0]), int(shape[1])
    planes = exposure.mask_planes
    for name in ("NO_DATA", "SENSOR_EDGE"):
        planes = planes.with_plane(name)
    no_data_bit = np.int32(planes.bitmask("NO_DATA"))
    edge_bit = np.int32(planes.bitmask("SENSOR_EDGE"))
    (by0, by1, bx0, bx1), outline = _output_box(exposure.wcs, wcs, exposure.shape, (ny, nx))
    bny, bnx = by1 - by0, bx1 - bx0
    if bny <= 0 or bnx <= 0:
        _raise_no_overlap(exposure, shape)
    pixel_map = _PixelMap(exposure.wcs, wcs, (bny, bnx), config.grid_step_px, (by0, bx0))
    bad_bits = exposure.mask_planes.bitmask(
        *[p for p in config.bad_mask_planes if p in exposure.mask_planes]
    )
    a = config.lanczos_order
    taps = 2 * a
    pad = a + 1
    in_ny, in_nx = exposure.shape
    good_in = (exposure.mask & bad_bits) == 0
    good_in &= np.isfinite(exposure.image) & np.isfinite(exposure.variance)
    # Remapping commutes with OR-ing bits: translate the input mask once, before the
    # kernel OR's it into output pixels.
    in_mask = (
        exposure.mask_planes.remap(exposure.mask, planes)
        if planes != exposure.mask_planes
        else exposure.mask
    )

    def padded(values: NDArray[Any] | bool, dtype: Any) -> NDArray[Any]:
        out = np.zeros((in_ny + 2 * pad, in_nx + 2 * pad), dtype=dtype)
        out[pad:-pad, pad:-pad] = values
        return out

    # Bad pixels are zeroed in the image and variance and flagged 0 in the usable
    # plane, so each sum leaves them out and the usable sum renormalizes.
    image_p = padded(np.where(good_in, exposure.image, 0.0), np.float32)
    var_p = padded(np.where(good_in, exposure.variance, 0.0), np.float32)
    good_p = padded(good_in, np.float32)
    mask_p = padded(in_mask, np.int32)
    # Kernels whose window touches a masked or bad pixel or the padding need the
    # tap-by-tap pass; indexed by the window's first row and column.
    reach = _window_reach((mask_p != 0) | (good_p == 0), taps)

    out_image = np.zeros((bny, bnx), dtype=np.float32)
    out_var = np.full((bny, bnx), np.inf, dtype=np.float32)
    out_mask = np.full((bny, bnx), no_data_bit, dtype=np.int32)
    sum_corr, sum_var = 0.0, 0.0
    table = _tap_table(a)
    for r0 in range(0, bny, config.chunk_rows):
        r1 = min(r0 + config.chunk_rows, bny)
        c0, c1 = 0, bnx
        if outline is not None:
            reached = outline.columns(by0 + r0, by0 + r1 - 1)
            if reached is None:
                continue
            c0 = max(0, int(np.floor(reached[0])) - bx0)
            c1 = min(bnx, int(np.ceil(reached[1])) + 1 - bx0)
            if c1 <= c0:
                continue
        xin, yin, det = pixel_map.rows(r0, r1, c0, c1)
        # Noise of a large sum: det * (input variance) per output pixel, against the
        # per-pixel variance the plane holds (summed over pixels with full weight).
        chunk_corr, chunk_var = _resample_block(
            xin, yin, det, r0, c0, image_p, var_p, good_p, mask_p, reach, table,
            (in_ny, in_nx), pad, np.float32(config.mask_weight_threshold),
            np.float32(config.min_good_weight), edge_bit, no_data_bit,
            out_image, out_var, out_mask,
        )  # fmt: skip
        sum_corr += chunk_corr
        sum_var += chunk_var
    n_good = int(np.sum((out_mask & no_data_bit) == 0))
    if n_good == 0:
        _raise_no_overlap(exposure, shape)
    covariance_factor = sum_corr / sum_var if sum_var > 0 else 1.0
    psf = (
        WarpedPsf(exposure.psf, exposure.wcs, wcs, config.lanczos_order)
        if exposure.psf is not None
        else None
    )
    log.debug(
        "warped %r onto box %s: %d good pixels, covariance factor %.3f",
        exposure, (by0, by1, bx0, bx1), n_good, covariance_factor,
    )  # fmt: skip
    return _WarpBox(
        (by0, by1, bx0, bx1), out_image, out_var, out_mask, planes, float(covariance_factor),
        n_good, psf,
    )  # fmt: skip


def _raise_no_overlap(exposure: Exposure, shape: tuple[int, int]) -> None:
    msg = (
        f"{exposure!r} does not overlap the target grid of shape {shape}; "
        "choose a patch that the exposure covers (skymap.patches_overlapping)"
    )
    raise ValueError(msg)
