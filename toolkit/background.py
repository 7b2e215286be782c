"""Sky background: a mesh-based estimate on sep, iterated with the sources masked.

The image is cut into ``mesh_size_px`` boxes; each box gives a clipped
mode/median estimate of the sky and its rms (SExtractor's estimator, through
sep); the grid is median-filtered and spline-interpolated back to full
resolution. After the first pass, pixels above ``mask_threshold_sigma`` times the
local rms (smoothed with a 3x3 box, then grown by ``mask_grow_px``) are masked
and the estimate is repeated, so that bright objects do not pull the sky up.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import sep
from numpy.typing import NDArray
from scipy import ndimage

from .errors import ToolkitError
from .exposure import Exposure

__all__ = ["Background", "BackgroundConfig", "estimate_background", "subtract_background"]

log = logging.getLogger(__name__)

# Connected pixels a masked region needs: far above what noise alone makes at 3 sigma.
_MIN_SOURCE_PIXELS = 8


@dataclass(frozen=True, kw_only=True)
class BackgroundConfig:
    """Settings of :func:`estimate_background`.

    Attributes
    ----------
    mesh_size_px : int
        Width and height of a background mesh box (pixels).
    filter_size : int
        Size of the median filter applied to the mesh grid (boxes, odd).
    n_iterations : int
        Re-estimations with detected sources masked (0 gives sep/SExtractor's
        single pass, which reproduces SExtractor's BACKGROUND check image).
    mask_threshold_sigma : float
        Pixels brighter than this many local rms above the sky (after 3x3
        smoothing) are masked before re-estimating.
    mask_grow_px : int
        Masked source pixels are grown by this many pixels, to hide faint wings.
    ignore_planes : tuple of str
        Mask planes whose pixels never enter the estimate.
    """

    mesh_size_px: int = 64
    filter_size: int = 3
    n_iterations: int = 2
    mask_threshold_sigma: float = 3.0
    mask_grow_px: int = 3
    ignore_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "CR", "STREAK")

    def __post_init__(self) -> None:
        if not isinstance(self.mesh_size_px, int) or self.mesh_size_px < 4:
            msg = (
                f"mesh_size_px must be an integer >= 4, got {self.mesh_size_px!r}; "
                "use a box several times the size of typical objects"
            )
            raise ValueError(msg)
        if (
            not isinstance(self.filter_size, int)
            or self.filter_size < 1
            or not self.filter_size % 2
        ):
            msg = f"filter_size must be an odd integer >= 1, got {self.filter_size!r}"
            raise ValueError(msg)
        if not isinstance(self.n_iterations, int) or self.n_iterations < 0:
            msg = f"n_iterations must be an integer >= 0, got {self.n_iterations!r}"
            raise ValueError(msg)
        if not self.mask_threshold_sigma > 0:
            msg = (
                f"mask_threshold_sigma must be > 0, got {self.mask_threshold_sigma!r}; "
                "pass a positive threshold in units of the sky rms"
            )
            raise ValueError(msg)
        if not isinstance(self.mask_grow_px, int) or self.mask_grow_px < 0:
            msg = f"mask_grow_px must be an integer >= 0, got {self.mask_grow_px!r}"
            raise ValueError(msg)
        object.__setattr__(self, "ignore_planes", tuple(self.ignore_planes))


@dataclass(frozen=True, eq=False)
class Background:
    """A background estimate.

    Attributes
    ----------
    background : numpy.ndarray
        Sky level of every pixel (ADU), float32, shape of the image.
    rms : numpy.ndarray
        Sky rms of every pixel (ADU), float32.
    global_background : float
        Mean of the mesh estimates (ADU).
    global_rms : float
        Mean of the mesh rms estimates (ADU).
    source_mask : numpy.ndarray
        Boolean image of the pixels masked as sources in the last iteration.
    mesh_size_px : int
        Mesh box size actually used (it can be smaller than the configured one
        for small images, see :func:`estimate_background`).
    config : BackgroundConfig
        The settings that made it.
    """

    background: NDArray[np.float32]
    rms: NDArray[np.float32]
    global_background: float
    global_rms: float
    source_mask: NDArray[np.bool_]
    mesh_size_px: int
    config: BackgroundConfig = field(default_factory=BackgroundConfig)


def _sep_background(
    image: NDArray[np.float32], mask: NDArray[np.bool_], mesh: int, filter_size: int
) -> sep.Background:
    return sep.Background(image, mask=mask, bw=mesh, bh=mesh, fw=filter_size, fh=filter_size)


def estimate_background(exposure: Exposure, config: BackgroundConfig | None = None) -> Background:
    """Estimate the sky background and its rms.

    Parameters
    ----------
    exposure : Exposure
        Image in ADU; pixels of ``config.ignore_planes`` and non-finite pixels
        are left out.
    config : BackgroundConfig, optional
        Settings; defaults when omitted.

    Returns
    -------
    Background

    Raises
    ------
    ValueError
        If the image has no usable pixel (all NaN or all masked).
    ToolkitError
        If sep cannot build a mesh (e.g. every box is masked).

    Warns
    -----
    UserWarning
        When the image is smaller than one mesh box: the box shrinks to the
        image's smaller side (the estimate is then close to a constant).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> exp = Exposure(100.0 + rng.normal(0, 5, (128, 128)), variance=np.full((128, 128), 25.0))
    >>> bkg = estimate_background(exp, BackgroundConfig(mesh_size_px=32))
    >>> abs(bkg.global_background - 100.0) < 0.5
    True
    """
    config = BackgroundConfig() if config is None else config
    if not isinstance(exposure, Exposure):
        msg = f"exposure must be an Exposure, got {type(exposure).__name__}"
        raise TypeError(msg)
    image = exposure.image
    finite = np.isfinite(image)
    planes = [p for p in config.ignore_planes if p in exposure.mask_planes]
    ignore = ~finite
    if planes:
        ignore |= (exposure.mask & exposure.mask_planes.bitmask(*planes)) != 0
    if ignore.all():
        msg = (
            "the image has no usable pixel for the background (all non-finite or masked "
            f"by {planes}); check the input file"
        )
        raise ValueError(msg)
    data = np.where(finite, image, np.float32(0.0)).astype(np.float32, copy=False)
    mesh = config.mesh_size_px
    if min(exposure.shape) < mesh:
        mesh = max(4, min(exposure.shape))
        warnings.warn(
            f"image {exposure.shape} is smaller than the background mesh "
            f"({config.mesh_size_px} px); using one {mesh}-px box per side instead",
            UserWarning,
            stacklevel=2,
        )
    filter_size = config.filter_size
    n_mesh = min(-(-exposure.shape[0] // mesh), -(-exposure.shape[1] // mesh))
    if n_mesh < filter_size:
        filter_size = 1 if n_mesh < 3 else 3
    source_mask = np.zeros(exposure.shape, dtype=bool)
    try:
        bkg = _sep_background(data, ignore, mesh, filter_size)
        for _ in range(config.n_iterations):
            with np.errstate(invalid="ignore", divide="ignore"):
                # A 3x3 sum against 3 x threshold x rms is the 3x3 mean test; the
                # sums overwrite the residual and the threshold the rms map.
                residual = data - bkg.back()
                limit = bkg.rms()
                limit *= np.float32(3.0 * config.mask_threshold_sigma)
                above = _box_sum3(residual, out=residual) > limit
                del residual, limit
            above &= ~ignore
            # Single noise peaks must not be masked: that would bias the sky low.
            labels, n = ndimage.label(above)
            if n:
                # Labelled pixels only: bincount makes an int64 copy of its input.
                sizes = np.bincount(labels[above], minlength=n + 1)
                big = sizes >= _MIN_SOURCE_PIXELS
                big[0] = False
                above = big[labels]
            if config.mask_grow_px:
                above = _dilate_disk(above, config.mask_grow_px)
            source_mask = above
            combined = ignore | source_mask
            if combined.all():
                break
            bkg = _sep_background(data, combined, mesh, filter_size)
    except Exception as err:  # sep raises plain Exceptions on internal failures
        msg = f"sep could not estimate the background ({err}); try a larger mesh_size_px"
        raise ToolkitError(msg) from err
    background = bkg.back().astype(np.float32, copy=False)
    rms = bkg.rms().astype(np.float32, copy=False)
    log.debug("background %.3f, rms %.3f", bkg.globalback, bkg.globalrms)
    return Background(
        background=background,
        rms=rms,
        global_background=float(bkg.globalback),
        global_rms=float(bkg.globalrms),
        source_mask=source_mask,
        mesh_size_px=mesh,
        config=config,
    )


def subtract_background(exposure: Exposure, background: Background) -> Exposure:
    """Return a new exposure with ``background`` subtracted (variance and mask shared).

    Parameters
    ----------
    exposure : Exposure
        The exposure the background was estimated on.
    background : Background
        From :func:`estimate_background`.

    Returns
    -------
    Exposure
        Same metadata, image minus the background map; ``meta["BGMEAN"]`` holds the
        global background level (ADU).

    Raises
    ------
    ValueError
        If the background map's shape differs from the exposure's.
    """
    if background.background.shape != exposure.shape:
        msg = (
            f"background has shape {background.background.shape} but the exposure "
            f"{exposure.shape}; estimate it on this exposure"
        )
        raise ValueError(msg)
    meta = dict(exposure.meta)
    meta["BGMEAN"] = round(background.global_background, 4)
    return exposure.replace(
        image=exposure.image - background.background,
        meta=meta,
    )


def _box_sum3(
    image: NDArray[np.float32], out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """Sum over the 3x3 box of every pixel, edges mirrored (``uniform_filter`` x 9).

    Shifted slices, column pass then row pass: ``ndimage.uniform_filter`` works in
    float64 and strides through memory on its column pass. ``out`` may be
    ``image`` itself.
    """
    column = image.copy()
    column[1:] += image[:-1]
    column[:-1] += image[1:]
    column[0] += image[0]  # "reflect" mode: the pixel beyond the edge is the edge pixel
    column[-1] += image[-1]
    if out is None:
        out = np.empty_like(column)
    out[...] = column
    out[:, 1:] += column[:, :-1]
    out[:, :-1] += column[:, 1:]
    out[:, 0] += column[:, 0]
    out[:, -1] += column[:, -1]
    return out


def _dilate_disk(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Binary dilation of ``mask`` by the disk ``dx² + dy² <= radius²`` (outside is False).

    The disk is a stack of horizontal segments; each row offset ORs in the mask
    dilated by its segment, built up by one-pixel shifts.
    """
    widths = [int(np.floor(np.sqrt(radius * radius - dy * dy))) for dy in range(radius + 1)]
    by_width: dict[int, NDArray[np.bool_]] = {}
    segment = mask.copy()
    for width in range(max(widths) + 1):
        if width:
            grown = segment.copy()
            grown[:, 1:] |= segment[:, :-1]
            grown[:, :-1] |= segment[:, 1:]
            segment = grown
        if width in widths:
            by_width[width] = segment
    out = by_width[widths[0]].copy()
    for dy in range(1, radius + 1):
        row = by_width[widths[dy]]
        out[dy:] |= row[:-dy]
        out[:-dy] |= row[dy:]
    return out
