"""PSF matching: convolve a warp so that its PSF becomes a common target PSF.

For each warp, matching kernels ``K`` with ``P * K = T`` are fitted from the
warp's PSF model ``P`` (a :class:`~stacklab.toolkit.warp.WarpedPsf`) at the
nodes of a ``grid`` x ``grid`` mesh over the patch, by regularized Fourier
division ``K = T P* / (|P|^2 + eps |P|max^2)``. The warp is convolved with
every node kernel and the results are blended with bilinear weights in
position, so the kernel varies smoothly like the PSF. The variance plane is
convolved with ``K**2`` (pixel covariance is not tracked) and masked pixels are
set to zero before the convolution; masks grow by the kernel's core.

The target is a Kolmogorov profile (pixelized) of ``target_fwhm_px``, by
default ``target_broadening`` times the broadest input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import galsim
import numpy as np
from astropy.io import fits
from numpy.typing import NDArray
from scipy import ndimage
from scipy.signal import fftconvolve

from .exposure import Exposure
from .stamp_moments import stamp_moments

__all__ = ["PsfMatchConfig", "TargetPsf", "match_to_target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PsfMatchConfig:
    """How warps are matched to a common PSF.

    Attributes
    ----------
    target_fwhm_px : float, optional
        FWHM of the Kolmogorov target (px); by default ``target_broadening``
        times the largest input FWHM.
    target_broadening : float
        Factor over the broadest input when the target is chosen automatically.
    grid : int
        Kernels are fitted on a ``grid`` x ``grid`` mesh over the patch.
    kernel_size : int
        Odd size of the matching kernels (px).
    regularization : float
        Wiener regularization, relative to the peak PSF power.
    """

    target_fwhm_px: float | None = None
    target_broadening: float = 1.15
    grid: int = 3
    kernel_size: int = 31
    regularization: float = 1e-5

    def __post_init__(self) -> None:
        if self.target_fwhm_px is not None and not self.target_fwhm_px > 0:
            msg = f"target_fwhm_px must be > 0 or None, got {self.target_fwhm_px!r}"
            raise ValueError(msg)
        if not self.target_broadening >= 1.0:
            msg = f"target_broadening must be >= 1, got {self.target_broadening!r}"
            raise ValueError(msg)
        if not isinstance(self.grid, int) or self.grid < 1:
            msg = f"grid must be an integer >= 1, got {self.grid!r}"
            raise ValueError(msg)
        if self.kernel_size < 5 or self.kernel_size % 2 == 0:
            msg = f"kernel_size must be an odd number >= 5, got {self.kernel_size!r}"
            raise ValueError(msg)
        if not self.regularization > 0:
            msg = f"regularization must be > 0, got {self.regularization!r}"
            raise ValueError(msg)


@dataclass(frozen=True)
class TargetPsf:
    """A constant Kolmogorov PSF of ``fwhm_px`` (pixelized), the PSF of a matched coadd."""

    fwhm_px: float
    stamp_size: int = 41

    def compute_image(self, x: float, y: float, size: int | None = None) -> NDArray[np.float64]:
        """Return the normalized target stamp (the same everywhere)."""
        size = self.stamp_size if size is None else int(size)
        image = galsim.Kolmogorov(fwhm=self.fwhm_px).drawImage(nx=size, ny=size, scale=1.0)
        array = np.asarray(image.array, dtype=np.float64)
        return array / array.sum()

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        """Adaptive moments ``(T, e1, e2)`` (px²)."""
        return stamp_moments(self.compute_image(x, y))

    def to_hdu(self) -> fits.ImageHDU:
        """Return the target as an image HDU: its stamp, FWHM and size in the header."""
        hdu = fits.ImageHDU(self.compute_image(0.0, 0.0), name="PSF")
        hdu.header["PSFFWHM"] = (self.fwhm_px, "Kolmogorov FWHM (px)")
        hdu.header["PSFSIZE"] = (self.stamp_size, "stamp size (px)")
        return hdu

    @classmethod
    def from_hdu(cls, hdu: fits.ImageHDU) -> TargetPsf:
        """Inverse of :meth:`to_hdu`."""
        return cls(float(hdu.header["PSFFWHM"]), int(hdu.header["PSFSIZE"]))


def _kernel(
    psf: NDArray[np.float64], target: NDArray[np.float64], eps: float
) -> NDArray[np.float64]:
    size = psf.shape[0]
    big = 2 * size
    pad = (big - size) // 2
    p = np.fft.fft2(np.fft.ifftshift(np.pad(psf, pad)))
    t = np.fft.fft2(np.fft.ifftshift(np.pad(target, pad)))
    power = np.abs(p) ** 2
    k = t * np.conj(p) / (power + eps * power.max())
    kernel = np.real(np.fft.fftshift(np.fft.ifft2(k)))[pad:-pad, pad:-pad]
    return np.asarray(kernel / kernel.sum())


def match_to_target(
    warp: Exposure,
    target: TargetPsf,
    bad_bits: int,
    config: PsfMatchConfig | None = None,
) -> Exposure:
    """Convolve a warp so its PSF becomes ``target``.

    Parameters
    ----------
    warp : Exposure
        A warp with a PSF model (e.g. :class:`~stacklab.toolkit.warp.WarpedPsf`).
    target : TargetPsf
        The common PSF.
    bad_bits : int
        Mask bits of pixels left out (zeroed before, and grown after, the convolution).
    config : PsfMatchConfig, optional
        Grid, kernel size and regularization.

    Returns
    -------
    Exposure
        The matched warp, with ``target`` as its PSF.

    Raises
    ------
    ValueError
        If the warp has no PSF.
    """
    config = PsfMatchConfig() if config is None else config
    if warp.psf is None:
        msg = f"{warp!r} has no PSF model; PSF matching needs one"
        raise ValueError(msg)
    ny, nx = warp.shape
    size = config.kernel_size
    bad = (warp.mask & bad_bits) != 0
    image = np.where(bad, 0.0, warp.image).astype(np.float64)
    variance = np.where(bad, 0.0, warp.variance).astype(np.float64)
    goal = target.compute_image(0.0, 0.0, size=size)
    xs = np.linspace(0, nx - 1, config.grid) if config.grid > 1 else np.array([(nx - 1) / 2])
    ys = np.linspace(0, ny - 1, config.grid) if config.grid > 1 else np.array([(ny - 1) / 2])
    good = ~bad
    out_image = np.zeros((ny, nx))
    out_var = np.zeros((ny, nx))
    total = np.zeros((ny, nx))
    yy, xx = np.mgrid[0:ny, 0:nx]
    for gy in ys:
        for gx in xs:
            # Evaluate the model at the nearest pixel with data (edges of warps are empty).
            px, py = _nearest_good(good, gx, gy)
            psf = warp.psf.compute_image(px, py, size=size)  # type: ignore[call-arg]
            kernel = _kernel(np.asarray(psf, dtype=np.float64), goal, config.regularization)
            wx = (
                np.clip(1 - np.abs(xx - gx) / (xs[1] - xs[0]), 0, 1)
                if len(xs) > 1
                else np.ones((ny, nx))
            )
            wy = (
                np.clip(1 - np.abs(yy - gy) / (ys[1] - ys[0]), 0, 1)
                if len(ys) > 1
                else np.ones((ny, nx))
            )
            weight = wx * wy
            out_image += weight * fftconvolve(image, kernel, mode="same")
            out_var += weight * fftconvolve(variance, kernel**2, mode="same")
            total += weight
    out_image /= total
    out_var /= total
    radius = max(1, round(target.fwhm_px))
    grown = ndimage.binary_dilation(bad, iterations=radius)
    mask = warp.mask.copy()
    bits = np.bitwise_or.reduce(warp.mask[bad]) if bad.any() else 0
    mask[grown & ~bad] |= np.int32(bits & bad_bits)
    return warp.replace(
        image=out_image.astype(np.float32),
        variance=np.where(grown, np.inf, out_var).astype(np.float32),
        mask=mask,
        psf=target,
    )


def _nearest_good(good: NDArray[np.bool_], x: float, y: float) -> tuple[float, float]:
    iy, ix = round(y), round(x)
    if good[iy, ix]:
        return float(ix), float(iy)
    ys, xs = np.nonzero(good)
    if ys.size == 0:
        return float(ix), float(iy)
    k = int(np.argmin((xs - ix) ** 2 + (ys - iy) ** 2))
    return float(xs[k]), float(ys[k])
