"""Source detection: threshold the PSF-smoothed image in units of its noise.

The background-subtracted image ``I`` is correlated with the PSF ``K`` (at the
image centre, normalised to unit sum); its noise follows from the variance plane
``V`` as ``sqrt(V ⋆ K²)``, so the significance image is

    S = (I ⋆ K) / sqrt(V ⋆ K²),

the matched-filter signal-to-noise of a point source at each pixel. Pixels with
``S >= threshold_sigma`` form connected footprints (8-connectivity); a footprint
must contain a seed pixel that is not BAD/SAT/NO_DATA and ``min_pixels`` pixels.
Peaks are local maxima of ``S`` inside each footprint; a fainter peak survives
only if ``S`` dips by ``min_peak_dip_sigma`` on the straight line to its nearest
brighter peak. Footprints are then grown isotropically by ``grow_psf_sigma``
PSF sigmas (grown footprints that touch merge).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray
from scipy import ndimage

from ._matched_filter import _BLOCK_ROWS, _kernel, _matched_filter, _smoothed_at
from .exposure import Exposure

__all__ = ["DetectionConfig", "Detections", "detect_sources"]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

_POLARITIES = ("positive", "both")


@dataclass(frozen=True, kw_only=True)
class DetectionConfig:
    """Settings of :func:`detect_sources`.

    Attributes
    ----------
    threshold_sigma : float
        Detection threshold on the PSF-smoothed image, in units of its noise.
    min_pixels : int
        Smallest footprint (pixels above threshold, before growing).
    grow_psf_sigma : float
        Footprints grow isotropically by this many PSF sigmas (0 for none).
    min_peak_dip_sigma : float
        A fainter peak is kept only if the significance dips by this much between
        it and its nearest brighter peak (noise units).
    peak_smoothing_fraction : float
        Peaks are local maxima of the image smoothed by a Gaussian this fraction
        of the PSF's width (1 uses the detection image itself).
    max_peaks_per_footprint : int
        Footprints keep at most this many peaks (the brightest).
    polarity : str
        ``"positive"``, or ``"both"`` to also find negative footprints
        (DETECTED_NEGATIVE plane; they are not returned as sources).
    fallback_fwhm_px : float
        FWHM of the Gaussian smoothing kernel when the exposure has no PSF (pixels).
    no_seed_planes : tuple of str
        Mask planes whose pixels never seed a detection (nor count as signal).
    """

    threshold_sigma: float = 5.0
    min_pixels: int = 5
    grow_psf_sigma: float = 2.4
    min_peak_dip_sigma: float = 2.0
    peak_smoothing_fraction: float = 1.0
    max_peaks_per_footprint: int = 1000
    polarity: str = "positive"
    fallback_fwhm_px: float = 3.0
    no_seed_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")

    def __post_init__(self) -> None:
        if not self.threshold_sigma > 0:
            msg = (
                f"threshold_sigma must be > 0, got {self.threshold_sigma!r}; "
                "pass a positive detection threshold in units of the noise"
            )
            raise ValueError(msg)
        if not isinstance(self.min_pixels, int) or self.min_pixels < 1:
            msg = f"min_pixels must be an integer >= 1, got {self.min_pixels!r}"
            raise ValueError(msg)
        for name in ("grow_psf_sigma", "min_peak_dip_sigma"):
            if not getattr(self, name) >= 0:
                msg = f"{name} must be >= 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not isinstance(self.max_peaks_per_footprint, int) or self.max_peaks_per_footprint < 1:
            msg = (
                f"max_peaks_per_footprint must be an integer >= 1, "
                f"got {self.max_peaks_per_footprint!r}"
            )
            raise ValueError(msg)
        if not 0 < self.peak_smoothing_fraction <= 1:
            msg = f"peak_smoothing_fraction must be in (0, 1], got {self.peak_smoothing_fraction!r}"
            raise ValueError(msg)
        if self.polarity not in _POLARITIES:
            msg = f"polarity must be one of {_POLARITIES}, got {self.polarity!r}"
            raise ValueError(msg)
        if not self.fallback_fwhm_px > 0:
            msg = f"fallback_fwhm_px must be > 0 pixels, got {self.fallback_fwhm_px!r}"
            raise ValueError(msg)
        object.__setattr__(self, "no_seed_planes", tuple(self.no_seed_planes))


@dataclass(frozen=True, eq=False)
class Detections:
    """Footprints and peaks found by :func:`detect_sources`.

    Attributes
    ----------
    labels : numpy.ndarray
        int32 image: 0 outside footprints, ``k`` inside footprint ``id == k``.
    footprints : astropy.table.Table
        One row per footprint: ``id``, ``n_pixels``, bounding box ``x_min, x_max,
        y_min, y_max`` (inclusive, pixels), ``n_peaks``, ``flux`` (sum of the
        image over the footprint, ADU).
    peaks : astropy.table.Table
        One row per peak, brightest first within each footprint: ``footprint``,
        ``x``, ``y`` (integer pixel), ``significance`` (noise units), ``value``
        (smoothed image, ADU).
    significance : numpy.ndarray
        The significance image ``S`` (float32, noise units).
    kernel : numpy.ndarray
        Smoothing kernel used (unit sum).
    kernel_sigma_px : float
        Gaussian-equivalent sigma of the kernel (pixels).
    exposure : Exposure
        The input exposure (pixels shared) with a new mask in which DETECTED
        (and DETECTED_NEGATIVE) are set on the grown footprints.
    config : DetectionConfig
        The settings that made it.
    """

    labels: NDArray[np.int32]
    footprints: Table
    peaks: Table
    significance: NDArray[np.float32]
    kernel: NDArray[np.float64]
    kernel_sigma_px: float
    exposure: Exposure
    config: DetectionConfig = field(default_factory=DetectionConfig)

    def __len__(self) -> int:
        return len(self.footprints)

    def spans(self, footprint_id: int) -> NDArray[np.int64]:
        """Return the pixel spans of one footprint as rows ``(y, x_start, x_stop)``.

        ``x_stop`` is exclusive, so the footprint is the union of
        ``image[y, x_start:x_stop]`` over the rows.
        """
        row = self.footprints[int(footprint_id) - 1]
        y0, y1, x0, x1 = (int(row[k]) for k in ("y_min", "y_max", "x_min", "x_max"))
        inside = self.labels[y0 : y1 + 1, x0 : x1 + 1] == int(footprint_id)
        padded = np.pad(inside.astype(np.int8), ((0, 0), (1, 1)))
        change = np.diff(padded, axis=1)
        ys, starts = np.nonzero(change == 1)
        _, stops = np.nonzero(change == -1)
        return np.column_stack([ys + y0, starts + x0, stops + x0]).astype(np.int64)


def detect_sources(exposure: Exposure, config: DetectionConfig | None = None) -> Detections:
    """Detect sources on a background-subtracted exposure.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted image (ADU) with its variance plane; its PSF, when
        present, is the smoothing kernel.
    config : DetectionConfig, optional
        Settings; defaults when omitted.

    Returns
    -------
    Detections
        Footprints, peaks, the significance image and an exposure with the
        DETECTED plane set.

    Raises
    ------
    TypeError
        If ``exposure`` is not an :class:`~stacklab.toolkit.Exposure`.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((64, 64)); image[30:33, 20:23] = 50.0
    >>> det = detect_sources(Exposure(image, variance=np.ones((64, 64))))
    >>> len(det), det.peaks["x"][0], det.peaks["y"][0]
    (1, 21, 31)
    """
    config = DetectionConfig() if config is None else config
    if not isinstance(exposure, Exposure):
        msg = f"exposure must be an Exposure, got {type(exposure).__name__}"
        raise TypeError(msg)
    kernel, sigma_px = _kernel(exposure, config)
    image = exposure.image
    variance = exposure.variance
    planes = [p for p in config.no_seed_planes if p in exposure.mask_planes]
    masked = (exposure.mask & exposure.mask_planes.bitmask(*planes)) != 0 if planes else None
    bad = ~np.isfinite(image) | ~np.isfinite(variance) | (variance <= 0)
    # Saturated pixels carry real (clipped) signal for smoothing, but never seed.
    no_signal = bad.copy()
    if masked is not None and "BAD" in planes:
        no_signal |= exposure.plane("BAD")
    if masked is not None and "NO_DATA" in planes:
        no_signal |= exposure.plane("NO_DATA")
    data = np.where(no_signal, np.float32(0.0), image).astype(np.float32, copy=False)
    if bad.any():
        good_var = variance[~bad]
        fill_var = float(np.median(good_var, overwrite_input=True)) if good_var.size else 1.0
        del good_var
        var = np.where(bad, np.float32(fill_var), variance).astype(np.float32, copy=False)
    else:  # nothing to fill: skip the median of the whole variance plane
        var = np.asarray(variance, dtype=np.float32)
    significance = _matched_filter(data, var, kernel)
    significance[no_signal] = 0.0
    peak_map = _peak_map(data, var, significance, sigma_px, config)
    del data, var  # full-size copies: gone before the footprints' own images are made

    seedless = no_signal if masked is None else (no_signal | masked)
    positive = _threshold(significance, seedless, config)
    saturated = exposure.plane("SAT") if "SAT" in exposure.mask_planes else None
    labels, footprints, peaks = _footprints(
        positive,
        peak_map,
        significance,
        image,
        no_signal,
        kernel,
        config,
        sigma_px,
        saturated,
    )
    mask = exposure.mask.copy()
    planes_map = exposure.mask_planes
    mask[labels > 0] |= np.int32(planes_map.bitmask("DETECTED"))
    if config.polarity == "both":
        negative = _threshold(-significance, seedless, config)
        grown = _grow(negative, config.grow_psf_sigma * sigma_px)
        mask[grown] |= np.int32(planes_map.bitmask("DETECTED_NEGATIVE"))
    log.info(
        "detected %d footprints with %d peaks at %.1f sigma", len(footprints), len(peaks),
        config.threshold_sigma,
    )  # fmt: skip
    return Detections(
        labels=labels,
        footprints=footprints,
        peaks=peaks,
        significance=significance,
        kernel=kernel,
        kernel_sigma_px=sigma_px,
        exposure=exposure.replace(mask=mask),
        config=config,
    )


def _threshold(
    significance: NDArray[np.float32], seedless: NDArray[np.bool_], config: DetectionConfig
) -> NDArray[np.bool_]:
    """Pixels of the above-threshold regions that are big enough and have a seed pixel."""
    above = significance >= config.threshold_sigma
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return above
    # bincount works on an int64 copy of its input: give it the labelled pixels only.
    sizes = np.bincount(labels[above], minlength=n + 1)
    seeds = np.bincount(labels[above & ~seedless], minlength=n + 1)
    keep = (sizes >= config.min_pixels) & (seeds > 0)
    keep[0] = False
    return np.asarray(keep[labels])


def _grow(mask: NDArray[np.bool_], radius: float) -> NDArray[np.bool_]:
    """Dilate ``mask`` by an octagon of the given radius (pixels), close to a disk.

    Alternating 3x3 cross and square dilations grow an octagon one pixel per
    step; this costs a few passes over the image instead of one large structuring
    element.
    """
    if radius <= 0 or not mask.any():
        return mask
    steps = round(radius)
    # A disk of radius r holds the octagon that has ~0.41 r diagonal (square) steps.
    n_square = round(steps * (np.sqrt(2.0) - 1.0))
    out = mask.copy()
    for i in range(steps):
        _dilate_once(out, square=i < n_square)
    return out


def _dilate_once(mask: NDArray[np.bool_], *, square: bool) -> None:
    """Dilate ``mask`` in place by the 3x3 square or cross (outside the image is False).

    Shifted ORs of whole rows and columns: several times faster than
    ``ndimage.binary_dilation``, whose column pass strides through memory.
    """
    if square:  # the square is separable: rows, then columns of the result
        vertical = mask.copy()
        vertical[1:] |= mask[:-1]
        vertical[:-1] |= mask[1:]
        mask[:, 1:] |= vertical[:, :-1]
        mask[:, :-1] |= vertical[:, 1:]
        mask |= vertical
        return
    original = mask.copy()
    mask[1:] |= original[:-1]
    mask[:-1] |= original[1:]
    mask[:, 1:] |= original[:, :-1]
    mask[:, :-1] |= original[:, 1:]


def _peak_map(
    data: NDArray[np.float32],
    var: NDArray[np.float32],
    significance: NDArray[np.float32],
    sigma_px: float,
    config: DetectionConfig,
) -> NDArray[np.float32]:
    """Return the image in which peaks are found (significance with a narrower Gaussian).

    Smoothing with the full PSF merges stars closer than ~1.5 FWHM into one
    maximum; a kernel ``peak_smoothing_fraction`` times as wide keeps them apart
    while still averaging the pixel noise (the dip test culls noise peaks).
    """
    if config.peak_smoothing_fraction >= 1.0:
        return significance
    sigma = max(config.peak_smoothing_fraction * sigma_px, 0.5)
    half = int(np.ceil(4.0 * sigma))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return _matched_filter(data, var, kernel)


def _footprints(
    above: NDArray[np.bool_],
    significance: NDArray[np.float32],
    detection_significance: NDArray[np.float32],
    image: NDArray[np.float32],
    no_signal: NDArray[np.bool_],
    kernel: NDArray[np.floating],
    config: DetectionConfig,
    sigma_px: float,
    saturated: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.int32], Table, Table]:
    grown = _grow(above, config.grow_psf_sigma * sigma_px)
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    labels = labels.astype(np.int32, copy=False)
    # Peaks: local maxima of the significance within the above-threshold pixels.
    py, px = _local_maxima(significance, above)
    order = np.argsort(-significance[py, px], kind="stable")
    py, px = py[order], px[order]
    owner = labels[py, px]
    keep_peak = np.zeros(len(py), dtype=bool)
    kept_by_fp: dict[int, list[int]] = {}
    # A saturated star (core and bleed trail, plus a margin of two PSF FWHM) is
    # flat on top: it gets one peak, at the middle of its saturated pixels.
    sat_of_peak = np.zeros(len(py), dtype=np.int32)
    sat_centres: dict[int, tuple[int, int]] = {}
    if saturated is not None and saturated.any():
        sat_grown = _grow(saturated, 2.0 * _FWHM_PER_SIGMA * sigma_px)
        sat_labels, _ = ndimage.label(sat_grown, structure=np.ones((3, 3), dtype=bool))
        sat_of_peak = sat_labels[py, px]
        for k, sl in enumerate(ndimage.find_objects(sat_labels), start=1):
            if sl is None:
                continue
            core = saturated[sl] & (sat_labels[sl] == k)
            ys, xs = np.nonzero(core)
            sat_centres[k] = (
                round((ys.min() + ys.max()) / 2) + sl[0].start,
                round((xs.min() + xs.max()) / 2) + sl[1].start,
            )
    candidate = np.ones(len(py), dtype=bool)
    on_sat = np.flatnonzero(sat_of_peak)
    if len(on_sat):
        # Peaks are sorted brightest first: the first on each saturated star stands
        # for it, moved to the middle of the saturated pixels; the others go.
        _, first = np.unique(sat_of_peak[on_sat], return_index=True)
        candidate[on_sat] = False
        for i in on_sat[first]:
            candidate[i] = True
            py[i], px[i] = sat_centres[int(sat_of_peak[i])]
    # A footprint with one candidate keeps it; only the others need the dip test,
    # which goes peak by peak (each is compared with the brighter ones kept).
    index = np.flatnonzero(candidate)
    crowded = np.bincount(owner[index], minlength=n + 1)[owner[index]] > 1
    keep_peak[index[~crowded]] = True
    for i in index[crowded]:
        fp = int(owner[i])
        kept = kept_by_fp.setdefault(fp, [])
        if len(kept) >= config.max_peaks_per_footprint:
            continue
        if kept and not _dips(significance, py, px, i, kept, config.min_peak_dip_sigma):
            continue
        kept.append(i)
        keep_peak[i] = True
    py, px, owner = py[keep_peak], px[keep_peak], owner[keep_peak]
    order = np.lexsort((-detection_significance[py, px], owner))
    py, px, owner = py[order], px[order], owner[order]
    peaks = Table(
        {
            "footprint": owner.astype(np.int64),
            "x": px.astype(np.int64),
            "y": py.astype(np.int64),
            "significance": detection_significance[py, px].astype(np.float64),
            "value": _smoothed_at(image, no_signal, kernel, py, px),
        }
    )
    index = np.arange(1, n + 1)
    slices = ndimage.find_objects(labels, max_label=n)
    n_pixels, flux = _footprint_sums(labels, image, n)
    n_peaks = np.bincount(owner, minlength=n + 1)[1:]
    footprints = Table(
        {
            "id": index.astype(np.int64),
            "n_pixels": n_pixels.astype(np.int64),
            "x_min": np.array([s[1].start for s in slices], dtype=np.int64),
            "x_max": np.array([s[1].stop - 1 for s in slices], dtype=np.int64),
            "y_min": np.array([s[0].start for s in slices], dtype=np.int64),
            "y_max": np.array([s[0].stop - 1 for s in slices], dtype=np.int64),
            "n_peaks": n_peaks.astype(np.int64),
            "flux": np.asarray(flux, dtype=np.float64),
        }
    )
    footprints["flux"].unit = "adu"
    peaks["value"].unit = "adu"
    return labels, footprints, peaks


def _local_maxima(
    image: NDArray[np.float32], where: NDArray[np.bool_]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Pixels of ``where`` not below any of their 8 neighbours (edges repeat outward).

    The same as comparing with a 3x3 maximum filter in ``"nearest"`` mode, but only
    at the pixels asked about, not over the whole image.
    """
    ys, xs = np.nonzero(where)
    ny, nx = image.shape
    value = image[ys, xs]
    keep = np.ones(len(ys), dtype=bool)
    for dy in (-1, 0, 1):
        yn = np.clip(ys + dy, 0, ny - 1)
        for dx in (-1, 0, 1):
            if dy or dx:
                keep &= value >= image[yn, np.clip(xs + dx, 0, nx - 1)]
    return ys[keep], xs[keep]


def _footprint_sums(
    labels: NDArray[np.int32], image: NDArray[np.float32], n: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Pixel count and sum of ``image`` (non-finite as 0) of labels ``1..n``.

    By strips of rows, so that bincount's int64 and float64 copies stay small.
    """
    count = np.zeros(n + 1, dtype=np.int64)
    total = np.zeros(n + 1)
    for y0 in range(0, labels.shape[0], _BLOCK_ROWS):
        strip = labels[y0 : y0 + _BLOCK_ROWS]
        inside = strip > 0
        own = strip[inside]
        count += np.bincount(own, minlength=n + 1)
        values = np.nan_to_num(image[y0 : y0 + _BLOCK_ROWS][inside]).astype(np.float64)
        total += np.bincount(own, weights=values, minlength=n + 1)
    return count[1:], total[1:]


def _dips(
    significance: NDArray[np.float32],
    py: NDArray[np.intp],
    px: NDArray[np.intp],
    i: int,
    kept: list[int],
    min_dip: float,
) -> bool:
    ky, kx = py[kept], px[kept]
    nearest = kept[int(np.argmin((ky - py[i]) ** 2 + (kx - px[i]) ** 2))]
    y0, x0, y1, x1 = py[i], px[i], py[nearest], px[nearest]
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.rint(np.linspace(y0, y1, n)).astype(np.intp)
    xs = np.rint(np.linspace(x0, x1, n)).astype(np.intp)
    saddle = float(significance[ys, xs].min())
    return float(significance[y0, x0]) - saddle >= min_dip
