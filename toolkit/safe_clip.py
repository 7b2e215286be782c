"""Safe clipping: find artifacts as regions, and reject each from the warps it arises in.

The algorithm of LSST's ``SafeClipAssembleCoaddTask`` (2016 defaults), written
for stacklab's arrays:

1. ``diff = mean - clipped_mean`` of the warps (the clipped mean with a harsh
   1.5 sigma, 3 iteration clip);
2. detect regions in ``diff`` smoothed by the PSF, both polarities, at
   ``threshold_sigma`` times the smoothed difference's pixel standard deviation,
   at least ``min_pixels`` pixels, grown isotropically by ``n_sigma_to_grow`` PSF sigmas;
3. assign each region to warps by how much of it each warp's own detection
   mask (DETECTED | DETECTED_NEGATIVE) covers, with the single/general/double
   overlap rules of the note (``min_clip_foot_overlap*`` parameters);
4. in every warp, detected regions of at least ``min_big_overlap`` pixels that
   already hold more than ``min_big_overlap`` clipped pixels are clipped whole;
5. (stacklab's addition) a region several warps take part in — e.g. the artifacts of
   several warps merged into one, such as crossing satellite trails, which the rules
   above give to one warp at most — is also split by warp: each connected piece of
   warp ``i``'s detections inside it, of at least ``min_big_overlap`` pixels, that the
   other warps with data there detect on average at no more than
   ``max_shared_fraction`` is clipped from warp ``i`` (except its pixels that most
   other warps detect too: the real sources an artifact crosses). Real
   sources are detected by (nearly) every warp and are kept.

Warps lacking detection planes are detected first (PSF-smoothed S/N above
``warp_threshold_sigma``). The clipped pixels become the CLIPPED plane of the warps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["SafeClipConfig", "SafeClipRegions", "clipped_pixels", "find_clip_regions"]

log = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True, kw_only=True)
class SafeClipConfig:
    """Parameters of safe clipping (defaults from SafeClipAssembleCoadd, 2016).

    Attributes
    ----------
    sigma_clip : float
        Clip of the clipped-mean coadd (standard deviations).
    clip_iterations : int
        Iterations of the clipped mean.
    threshold_sigma : float
        Detection threshold on the smoothed difference (its pixel standard deviations).
    min_pixels : int
        Smallest region in the difference (pixels above threshold).
    n_sigma_to_grow : float
        Regions grow isotropically by this many PSF sigmas.
    min_clip_foot_overlap : float
        General case: clip the one warp covering more than this fraction of a region.
    min_clip_foot_overlap_single : float
        A region seen by a single warp is clipped there above this overlap.
    min_clip_foot_overlap_double : float
        Two warps above this overlap are both clipped (if the others stay low).
    max_clip_foot_overlap_double : float
        ... the others must stay at or below this overlap.
    min_big_overlap : int
        Big-footprint rule: detected regions of at least this many pixels holding
        more than this many clipped pixels are clipped whole.
    warp_threshold_sigma : float
        Threshold (PSF-smoothed S/N) of the detection run on warps without one.
    split_shared_regions : bool
        Split the regions several warps take part in by warp (step 5 above).
    max_shared_fraction : float
        Step 5: a piece of one warp's detections is that warp's own artifact when the
        other warps with data detect its pixels at most this fraction of the time.
    """

    sigma_clip: float = 1.5
    clip_iterations: int = 3
    threshold_sigma: float = 2.0
    min_pixels: int = 4
    n_sigma_to_grow: float = 2.0
    min_clip_foot_overlap: float = 0.6
    min_clip_foot_overlap_single: float = 0.5
    min_clip_foot_overlap_double: float = 0.45
    max_clip_foot_overlap_double: float = 0.15
    min_big_overlap: int = 100
    warp_threshold_sigma: float = 5.0
    split_shared_regions: bool = True
    max_shared_fraction: float = 0.3

    def __post_init__(self) -> None:
        for name in ("sigma_clip", "threshold_sigma", "warp_threshold_sigma"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        for name in ("clip_iterations", "min_pixels", "min_big_overlap"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        if self.n_sigma_to_grow < 0:
            msg = f"n_sigma_to_grow must be >= 0, got {self.n_sigma_to_grow!r}"
            raise ValueError(msg)
        for name in (
            "min_clip_foot_overlap",
            "min_clip_foot_overlap_single",
            "min_clip_foot_overlap_double",
            "max_clip_foot_overlap_double",
            "max_shared_fraction",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                msg = f"{name} must be a fraction in [0, 1], got {getattr(self, name)!r}"
                raise ValueError(msg)


@dataclass(frozen=True, eq=False)
class SafeClipRegions:
    """What safe clipping found.

    Attributes
    ----------
    labels : numpy.ndarray of int32
        Regions detected in the mean-minus-clipped difference (0 = none).
    clip : numpy.ndarray of bool, shape (n_warps, n_regions + 1)
        Whether region ``k`` (column ``k``; column 0 is the background) is
        rejected from warp ``i``.
    n_regions : int
        Number of regions found in the difference.
    n_clipped_regions : int
        Regions (of the difference) clipped in at least one warp.
    config : SafeClipConfig
        The configuration used.
    pieces : dict of int to numpy.ndarray of int64
        Step 5: flat indices of the pixels of shared regions clipped from warp ``i``.
    """

    labels: NDArray[np.int32]
    clip: NDArray[np.bool_]
    n_regions: int
    n_clipped_regions: int
    config: SafeClipConfig
    pieces: dict[int, NDArray[np.int64]] = field(default_factory=dict)


def _disk(radius: float) -> NDArray[np.bool_]:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.asarray(xx**2 + yy**2 <= radius**2 + 1e-9)


def _grow(mask: NDArray[np.bool_], radius: float) -> NDArray[np.bool_]:
    """Dilate ``mask`` by a disk of ``radius`` px (as ``binary_dilation`` with that disk).

    The disk is a union of horizontal runs, one per row offset: each run is a 1D
    dilation (shifted ORs), and the runs are OR'ed in with their row shift. This
    touches each pixel a few dozen times in contiguous slices, several times faster
    than a general binary dilation.
    """
    if radius < 0.5 or not mask.any():
        return mask
    disk = _disk(radius)
    r = disk.shape[0] // 2
    ny, nx = mask.shape
    # Horizontal dilations of every half-width a row of the disk needs.
    widths = {int(np.sum(row)) // 2 for row in disk if row.any()}
    runs: dict[int, NDArray[np.bool_]] = {}
    current = mask.copy()
    for half in range(max(widths) + 1):
        if half:
            current[:, half:] |= mask[:, : nx - half]
            current[:, : nx - half] |= mask[:, half:]
        if half in widths:
            runs[half] = current.copy() if half < max(widths) else current
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        row = disk[dy + r]
        if not row.any():
            continue
        run = runs[int(np.sum(row)) // 2]
        if dy >= 0:
            out[dy:] |= run[: ny - dy] if dy else run
        else:
            out[:dy] |= run[-dy:]
    return out


def _drop_small(above: NDArray[np.bool_], min_pixels: int) -> NDArray[np.bool_]:
    labels, n = ndimage.label(above, structure=_EIGHT)
    if n == 0:
        return above
    # Sizes and the kept pixels over the labelled pixels only: they are few.
    pixels = np.flatnonzero(labels)
    values = labels.ravel()[pixels]
    sizes = np.bincount(values, minlength=n + 1)
    keep = sizes >= min_pixels
    out = np.zeros(above.shape, dtype=bool)
    out.ravel()[pixels[keep[values]]] = True
    return out


def _smoothed_with_noise(
    image: NDArray[np.float64],
    variance: NDArray[np.float64],
    usable: NDArray[np.bool_],
    psf_sigma_px: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Return the PSF-smoothed image, its noise from the variance plane, and where both hold.

    ``image`` and ``variance`` (ADU, ADU²) must be 0 where not ``usable``. The noise
    (ADU) is that of the smoothed image: the variance convolved with the squared
    kernel, a Gaussian of sigma/sqrt(2) scaled by 1/(4 pi sigma^2). The mask is
    where it is positive and usable pixels carry most of the kernel.
    """
    smooth = ndimage.gaussian_filter(image, psf_sigma_px, mode="constant")
    noise = ndimage.gaussian_filter(variance, psf_sigma_px / np.sqrt(2.0), mode="constant")
    noise /= 4.0 * np.pi * psf_sigma_px**2
    covered = ndimage.gaussian_filter(usable.astype(np.float64), psf_sigma_px, mode="constant")
    good = (noise > 0) & (covered > 0.5)
    del covered
    np.sqrt(noise, out=noise)
    return smooth, noise, good


def _detect_on_warp(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    usable: NDArray[np.bool_],
    *,
    psf_sigma_px: float,
    threshold_sigma: float,
    min_pixels: int = 4,
    grow_sigma: float = 1.0,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Positive and negative detection masks from the PSF-smoothed S/N of one warp."""
    # Each full-size float64 temporary is dropped as soon as it is used: these
    # images are patch- or warp-sized, and several at once set the coadd's peak memory.
    smooth, noise, good = _smoothed_with_noise(
        np.where(usable, image, 0.0).astype(np.float64),
        np.where(usable, variance, 0.0).astype(np.float64),
        usable,
        psf_sigma_px,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth /= noise
    del noise
    snr = np.where(good, smooth, 0.0)
    del smooth, good
    grow = grow_sigma * psf_sigma_px
    positive = _grow(_drop_small(snr >= threshold_sigma, min_pixels), grow)
    negative = _grow(_drop_small(snr <= -threshold_sigma, min_pixels), grow)
    return positive, negative


def _difference_regions(
    diff: NDArray[np.float64],
    usable: NDArray[np.bool_],
    psf_sigma_px: float,
    config: SafeClipConfig,
) -> tuple[NDArray[np.int32], int, NDArray[np.bool_]]:
    """Label the grown regions of the difference; also return their cores (grown 1 sigma)."""
    data = np.where(usable, diff, 0.0)
    smooth = ndimage.gaussian_filter(data, psf_sigma_px, mode="constant")
    # Where few warps overlap the clip rarely acts and the difference is exactly 0;
    # the scatter is measured where it does act.
    values = smooth[usable & (diff != 0)]
    if values.size == 0:
        return np.zeros(diff.shape, dtype=np.int32), 0, np.zeros(diff.shape, dtype=bool)
    # "pixel_stdev": the threshold is in units of the smoothed difference's own scatter.
    centre = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - centre)))
    if sigma <= 0:
        sigma = float(np.std(values)) or 1.0
    threshold = config.threshold_sigma * sigma
    found = _drop_small(usable & (smooth - centre >= threshold), config.min_pixels)
    found |= _drop_small(usable & (smooth - centre <= -threshold), config.min_pixels)
    core = _grow(found, psf_sigma_px)
    found = _grow(found, config.n_sigma_to_grow * psf_sigma_px)
    labels, n = ndimage.label(found, structure=_EIGHT)
    return labels.astype(np.int32), int(n), core


def find_clip_regions(
    diff: NDArray[np.float64],
    usable: NDArray[np.bool_],
    warp_masks: Callable[[int], tuple[NDArray[np.bool_], NDArray[np.bool_]]],
    n_warps: int,
    *,
    psf_sigma_px: float,
    config: SafeClipConfig | None = None,
) -> SafeClipRegions:
    """Find artifact regions in the mean-minus-clipped difference and the warps they arise in.

    Parameters
    ----------
    diff : numpy.ndarray, shape (ny, nx)
        Weighted mean minus clipped mean of the warps (ADU).
    usable : numpy.ndarray of bool
        Coadd pixels with data.
    warp_masks : callable
        ``warp_masks(i)`` returns warp ``i``'s ``(detected, bad)`` boolean images:
        its DETECTED | DETECTED_NEGATIVE pixels and its unusable pixels. Called
        once per warp, so only one warp's masks are in memory at a time.
    n_warps : int
        Number of warps.
    psf_sigma_px : float
        Gaussian sigma of the coadd PSF (px), for smoothing and growing.
    config : SafeClipConfig, optional
        Thresholds and overlap rules.

    Returns
    -------
    SafeClipRegions
        Apply it to each warp with :func:`clipped_pixels`.
    """
    config = SafeClipConfig() if config is None else config
    if n_warps < 1:
        msg = f"n_warps must be >= 1, got {n_warps}"
        raise ValueError(msg)
    labels, n, core = _difference_regions(diff, usable, psf_sigma_px, config)
    clip = np.zeros((n_warps, n + 1), dtype=bool)
    if n == 0:
        return SafeClipRegions(labels, clip, 0, 0, config)
    flat = labels.ravel()
    n_pixel = np.bincount(flat, minlength=n + 1).astype(float)
    overlap = np.zeros((n_warps, n + 1))
    candidate = np.zeros((n_warps, n + 1), dtype=bool)
    # Per pixel: how many warps detect it, and how many have data there (step 5).
    n_detecting = np.zeros(diff.shape, dtype=np.int16)
    n_with_data = np.zeros(diff.shape, dtype=np.int16)
    for i in range(n_warps):
        detected, bad = warp_masks(i)
        n_detecting += detected & ~bad
        n_with_data += ~bad
        b = bad.ravel()
        ignore = np.bincount(flat, weights=b, minlength=n + 1)
        overlap_det = np.bincount(flat, weights=detected.ravel() & ~b, minlength=n + 1)
        total = n_pixel - ignore
        skip = (ignore > overlap_det) | (total <= 0.5 * n_pixel) | (overlap_det == 0)
        overlap[i] = np.where(skip, 0.0, overlap_det / np.maximum(total, 1.0))
        candidate[i] = ~skip
    candidate[:, 0] = False
    n_candidates = candidate.sum(axis=0)
    # Only one warp saw anything here.
    single = n_candidates == 1
    clip |= single[None, :] & candidate & (overlap > config.min_clip_foot_overlap_single)
    # General case: exactly one warp above the overlap threshold.
    high = candidate & (overlap > config.min_clip_foot_overlap)
    general = ~single & (high.sum(axis=0) == 1)
    clip |= general[None, :] & high
    # Two-visit case: two warps high, more than three overlapping, the others low.
    double = candidate & (overlap > config.min_clip_foot_overlap_double)
    others_low = np.all(
        double | ~candidate | (overlap <= config.max_clip_foot_overlap_double), axis=0
    )
    two = ~single & ~general & (double.sum(axis=0) == 2) & (n_candidates > 3) & others_low
    clip |= two[None, :] & double
    clip[:, 0] = False
    pieces: dict[int, NDArray[np.int64]] = {}
    # Regions several warps take part in may hold the artifacts of several warps (crossing
    # trails): the overlap rules give such a region to one warp at most, so split them.
    shared_regions = n_candidates >= 2
    shared_regions[0] = False
    if config.split_shared_regions and shared_regions.any():
        pieces = _split_by_warp(
            labels, shared_regions, core, warp_masks, n_warps, n_detecting, n_with_data, config
        )
    n_clipped = int(np.sum(clip.any(axis=0)))
    log.info(
        "safe clip: %d regions in the difference, %d clipped, %d split by warp",
        n, n_clipped, int(shared_regions.sum()),
    )  # fmt: skip
    return SafeClipRegions(labels, clip, n, n_clipped, config, pieces)


def _split_by_warp(
    labels: NDArray[np.int32],
    shared_regions: NDArray[np.bool_],
    core: NDArray[np.bool_],
    warp_masks: Callable[[int], tuple[NDArray[np.bool_], NDArray[np.bool_]]],
    n_warps: int,
    n_detecting: NDArray[np.int16],
    n_with_data: NDArray[np.int16],
    config: SafeClipConfig,
) -> dict[int, NDArray[np.int64]]:
    """Step 5: pieces of shared regions that only one warp detects, per warp."""
    # Only where the difference itself is significant (not the 2-sigma growth, where
    # seeing differences make footprint edges that only some warps detect).
    inside = shared_regions[labels] & core
    # At a pixel one warp detects: the fraction of the other warps with data there that
    # detect it too (the same for every warp, so computed once).
    others = n_with_data.astype(np.float64) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        shared = np.where(others > 0, (n_detecting - 1.0) / others, 1.0)
    pieces: dict[int, NDArray[np.int64]] = {}
    for i in range(n_warps):
        detected, bad = warp_masks(i)
        own = inside & detected & ~bad
        if not own.any():
            continue
        parts, n_parts = ndimage.label(own, structure=_EIGHT)
        if n_parts == 0:
            continue
        flat = parts.ravel()
        size = np.bincount(flat, minlength=n_parts + 1)
        mean_shared = np.bincount(flat, weights=shared.ravel(), minlength=n_parts + 1) / np.maximum(
            size, 1
        )
        # Only big pieces: small ones (a faint source detected in one epoch by its noise)
        # are left to the overlap rules, so that no real source loses its best epochs.
        take = (size >= config.min_big_overlap) & (mean_shared <= config.max_shared_fraction)
        take[0] = False
        if take.any():
            # Within a piece, pixels most other warps detect too are real sources the
            # artifact crosses: they keep this warp's data.
            own_pixels = take[flat] & (shared.ravel() <= config.max_shared_fraction)
            pieces[i] = np.flatnonzero(own_pixels).astype(np.int64)
    return pieces


def clipped_pixels(
    regions: SafeClipRegions, warp: int, detected: NDArray[np.bool_]
) -> NDArray[np.bool_] | None:
    """Pixels of warp ``warp`` to reject, with the big-footprint rule; None when none.

    Parameters
    ----------
    regions : SafeClipRegions
        From :func:`find_clip_regions`.
    warp : int
        Index of the warp.
    detected : numpy.ndarray of bool
        The warp's DETECTED | DETECTED_NEGATIVE pixels.
    """
    decision = regions.clip[warp]
    piece = regions.pieces.get(warp)
    if not decision.any() and piece is None:
        return None
    clipped = decision[regions.labels]
    if decision.any():
        own, n_own = ndimage.label(detected, structure=_EIGHT)
        if n_own:
            size = np.bincount(own.ravel(), minlength=n_own + 1)
            inside = np.bincount(own.ravel(), weights=clipped.ravel(), minlength=n_own + 1)
            limit = regions.config.min_big_overlap
            big = (size >= limit) & (inside > limit)
            big[0] = False
            if big.any():
                clipped |= big[own]
    # Step-5 pieces are added after the big-footprint rule: a trail's detection joins
    # every source it crosses, which that rule would otherwise clip whole.
    if piece is not None:
        clipped.ravel()[piece] = True
    return np.asarray(clipped)
