"""The true PSF of a simulated visit: Kolmogorov, sheared, varying smoothly over the focal plane.

The PSF is defined in the detector's pixel frame (it comes from the atmosphere
and the optics as seen by the camera), so its ellipticity is measured along the
pixel axes. Size and shear are low-order polynomials in focal-plane coordinates
``(u, v) ∈ [-1, 1]²``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from numpy.typing import NDArray

__all__ = ["PsfMoments", "SimulatedPsf", "random_psf"]

_GSPARAMS = galsim.GSParams(maximum_fft_size=16384)


class PsfMoments(NamedTuple):
    """Adaptive second moments of a PSF: size ``T = Ixx + Iyy`` (px²) and distortion e1, e2."""

    T: float
    e1: float
    e2: float


def _poly_terms(u: NDArray[np.float64], v: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v])


@dataclass(frozen=True)
class SimulatedPsf:
    """Truth PSF of one visit and detector.

    Parameters
    ----------
    fwhm_px : float
        Kolmogorov FWHM at the focal-plane centre (pixels, before pixelization).
    size_coeffs, g1_coeffs, g2_coeffs : tuple of 6 float
        Coefficients of ``1, u, v, u², uv, v²``: fractional FWHM change and the
        two shear components.
    focal_plane_x0, focal_plane_y0 : float
        Focal-plane centre in this detector's pixel coordinates.
    focal_plane_half_px : float
        Half the focal-plane extent (pixels): ``u = (x - x0) / half``.
    """

    fwhm_px: float
    size_coeffs: tuple[float, ...]
    g1_coeffs: tuple[float, ...]
    g2_coeffs: tuple[float, ...]
    focal_plane_x0: float
    focal_plane_y0: float
    focal_plane_half_px: float

    def parameters_at(
        self, x: NDArray[np.float64] | float, y: NDArray[np.float64] | float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Return Kolmogorov FWHM (px) and shear g1, g2 at pixel positions ``(x, y)``."""
        u = (np.asarray(x, dtype=np.float64) - self.focal_plane_x0) / self.focal_plane_half_px
        v = (np.asarray(y, dtype=np.float64) - self.focal_plane_y0) / self.focal_plane_half_px
        terms = _poly_terms(u, v)
        fwhm = self.fwhm_px * (1.0 + np.tensordot(self.size_coeffs, terms, axes=1))
        g1 = np.tensordot(self.g1_coeffs, terms, axes=1)
        g2 = np.tensordot(self.g2_coeffs, terms, axes=1)
        return fwhm, g1, g2

    def profile(self, x: float, y: float) -> galsim.GSObject:
        """Return the GalSim profile (pixel units, unit flux) at ``(x, y)``."""
        fwhm, g1, g2 = self.parameters_at(x, y)
        return galsim.Kolmogorov(fwhm=float(fwhm), gsparams=_GSPARAMS).shear(
            g1=float(g1), g2=float(g2)
        )

    def stamp_size(self, x: float, y: float) -> int:
        """Odd stamp size (px) that holds the PSF out to ~4 FWHM."""
        fwhm = float(self.parameters_at(x, y)[0])
        return 2 * int(np.ceil(4.0 * fwhm)) + 1

    def compute_image(self, x: float, y: float, size: int | None = None) -> NDArray[np.float64]:
        """Return the pixelized PSF at ``(x, y)`` centred on the central pixel, summing to 1.

        Parameters
        ----------
        x, y : float
            Position (pixels) where the PSF is evaluated.
        size : int, optional
            Odd stamp size (pixels); by default :meth:`stamp_size`.
        """
        size = self.stamp_size(x, y) if size is None else int(size)
        if size < 3 or size % 2 == 0:
            msg = f"size must be an odd number of pixels >= 3, got {size}"
            raise ValueError(msg)
        stamp = self.profile(x, y).drawImage(nx=size, ny=size, scale=1.0, dtype=np.float64)
        array = np.asarray(stamp.array, dtype=np.float64)
        return array / array.sum()

    def moments(self, x: float, y: float) -> PsfMoments:
        """Return adaptive moments (HSM) of the pixelized PSF at ``(x, y)``."""
        image = self.compute_image(x, y, size=2 * self.stamp_size(x, y) + 1)
        shape = galsim.hsm.FindAdaptiveMom(galsim.ImageD(image, scale=1.0))
        sigma = shape.moments_sigma
        return PsfMoments(2.0 * sigma**2, shape.observed_shape.e1, shape.observed_shape.e2)

    def to_hdu(self) -> fits.BinTableHDU:
        """Return the model as a one-row FITS table."""
        table = Table(
            {
                "fwhm_px": [self.fwhm_px],
                "size_coeffs": [self.size_coeffs],
                "g1_coeffs": [self.g1_coeffs],
                "g2_coeffs": [self.g2_coeffs],
                "focal_plane_x0": [self.focal_plane_x0],
                "focal_plane_y0": [self.focal_plane_y0],
                "focal_plane_half_px": [self.focal_plane_half_px],
            }
        )
        return fits.BinTableHDU(table, name="PSF")

    @classmethod
    def from_hdu(cls, hdu: fits.BinTableHDU) -> SimulatedPsf:
        """Inverse of :meth:`to_hdu`."""
        row = Table(hdu.data)[0]
        return cls(
            fwhm_px=float(row["fwhm_px"]),
            size_coeffs=tuple(float(c) for c in row["size_coeffs"]),
            g1_coeffs=tuple(float(c) for c in row["g1_coeffs"]),
            g2_coeffs=tuple(float(c) for c in row["g2_coeffs"]),
            focal_plane_x0=float(row["focal_plane_x0"]),
            focal_plane_y0=float(row["focal_plane_y0"]),
            focal_plane_half_px=float(row["focal_plane_half_px"]),
        )


def random_psf(
    rng: np.random.Generator,
    *,
    fwhm_px: float,
    size_variation: float,
    ellipticity_max: float,
    focal_plane_x0: float,
    focal_plane_y0: float,
    focal_plane_half_px: float,
) -> SimulatedPsf:
    """Draw a smooth PSF pattern whose size change and |g| stay within the given bounds."""
    grid = np.linspace(-1.0, 1.0, 21)
    u, v = np.meshgrid(grid, grid)
    terms = _poly_terms(u.ravel(), v.ravel())

    def bounded(coeffs: NDArray[np.float64], limit: float) -> NDArray[np.float64]:
        peak = np.max(np.abs(np.tensordot(coeffs, terms, axes=1)))
        return coeffs * (limit / peak) if peak > 0 else coeffs

    size = rng.normal(0.0, 1.0, 6)
    size[0] = 0.0  # the centre keeps the visit's seeing
    size = bounded(size, size_variation)
    g1, g2 = rng.normal(0.0, 1.0, (2, 6))
    g1[0] += rng.normal(0.0, 1.5)  # a common tilt of the whole field
    g2[0] += rng.normal(0.0, 1.5)
    modulus = np.max(np.hypot(np.tensordot(g1, terms, axes=1), np.tensordot(g2, terms, axes=1)))
    scale = ellipticity_max * rng.uniform(0.5, 1.0) / modulus
    return SimulatedPsf(
        fwhm_px=float(fwhm_px),
        size_coeffs=tuple(float(c) for c in size),
        g1_coeffs=tuple(float(c) * scale for c in g1),
        g2_coeffs=tuple(float(c) * scale for c in g2),
        focal_plane_x0=float(focal_plane_x0),
        focal_plane_y0=float(focal_plane_y0),
        focal_plane_half_px=float(focal_plane_half_px),
    )
