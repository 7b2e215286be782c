"""Sky background: a mesh-based estimate on sep, iterated with the sources masked.

The image is cut into ``mesh_size_px`` boxes; each box gives a clipped
mode/median estimate of the sky and its rms (SExtractor's estimator, through
sep); the grid is median-filtered and spline-interpolated back to full
resolution. After the first pass, pixels above ``mask_threshold_sigma`` times the
local rms (smoothed with a 3x3 box, then grown by ``mask_grow_px``) are masked
and the estimate is repeated, so that bright objects do not pull the sky up.

The result keeps the mesh (one value per box), not full-resolution maps: the
``background`` and ``rms`` maps are interpolated from it when asked for, exactly as
sep does (bicubic spline), whole or a block of rows at a time.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import sep
from numpy.typing import NDArray

from ._background_mesh import _BLOCK_ROWS, _evaluate, _mesh_from_map
from ._footprint_spans import _label_compact
from .errors import ToolkitError
from .exposure import Exposure
from .mask import _bits_set

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
    """A background estimate, kept as its mesh.

    Attributes
    ----------
    mesh_background : numpy.ndarray
        Sky level of every mesh box (ADU), float32, shape
        ``(ceil(ny / mesh_size_px), ceil(nx / mesh_size_px))`` (after sep's median
        filter of the mesh).
    mesh_rms : numpy.ndarray
        Sky rms of every mesh box (ADU), float32, same shape.
    shape : tuple of int
        ``(ny, nx)`` of the image the maps cover (pixels).
    global_background : float
        Mean of the mesh estimates (ADU).
    global_rms : float
        Mean of the mesh rms estimates (ADU).
    source_mask_bits : numpy.ndarray
        The pixels masked as sources in the last iteration, bit-packed along x
        (``numpy.packbits(mask, axis=1)``); :attr:`source_mask` unpacks it.
    mesh_size_px : int
        Mesh box size actually used (it can be smaller than the configured one
        for small images, see :func:`estimate_background`).
    config : BackgroundConfig
        The settings that made it.

    Notes
    -----
    :attr:`background` and :attr:`rms` are full-resolution float32 maps computed
    from the mesh on every access (4 bytes per pixel each; about 20 ms per
    1000² pixels): hold on to the array if you use it several times, or take
    blocks of rows with :meth:`background_rows` and :meth:`rms_rows`.
    """

    mesh_background: NDArray[np.float32]
    mesh_rms: NDArray[np.float32]
    shape: tuple[int, int]
    global_background: float
    global_rms: float
    source_mask_bits: NDArray[np.uint8]
    mesh_size_px: int
    config: BackgroundConfig = field(default_factory=BackgroundConfig)

    @property
    def background(self) -> NDArray[np.float32]:
        """Sky level of every pixel (ADU), float32, shape :attr:`shape` (a new array)."""
        return self.background_rows(0, self.shape[0])

    @property
    def rms(self) -> NDArray[np.float32]:
        """Sky rms of every pixel (ADU), float32, shape :attr:`shape` (a new array)."""
        return self.rms_rows(0, self.shape[0])

    def background_rows(self, y_start: int, y_stop: int) -> NDArray[np.float32]:
        """Return the sky level of rows ``y_start:y_stop`` (ADU), float32.

        Parameters
        ----------
        y_start, y_stop : int
            First row and one past the last (pixels, ``0 <= y_start <= y_stop <= ny``).

        Returns
        -------
        numpy.ndarray
            Shape ``(y_stop - y_start, nx)``; the same values as those rows of
            :attr:`background`.
        """
        return _evaluate(
            self.mesh_background, self.shape, self.mesh_size_px, *self._rows(y_start, y_stop)
        )

    def rms_rows(self, y_start: int, y_stop: int) -> NDArray[np.float32]:
        """Return the sky rms of rows ``y_start:y_stop`` (ADU), float32.

        Parameters
        ----------
        y_start, y_stop : int
            First row and one past the last (pixels).

        Returns
        -------
        numpy.ndarray
            Shape ``(y_stop - y_start, nx)``.
        """
        return _evaluate(self.mesh_rms, self.shape, self.mesh_size_px, *self._rows(y_start, y_stop))

    @property
    def source_mask(self) -> NDArray[np.bool_]:
        """Boolean image of the pixels masked as sources in the last iteration (a new array)."""
        bits = np.unpackbits(self.source_mask_bits, axis=1, count=self.shape[1])
        return bits.view(bool)

    def _rows(self, y_start: int, y_stop: int) -> tuple[int, int]:
        y_start, y_stop = int(y_start), int(y_stop)
        if not 0 <= y_start <= y_stop <= self.shape[0]:
            msg = (
                f"rows {y_start}:{y_stop} are outside the background map of {self.shape[0]} "
                "rows; pass 0 <= y_start <= y_stop <= ny"
            )
            raise ValueError(msg)
        return y_start, y_stop


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
        _bits_set(exposure.mask, exposure.mask_planes.bitmask(*planes), into=ignore)
    if ignore.all():
        msg = (
            "the image has no usable pixel for the background (all non-finite or masked "
            f"by {planes}); check the input file"
        )
        raise ValueError(msg)
    if image.dtype == np.float32 and image.flags.c_contiguous and finite.all():
        data = image  # sep only reads it: no copy
    else:
        data = np.where(finite, image, np.float32(0.0)).astype(np.float32, copy=False)
    del finite
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
            above = _above_sky(data, bkg, config.mask_threshold_sigma)
            above &= ~ignore
            # Single noise peaks must not be masked: that would bias the sky low.
            labels, n = _label_compact(above)
            if n:
                # Labelled pixels only: bincount makes an int64 copy of its input.
                sizes = np.bincount(labels[above], minlength=n + 1)
                big = sizes >= _MIN_SOURCE_PIXELS
                big[0] = False
                above = big[labels]
            del labels
            if config.mask_grow_px:
                above = _dilate_disk(above, config.mask_grow_px)
            source_mask = above
            combined = ignore | source_mask
            if combined.all():
                break
            bkg = _sep_background(data, combined, mesh, filter_size)
            del combined
        mesh_background, mesh_rms = _mesh_pair(bkg, mesh)
    except Exception as err:  # sep raises plain Exceptions on internal failures
        msg = f"sep could not estimate the background ({err}); try a larger mesh_size_px"
        raise ToolkitError(msg) from err
    log.debug("background %.3f, rms %.3f", bkg.globalback, bkg.globalrms)
    return Background(
        mesh_background=mesh_background,
        mesh_rms=mesh_rms,
        shape=(int(exposure.shape[0]), int(exposure.shape[1])),
        global_background=float(bkg.globalback),
        global_rms=float(bkg.globalrms),
        source_mask_bits=np.packbits(source_mask, axis=1),
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
    if background.shape != exposure.shape:
        msg = (
            f"background has shape {background.shape} but the exposure "
            f"{exposure.shape}; estimate it on this exposure"
        )
        raise ValueError(msg)
    meta = dict(exposure.meta)
    meta["BGMEAN"] = round(background.global_background, 4)
    # Block by block: the full-resolution map is never held.
    image = np.empty(exposure.shape, dtype=np.result_type(exposure.image, np.float32))
    for y0 in range(0, exposure.shape[0], _BLOCK_ROWS):
        y1 = min(y0 + _BLOCK_ROWS, exposure.shape[0])
        np.subtract(exposure.image[y0:y1], background.background_rows(y0, y1), out=image[y0:y1])
    return exposure.replace(image=image, meta=meta)


def _mesh_pair(bkg: sep.Background, mesh: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return the sky and rms meshes of a sep background (each map made, read, dropped)."""
    return _mesh_from_map(bkg.back(), mesh), _mesh_from_map(bkg.rms(), mesh)


def _above_sky(
    data: NDArray[np.float32], bkg: sep.Background, threshold_sigma: float
) -> NDArray[np.bool_]:
    """Pixels whose 3x3 mean residual above the sky exceeds ``threshold_sigma`` times the rms.

    A 3x3 sum against 3 x threshold x rms is the 3x3 mean test. Block by block
    (with one row of margin each side): no full-size residual or sum images.
    """
    ny = data.shape[0]
    sky = bkg.back()
    rms = bkg.rms()
    out = np.empty(data.shape, dtype=bool)
    factor = np.float32(3.0 * threshold_sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        for y0 in range(0, ny, _BLOCK_ROWS):
            y1 = min(y0 + _BLOCK_ROWS, ny)
            lo, hi = max(y0 - 1, 0), min(y1 + 1, ny)
            residual = data[lo:hi] - sky[lo:hi]
            summed = _box_sum3(residual, out=residual)[y0 - lo : y0 - lo + y1 - y0]
            out[y0:y1] = summed > rms[y0:y1] * factor
    return out


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
