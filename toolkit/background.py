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

from ._background_mesh import _evaluate, _mesh_from_map
from ._footprint_spans import _join_rows, _root
from ._jit import _compiled, _enlarged
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
    from the mesh on every access (4 bytes per pixel each; about 2 ms per
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
    planes = [p for p in config.ignore_planes if p in exposure.mask_planes]
    bits = exposure.mask_planes.bitmask(*planes) if planes else 0
    ignore = np.empty(exposure.shape, dtype=bool)
    n_ignored, n_finite = _ignored_pixels(
        image, exposure.mask, exposure.mask.dtype.type(bits), ignore
    )
    if n_ignored == ignore.size:
        msg = (
            "the image has no usable pixel for the background (all non-finite or masked "
            f"by {planes}); check the input file"
        )
        raise ValueError(msg)
    if image.dtype == np.float32 and image.flags.c_contiguous and n_finite == image.size:
        data = image  # sep only reads it: no copy
    else:
        data = np.where(np.isfinite(image), image, np.float32(0.0)).astype(np.float32, copy=False)
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
    grow = config.mask_grow_px
    # Half-widths of the disk's rows: |dx| <= floor(sqrt(r² - dy²)) at row offset dy.
    widths = np.array([int(np.floor(np.sqrt(grow * grow - dy * dy))) for dy in range(grow + 1)])
    factor = np.float32(3.0 * config.mask_threshold_sigma)
    try:
        bkg = _sep_background(data, ignore, mesh, filter_size)
        for _ in range(config.n_iterations):
            # sep's own maps, not the mesh's: the test sees exactly the values sep made.
            source_mask = np.zeros(exposure.shape, dtype=bool)
            _mask_sources(
                data, bkg.back(), bkg.rms(), ignore, factor, _MIN_SOURCE_PIXELS, widths,
                source_mask,
            )  # fmt: skip
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
    # Pixel by pixel: the full-resolution map is never held.
    image = _evaluate(
        background.mesh_background, background.shape, background.mesh_size_px,
        subtract_from=exposure.image,
    )  # fmt: skip
    return exposure.replace(image=image, meta=meta)


def _mesh_pair(bkg: sep.Background, mesh: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return the sky and rms meshes of a sep background (each map made, read, dropped)."""
    return _mesh_from_map(bkg.back(), mesh), _mesh_from_map(bkg.rms(), mesh)


@_compiled
def _ignored_pixels(
    image: NDArray[np.float32], mask: NDArray[np.integer], bits: np.integer, out: NDArray[np.bool_]
) -> tuple[int, int]:  # pragma: no cover - compiled; run through estimate_background
    """Set ``out`` to the pixels left out of the estimate: non-finite, or with ``bits`` set.

    Returns the number of pixels left out and the number of finite pixels (one pass
    instead of the finite test, the mask-bit test, their OR and two reductions).
    """
    ny, nx = image.shape
    n_ignored = 0
    n_finite = 0
    for y in range(ny):
        for x in range(nx):
            finite = np.isfinite(image[y, x])
            skip = not finite or (mask[y, x] & bits) != 0
            out[y, x] = skip
            n_ignored += skip
            n_finite += finite
    return n_ignored, n_finite


@_compiled
def _mask_sources(
    data: NDArray[np.float32],
    sky: NDArray[np.float32],
    rms: NDArray[np.float32],
    ignore: NDArray[np.bool_],
    factor: np.float32,
    min_pixels: int,
    widths: NDArray[np.int64],
    out: NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled; run through estimate_background
    """Set in ``out`` (all False on entry) the sources to mask before re-estimating.

    A pixel is above the sky when the 3x3 sum of ``data - sky`` (edges mirrored)
    exceeds ``factor`` times its rms (``factor`` is 3 x the threshold: the 3x3 mean
    test) and it is not ignored. Groups of such pixels (4-connected) of at least
    ``min_pixels`` are kept, because single noise peaks must not be masked (that
    would bias the sky low), and grown by the disk whose row ``dy`` reaches
    ``widths[|dy|]`` pixels either side.

    One pass over the image: the 3x3 sums come from a rolling window of three
    residual rows, in float32 and in a fixed order (centre, up, down, then centre,
    left, right; a pixel beyond the edge is the edge pixel), the order the mask has
    always been made with, so that the same pixels pass at the threshold; pixels
    above the sky are kept as runs along x, joined into groups by union-find between
    consecutive rows, and only the kept runs are painted.
    """
    ny, nx = data.shape
    # Residual rows y - 1, y and y + 1 are rows[up], rows[mid], rows[down] (rotated).
    rows = np.zeros((3, nx), dtype=np.float32)
    up, mid, down = 0, 1, 2
    column = np.empty(nx, dtype=np.float32)
    above = np.zeros(nx + 1, dtype=np.bool_)  # a False sentinel closes the last run
    row_x0 = np.empty(nx // 2 + 1, dtype=np.int64)
    row_x1 = np.empty(nx // 2 + 1, dtype=np.int64)
    capacity = 1024
    run_y = np.empty(capacity, dtype=np.int64)
    run_x0 = np.empty(capacity, dtype=np.int64)
    run_x1 = np.empty(capacity, dtype=np.int64)
    parent = np.empty(capacity, dtype=np.int64)
    n_runs = 0
    previous_start = previous_stop = 0
    for x in range(nx):
        rows[mid, x] = data[0, x] - sky[0, x]
    for y in range(ny):
        if y + 1 < ny:
            for x in range(nx):
                rows[down, x] = data[y + 1, x] - sky[y + 1, x]
        for x in range(nx):
            c = rows[mid, x]
            if y >= 1:
                c = c + rows[up, x]
            if y + 1 < ny:
                c = c + rows[down, x]
            if y == 0:
                c = c + rows[mid, x]
            if y == ny - 1:
                c = c + rows[mid, x]
            column[x] = c
        # Interior columns without branches (so that the loop vectorizes), then the
        # two mirrored edges.
        for x in range(1, nx - 1):
            total = (column[x] + column[x - 1]) + column[x + 1]
            above[x] = (total > rms[y, x] * factor) & ~ignore[y, x]
        for x in (0, nx - 1):
            total = column[x]
            if x >= 1:
                total = total + column[x - 1]
            if x + 1 < nx:
                total = total + column[x + 1]
            if x == 0:
                total = total + column[0]
            if x == nx - 1:
                total = total + column[x]
            above[x] = (total > rms[y, x] * factor) & ~ignore[y, x]
        # The row's runs first, into buffers of the row's size: growing the run
        # arrays inside the pixel loop would cost reference counting at every pixel.
        n_row = 0
        start = -1
        for x in range(nx + 1):
            if above[x]:
                if start < 0:
                    start = x
            elif start >= 0:
                row_x0[n_row], row_x1[n_row] = start, x
                n_row += 1
                start = -1
        if n_runs + n_row > capacity:
            capacity = max(2 * capacity, n_runs + n_row)
            run_y = _enlarged(run_y, capacity)
            run_x0 = _enlarged(run_x0, capacity)
            run_x1 = _enlarged(run_x1, capacity)
            parent = _enlarged(parent, capacity)
        current_start = n_runs
        for k in range(n_row):
            run_y[n_runs], run_x0[n_runs], run_x1[n_runs] = y, row_x0[k], row_x1[k]
            parent[n_runs] = n_runs
            n_runs += 1
        # Runs of this row and the previous one that share a column are one group.
        _join_rows(
            parent, run_x0, run_x1, previous_start, previous_stop, current_start, n_runs, False
        )
        previous_start, previous_stop = current_start, n_runs
        up, mid, down = mid, down, up
    size = np.zeros(n_runs, dtype=np.int64)
    for k in range(n_runs):
        size[_root(parent, k)] += run_x1[k] - run_x0[k]
    grow = len(widths) - 1
    for k in range(n_runs):
        if size[_root(parent, k)] < min_pixels:
            continue
        for dy in range(-grow, grow + 1):
            yy = run_y[k] + dy
            if 0 <= yy < ny:
                w = widths[abs(dy)]
                for x in range(max(run_x0[k] - w, 0), min(run_x1[k] + w, nx)):
                    out[yy, x] = True
