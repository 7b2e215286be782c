"""Detector and sky artifacts with truth: cosmic rays, trails, defects, bleeding, BF.

Cosmic rays, satellite trails, bad columns, saturation with bleed trails, and
brighter-fatter charge redistribution. All functions work in electrons on
``[y, x]`` arrays and return what they changed, so the caller can write a truth mask.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import NDArray
from scipy.signal import fftconvolve

__all__ = [
    "add_cosmic_rays",
    "apply_brighter_fatter",
    "bad_columns",
    "bleed_saturation",
    "brighter_fatter_kernel",
    "satellite_trail",
]


def add_cosmic_rays(
    shape: tuple[int, int], rng: np.random.Generator, per_megapixel: float
) -> NDArray[np.float64]:
    """Return the charge (e-) deposited by cosmic rays: short straight tracks.

    Track lengths are exponential (mean 4 px) and the charge per pixel of track
    log-normal around 1500 e-, roughly as in thick LSST-like CCDs.
    """
    ny, nx = shape
    deposit = np.zeros(shape)
    n_hits = rng.poisson(per_megapixel * nx * ny / 1e6)
    for _ in range(n_hits):
        x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        length = rng.exponential(4.0) + 0.5
        angle = rng.uniform(0.0, np.pi)
        charge_per_px = 1500.0 * rng.lognormal(0.0, 0.6)
        n_samples = max(2, int(length / 0.2))
        t = np.linspace(0.0, length, n_samples)
        xs, ys = x0 + t * np.cos(angle), y0 + t * np.sin(angle)
        inside = (xs >= 0) & (xs <= nx - 1) & (ys >= 0) & (ys <= ny - 1)
        xs, ys = xs[inside], ys[inside]
        each = charge_per_px * length / n_samples
        # Bilinear splat keeps the deposited charge exact.
        ix, iy = np.floor(xs).astype(int), np.floor(ys).astype(int)
        fx, fy = xs - ix, ys - iy
        ix1, iy1 = np.minimum(ix + 1, nx - 1), np.minimum(iy + 1, ny - 1)
        np.add.at(deposit, (iy, ix), each * (1 - fx) * (1 - fy))
        np.add.at(deposit, (iy, ix1), each * fx * (1 - fy))
        np.add.at(deposit, (iy1, ix), each * (1 - fx) * fy)
        np.add.at(deposit, (iy1, ix1), each * fx * fy)
    return deposit


def satellite_trail(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    sigma_px: float,
    peak_e: float,
) -> NDArray[np.float64]:
    """Return a satellite trail (e-): a straight line across the image, PSF-wide.

    The cross-section is Gaussian with ``sigma_px`` and central surface
    brightness ``peak_e`` electrons per pixel.
    """
    ny, nx = shape
    x0, y0 = rng.uniform(0.2 * nx, 0.8 * nx), rng.uniform(0.2 * ny, 0.8 * ny)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:ny, 0:nx]
    distance = np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle))
    trail = peak_e * np.exp(-0.5 * (distance / sigma_px) ** 2)
    trail[distance > 8 * sigma_px] = 0.0
    return trail


def bad_columns(
    shape: tuple[int, int], rng: np.random.Generator, n_columns: int
) -> list[tuple[int, int, int, bool]]:
    """Choose bad columns: ``(column, first_row, last_row_exclusive, hot)``.

    Half of them span the whole detector, the others start at a random row
    (a charge trap), as in real defect lists.
    """
    ny, nx = shape
    columns = rng.choice(np.arange(4, nx - 4), size=min(n_columns, nx - 8), replace=False)
    out = []
    for k, column in enumerate(columns):
        first = 0 if k % 2 == 0 else int(rng.integers(0, ny // 2))
        out.append((int(column), first, ny, bool(rng.random() < 0.5)))
    return out


def bleed_saturation(charge: NDArray[np.float64], full_well: float) -> NDArray[np.bool_]:
    """Clip pixels at ``full_well`` and bleed the excess along columns (in place).

    The excess charge of each saturated run is shared equally up and down its
    column, filling pixels to full well in turn; what runs off the detector is
    lost. Returns the pixels whose charge changed.
    """
    changed = np.zeros(charge.shape, dtype=bool)
    over = charge > full_well
    for column in np.flatnonzero(over.any(axis=0)):
        values = charge[:, column]
        rows = np.flatnonzero(values > full_well)
        # Split the saturated rows into contiguous runs.
        for run in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1):
            first, last = int(run[0]), int(run[-1])
            excess = float(np.sum(values[first : last + 1] - full_well).clip(min=0.0))
            values[first : last + 1] = np.minimum(values[first : last + 1], full_well)
            changed[first : last + 1, column] = True
            for direction, start in ((-1, first - 1), (1, last + 1)):
                remaining = excess / 2.0
                row = start
                while remaining > 0 and 0 <= row < len(values):
                    room = max(full_well - values[row], 0.0)
                    take = min(room, remaining)
                    if take > 0:
                        values[row] += take
                        changed[row, column] = True
                    remaining -= take
                    row += direction
    return changed


@cache
def brighter_fatter_kernel(half_size: int = 4) -> NDArray[np.float64]:
    """Return the electrostatic kernel (arbitrary units) of the brighter-fatter model.

    A pixel's collected charge repels incoming charge with a potential falling
    as ``1 / (r² + 0.5)``; the overall strength is set by calibration.
    """
    yy, xx = np.mgrid[-half_size : half_size + 1, -half_size : half_size + 1]
    return 1.0 / (xx**2 + yy**2 + 0.5)


def _redistribute(charge: NDArray[np.float64], coupling: float) -> NDArray[np.float64]:
    potential = fftconvolve(charge, brighter_fatter_kernel(), mode="same")
    out = charge.copy()
    # Charge moves down the potential gradient across each pixel boundary, in
    # proportion to the charge at the boundary: dQ = c ∇·(Q ∇Φ). Conserves charge.
    for axis in (0, 1):
        q_face = 0.5 * (np.take(charge, range(1, charge.shape[axis]), axis=axis)
                        + np.take(charge, range(charge.shape[axis] - 1), axis=axis))  # fmt: skip
        grad = np.diff(potential, axis=axis)
        flux = coupling * q_face * grad
        pad_lo = [(0, 0), (0, 0)]
        pad_hi = [(0, 0), (0, 0)]
        pad_lo[axis] = (1, 0)
        pad_hi[axis] = (0, 1)
        out += np.pad(flux, pad_hi) - np.pad(flux, pad_lo)
    return out


@cache
def _coupling_per_unit_strength() -> float:
    """Coupling giving ΔT/T = 1 per 1e5 e- of peak charge (first order), measured once."""
    size = 65
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    sigma = 2.0
    star = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    star *= 1e5 / star.max()
    coupling = 1e-9
    after = _redistribute(star, coupling)

    def size_t(image: NDArray[np.float64]) -> float:
        return float(np.sum(image * (xx**2 + yy**2)) / np.sum(image))

    growth = size_t(after) / size_t(star) - 1.0
    return coupling / growth


def apply_brighter_fatter(charge: NDArray[np.float64], strength: float) -> NDArray[np.float64]:
    """Return ``charge`` (e-) after brighter-fatter redistribution of the given strength.

    ``strength`` is the fractional growth of the second-moment size T of a star
    per 10⁵ e- of peak charge. Charge is conserved.
    """
    if strength == 0:
        return charge
    return _redistribute(charge, strength * _coupling_per_unit_strength())
