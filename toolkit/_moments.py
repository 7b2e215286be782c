"""Adaptive moments for the measurement step: HSM of a stamp, and the PSF's over the image.

The PSF's moments are measured on a grid and interpolated (:class:`_PsfMomentGrid`);
the PSF is only evaluated where it is defined (:func:`_psf_stamp`): a coadd's PSF
has no inputs at its NO_DATA pixels. Moments are ``(x, y, ixx, iyy, ixy)``: the
centroid in 0-based stamp or image pixels and the second moments in px².
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import galsim
import numpy as np
from galsim import _galsim
from numpy.typing import NDArray

from .errors import ToolkitError

log = logging.getLogger(__name__)

_PSF_GRID = 9


def _psf_stamp(psf: Any, x: float, y: float) -> NDArray[np.float64] | None:
    """Return the PSF at ``(x, y)`` (px) with unit sum, or None where it is not defined.

    A model without data at ``(x, y)`` raises ``ValueError`` (a CoaddPsf at NO_DATA
    pixels) or returns a stamp that is not finite or does not sum to > 0.
    """
    try:
        kernel = np.asarray(psf.compute_image(x, y), dtype=np.float64)
    except ValueError:
        return None
    # ndarray.sum's reduction without its Python wrapper (once per source).
    total = float(np.add.reduce(kernel, axis=None))
    if kernel.ndim != 2 or not math.isfinite(total) or not total > 0:
        return None
    if kernel.shape[0] != kernel.shape[1]:
        msg = (
            f"the PSF ({type(psf).__name__}) returned a stamp of shape {kernel.shape} at "
            f"({x:g}, {y:g}); PSF fits need square stamps (odd sizes, centred on the middle "
            "pixel): make compute_image return one"
        )
        raise ValueError(msg)
    return kernel / total


def _psf_moments(psf: Any, x: float, y: float) -> NDArray[np.float64] | None:
    """Return the HSM centroid and moments ``(x, y, ixx, iyy, ixy)`` of the PSF at ``(x, y)``.

    NaN where HSM fails on the stamp (e.g. a PSF too small for it), None where the
    PSF is not defined (see :func:`_psf_stamp`).
    """
    kernel = _psf_stamp(psf, x, y)
    if kernel is None:
        return None
    moments = _hsm_moments(np.pad(kernel, kernel.shape[0] // 2), None)
    return np.full(5, np.nan) if moments is None else np.array(moments)


class _PsfMomentGrid:
    """PSF adaptive moments on a grid over the image, bilinearly interpolated.

    The PSF varies smoothly (a low-order polynomial), so a grid of
    ``_PSF_GRID`` x ``_PSF_GRID`` HSM measurements replaces one per source.
    Grid points where the PSF is not defined (no data there, see :func:`_psf_stamp`)
    take the moments of the nearest grid point where it is; when it is defined at
    no grid point, its moments at the first source ``(xs, ys)`` (px) where it is
    are used everywhere. Moments are NaN (unknown) where HSM fails on the PSF.

    Raises
    ------
    ToolkitError
        If the PSF is defined at no grid point and at no source.
    """

    def __init__(
        self, psf: Any, shape: tuple[int, int], xs: NDArray[Any], ys: NDArray[Any]
    ) -> None:
        ny, nx = shape
        self.gx = np.linspace(0.0, nx - 1.0, _PSF_GRID)
        self.gy = np.linspace(0.0, ny - 1.0, _PSF_GRID)
        self.values = np.full((_PSF_GRID, _PSF_GRID, 5), np.nan)
        defined = np.zeros((_PSF_GRID, _PSF_GRID), dtype=bool)
        for j, y in enumerate(self.gy):
            for i, x in enumerate(self.gx):
                moments = _psf_moments(psf, x, y)
                if moments is not None:
                    defined[j, i] = True
                    self.values[j, i] = moments
        if defined.all():
            return
        if defined.any():
            # Nearest grid point with a PSF (in pixels): the PSF varies slowly over a cell.
            jj, ii = np.nonzero(defined)
            for j, i in zip(*np.nonzero(~defined), strict=True):
                d2 = (self.gx[ii] - self.gx[i]) ** 2 + (self.gy[jj] - self.gy[j]) ** 2
                nearest = int(np.argmin(d2))
                self.values[j, i] = self.values[jj[nearest], ii[nearest]]
            log.info(
                "PSF not defined at %d of %d grid points (no data there); they take the "
                "moments of the nearest grid point where it is",
                int((~defined).sum()),
                defined.size,
            )
            return
        for x, y in zip(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), strict=True):
            moments = _psf_moments(psf, float(x), float(y))
            if moments is not None:
                log.warning(
                    "PSF not defined at any of the %d grid points over the image; using "
                    "its moments at the source at (%.1f, %.1f) for every source",
                    defined.size,
                    x,
                    y,
                )
                self.values[...] = moments
                return
        msg = (
            f"the PSF model ({type(psf).__name__}) could not be evaluated anywhere: not at "
            f"any of the {defined.size} grid points over the {nx} x {ny} image, nor at any of "
            f"the {len(xs)} sources (it raised ValueError or gave non-finite stamps, e.g. a "
            "CoaddPsf with no input there); pass a PSF defined where the data are, or an "
            "exposure without a PSF to skip PSF and model fluxes"
        )
        raise ToolkitError(msg, value=psf)

    def at(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> list[tuple[float, float, float, float, float] | None]:
        """Return the interpolated moments at each ``(x, y)`` (px), None where not finite.

        Vectorized over the positions; each is the same bilinear sum, term by term,
        as for one position.
        """
        steps = np.arange(_PSF_GRID)
        fx = np.interp(x, self.gx, steps)
        fy = np.interp(y, self.gy, steps)
        # interp's result is in [0, _PSF_GRID - 1]: truncation is int().
        i0 = np.minimum(fx.astype(np.intp), _PSF_GRID - 2)
        j0 = np.minimum(fy.astype(np.intp), _PSF_GRID - 2)
        tx, ty = fx - i0, fy - j0
        v = self.values
        w00, w01 = ((1 - tx) * (1 - ty))[:, None], (tx * (1 - ty))[:, None]
        w10, w11 = ((1 - tx) * ty)[:, None], (tx * ty)[:, None]
        value = (w00 * v[j0, i0] + w01 * v[j0, i0 + 1]
                 + w10 * v[j0 + 1, i0] + w11 * v[j0 + 1, i0 + 1])  # fmt: skip
        finite = np.isfinite(value).all(axis=1)
        return [
            (row[0], row[1], row[2], row[3], row[4]) if ok else None
            for row, ok in zip(value.tolist(), finite.tolist(), strict=True)
        ]


class _AdaptiveMoments:
    """GalSim's HSM adaptive moments of many stamps, through its C++ entry point.

    ``galsim.hsm.FindAdaptiveMom`` wraps every stamp and mask in ``Image`` objects,
    converts the bad-pixel image into a mask and makes a result object on each
    call: for thousands of small stamps that cost about half as much as the
    moments themselves. This calls the C++ routine it calls, with the inputs it
    would pass (the float64 stamp; an int32 mask, 1 on the pixels used; the
    stamp's centre as the first centroid; ``guess_sig`` (2 unless given),
    ``precision=1e-6`` and the default ``HSMParams``), so the moments are
    ``FindAdaptiveMom``'s bit for bit. Stamp and mask go in buffers owned here,
    one pair per stamp shape (:meth:`buffers`), wrapped in GalSim image views
    once; one result object is reused (every field read is rewritten on success).
    """

    def __init__(self, *, direct: bool | None = None) -> None:
        # Per stamp shape: stamp and mask buffers, their GalSim views (which point
        # into the buffers: they live together here) and the first centroid.
        self._frames: dict[tuple[int, int], tuple[Any, ...]] = {}
        # The entry point and views are GalSim internals (checked with 2.8): where a
        # release changed them, the public FindAdaptiveMom gives the same moments,
        # only slower. ``direct`` forces either path (None: the direct one if it works).
        self._fast = _direct_call_works() if direct is None else direct
        if self._fast:
            self._params = galsim.hsm.HSMParams.default._hsmp
            self._result = galsim.hsm.ShapeData()._data

    def _frame(self, shape: tuple[int, int]) -> tuple[Any, ...]:
        frame = self._frames.get(shape)
        if frame is None:
            ny, nx = shape
            stamp = np.zeros(shape)
            keep = np.zeros(shape, dtype=np.int32)
            views: tuple[Any, ...] = (None, None, None)
            if self._fast:
                bounds = _galsim.BoundsI(1, nx, 1, ny)
                views = (
                    _galsim.ImageViewD(stamp.ctypes.data, 1, nx, bounds),
                    _galsim.ImageViewI(keep.ctypes.data, 1, nx, bounds),
                    _galsim.PositionD((nx + 1) / 2.0, (ny + 1) / 2.0),
                )
            frame = (stamp, keep, *views)
            self._frames[shape] = frame
        return frame

    def buffers(self, shape: tuple[int, int]) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
        """Return the stamp (float64) and mask (int32, 1 on used pixels) :meth:`measure` reads."""
        frame = self._frame(shape)
        return frame[0], frame[1]

    def load(
        self, stamp: NDArray[np.floating], bad: NDArray[np.bool_] | None = None
    ) -> tuple[int, int]:
        """Copy ``stamp`` and its good pixels (all, or not ``bad``) into the buffers.

        Returns the stamp's shape, the key :meth:`measure` and :meth:`shape` read it by.
        """
        shape = (int(stamp.shape[0]), int(stamp.shape[1]))
        pixels, keep = self.buffers(shape)
        pixels[...] = stamp
        keep[...] = 1 if bad is None else ~bad
        return shape

    def measure(
        self, shape: tuple[int, int], guess_sigma: float = 2.0
    ) -> tuple[float, float, float, float, float] | None:
        """Return ``(x, y, ixx, iyy, ixy)`` (0-based stamp px, px²) of the stamp in the buffers.

        None where HSM fails (no convergence, singular moments, no pixel used, ...).
        ``guess_sigma`` is HSM's first Gaussian sigma (px).
        """
        found = self._find(shape, guess_sigma)
        return None if found is None else _second_moments(found)

    def shape(
        self, shape: tuple[int, int], guess_sigma: float = 2.0
    ) -> tuple[float, float, float, float, float, float] | None:
        """Return ``(T, e1, e2, x, y, amplitude)`` of the stamp in the buffers, or None.

        ``T = 2 sigma²`` (px²), the distortions ``e1, e2``, the centroid (0-based
        stamp px) and HSM's amplitude, as from ``FindAdaptiveMom``'s result.
        """
        found = self._find(shape, guess_sigma)
        if found is None:
            return None
        sigma, e1, e2, x, y, amplitude = found
        return (2.0 * sigma**2, e1, e2, x, y, amplitude)

    def size(
        self, shape: tuple[int, int], guess_sigma: float = 2.0
    ) -> tuple[float, float, float] | None:
        """Return ``(T, x, y)`` of :meth:`shape` (without the distortions' conversion), or None."""
        if not self._fast:
            found = self._find(shape, guess_sigma)
            return None if found is None else (2.0 * found[0] ** 2, found[3], found[4])
        result = self._run(shape, guess_sigma)
        if result is None:
            return None
        centroid = result.moments_centroid
        return (2.0 * result.moments_sigma**2, centroid.x - 1.0, centroid.y - 1.0)

    def _run(self, shape: tuple[int, int], guess_sigma: float) -> Any | None:
        """GalSim's C++ result for the stamp in the buffers (reused: read it at once), or None."""
        _, _, image, mask, centre = self._frame(shape)
        result = self._result
        try:
            _galsim.FindAdaptiveMomView(
                result, image, mask, float(guess_sigma), 1.0e-6, centre, False, self._params
            )
        except RuntimeError:  # GalSim's HSMError
            return None
        if result.moments_status != 0 or not result.moments_sigma > 0:
            return None
        return result

    def _find(
        self, shape: tuple[int, int], guess_sigma: float
    ) -> tuple[float, float, float, float, float, float] | None:
        """HSM's ``(sigma, e1, e2, x, y, amplitude)`` of the stamp in the buffers, or None."""
        if not self._fast:
            stamp, keep = self.buffers(shape)
            return _public_find(stamp, keep, guess_sigma)
        result = self._run(shape, guess_sigma)
        if result is None:
            return None
        # FindAdaptiveMom's observed_shape is a Shear: its e1, e2 went through g and
        # back, which can change their last bits; the same round trip keeps them.
        shape_ = galsim.Shear(e1=result.observed_e1, e2=result.observed_e2)
        centroid = result.moments_centroid
        return (
            result.moments_sigma,
            shape_.e1,
            shape_.e2,
            centroid.x - 1.0,
            centroid.y - 1.0,
            result.moments_amp,
        )


def _public_find(
    stamp: NDArray[np.float64], keep: NDArray[np.int32], guess_sigma: float = 2.0
) -> tuple[float, float, float, float, float, float] | None:
    """``(sigma, e1, e2, x, y, amplitude)`` from the public ``FindAdaptiveMom`` (reference)."""
    try:
        result = galsim.hsm.FindAdaptiveMom(
            galsim.ImageD(stamp, scale=1.0),
            badpix=galsim.ImageI((keep == 0).astype(np.int32), scale=1.0),
            strict=False,
            guess_sig=guess_sigma,
        )
    except galsim.GalSimError:  # e.g. every pixel masked
        return None
    if result.moments_status != 0 or not result.moments_sigma > 0:
        return None
    centroid = result.moments_centroid
    return (
        result.moments_sigma,
        result.observed_shape.e1,
        result.observed_shape.e2,
        centroid.x - 1.0,
        centroid.y - 1.0,
        result.moments_amp,
    )


def _public_moments(
    stamp: NDArray[np.float64], keep: NDArray[np.int32]
) -> tuple[float, float, float, float, float] | None:
    """``(x, y, ixx, iyy, ixy)`` from the public ``galsim.hsm.FindAdaptiveMom`` (reference)."""
    found = _public_find(stamp, keep)
    return None if found is None else _second_moments(found)


def _second_moments(
    found: tuple[float, float, float, float, float, float],
) -> tuple[float, float, float, float, float]:
    """``(x, y, ixx, iyy, ixy)`` (px, px²) from HSM's ``(sigma, e1, e2, x, y, amplitude)``."""
    sigma, e1, e2, x, y, _ = found
    norm = sigma**2 / np.sqrt(max(1.0 - e1 * e1 - e2 * e2, 1e-12))
    return (x, y, norm * (1.0 + e1), norm * (1.0 - e1), norm * e2)


@functools.lru_cache(maxsize=1)
def _direct_call_works() -> bool:
    """Whether GalSim's HSM routine, called directly, gives FindAdaptiveMom's moments.

    Checked once per process on a small masked elliptical Gaussian.
    """
    yy, xx = np.mgrid[0:15, 0:15] - 7.2
    try:
        moments = _AdaptiveMoments(direct=True)
        stamp, keep = moments.buffers((15, 15))
        stamp[...] = np.exp(-0.5 * (xx * xx / 4.0 + yy * yy / 2.5 + 0.3 * xx * yy))
        keep[...] = 1
        keep[0, 0] = 0
        expected = _public_moments(stamp.copy(), keep.copy())
        works = expected is not None and moments.measure((15, 15)) == expected
        # And with another first sigma, as the PSF fit passes (T, e1, e2, x, y, amplitude).
        found = _public_find(stamp.copy(), keep.copy(), 1.5)
        works = (
            works
            and found is not None
            and moments.shape((15, 15), 1.5) == (2.0 * found[0] ** 2, *found[1:])
            and moments.size((15, 15), 1.5) == (2.0 * found[0] ** 2, found[3], found[4])
        )
    except (AttributeError, TypeError, RuntimeError):
        works = False
    if not works:
        log.warning(
            "GalSim %s's HSM internals differ from the ones stacklab calls directly; "
            "adaptive moments use the slower public galsim.hsm.FindAdaptiveMom",
            galsim.__version__,
        )
    return works


def _hsm_moments(
    stamp: NDArray[np.float64], bad: NDArray[np.bool_] | None
) -> tuple[float, float, float, float, float] | None:
    """Adaptive moments ``(x, y, ixx, iyy, ixy)`` of ``stamp`` without its ``bad`` pixels.

    None where HSM fails (see :class:`_AdaptiveMoments`).
    """
    moments = _AdaptiveMoments()
    return moments.measure(moments.load(stamp, bad))
