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

The PSF is carried as a :class:`WarpedPsf`: the input model's stamp at the
matching input position, transformed through the local Jacobian with GalSim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray
from scipy.interpolate import RectBivariateSpline

from .exposure import Exposure
from .stamp_moments import stamp_moments

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


def _lanczos_taps(frac: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    """Lanczos weights of taps ``k = 1 - order .. order`` for offsets ``frac`` in [0, 1).

    ``L(t) = order sin(pi t) sin(pi t / order) / (pi t)**2`` with ``t = frac - k``;
    ``sin(pi (frac - k)) = (-1)**k sin(pi frac)`` is computed once.
    """
    offsets = np.arange(1 - order, order + 1)
    t = frac[:, None] - offsets[None, :]
    sign = np.where(offsets % 2 == 0, 1.0, -1.0)
    numerator = order * (np.sin(np.pi * frac)[:, None] * sign) * np.sin(np.pi * t / order)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / (np.pi * t) ** 2
    return np.asarray(np.where(np.abs(t) < 1e-9, 1.0, out))


def _exact_map(
    input_wcs: WCS, output_wcs: WCS, x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    ra, dec = output_wcs.all_pix2world(x, y, 0)
    xin, yin = input_wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(xin, dtype=np.float64), np.asarray(yin, dtype=np.float64)


def _jacobian(input_wcs: WCS, output_wcs: WCS, x: float, y: float) -> NDArray[np.float64]:
    """``d(x_in, y_in) / d(x_out, y_out)`` at one output position (exact WCS)."""
    h = 0.5
    px, py = np.array([x + h, x - h, x, x]), np.array([y, y, y + h, y - h])
    xin, yin = _exact_map(input_wcs, output_wcs, px, py)
    return np.array(
        [[(xin[0] - xin[1]) / (2 * h), (xin[2] - xin[3]) / (2 * h)],
         [(yin[0] - yin[1]) / (2 * h), (yin[2] - yin[3]) / (2 * h)]]
    )  # fmt: skip


class _PixelMap:
    """Output pixel -> input pixel mapping: exact WCS on a coarse grid, bicubic splines between."""

    def __init__(self, input_wcs: WCS, output_wcs: WCS, shape: tuple[int, int], step: int) -> None:
        ny, nx = shape
        self.input_wcs, self.output_wcs = input_wcs, output_wcs

        def axis(n: int) -> NDArray[np.float64]:
            # Cubic splines need >= 4 knots; extend one step past the edges for safety.
            s = max(1, min(step, (n + 1) // 4))
            return np.unique(np.concatenate([np.arange(-s, n + s, s), [n - 1 + s]])).astype(float)

        gx, gy = axis(nx), axis(ny)
        xx, yy = np.meshgrid(gx, gy)
        xin, yin = self.exact(xx.ravel(), yy.ravel())
        if not (np.all(np.isfinite(xin)) and np.all(np.isfinite(yin))):
            msg = (
                "the input WCS cannot place every point of the target grid (NaN positions); "
                "the WCS is inconsistent or the grids are on opposite sides of the sky"
            )
            raise ValueError(msg)
        self.sx = RectBivariateSpline(gy, gx, xin.reshape(xx.shape), kx=3, ky=3)
        self.sy = RectBivariateSpline(gy, gx, yin.reshape(xx.shape), kx=3, ky=3)

    def exact(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return _exact_map(self.input_wcs, self.output_wcs, x, y)

    def rows(
        self, y0: int, y1: int, nx: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Input x, y and |det J| for output rows y0..y1-1 (shape (rows, nx))."""
        ys, xs = np.arange(y0, y1, dtype=float), np.arange(nx, dtype=float)
        xin, yin = self.sx(ys, xs), self.sy(ys, xs)
        det = self.sx(ys, xs, dy=1) * self.sy(ys, xs, dx=1) - self.sx(ys, xs, dx=1) * self.sy(
            ys, xs, dy=1
        )
        # RectBivariateSpline's first axis is y: dx=1 differentiates along y.
        return xin, yin, np.abs(det)


def _fourier_shift(stamp: NDArray[np.float64], shift: tuple[float, float]) -> NDArray[np.float64]:
    """Shift a stamp by ``(dx, dy)`` pixels with a band-limited (Fourier) phase ramp."""
    pad = stamp.shape[0] // 2
    padded = np.pad(stamp, pad)
    ky = np.fft.fftfreq(padded.shape[0])[:, None]
    kx = np.fft.fftfreq(padded.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]))
    moved = np.real(np.fft.ifft2(np.fft.fft2(padded) * ramp))
    return np.asarray(moved[pad:-pad, pad:-pad])


def _resample_stamp(
    stamp: NDArray[np.float64],
    jac: NDArray[np.float64],
    size: int,
    order: int,
    phase: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """Resample a PSF stamp (centred ``phase`` px off its centre pixel) through ``jac``.

    The output is centred on its centre pixel, computed exactly as the pixels are warped.
    """
    half = size // 2
    v, u = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    centre = (stamp.shape[0] - 1) / 2.0
    xin = centre + phase[0] + jac[0, 0] * u.ravel() + jac[0, 1] * v.ravel()
    yin = centre + phase[1] + jac[1, 0] * u.ravel() + jac[1, 1] * v.ravel()
    pad = order + 1
    padded = np.pad(stamp, pad)
    ix, iy = np.floor(xin).astype(np.int64), np.floor(yin).astype(np.int64)
    wx = _lanczos_taps(xin - ix, order)
    wy = _lanczos_taps(yin - iy, order)
    wx /= wx.sum(axis=1, keepdims=True)
    wy /= wy.sum(axis=1, keepdims=True)
    offsets = np.arange(1 - order, order + 1)
    out = np.zeros(xin.size)
    for j, ky in enumerate(offsets):
        rows = np.clip(iy + ky + pad, 0, padded.shape[0] - 1)
        for i, kx in enumerate(offsets):
            cols = np.clip(ix + kx + pad, 0, padded.shape[1] - 1)
            out += wy[:, j] * wx[:, i] * padded[rows, cols]
    out = out.reshape(size, size) * abs(np.linalg.det(jac))
    return np.asarray(out / out.sum())


@dataclass(frozen=True, eq=False)
class WarpedPsf:
    """The PSF of an input exposure seen in a warp's pixel frame.

    ``compute_image(x, y)`` finds the input position of output pixel ``(x, y)``,
    takes the input model's stamp there, and resamples it through the local
    Jacobian of the mapping with the same Lanczos kernel as the pixels (no
    further pixel convolution: the stamp already holds one). GalSim's
    ``InterpolatedImage`` drawn with ``method="no_pixel"`` gives sizes ~0.5%
    larger than stars on the warps, so the kernel is applied directly.

    Parameters
    ----------
    psf : Psf
        The input exposure's model (its own pixel frame).
    input_wcs, output_wcs : astropy.wcs.WCS
        WCS of the input and of the warp.
    lanczos_order : int
        Order of the Lanczos interpolant, as used for the pixels.
    """

    psf: Any
    input_wcs: WCS
    output_wcs: WCS
    lanczos_order: int = 3

    def input_position(self, x: float, y: float) -> tuple[float, float]:
        """Input pixel position of output position ``(x, y)``."""
        xin, yin = _exact_map(
            self.input_wcs, self.output_wcs, np.array([float(x)]), np.array([float(y)])
        )
        return float(xin[0]), float(yin[0])

    def compute_image(self, x: float, y: float, size: int | None = None) -> NDArray[np.float64]:
        """Return the normalized PSF stamp at output position ``(x, y)``.

        Parameters
        ----------
        x, y : float
            Position in the warp's pixel frame.
        size : int, optional
            Odd stamp size (px); by default the input stamp's size scaled by the
            mapping.
        """
        xin, yin = self.input_position(x, y)
        stamp = np.asarray(self.psf.compute_image(xin, yin), dtype=np.float64)
        jac = _jacobian(self.input_wcs, self.output_wcs, float(x), float(y))
        inverse = np.linalg.inv(jac)
        if size is None:
            stretch = float(np.linalg.norm(inverse, 2))
            size = int(np.ceil(stamp.shape[0] * stretch)) | 1
        if size < 3 or size % 2 == 0:
            msg = f"size must be an odd number of pixels >= 3, got {size}"
            raise ValueError(msg)
        # The star at output pixel centre (x, y) sits at a sub-pixel phase of the
        # input grid; near-Nyquist PSFs resample differently at different phases,
        # so the stamp is moved to that phase (band-limited shift) before resampling.
        centre_in = _exact_map(
            self.input_wcs,
            self.output_wcs,
            np.array([float(round(x))]),
            np.array([float(round(y))]),
        )
        cx, cy = float(centre_in[0][0]), float(centre_in[1][0])
        phase = (cx - round(cx), cy - round(cy))
        shifted = _fourier_shift(stamp, phase)
        return _resample_stamp(shifted, jac, size, self.lanczos_order, phase)

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        """Adaptive moments ``(T, e1, e2)`` (px²) of the stamp at ``(x, y)``."""
        stamp = self.compute_image(x, y)
        return stamp_moments(np.pad(stamp, stamp.shape[0] // 2))


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
    pixel_map = _PixelMap(exposure.wcs, wcs, (ny, nx), config.grid_step_px)
    planes = exposure.mask_planes
    for name in ("NO_DATA", "SENSOR_EDGE"):
        planes = planes.with_plane(name)
    bad_bits = exposure.mask_planes.bitmask(
        *[p for p in config.bad_mask_planes if p in exposure.mask_planes]
    )
    a = config.lanczos_order
    pad = a + 1
    in_ny, in_nx = exposure.shape
    good_in = (exposure.mask & bad_bits) == 0
    good_in &= np.isfinite(exposure.image) & np.isfinite(exposure.variance)
    # Padded copies with bad pixels zeroed, so each tap is one gather without bounds checks.
    width = in_nx + 2 * pad
    # Image, variance and a usable flag side by side: one gather fetches all three.
    planes3 = np.zeros((in_ny + 2 * pad, width, 3), dtype=np.float32)
    planes3[pad:-pad, pad:-pad, 0] = np.where(good_in, exposure.image, 0.0)
    planes3[pad:-pad, pad:-pad, 1] = np.where(good_in, exposure.variance, 0.0)
    planes3[pad:-pad, pad:-pad, 2] = good_in
    packed = planes3.reshape(-1, 3)
    mask_p = np.pad(exposure.mask, pad).ravel()
    inside_p = np.pad(np.ones(exposure.shape, dtype=bool), pad).ravel()

    out_image = np.zeros((ny, nx), dtype=np.float32)
    out_var = np.zeros((ny, nx), dtype=np.float32)
    out_mask = np.zeros((ny, nx), dtype=np.int32)
    no_data_bit = np.int32(planes.bitmask("NO_DATA"))
    edge_bit = np.int32(planes.bitmask("SENSOR_EDGE"))
    remap = planes != exposure.mask_planes
    offsets = np.arange(-a + 1, a + 1)
    sum_corr, sum_var = 0.0, 0.0
    for y0 in range(0, ny, config.chunk_rows):
        y1 = min(y0 + config.chunk_rows, ny)
        xin, yin, det = (v.ravel() for v in pixel_map.rows(y0, y1, nx))
        inside = (xin >= -0.5) & (xin <= in_nx - 0.5) & (yin >= -0.5) & (yin <= in_ny - 0.5)
        xc = np.where(inside, xin, 0.0)
        yc = np.where(inside, yin, 0.0)
        ix, iy = np.floor(xc).astype(np.int64), np.floor(yc).astype(np.int64)
        # float32 taps and accumulators: 36-term sums lose nothing at float32
        # precision and halve the memory traffic of the inner loop.
        wx = _lanczos_taps(xc - ix, a)
        wy = _lanczos_taps(yc - iy, a)
        wx = (wx / wx.sum(axis=1, keepdims=True)).astype(np.float32)
        wy = (wy / wy.sum(axis=1, keepdims=True)).astype(np.float32)
        base = (iy + pad) * width + (ix + pad)
        acc_i = np.zeros(base.size, dtype=np.float32)
        acc_w = np.zeros(base.size, dtype=np.float32)
        acc_v = np.zeros(base.size, dtype=np.float32)
        acc_wv = np.zeros(base.size, dtype=np.float32)
        mask = np.zeros(base.size, dtype=np.int32)
        off_sensor = np.zeros(base.size, dtype=bool)
        # Lanczos lobes beyond |t| = 2 stay below ~0.03, so outer taps rarely pass
        # the mask threshold: test each tap row/column once per chunk.
        wx_max = np.abs(wx).max(axis=0)
        wy_max = np.abs(wy).max(axis=0)
        for j, ky in enumerate(offsets):
            for i, kx in enumerate(offsets):
                w = wy[:, j] * wx[:, i]
                index = base + (ky * width + kx)
                values = packed[index]
                wg = w * values[:, 2]
                acc_i += wg * values[:, 0]
                acc_w += wg
                wv = wg * values[:, 1]
                acc_v += wg * wv
                acc_wv += wv
                if wy_max[j] * wx_max[i] > config.mask_weight_threshold:
                    strong = np.abs(w) > config.mask_weight_threshold
                    mask |= np.where(strong, mask_p[index], 0)
                    off_sensor |= strong & ~inside_p[index]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = acc_i / acc_w * det
            variance = acc_v / acc_w**2 * det**2
            mean_var = acc_wv / acc_w * det
        usable = inside & (acc_w >= config.min_good_weight) & np.isfinite(value)
        if remap:
            mask = exposure.mask_planes.remap(mask, planes)
        mask[off_sensor & inside] |= edge_bit
        mask[~usable] |= no_data_bit
        rows = slice(y0, y1)
        out_image[rows] = np.where(usable, value, 0.0).reshape(y1 - y0, nx)
        out_var[rows] = np.where(usable, variance, np.inf).reshape(y1 - y0, nx)
        out_mask[rows] = mask.reshape(y1 - y0, nx)
        # Noise of a large sum: det * (input variance) per output pixel, against the
        # per-pixel variance the plane holds.
        clean = usable & (acc_w > 0.999)
        sum_corr += float(np.sum(mean_var[clean]))
        sum_var += float(np.sum(variance[clean]))
    n_good = int(np.sum((out_mask & no_data_bit) == 0))
    if n_good == 0:
        msg = (
            f"{exposure!r} does not overlap the target grid of shape {shape}; "
            "choose a patch that the exposure covers (skymap.patches_overlapping)"
        )
        raise ValueError(msg)
    covariance_factor = sum_corr / sum_var if sum_var > 0 else 1.0
    psf = (
        WarpedPsf(exposure.psf, exposure.wcs, wcs, config.lanczos_order)
        if exposure.psf is not None
        else None
    )
    warped = Exposure(
        out_image,
        variance=out_var,
        mask=out_mask,
        wcs=wcs,
        psf=psf,
        zero_point=exposure.zero_point,
        band=exposure.band,
        visit=exposure.visit,
        detector=exposure.detector,
        mask_planes=planes,
        meta={**exposure.meta, "WARPCOV": covariance_factor},
    )
    log.debug(
        "warped %r: %d good pixels, covariance factor %.3f", exposure, n_good, covariance_factor
    )
    return Warp(warped, float(covariance_factor), n_good, config)
