"""WCS of simulated detectors: one TAN(+SIP) focal plane per visit, sliced per detector."""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from numpy.typing import NDArray

from .config import SimulationConfig

_DISTORTION_RADIUS_PX = 1000.0

__all__ = ["detector_offset", "focal_plane_centre", "local_jacobians", "make_detector_wcs"]


def detector_offset(config: SimulationConfig, detector: int) -> tuple[int, int]:
    """Pixel offset ``(dx, dy)`` of a detector's first pixel in the focal plane."""
    if not 0 <= detector < config.n_detectors:
        msg = f"detector must be in 0..{config.n_detectors - 1}, got {detector}"
        raise ValueError(msg)
    row, col = divmod(detector, config.detector_grid)
    pitch = config.size + config.detector_gap_px
    return col * pitch, row * pitch


def focal_plane_centre(config: SimulationConfig) -> tuple[float, float]:
    """Centre of the focal plane in focal-plane pixel coordinates, and its half extent."""
    grid = config.detector_grid
    extent = grid * config.size + (grid - 1) * config.detector_gap_px
    return (extent - 1) / 2.0, extent / 2.0


def make_detector_wcs(
    config: SimulationConfig,
    *,
    ra_deg: float,
    dec_deg: float,
    rotation_deg: float,
    detector: int,
) -> WCS:
    """Build the TAN(+SIP) WCS of one detector of a visit.

    Parameters
    ----------
    config : SimulationConfig
        Pixel scale, detector layout and SIP distortion amplitude.
    ra_deg, dec_deg : float
        Pointing of the focal-plane centre (degrees).
    rotation_deg : float
        Sky rotation: angle from north to the detector +y axis, east of north (degrees).
    detector : int
        Detector number in the focal-plane grid.

    Returns
    -------
    astropy.wcs.WCS
        Celestial WCS in this detector's 0-based pixel frame.
    """
    centre, _ = focal_plane_centre(config)
    dx, dy = detector_offset(config, detector)
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [centre - dx + 1.0, centre - dy + 1.0]  # FITS pixels are 1-based
    wcs.wcs.crval = [ra_deg, dec_deg]
    scale = config.pixel_scale_arcsec / 3600.0
    theta = np.deg2rad(rotation_deg)
    # North up and east left at rotation 0 (RA increases to -x).
    wcs.wcs.cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    wcs.wcs.radesys = "ICRS"
    if config.sip_distortion_px > 0:
        from astropy.wcs import Sip

        # The optics fix the distortion in pixels at a given radius, whatever the detector size.
        k = config.sip_distortion_px / _DISTORTION_RADIUS_PX**3
        # Radial cubic distortion: dx = k x r², dy = k y r², with r from CRPIX.
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[3, 0] = a[1, 2] = k
        b[0, 3] = b[2, 1] = k
        ap, bp = -a, -b  # first-order inverse; astropy iterates to full precision
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    else:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.set()
    wcs.pixel_shape = (config.size, config.size)
    return wcs


def local_jacobians(
    wcs: WCS, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return the local Jacobians ``d(u, v)/d(x, y)`` in arcsec/px at pixel positions.

    ``u`` points west (``-ΔRA cos δ``) and ``v`` north. Shape ``(n, 2, 2)`` with
    ``[[du/dx, du/dy], [dv/dx, dv/dy]]``.
    """
    step = 0.5
    centre = wcs.pixel_to_world(x, y)
    out = np.empty((len(x), 2, 2))
    for column, (ddx, ddy) in enumerate(((step, 0.0), (0.0, step))):
        plus = wcs.pixel_to_world(x + ddx, y + ddy)
        minus = wcs.pixel_to_world(x - ddx, y - ddy)
        east_p, north_p = centre.spherical_offsets_to(plus)
        east_m, north_m = centre.spherical_offsets_to(minus)
        out[:, 0, column] = -(east_p - east_m).to_value(u.arcsec) / (2 * step)
        out[:, 1, column] = (north_p - north_m).to_value(u.arcsec) / (2 * step)
    return out


def sky_to_pixel(
    wcs: WCS, ra: NDArray[np.float64], dec: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel positions (0-based) of sky positions in degrees, to full SIP precision."""
    x, y = wcs.world_to_pixel(SkyCoord(ra * u.deg, dec * u.deg))
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
