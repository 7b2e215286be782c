"""Coaddition: warp exposures onto a patch and combine them, with artifact rejection.

Every input is warped onto the patch (:mod:`~stacklab.toolkit.warp`), scaled to
a common zero point (``s_i = 10**(0.4 (ZP - ZP_i))``, applied to the image and
``s_i**2`` to the variance), and weighted by ``w_i = 1 / (c_i <V_i>)`` where
``<V_i>`` is the 3-sigma, 2-iteration clipped mean of the scaled variance plane
over pixels free of ``bad_mask_planes`` and ``c_i`` the warp's noise-covariance
factor (so weights follow the noise of sums, not of single resampled pixels).
The combine is per pixel over inputs free of ``bad_mask_planes``::

    I = sum_i w_i I_i / sum_i w_i,    V = sum_i w_i**2 V_i / (sum_i w_i)**2

with ``statistic``:

* ``"mean"``: all usable inputs;
* ``"clipped_mean"``: inputs within ``sigma_clip`` of the running centre
  (median and IQR first, then mean and standard deviation; ``clip_iterations``);
* ``"median"``: the median of usable inputs, variance ``pi/2`` times the mean's;
* ``"safe_clip"``: :mod:`~stacklab.toolkit.safe_clip` regions are rejected
  from the warps they arise in, then the weighted mean of the rest;
* ``"compare_warp"``: :mod:`~stacklab.toolkit.compare_warp` artifacts (each
  warp against a clipped template, filtered by epoch count) are rejected, then
  the weighted mean of the rest.

The artifact-rejecting statistics (``"safe_clip"``, ``"compare_warp"``) expect
cosmic rays masked in the inputs, as single-frame processing does (LSST's
CompareWarp runs on CR-masked calexps): a cosmic ray on a source looks like the
source varying, which comparisons between epochs cannot tell apart. Inputs whose
CR plane is empty (not processed) get the single-frame sharpness test
(:mod:`~stacklab.toolkit.cosmic_rays`, ``cosmic_rays``) before warping; the CR
plane is in ``bad_mask_planes``, so those pixels are left out of the warp's kernel
sums and of the combine.

Rejected inputs get the CLIPPED plane in their warp; the coadd's CLIPPED plane
marks pixels where any input was rejected, NO_DATA where none is left (never
NaN), and INEXACT_PSF where an input was clipped or reached a sensor edge.
Inputs are warped one at a time, each only on the box of the patch it reaches,
to scratch files, and combined in row chunks: the mean adds one input's box at a
time, the clipping statistics stack at most ``2**21`` values (inputs x rows x
columns) at once. Memory is bounded by the patch size, not by the number of inputs.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import galsim
import numpy as np
from numpy.typing import NDArray

from ._coadd_combine import _assemble
from .coadd_psf import CoaddPsf
from .coadd_stack import (
    _clipped_mean_of,
    _DiskStack,
    _mark_compare_warp,
    _mark_safe_clip,
)
from .compare_warp import CompareWarpConfig
from .cosmic_rays import CosmicRayConfig, find_cosmic_rays
from .exposure import Exposure
from .mask import MaskPlanes
from .psf_match import PsfMatchConfig, TargetPsf, match_to_target
from .safe_clip import SafeClipConfig, _detect_on_warp
from .skymap import Patch, patch_covering
from .warp import WarpConfig, _warp_box

__all__ = ["Coadd", "CoaddConfig", "NoOverlapError", "coadd"]


class NoOverlapError(ValueError):
    """No input of a coadd has usable pixels on the patch (nothing to combine)."""


log = logging.getLogger(__name__)

Statistic = Literal["mean", "clipped_mean", "median", "safe_clip", "compare_warp"]
_STATISTICS = ("mean", "clipped_mean", "median", "safe_clip", "compare_warp")
#: The statistics that reject artifacts by comparing epochs.
_REJECTING = ("safe_clip", "compare_warp")
_MAX_INPUTS = 63  # one bit per input in the int64 contributors image


@dataclass(frozen=True, kw_only=True)
class CoaddConfig:
    """How to combine exposures into a coadd.

    Attributes
    ----------
    statistic : str
        ``"compare_warp"``, ``"safe_clip"``, ``"mean"``, ``"clipped_mean"`` or ``"median"``.
    zero_point : float, optional
        AB magnitude of 1 ADU in the coadd; by default the mean of the inputs'.
    bad_mask_planes : tuple of str
        Input pixels with these planes are left out of the combine.
    sigma_clip : float
        Clip of ``"clipped_mean"`` (standard deviations).
    clip_iterations : int
        Iterations of ``"clipped_mean"``.
    weight_sigma_clip : float
        Clip of the variance-plane mean that sets each input's weight.
    use_covariance_factor : bool
        Divide each weight by the warp's noise-covariance factor.
    mask_propagation_thresholds : mapping of str to float
        A rejected plane (of ``bad_mask_planes``) is set on the coadd pixel when
        the inputs having it carry more than this fraction of the weight.
    chunk_rows : int
        Coadd rows combined at a time (at most: the clipping statistics take fewer
        when the stacked chunk would hold more than ``2**21`` values).
    require_psf : bool
        Refuse inputs without a PSF model (else the coadd has no PSF).
    keep_warps : bool
        Keep the scaled warps (with their CLIPPED planes) in the result; costs
        one patch of memory per input.
    scratch_dir : str, optional
        Folder for the warps' scratch files (default: the system temp folder).
    warp : WarpConfig
        Resampling options.
    safe_clip : SafeClipConfig
        Safe-clipping parameters.
    compare_warp : CompareWarpConfig
        CompareWarp parameters.
    psf_stamp_size : int
        Odd size of CoaddPsf stamps (px).
    psf_match : PsfMatchConfig, optional
        Match every warp to a common Kolmogorov PSF before combining (a
        PSF-matched coadd, whose PSF is that target); None for a direct coadd.
    cosmic_rays : CosmicRayConfig, optional
        For ``"safe_clip"`` and ``"compare_warp"``: cosmic rays are found with
        these settings on every input whose CR plane is empty, before warping
        (the pixels are masked, not repaired); None to trust the inputs' masks.
    """

    statistic: Statistic = "compare_warp"
    zero_point: float | None = None
    bad_mask_planes: tuple[str, ...] = ("NO_DATA", "BAD", "SAT", "CR")
    sigma_clip: float = 3.0
    clip_iterations: int = 2
    weight_sigma_clip: float = 3.0
    use_covariance_factor: bool = True
    mask_propagation_thresholds: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"SAT": 0.1})
    )
    chunk_rows: int = 128
    require_psf: bool = True
    keep_warps: bool = False
    scratch_dir: str | None = None
    warp: WarpConfig = field(default_factory=WarpConfig)
    safe_clip: SafeClipConfig = field(default_factory=SafeClipConfig)
    compare_warp: CompareWarpConfig = field(default_factory=CompareWarpConfig)
    psf_stamp_size: int = 31
    psf_match: PsfMatchConfig | None = None
    cosmic_rays: CosmicRayConfig | None = field(
        default_factory=lambda: CosmicRayConfig(interpolate=False)
    )

    def __post_init__(self) -> None:
        if self.statistic not in _STATISTICS:
            msg = f"statistic must be one of {_STATISTICS}, got {self.statistic!r}"
            raise ValueError(msg)
        if self.zero_point is not None and not np.isfinite(self.zero_point):
            msg = f"zero_point must be a finite magnitude or None, got {self.zero_point!r}"
            raise ValueError(msg)
        for name in ("sigma_clip", "weight_sigma_clip"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)!r}"
                raise ValueError(msg)
        for name in ("clip_iterations", "chunk_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        if self.psf_stamp_size < 3 or self.psf_stamp_size % 2 == 0:
            msg = f"psf_stamp_size must be an odd number >= 3, got {self.psf_stamp_size}"
            raise ValueError(msg)
        if "NO_DATA" not in self.bad_mask_planes:
            msg = f"bad_mask_planes must include NO_DATA, got {self.bad_mask_planes!r}"
            raise ValueError(msg)
        object.__setattr__(self, "bad_mask_planes", tuple(self.bad_mask_planes))
        object.__setattr__(
            self,
            "mask_propagation_thresholds",
            MappingProxyType(dict(self.mask_propagation_thresholds)),
        )


@dataclass(frozen=True, eq=False)
class Coadd:
    """A coadd and how it was made.

    Attributes
    ----------
    exposure : Exposure
        Image (ADU at ``zero_point``), variance, mask and a :class:`CoaddPsf`.
    weights : numpy.ndarray
        Weight of each used input (1/ADU²), in the order of ``visits``.
    scales : numpy.ndarray
        Flux scale applied to each used input.
    covariance_factors : numpy.ndarray
        Noise-covariance factor of each used input's warp.
    n_inputs : numpy.ndarray of int16
        Number of inputs combined at each pixel.
    contributors : numpy.ndarray of int64
        Bit ``i`` set where used input ``i`` contributed.
    visits : tuple
        Visit of each used input.
    skipped : tuple of str
        Inputs left out, with the reason.
    n_all_clipped : int
        Pixels where data existed but every input was rejected (NO_DATA).
    warps : tuple of Exposure, optional
        The scaled warps with their CLIPPED planes, when ``keep_warps``.
    config : CoaddConfig
        The configuration used.
    """

    exposure: Exposure
    weights: NDArray[np.float64]
    scales: NDArray[np.float64]
    covariance_factors: NDArray[np.float64]
    n_inputs: NDArray[np.int16]
    contributors: NDArray[np.int64]
    visits: tuple[int | None, ...]
    skipped: tuple[str, ...]
    n_all_clipped: int
    warps: tuple[Exposure, ...] | None
    config: CoaddConfig


def _check_inputs(exposures: Sequence[Exposure], config: CoaddConfig) -> None:
    if len(exposures) == 0:
        msg = "exposures is empty; pass the exposures of one band to coadd"
        raise ValueError(msg)
    for k, exposure in enumerate(exposures):
        if not isinstance(exposure, Exposure):
            msg = f"exposures[{k}] is a {type(exposure).__name__}, not an Exposure"
            raise TypeError(msg)
        if exposure.wcs is None:
            msg = (
                f"exposures[{k}] ({exposure!r}) has no WCS; "
                "coadds need every input placed on the sky"
            )
            raise ValueError(msg)
        if config.require_psf and exposure.psf is None:
            msg = (
                f"exposures[{k}] (visit {exposure.visit}) has no PSF model; fit one "
                "(process_frame / fit_psf) or pass CoaddConfig(require_psf=False) for a coadd "
                "without a PSF"
            )
            raise ValueError(msg)
    bands = sorted({str(e.band) for e in exposures})
    if len(bands) > 1:
        by_band = {b: [e.visit for e in exposures if str(e.band) == b] for b in bands}
        msg = f"exposures mix bands {by_band}; coadd one band at a time"
        raise ValueError(msg)
    with_zp = [e.zero_point is not None for e in exposures]
    if any(with_zp) and not all(with_zp):
        missing = [e.visit for e in exposures if e.zero_point is None]
        msg = f"visits {missing} have no zero_point while others do; calibrate them all or none"
        raise ValueError(msg)
    if len(exposures) > _MAX_INPUTS:
        msg = f"at most {_MAX_INPUTS} inputs per coadd, got {len(exposures)}; coadd in groups"
        raise ValueError(msg)


def _target_psf(exposures: Sequence[Exposure], config: PsfMatchConfig) -> TargetPsf:
    if config.target_fwhm_px is not None:
        return TargetPsf(config.target_fwhm_px)
    widest = 0.0
    for exposure in exposures:
        if exposure.psf is None:
            msg = f"visit {exposure.visit} has no PSF model; PSF matching needs every input's"
            raise ValueError(msg)
        ny, nx = exposure.shape
        stamp = exposure.psf.compute_image((nx - 1) / 2.0, (ny - 1) / 2.0)
        shape = galsim.hsm.FindAdaptiveMom(galsim.ImageD(np.asarray(stamp), scale=1.0))
        # Gaussian-equivalent FWHM along the major axis.
        e = float(np.hypot(shape.observed_shape.e1, shape.observed_shape.e2))
        widest = max(
            widest, 2.3548 * shape.moments_sigma * np.sqrt((1 + e) / max(1 - e, 1e-3)) ** 0.5
        )
    return TargetPsf(config.target_broadening * widest)


def _mask_cosmic_rays(exposure: Exposure, config: CoaddConfig) -> Exposure:
    """Return ``exposure`` with its cosmic rays masked (CR plane) when the statistic needs it.

    Only the artifact-rejecting statistics ask for it, and only inputs whose CR plane
    is empty (or absent) are searched: processed exposures keep their own CR masks.
    """
    if config.statistic not in _REJECTING:
        return exposure
    finite = exposure.image[np.isfinite(exposure.image)]
    level = float(np.median(finite)) if finite.size else 0.0
    noise = float(np.sqrt(np.median(exposure.variance)))
    if abs(level) > 5.0 * noise:
        warnings.warn(
            f"visit {exposure.visit}: the image's median is {level / noise:.0f} sigma from zero; "
            f"statistic {config.statistic!r} compares epochs and expects background-"
            "subtracted inputs (stacklab.toolkit.subtract_background)",
            UserWarning,
            stacklevel=3,
        )
    if config.cosmic_rays is None:
        return exposure
    if "CR" in exposure.mask_planes and np.any(exposure.mask & exposure.mask_planes.bitmask("CR")):
        return exposure
    if "CR" not in exposure.mask_planes:
        exposure = exposure.replace(mask_planes=exposure.mask_planes.union(["CR"]))
    # The sharpness test is not blind to an additive level (a sky left in hides most
    # cosmic rays from it): it runs on the image less its median, and only the mask
    # is kept.
    probe = exposure.replace(image=exposure.image - np.float32(level)) if level else exposure
    found = find_cosmic_rays(probe, config.cosmic_rays)
    log.info("visit %s: %d cosmic-ray pixels masked before warping", exposure.visit, found.n_pixels)
    return exposure.replace(mask=found.exposure.mask)


def _covered_position(good: NDArray[np.bool_]) -> tuple[float, float] | None:
    """Return a pixel ``(x, y)`` where ``good`` is set, near the middle of its extent."""
    rows = np.flatnonzero(good.any(axis=1))
    if not len(rows):
        return None
    y = int(rows[len(rows) // 2])
    cols = np.flatnonzero(good[y])
    return float(cols[len(cols) // 2]), float(y)


def _psf_sigma(
    psfs: Sequence[Any], shape: tuple[int, int], position: tuple[float, float] | None = None
) -> float:
    """Mean Gaussian sigma (px) of ``psfs`` at ``position`` (default the patch centre)."""
    x, y = position if position is not None else ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    sizes = []
    for k, psf in enumerate(psfs):
        try:
            T = psf.moments(x, y)[0]
            sizes.append(np.sqrt(T / 2.0))
        except Exception as err:  # any model failure: fall back, but say so
            log.warning(
                "PSF %d cannot be measured at (%.0f, %.0f) (%s); using the others or 2 px",
                k, x, y, err,
            )  # fmt: skip
    return float(np.mean(sizes)) if sizes else 2.0


def _on_patch(
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.int32],
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
    planes: MaskPlanes,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]:
    """Place a warp's box planes on the whole patch grid (NO_DATA outside the box)."""
    y0, y1, x0, x1 = box
    out_image = np.zeros(shape, dtype=np.float32)
    out_var = np.full(shape, np.inf, dtype=np.float32)
    out_mask = np.full(shape, planes.bitmask("NO_DATA"), dtype=np.int32)
    out_image[y0:y1, x0:x1] = image
    out_var[y0:y1, x0:x1] = variance
    out_mask[y0:y1, x0:x1] = mask
    return out_image, out_var, out_mask


def coadd(
    exposures: Sequence[Exposure],
    patch: Patch | None = None,
    config: CoaddConfig | None = None,
) -> Coadd:
    """Warp exposures of one band onto a patch and combine them.

    Parameters
    ----------
    exposures : sequence of Exposure
        Background-subtracted exposures of one band, with WCS, zero points and PSFs.
    patch : Patch, optional
        Target grid (from :mod:`~stacklab.toolkit.skymap`); by default one
        covering every exposure.
    config : CoaddConfig, optional
        Statistic, weights, clipping and resampling options.

    Returns
    -------
    Coadd

    Raises
    ------
    ValueError
        If there are no inputs, bands are mixed, an input lacks a WCS or PSF, or
        no input overlaps the patch.
    TypeError
        If an input is not an Exposure.

    Warns
    -----
    UserWarning
        When the coadd has a single input (it is then that warp).

    Examples
    --------
    >>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
    >>> sim = SimulationConfig(size=96, bands=("r",), visits_per_band=3, galaxy_density_arcmin2=1)
    >>> sky = make_sky(sim)
    >>> exposures = [simulate_visit(sky, sim, visit=v).exposure for v in range(3)]
    >>> result = coadd(exposures, config=CoaddConfig(statistic="mean"))
    >>> int(result.n_inputs.max())
    3
    """
    config = CoaddConfig() if config is None else config
    exposures = list(exposures)
    _check_inputs(exposures, config)
    patch = patch_covering(exposures) if patch is None else patch
    wcs, shape = patch.wcs, patch.shape
    zero_points = [e.zero_point for e in exposures if e.zero_point is not None]
    if config.zero_point is not None:
        zero_point: float | None = config.zero_point
    else:
        zero_point = float(np.mean(zero_points)) if zero_points else None
    planes = MaskPlanes.default()
    for exposure in exposures:
        planes = planes.union(exposure.mask_planes)
    planes = planes.union(["NO_DATA", "SENSOR_EDGE", "CLIPPED", "INEXACT_PSF"])
    bad_bits = planes.bitmask(*[p for p in config.bad_mask_planes if p in planes])
    clip_bit = planes.bitmask("CLIPPED")
    det_bits = planes.bitmask("DETECTED", "DETECTED_NEGATIVE")
    safe = config.statistic == "safe_clip"
    rejecting = config.statistic in _REJECTING
    psf_sigma = 2.0
    target = _target_psf(exposures, config.psf_match) if config.psf_match is not None else None

    with tempfile.TemporaryDirectory(prefix="stacklab-coadd-", dir=config.scratch_dir) as tmp:
        stack = _DiskStack(tmp, shape, planes.bitmask("NO_DATA"))
        weights, scales, factors, visits, psfs, skipped = [], [], [], [], [], []
        positions: list[tuple[float, float] | None] = []
        for exposure in exposures:
            exposure = _mask_cosmic_rays(exposure, config)
            try:
                warp = _warp_box(exposure, wcs, shape, config.warp)
            except ValueError as err:
                if "does not overlap" not in str(err):
                    raise
                skipped.append(f"visit {exposure.visit}: no overlap with patch {patch.name}")
                log.warning("skipping visit %s: it does not overlap the patch", exposure.visit)
                continue
            box = warp.box
            scale = 1.0
            if zero_point is not None and exposure.zero_point is not None:
                scale = float(10.0 ** (0.4 * (zero_point - exposure.zero_point)))
            image = warp.image * np.float32(scale)
            variance = warp.variance * np.float32(scale**2)
            same_bits = all(planes[name] == bit for name, bit in warp.mask_planes.items())
            mask = warp.mask if same_bits else warp.mask_planes.remap(warp.mask, planes)
            good = (mask & bad_bits) == 0
            mean_var = _clipped_mean_of(variance[good], config.weight_sigma_clip, 2)
            if not np.isfinite(mean_var) or mean_var <= 0:
                skipped.append(f"visit {exposure.visit}: no usable pixels on patch {patch.name}")
                log.warning("skipping visit %s: no usable pixels on the patch", exposure.visit)
                continue
            factor = warp.covariance_factor if config.use_covariance_factor else 1.0
            psf: Any = warp.psf
            if target is not None and config.psf_match is not None:
                # Matching kernels are fitted on a mesh over the whole patch: match the
                # warp on the patch grid.
                image, variance, mask = _on_patch(image, variance, mask, box, shape, planes)
                box = (0, shape[0], 0, shape[1])
                carrier = Exposure(
                    image, variance=variance, mask=mask, wcs=wcs, psf=psf,
                    zero_point=exposure.zero_point, band=exposure.band, visit=exposure.visit,
                    mask_planes=planes,
                )  # fmt: skip
                matched = match_to_target(carrier, target, bad_bits, config.psf_match)
                image, variance, mask = matched.image, matched.variance, matched.mask
                psf = target
                good = (mask & bad_bits) == 0
            # Where this warp has data (its PSF is measured there, not extrapolated);
            # only the artifact-rejecting statistics measure it.
            position = _covered_position(good) if rejecting else None
            if position is not None:
                position = (position[0] + box[2], position[1] + box[0])
            positions.append(position)
            if safe and not np.any(mask & det_bits):
                sigma = _psf_sigma([psf], shape, position) if psf is not None else 2.0
                positive, negative = _detect_on_warp(
                    image, variance, good,
                    psf_sigma_px=sigma, threshold_sigma=config.safe_clip.warp_threshold_sigma,
                )  # fmt: skip
                mask[positive] |= np.int32(planes.bitmask("DETECTED"))
                mask[negative] |= np.int32(planes.bitmask("DETECTED_NEGATIVE"))
            stack.append(image, variance, mask, box)
            weights.append(1.0 / (mean_var * factor))
            scales.append(scale)
            factors.append(warp.covariance_factor)
            visits.append(exposure.visit)
            psfs.append(psf)
            del warp, image, variance, mask, good
        if stack.n == 0:
            msg = (
                f"no input overlaps patch {patch.name} ({'; '.join(skipped)}); "
                "choose the patch with skymap.patches_overlapping"
            )
            raise NoOverlapError(msg)
        if stack.n == 1:
            warnings.warn(
                f"coadd of a single input (visit {visits[0]}): the coadd is its warp",
                UserWarning,
                stacklevel=2,
            )
        weight_array = np.asarray(weights)
        have_psf = all(p is not None for p in psfs)
        if have_psf:
            psf_sigma = _psf_sigma(psfs, shape)
        if safe:
            _mark_safe_clip(stack, weight_array, bad_bits, clip_bit, det_bits, psf_sigma, config)
        elif config.statistic == "compare_warp":
            sigmas = (
                [_psf_sigma([p], shape, at) for p, at in zip(psfs, positions, strict=True)]
                if have_psf
                else None
            )
            _mark_compare_warp(stack, weight_array, bad_bits, clip_bit, psf_sigma, config, sigmas)
        result = _assemble(stack, weight_array, planes, bad_bits, config)
        image, variance, mask, n_inputs, contributors, n_all_clipped = result
        kept = (
            tuple(
                Exposure(
                    stack.full("image", i),
                    variance=stack.full("variance", i),
                    mask=stack.full("mask", i),
                    wcs=wcs,
                    psf=psfs[i],
                    zero_point=zero_point,
                    band=exposures[0].band,
                    visit=visits[i],
                    mask_planes=planes,
                )
                for i in range(stack.n)
            )
            if config.keep_warps
            else None
        )
    if n_all_clipped:
        log.warning(
            "%d coadd pixels had data but every input was rejected there; they are NO_DATA",
            n_all_clipped,
        )
    coadd_psf: CoaddPsf | TargetPsf | None = (
        CoaddPsf(psfs, list(weight_array), contributors, stamp_size=config.psf_stamp_size)
        if have_psf
        else None
    )
    if target is not None:
        coadd_psf = target
    exposure = Exposure(
        image,
        variance=variance,
        mask=mask,
        wcs=wcs,
        psf=coadd_psf,
        zero_point=zero_point,
        band=exposures[0].band,
        mask_planes=planes,
        meta={"NINPUTS": stack.n, "COADDSTA": config.statistic, "PATCH": patch.name},
    )
    return Coadd(
        exposure=exposure,
        weights=weight_array,
        scales=np.asarray(scales),
        covariance_factors=np.asarray(factors),
        n_inputs=n_inputs,
        contributors=contributors,
        visits=tuple(visits),
        skipped=tuple(skipped),
        n_all_clipped=n_all_clipped,
        warps=kept,
        config=config,
    )
