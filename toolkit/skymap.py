"""Sky map: tangent-plane tracts cut into overlapping patches, the pixel grids of coadds.

A *tract* is a square region of sky with its own gnomonic (TAN) projection,
centred on a point of an iso-latitude ring of tract centres. A tract's pixel
grid is cut into *patches* of ``patch_size_px`` with ``patch_overlap_px`` of
overlap on each side, so a coadd of any size is made patch by patch with
memory bounded by one patch. Every patch has its own TAN WCS (the tract's,
shifted) and its bounding box in tract pixels.

Pixel convention as everywhere in stacklab: arrays ``[y, x]``, pixel centres at
integer 0-based positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS
from numpy.typing import NDArray

from .exposure import Exposure

__all__ = [
    "Patch",
    "SkyMap",
    "SkyMapConfig",
    "Tract",
    "make_skymap",
    "patch_covering",
    "patches_overlapping",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SkyMapConfig:
    """How the sky is cut into tracts and patches.

    Attributes
    ----------
    pixel_scale_arcsec : float
        Pixel scale at each tract's tangent point (arcsec/px).
    tract_size_deg : float
        Side of the region each tract owns (degrees); tract centres are this far apart.
    tract_overlap_deg : float
        Extra sky each tract covers beyond its own region on every side (degrees).
    patch_size_px : int
        Side of a patch's own region (pixels).
    patch_overlap_px : int
        Extra pixels each patch covers beyond its own region on every side.
    """

    pixel_scale_arcsec: float = 0.2
    tract_size_deg: float = 1.5
    tract_overlap_deg: float = 0.02
    patch_size_px: int = 4000
    patch_overlap_px: int = 100

    def __post_init__(self) -> None:
        if not self.pixel_scale_arcsec > 0:
            msg = f"pixel_scale_arcsec must be > 0, got {self.pixel_scale_arcsec!r}"
            raise ValueError(msg)
        if not 0 < self.tract_size_deg <= 10:
            msg = (
                f"tract_size_deg must be in (0, 10] degrees, got {self.tract_size_deg!r}; "
                "tangent-plane tracts larger than that distort too much"
            )
            raise ValueError(msg)
        if not 0 <= self.tract_overlap_deg < self.tract_size_deg:
            msg = (
                f"tract_overlap_deg must be in [0, tract_size_deg), got {self.tract_overlap_deg!r}"
            )
            raise ValueError(msg)
        if not isinstance(self.patch_size_px, int) or self.patch_size_px < 16:
            msg = f"patch_size_px must be an integer >= 16, got {self.patch_size_px!r}"
            raise ValueError(msg)
        if not isinstance(self.patch_overlap_px, int) or not (
            0 <= self.patch_overlap_px < self.patch_size_px // 2
        ):
            msg = (
                f"patch_overlap_px must be an integer in [0, patch_size_px / 2), "
                f"got {self.patch_overlap_px!r}"
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class Patch:
    """One coadd pixel grid.

    Attributes
    ----------
    tract_id : int
        Tract this patch belongs to.
    index : tuple of int
        ``(ix, iy)`` position of the patch in its tract's grid.
    bbox : tuple of int
        ``(x0, y0, x1, y1)``: the patch's pixels in tract pixels, ``x0 <= x < x1``
        (overlap included).
    wcs : astropy.wcs.WCS
        TAN WCS of the patch's own 0-based pixel frame.
    """

    tract_id: int
    index: tuple[int, int]
    bbox: tuple[int, int, int, int]
    wcs: WCS = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the patch (pixels)."""
        x0, y0, x1, y1 = self.bbox
        return y1 - y0, x1 - x0

    @property
    def name(self) -> str:
        """Readable id, e.g. ``"t12-p3,4"``."""
        return f"t{self.tract_id}-p{self.index[0]},{self.index[1]}"


@dataclass(frozen=True)
class Tract:
    """One tangent-plane projection and its patch grid.

    Attributes
    ----------
    tract_id : int
        Number of the tract in its sky map.
    ra_deg, dec_deg : float
        Tangent point (degrees, ICRS).
    shape : tuple of int
        ``(ny, nx)`` of the whole tract (pixels).
    wcs : astropy.wcs.WCS
        TAN WCS of the tract's 0-based pixel frame.
    n_patches : tuple of int
        ``(nx, ny)`` patches along each axis.
    config : SkyMapConfig
        The sky map's configuration.
    """

    tract_id: int
    ra_deg: float
    dec_deg: float
    shape: tuple[int, int]
    wcs: WCS = field(repr=False)
    n_patches: tuple[int, int]
    config: SkyMapConfig

    def patch(self, ix: int, iy: int) -> Patch:
        """Return patch ``(ix, iy)`` of this tract."""
        nx, ny = self.n_patches
        if not (0 <= ix < nx and 0 <= iy < ny):
            msg = f"patch index ({ix}, {iy}) is outside this tract's {nx} x {ny} patches"
            raise ValueError(msg)
        size, overlap = self.config.patch_size_px, self.config.patch_overlap_px
        x0 = max(ix * size - overlap, 0)
        y0 = max(iy * size - overlap, 0)
        x1 = min((ix + 1) * size + overlap, self.shape[1])
        y1 = min((iy + 1) * size + overlap, self.shape[0])
        return Patch(self.tract_id, (ix, iy), (x0, y0, x1, y1), _shifted_wcs(self.wcs, x0, y0))


@dataclass(frozen=True)
class SkyMap:
    """Tracts covering the whole sky on iso-latitude rings, with a cap tract at each pole.

    Attributes
    ----------
    tracts : tuple of Tract
        Every tract, numbered from the south pole.
    config : SkyMapConfig
        The configuration that made it.
    """

    tracts: tuple[Tract, ...]
    config: SkyMapConfig


def _tan_wcs(ra_deg: float, dec_deg: float, crpix: tuple[float, float], scale_arcsec: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra_deg, dec_deg]
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]  # FITS pixels are 1-based
    scale = scale_arcsec / 3600.0
    wcs.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]])  # north up, east left
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    return wcs


def _shifted_wcs(wcs: WCS, x0: int, y0: int) -> WCS:
    out = wcs.deepcopy()
    out.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1] - y0]
    out.wcs.set()
    return out


def make_skymap(config: SkyMapConfig | None = None) -> SkyMap:
    """Cut the sky into tracts on iso-latitude rings.

    Parameters
    ----------
    config : SkyMapConfig, optional
        Tract and patch sizes and pixel scale.

    Returns
    -------
    SkyMap

    Examples
    --------
    >>> skymap = make_skymap(SkyMapConfig(tract_size_deg=2.0))
    >>> len(skymap.tracts) > 10_000
    True
    """
    config = SkyMapConfig() if config is None else config
    size = config.tract_size_deg
    n_rings = int(np.ceil(180.0 / size))
    ring_step = 180.0 / n_rings
    scale_deg = config.pixel_scale_arcsec / 3600.0
    tracts: list[Tract] = []

    def add(ra: float, dec: float, side_deg: float) -> None:
        n_patch = int(
            np.ceil((side_deg + 2 * config.tract_overlap_deg) / scale_deg / config.patch_size_px)
        )
        side_px = n_patch * config.patch_size_px
        centre = (side_px - 1) / 2.0
        wcs = _tan_wcs(ra, dec, (centre, centre), config.pixel_scale_arcsec)
        tracts.append(
            Tract(len(tracts), ra, dec, (side_px, side_px), wcs, (n_patch, n_patch), config)
        )

    # Polar caps: one tract centred on each pole covers the first/last ring.
    add(0.0, -90.0, 2.0 * ring_step)
    for ring in range(1, n_rings - 1):
        dec = -90.0 + (ring + 0.5) * ring_step
        # Tracts must be narrow enough at the ring's equatorward edge.
        widest = np.cos(np.deg2rad(max(abs(dec) - ring_step / 2, 0.0)))
        n_ra = max(int(np.ceil(360.0 * widest / size)), 1)
        for k in range(n_ra):
            add((k + 0.5) * 360.0 / n_ra, dec, size)
    add(0.0, 90.0, 2.0 * ring_step)
    return SkyMap(tuple(tracts), config)


def _footprint_sky(exposure: Exposure) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if exposure.wcs is None:
        msg = f"{exposure!r} has no WCS; a sky map needs one to place it on the sky"
        raise ValueError(msg)
    ny, nx = exposure.shape
    # Outer pixel edges, 9 points per side.
    t = np.linspace(0.0, 1.0, 9)
    lo_x, hi_x, lo_y, hi_y = -0.5, nx - 0.5, -0.5, ny - 0.5
    xs = np.concatenate([lo_x + t * nx, np.full(9, hi_x), hi_x - t * nx, np.full(9, lo_x)])
    ys = np.concatenate([np.full(9, lo_y), lo_y + t * ny, np.full(9, hi_y), hi_y - t * ny])
    ra, dec = exposure.wcs.all_pix2world(xs, ys, 0)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)


def _angular_distance_deg(
    ra1: NDArray[np.float64] | float, dec1: NDArray[np.float64] | float, ra2: float, dec2: float
) -> NDArray[np.float64]:
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    cos = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return np.asarray(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))


def patches_overlapping(exposure: Exposure, skymap: SkyMap) -> list[Patch]:
    """Return every patch of ``skymap`` that the exposure's pixels touch.

    Parameters
    ----------
    exposure : Exposure
        An image with a WCS.
    skymap : SkyMap
        The sky map to search.

    Returns
    -------
    list of Patch
        In tract order, then row-major patch order; empty when none overlaps.

    Raises
    ------
    ValueError
        If the exposure has no WCS.

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> config = SimulationConfig(size=128, galaxy_density_arcmin2=1.0, bands=("r",))
    >>> exposure = simulate_visit(make_sky(config), config, visit=0).exposure
    >>> skymap = make_skymap(SkyMapConfig(patch_size_px=1000))
    >>> len(patches_overlapping(exposure, skymap)) >= 1
    True
    """
    ra, dec = _footprint_sky(exposure)
    centre_ra, centre_dec = exposure.wcs.all_pix2world(  # type: ignore[union-attr]
        (exposure.width - 1) / 2.0, (exposure.height - 1) / 2.0, 0
    )
    radius = float(np.max(_angular_distance_deg(ra, dec, float(centre_ra), float(centre_dec))))
    out: list[Patch] = []
    centres = np.array([(t.ra_deg, t.dec_deg, t.shape[0]) for t in skymap.tracts])
    half_diag = centres[:, 2] * skymap.config.pixel_scale_arcsec / 3600.0 / np.sqrt(2.0)
    distance = _angular_distance_deg(
        centres[:, 0], centres[:, 1], float(centre_ra), float(centre_dec)
    )
    for k in np.flatnonzero(distance <= radius + half_diag):
        tract = skymap.tracts[int(k)]
        x, y = tract.wcs.all_world2pix(ra, dec, 0)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            continue
        ny, nx = tract.shape
        if x.max() < -0.5 or y.max() < -0.5 or x.min() > nx - 0.5 or y.min() > ny - 0.5:
            continue
        size, overlap = skymap.config.patch_size_px, skymap.config.patch_overlap_px
        npx, npy = tract.n_patches
        ix_lo = int(np.clip(np.floor((x.min() + 0.5 - overlap) / size), 0, npx - 1))
        ix_hi = int(np.clip(np.floor((x.max() + 0.5 + overlap) / size), 0, npx - 1))
        iy_lo = int(np.clip(np.floor((y.min() + 0.5 - overlap) / size), 0, npy - 1))
        iy_hi = int(np.clip(np.floor((y.max() + 0.5 + overlap) / size), 0, npy - 1))
        for iy in range(iy_lo, iy_hi + 1):
            for ix in range(ix_lo, ix_hi + 1):
                patch = tract.patch(ix, iy)
                px0, py0, px1, py1 = patch.bbox
                overlaps_x = x.max() >= px0 - 0.5 and x.min() <= px1 - 0.5
                if overlaps_x and y.max() >= py0 - 0.5 and y.min() <= py1 - 0.5:
                    out.append(patch)
    return out


def patch_covering(
    exposures: Sequence[Exposure],
    *,
    pixel_scale_arcsec: float | None = None,
    margin_px: int = 0,
) -> Patch:
    """Return one ad-hoc patch (tract 0) whose TAN grid covers every exposure.

    The tangent point is the mean position of the exposures' centres; the grid
    is north-up, east-left. Useful for small fields and for tests; survey-scale
    coadds use :func:`make_skymap` and :func:`patches_overlapping`.

    Parameters
    ----------
    exposures : sequence of Exposure
        Images with WCS.
    pixel_scale_arcsec : float, optional
        Pixel scale of the patch; by default the first exposure's.
    margin_px : int
        Extra pixels on every side.

    Returns
    -------
    Patch

    Raises
    ------
    ValueError
        If ``exposures`` is empty or one has no WCS.
    """
    if len(exposures) == 0:
        msg = "exposures is empty; pass at least one exposure with a WCS"
        raise ValueError(msg)
    if margin_px < 0:
        msg = f"margin_px must be >= 0, got {margin_px}"
        raise ValueError(msg)
    footprints = [_footprint_sky(e) for e in exposures]
    ra_all = np.concatenate([f[0] for f in footprints])
    dec_all = np.concatenate([f[1] for f in footprints])
    # Mean of unit vectors: safe across RA = 0.
    vec = np.stack(
        [
            np.cos(np.deg2rad(dec_all)) * np.cos(np.deg2rad(ra_all)),
            np.cos(np.deg2rad(dec_all)) * np.sin(np.deg2rad(ra_all)),
            np.sin(np.deg2rad(dec_all)),
        ]
    ).mean(axis=1)
    ra0 = float(np.rad2deg(np.arctan2(vec[1], vec[0])) % 360.0)
    dec0 = float(np.rad2deg(np.arcsin(vec[2] / np.linalg.norm(vec))))
    if pixel_scale_arcsec is None:
        pixel_scale_arcsec = float(
            np.sqrt(abs(np.linalg.det(exposures[0].wcs.pixel_scale_matrix))) * 3600.0  # type: ignore[union-attr]
        )
    wcs = _tan_wcs(ra0, dec0, (0.0, 0.0), pixel_scale_arcsec)
    x, y = wcs.all_world2pix(ra_all, dec_all, 0)
    x0 = int(np.floor(x.min())) - margin_px
    y0 = int(np.floor(y.min())) - margin_px
    x1 = int(np.ceil(x.max())) + 1 + margin_px
    y1 = int(np.ceil(y.max())) + 1 + margin_px
    return Patch(0, (0, 0), (0, 0, x1 - x0, y1 - y0), _shifted_wcs(wcs, x0, y0))
