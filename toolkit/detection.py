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
brighter peak. A source on a brighter one's slope makes no maximum: a second
search finds it as light the peaks' point reflections do not explain
(``symmetry_peaks``). Footprints are then grown isotropically by ``grow_psf_sigma``
PSF sigmas (grown footprints that touch merge).

Footprints are kept as pixel spans (runs of pixels along x in one row), not as a
label image: a few bytes per footprint row instead of four bytes per image pixel.
:attr:`Detections.labels` draws the label image from them when asked.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from ._detection_kernels import _footprint_stats, _set_bits, _sizes_and_seeds, _unusable
from ._footprint_spans import (
    _connect_runs,
    _grow,
    _grown_runs,
    _label_image,
    _label_runs,
    _paint,
    _span_pixels,
)
from ._matched_filter import _BLOCK_ROWS, _kernel, _matched_filter, _smoothed_at
from ._peaks import _dips, _local_maxima, _saturated_stars, _star_under
from ._symmetry_peaks import _symmetry_peaks
from .exposure import Exposure

__all__ = ["DetectionConfig", "Detections", "detect_sources"]

log = logging.getLogger(__name__)

_POLARITIES = ("positive", "both")
# A peak of the symmetry search is at least this many PSF sigmas from any other peak.
_MIN_SEPARATION_SIGMA = 2.0
# Below this PSF sigma (FWHM 2.5 px) a bilinear mirror image of S is too coarse: on
# undersampled real images (SDSS at FWHM 1.6 px) the search found mostly the
# asymmetry of single stars' sampled cores.
_MIN_SYMMETRY_SIGMA_PX = 1.06


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
    symmetry_peaks : bool
        Also look for sources hidden on a brighter source's slope, which make no
        local maximum: light that no peak's point reflection explains (see
        :mod:`~stacklab.toolkit._symmetry_peaks`); such peaks have ``residual``
        set in the peaks table. Skipped when the PSF is undersampled (FWHM
        below 2.5 px) and in footprints with saturated or masked pixels.
    symmetry_tolerance : float
        Asymmetry of a point source the symmetry search allows, as a fraction of
        the mirrored significance (the PSF's own asymmetry; larger finds fewer).
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
    symmetry_peaks: bool = True
    symmetry_tolerance: float = 0.05
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
        for name in ("grow_psf_sigma", "min_peak_dip_sigma", "symmetry_tolerance"):
            if not getattr(self, name) >= 0:
                msg = f"{name} must be >= 0, got {getattr(self, name)!r}; pass 0 or more"
                raise ValueError(msg)
        if not isinstance(self.symmetry_peaks, bool):
            msg = f"symmetry_peaks must be True or False, got {self.symmetry_peaks!r}"
            raise TypeError(msg)
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
    footprint_spans : numpy.ndarray
        int32 array of shape ``(n_spans, 4)``, one row per run of footprint pixels
        along x: ``(footprint id, y, x_start, x_stop)`` (pixels; ``x_stop``
        exclusive), sorted by footprint, then y, then x. Footprint ``k`` is the
        union of ``image[y, x_start:x_stop]`` over its rows.
    footprints : astropy.table.Table
        One row per footprint: ``id``, ``n_pixels``, bounding box ``x_min, x_max,
        y_min, y_max`` (inclusive, pixels), ``n_peaks``, ``flux`` (sum of the
        image over the footprint, ADU).
    peaks : astropy.table.Table
        One row per peak, brightest first within each footprint: ``footprint``,
        ``x``, ``y`` (integer pixel), ``significance`` (noise units), ``value``
        (smoothed image, ADU), ``residual`` (found by the symmetry search, not
        as a local maximum).
    significance : numpy.ndarray or None
        The significance image ``S`` (float32, noise units), kept only with
        ``detect_sources(..., keep_significance=True)``; None otherwise.
    kernel : numpy.ndarray
        Smoothing kernel used (unit sum).
    kernel_sigma_px : float
        Gaussian-equivalent sigma of the kernel (pixels).
    exposure : Exposure
        The input exposure (pixels shared) with DETECTED (and DETECTED_NEGATIVE)
        set on the grown footprints: in a new mask, or in the input's own mask
        with ``mask_in_place=True``; the input itself, unmarked, with
        ``mark_detected=False``.
    config : DetectionConfig
        The settings that made it.
    """

    footprint_spans: NDArray[np.int32]
    footprints: Table
    peaks: Table
    significance: NDArray[np.float32] | None
    kernel: NDArray[np.float64]
    kernel_sigma_px: float
    exposure: Exposure
    config: DetectionConfig = field(default_factory=DetectionConfig)

    def __len__(self) -> int:
        return len(self.footprints)

    @property
    def labels(self) -> NDArray[np.int32]:
        """int32 label image: 0 outside footprints, ``k`` inside footprint ``id == k``.

        Drawn from :attr:`footprint_spans` on every access (a new array of 4 bytes
        per pixel): keep it while you need it.
        """
        out = np.zeros(self.exposure.shape, dtype=np.int32)
        _paint(self.footprint_spans, out, np.arange(len(self.footprints) + 1, dtype=np.int32))
        return out

    def spans(self, footprint_id: int) -> NDArray[np.int64]:
        """Return the pixel spans of one footprint as rows ``(y, x_start, x_stop)``.

        ``x_stop`` is exclusive, so the footprint is the union of
        ``image[y, x_start:x_stop]`` over the rows.
        """
        return self._spans_of(footprint_id)[:, 1:].astype(np.int64)

    def footprint_mask(
        self, footprint_id: int, *, box: tuple[int, int, int, int] | None = None
    ) -> NDArray[np.bool_]:
        """Return the pixels of one footprint on its bounding box.

        Parameters
        ----------
        footprint_id : int
            The footprint's ``id``.
        box : tuple of int, optional
            Its ``(y_min, y_max, x_min, x_max)`` (pixels, inclusive) when the
            caller has it already; read from :attr:`footprints` otherwise.

        Returns
        -------
        numpy.ndarray
            Boolean array of shape ``(y_max - y_min + 1, x_max - x_min + 1)``; its
            first pixel is ``(x_min, y_min)`` of the footprint's row of
            :attr:`footprints`.
        """
        if box is None:
            row = self.footprints[int(footprint_id) - 1]
            box = (int(row["y_min"]), int(row["y_max"]), int(row["x_min"]), int(row["x_max"]))
        y0, y1, x0, x1 = box
        out = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
        ys, xs, _ = _span_pixels(self._spans_of(footprint_id))
        out[ys - y0, xs - x0] = True
        return out

    def _spans_of(self, footprint_id: int) -> NDArray[np.int32]:
        first = self._first_span
        k = int(footprint_id)
        if not 1 <= k < len(first):
            msg = f"footprint_id must be between 1 and {len(first) - 1}, got {footprint_id!r}"
            raise ValueError(msg)
        return self.footprint_spans[first[k - 1] : first[k]]

    @functools.cached_property
    def _first_span(self) -> NDArray[np.intp]:
        """Index of the first span of footprints 1, 2, ..., and one past the last."""
        ids = np.ascontiguousarray(self.footprint_spans[:, 0])
        return np.searchsorted(ids, np.arange(1, len(self.footprints) + 2))


def detect_sources(
    exposure: Exposure,
    config: DetectionConfig | None = None,
    *,
    mask_in_place: bool = False,
    keep_significance: bool = False,
    mark_detected: bool = True,
) -> Detections:
    """Detect sources on a background-subtracted exposure.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted image (ADU) with its variance plane; its PSF, when
        present, is the smoothing kernel.
    config : DetectionConfig, optional
        Settings; defaults when omitted.
    mask_in_place : bool
        Set DETECTED (and DETECTED_NEGATIVE) in ``exposure.mask`` itself instead
        of in a copy: saves an int32 image, for callers that own the mask (as
        :func:`~stacklab.toolkit.process_frame` does); every exposure sharing that
        mask sees the new planes.
    keep_significance : bool
        Keep the significance image in the result (a float32 image); by default
        it is dropped once the footprints are found.
    mark_detected : bool
        Set DETECTED (and DETECTED_NEGATIVE) at all. With False the result's
        ``exposure`` is the input exposure itself, unmarked, and no mask is
        copied: for callers that need only the footprints and peaks (as the
        PSF-finding first pass of :func:`~stacklab.toolkit.process_frame`).

    Returns
    -------
    Detections
        Footprints (as pixel spans), peaks and an exposure with the DETECTED
        plane set.

    Raises
    ------
    TypeError
        If ``exposure`` is not an :class:`~stacklab.toolkit.Exposure`.
    ValueError
        If ``mask_in_place`` is set and the exposure's mask is read-only.

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
    if mask_in_place and mark_detected and not exposure.mask.flags.writeable:
        msg = (
            "mask_in_place=True needs a writable mask, but the exposure's mask is "
            "read-only; pass mask_in_place=False (DETECTED then goes into a copy)"
        )
        raise ValueError(msg)
    kernel, sigma_px = _kernel(exposure, config)
    # Saturated stars first, while no other full-size image is held.
    saturated = _saturated_stars(exposure, sigma_px)
    image = exposure.image
    variance = exposure.variance
    planes = [p for p in config.no_seed_planes if p in exposure.mask_planes]
    # Saturated pixels carry real (clipped) signal for smoothing, but never seed.
    no_signal_bits = exposure.mask_planes.bitmask(*(p for p in ("BAD", "NO_DATA") if p in planes))
    bad, no_signal, any_bad, any_no_signal = _unusable(
        image, variance, exposure.mask, no_signal_bits
    )
    fill_var = None
    if any_bad:
        good_var = variance[~bad]
        fill = float(np.median(good_var, overwrite_input=True)) if good_var.size else 1.0
        del good_var
        fill_var = (bad, float(np.float32(fill)))
    # Bad pixels are zeroed (data) and filled (variance) strip by strip: no copies.
    # (Skipped when no pixel is concerned: a boolean-mask pass per strip and plane.)
    zero_data = no_signal if any_no_signal else None
    significance = _matched_filter(image, variance, kernel, zero_data=zero_data, fill_var=fill_var)
    if any_no_signal:
        significance[no_signal] = 0.0
    peak_map = _peak_map(image, variance, zero_data, fill_var, significance, sigma_px, config)
    del bad, fill_var, zero_data

    seed_bits = exposure.mask_planes.bitmask(*planes) if planes else 0
    negative = None
    if config.polarity == "both":
        np.negative(significance, out=significance)
        negative = _threshold(significance, no_signal, exposure.mask, seed_bits, config)
        np.negative(significance, out=significance)
    # The thresholded image goes straight in, so that _footprints can free it.
    spans, footprints, peaks = _footprints(
        _threshold(significance, no_signal, exposure.mask, seed_bits, config),
        peak_map,
        significance,
        image,
        no_signal,
        kernel,
        config,
        sigma_px,
        saturated,
    )
    del peak_map, saturated
    marked = exposure
    if mark_detected:
        mask = exposure.mask if mask_in_place else exposure.mask.copy()
        planes_map = exposure.mask_planes
        _set_bits(spans, mask, planes_map.bitmask("DETECTED"))
        if negative is not None:
            grown = _grow(negative, config.grow_psf_sigma * sigma_px)
            mask[grown] |= np.int32(planes_map.bitmask("DETECTED_NEGATIVE"))
        if not mask_in_place:
            marked = exposure.replace(mask=mask)
    log.info(
        "detected %d footprints with %d peaks at %.1f sigma", len(footprints), len(peaks),
        config.threshold_sigma,
    )  # fmt: skip
    return Detections(
        footprint_spans=spans,
        footprints=footprints,
        peaks=peaks,
        significance=significance if keep_significance else None,
        kernel=kernel,
        kernel_sigma_px=sigma_px,
        exposure=marked,
        config=config,
    )


def _threshold(
    significance: NDArray[np.float32],
    no_signal: NDArray[np.bool_],
    mask: NDArray[np.integer],
    seed_bits: int,
    config: DetectionConfig,
) -> NDArray[np.bool_]:
    """Pixels of the above-threshold regions that are big enough and have a seed pixel.

    A seed is a pixel with signal whose mask has none of ``seed_bits``.
    """
    above = significance >= config.threshold_sigma
    spans, n = _label_runs(above)
    if n == 0:
        return above
    sizes, seeded = _sizes_and_seeds(spans, n, no_signal, mask, seed_bits)
    keep = (sizes >= config.min_pixels) & seeded
    keep[0] = False
    # Regions dropped are cleared in place: their pixels are all on the spans.
    _paint(spans, above, keep)
    return above


def _peak_map(
    data: NDArray[np.float32],
    var: NDArray[np.float32],
    no_signal: NDArray[np.bool_] | None,
    fill_var: tuple[NDArray[np.bool_], float] | None,
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
    return _matched_filter(data, var, kernel, zero_data=no_signal, fill_var=fill_var)


def _footprints(
    above: NDArray[np.bool_],
    significance: NDArray[np.float32],
    detection_significance: NDArray[np.float32],
    image: NDArray[np.float32],
    no_signal: NDArray[np.bool_],
    kernel: NDArray[np.floating],
    config: DetectionConfig,
    sigma_px: float,
    saturated: tuple[NDArray[np.int32], NDArray[np.int64]],
) -> tuple[NDArray[np.int32], Table, Table]:
    # Peaks: local maxima of the significance within the above-threshold pixels.
    py, px = _local_maxima(significance, above)
    order = np.argsort(-significance[py, px], kind="stable")
    py, px = py[order], px[order]
    # Saturated stars first, so that their label image is gone before the footprints'.
    sat_of_peak = _star_under(saturated[0], py, px)
    sat_centres = saturated[1]
    # The grown footprints as runs straight from the thresholded image's: no grown image.
    spans, n = _connect_runs(_grown_runs(above, config.grow_psf_sigma * sigma_px))
    del above  # the caller passed its only reference
    labels = _label_image(spans, significance.shape, n)
    owner = labels[py, px]
    keep_peak = np.zeros(len(py), dtype=bool)
    kept_by_fp: dict[int, list[int]] = {}
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
    residual = np.zeros(len(py), dtype=bool)
    if config.symmetry_peaks and sigma_px < _MIN_SYMMETRY_SIGMA_PX:
        log.info(
            "no symmetry peak search: the PSF (sigma %.2f px) is undersampled, so "
            "its mirror images cannot be interpolated", sigma_px,
        )  # fmt: skip
    elif config.symmetry_peaks:
        excluded = no_signal.copy()
        _paint(saturated[0], excluded, np.ones(len(saturated[1]), dtype=bool))
        new_y, new_x = _symmetry_peaks(
            significance, labels, n, py, px, owner, excluded, config.threshold_sigma,
            config.symmetry_tolerance, _MIN_SEPARATION_SIGMA * sigma_px, sigma_px,
        )  # fmt: skip
        del excluded
        py, px = np.r_[py, new_y], np.r_[px, new_x]
        owner = np.r_[owner, labels[new_y, new_x]]
        residual = np.r_[residual, np.ones(len(new_y), dtype=bool)]
    order = np.lexsort((-detection_significance[py, px], owner))
    py, px, owner, residual = py[order], px[order], owner[order], residual[order]
    # The symmetry search's peaks count towards max_peaks_per_footprint too.
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    capped = rank < config.max_peaks_per_footprint
    py, px, owner, residual = py[capped], px[capped], owner[capped], residual[capped]
    peaks = Table(
        {
            "footprint": owner.astype(np.int64),
            "x": px.astype(np.int64),
            "y": py.astype(np.int64),
            "significance": detection_significance[py, px].astype(np.float64),
            "value": _smoothed_at(image, no_signal, kernel, py, px),
            "residual": residual,
        }
    )
    del labels
    boxes, n_pixels, flux = _footprint_stats(spans, n, image, _BLOCK_ROWS)
    n_peaks = np.bincount(owner, minlength=n + 1)[1:]
    footprints = Table(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "n_pixels": n_pixels,
            "x_min": boxes[:, 0],
            "x_max": boxes[:, 1],
            "y_min": boxes[:, 2],
            "y_max": boxes[:, 3],
            "n_peaks": n_peaks.astype(np.int64),
            "flux": flux,
        }
    )
    footprints["flux"].unit = "adu"
    peaks["value"].unit = "adu"
    return spans, footprints, peaks
