"""The PSF model of a detector: pixel values that vary as polynomials over it (`PsfModel`).

The PSF at detector position ``(x, y)`` is a stamp of ``N x N`` pixel values
``P_p(x, y) = sum_k c_pk t_k(u, v)``, where ``t_k`` are the monomials ``u^i v^j``
(``i + j <= spatial_order``) of the scaled position ``u = (x - x_c)/s``,
``v = (y - y_c)/s``. The stamp is the pixelized PSF centred on the centre of its
middle pixel; it is normalised to unit sum when evaluated. `fit_psf` (:mod:`.psf`)
makes one from the stars of an exposure.

An undersampled PSF (FWHM under ~2.5 px) is modelled on a finer grid: with
``oversampling = s`` the coefficients hold ``s (N - 1) + 1`` values a side, every
``s``-th of them at a pixel centre, so the stamp is that grid taken every ``s``
values, and a sub-pixel shift is a Fourier shift on the fine grid (well sampled
there) before that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ._moments import _AdaptiveMoments
from ._stamps import fft_shift_padded
from .errors import ToolkitError

__all__ = ["PsfModel", "PsfShape"]

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


class PsfShape(NamedTuple):
    """Adaptive second moments of a PSF: size ``T = Ixx + Iyy`` (px²) and distortion e1, e2."""

    T: float
    e1: float
    e2: float


def _terms(u: NDArray[np.float64], v: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    return np.stack([u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)], axis=-1)


def _terms_at(u: float, v: float, order: int) -> NDArray[np.float64]:
    """:func:`_terms` of one position, as Python floats where that gives the same bits.

    Bit for bit what ``_terms`` gives for 0-d arrays (a PSF stamp is evaluated
    once per source, and NumPy's overhead on 0-d arrays was most of its cost):
    NumPy computes ``u**0, u**1, u**2`` as ``1, u, u*u``, and higher powers with
    its own ``power`` loop, which can differ from Python's ``**`` in the last bit.
    """
    ups = [1.0, u, u * u]
    vps = [1.0, v, v * v]
    if order > 2:
        high = np.arange(3, order + 1)
        ups += (np.float64(u) ** high).tolist()
        vps += (np.float64(v) ** high).tolist()
    return np.array([ups[i] * vps[j] for i in range(order + 1) for j in range(order + 1 - i)])


def _n_terms(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _term_normal_matrices(
    weights: NDArray[np.float64], terms: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Each model value's normal matrix over the polynomial terms, ``sum_s w_s t_s t_s^T``.

    ``weights`` is ``(n_stars, ...)`` (a weight per star and model value), ``terms``
    ``(n_stars, n_terms)``; returns ``(..., n_terms, n_terms)``, as one matrix
    product over the stars (three-operand einsums loop slowly).
    """
    n_stars, n_terms = terms.shape
    pairs = (terms[:, :, None] * terms[:, None, :]).reshape(n_stars, n_terms * n_terms)
    normal = weights.reshape(n_stars, -1).T @ pairs
    return normal.reshape(*weights.shape[1:], n_terms, n_terms)


@dataclass(frozen=True, eq=False)
class PsfModel:
    """A pixel-basis PSF whose pixels are polynomials of the detector position.

    Parameters
    ----------
    coefficients : numpy.ndarray, shape (n_terms, N, N)
        Coefficient of each polynomial term for each stamp pixel.
    spatial_order : int
        Order of the polynomial in ``u, v``.
    x_center, y_center, scale : float
        ``u = (x - x_center) / scale``, ``v = (y - y_center) / scale`` (pixels).
    oversampling : int
        Model values per pixel along each axis (1: the coefficients are pixels).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[-7:8, -7:8]
    >>> stamp = np.exp(-(xx**2 + yy**2) / 8.0)
    >>> model = PsfModel(stamp[None] / stamp.sum(), spatial_order=0)
    >>> round(float(model.compute_image(10.0, 20.0).sum()), 6)
    1.0
    """

    coefficients: NDArray[np.float64]
    spatial_order: int = 0
    x_center: float = 0.0
    y_center: float = 0.0
    scale: float = 1.0
    oversampling: int = 1

    def __post_init__(self) -> None:
        coeffs = np.asarray(self.coefficients, dtype=np.float64)
        if coeffs.ndim != 3 or coeffs.shape[1] != coeffs.shape[2] or coeffs.shape[1] % 2 == 0:
            msg = f"coefficients must have shape (n_terms, N, N) with N odd, got {coeffs.shape}"
            raise ValueError(msg)
        if coeffs.shape[0] != _n_terms(self.spatial_order):
            msg = (
                f"spatial_order {self.spatial_order} needs {_n_terms(self.spatial_order)} terms, "
                f"coefficients have {coeffs.shape[0]}"
            )
            raise ValueError(msg)
        if not self.scale > 0:
            msg = f"scale must be > 0 pixels, got {self.scale!r}"
            raise ValueError(msg)
        s = self.oversampling
        if not isinstance(s, int | np.integer) or s < 1 or (coeffs.shape[1] - 1) % s:
            msg = (
                f"oversampling must be an integer >= 1 dividing the coefficients' width - 1 "
                f"({coeffs.shape[1] - 1}), got {s!r}"
            )
            raise ValueError(msg)
        object.__setattr__(self, "oversampling", int(s))
        object.__setattr__(self, "coefficients", coeffs)

    @property
    def stamp_size(self) -> int:
        """Width of the model stamp (pixels, odd)."""
        return (int(self.coefficients.shape[1]) - 1) // self.oversampling + 1

    def _fine_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the coefficients' polynomial at ``(x, y)``: the stamp on the model's grid."""
        t = _terms_at(
            float((x - self.x_center) / self.scale),
            float((y - self.y_center) / self.scale),
            self.spatial_order,
        )
        n_terms, n, _ = self.coefficients.shape
        # The product np.tensordot(t, coefficients, axes=1) makes, without its overhead.
        return np.dot(t[None, :], self.coefficients.reshape(n_terms, n * n)).reshape(n, n)

    def compute_image(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the PSF at ``(x, y)`` centred on the middle pixel's centre, summing to 1.

        Parameters
        ----------
        x, y : float
            Detector position (pixels, 0-based).
        """
        stamp = self._fine_image(x, y)
        if self.oversampling > 1:
            stamp = np.ascontiguousarray(stamp[:: self.oversampling, :: self.oversampling])
        total = np.add.reduce(stamp, axis=None)  # stamp.sum() without its wrapper
        return np.asarray(stamp / total if total != 0 else stamp)

    def draw(self, x: float, y: float) -> NDArray[np.float64]:
        """Return the PSF centred exactly at ``(x, y)``, summing to 1.

        The stamp's middle pixel is ``(round(x), round(y))``; the sub-pixel shift is
        a Fourier phase ramp.
        """
        if self.oversampling > 1:
            return self._draw_many(np.array([x]), np.array([y]))[0]
        stamp = self.compute_image(x, y)
        dx, dy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
        shifted = fft_shift_padded(stamp, dx, dy)
        return np.asarray(shifted / shifted.sum())

    def _draw_many(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """:meth:`draw` at each ``(x[k], y[k])``, bit for bit, with one batch of Fourier shifts.

        On an oversampled grid the shift is ``s`` times the pixel offset, and the
        shifted stamps are taken every ``s`` values.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        s = self.oversampling
        stamp_at = self.compute_image if s == 1 else self._fine_image
        m = self.coefficients.shape[1]
        stamps = np.array([stamp_at(xk, yk) for xk, yk in zip(x.tolist(), y.tolist(), strict=True)])
        stamps = stamps.reshape(len(x), m, m)  # (0, m, m) for no position
        dx, dy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
        shifted = fft_shift_padded(stamps, s * dx, s * dy)[:, ::s, ::s]
        # Each stamp's own sum: the same additions in the same order as draw's.
        totals = np.array([stamp.sum() for stamp in shifted])
        return np.asarray(shifted / totals[:, None, None])

    def moments(self, x: float, y: float) -> PsfShape:
        """Return adaptive moments (GalSim HSM) of the model at ``(x, y)``.

        Raises
        ------
        ToolkitError
            If HSM does not converge on the model stamp.
        """
        shape = _hsm(np.pad(self.compute_image(x, y), self.stamp_size // 2))
        if shape is None:
            msg = f"adaptive moments of the PSF model failed at ({x}, {y})"
            raise ToolkitError(msg)
        return PsfShape(*shape[:3])

    def fwhm_px(self, x: float, y: float) -> float:
        """Gaussian-equivalent FWHM of the model at ``(x, y)`` (pixels), from its moments.

        Falls back to unweighted second moments when adaptive moments fail.
        """
        try:
            T = self.moments(x, y).T
        except ToolkitError:
            stamp = self.compute_image(x, y)
            yy, xx = np.indices(stamp.shape) - stamp.shape[0] // 2
            T = float(np.sum(stamp * (xx * xx + yy * yy)))
        return float(np.sqrt(max(T, 1e-6) / 2.0) * _FWHM_PER_SIGMA)

    def to_hdu(self) -> fits.ImageHDU:
        """Return the model as an image HDU: the coefficient cube, scaling in the header."""
        hdu = fits.ImageHDU(self.coefficients.astype(np.float64), name="PSF")
        hdu.header["PSFORDER"] = (self.spatial_order, "polynomial order over the detector")
        hdu.header["PSFXC"] = (self.x_center, "u = (x - PSFXC) / PSFSCALE")
        hdu.header["PSFYC"] = (self.y_center, "v = (y - PSFYC) / PSFSCALE")
        hdu.header["PSFSCALE"] = (self.scale, "pixels")
        hdu.header["PSFOVERS"] = (self.oversampling, "model values per pixel along an axis")
        return hdu

    @classmethod
    def from_hdu(cls, hdu: fits.ImageHDU) -> PsfModel:
        """Inverse of :meth:`to_hdu`."""
        header = hdu.header
        return cls(
            np.asarray(hdu.data, dtype=np.float64),
            spatial_order=int(header["PSFORDER"]),
            x_center=float(header["PSFXC"]),
            y_center=float(header["PSFYC"]),
            scale=float(header["PSFSCALE"]),
            oversampling=int(header.get("PSFOVERS", 1)),
        )


def _hsm(
    stamp: NDArray[np.floating],
    bad: NDArray[np.bool_] | None = None,
    guess_sigma: float = 2.0,
    *,
    moments: _AdaptiveMoments | None = None,
) -> tuple[float, float, float, float, float, float] | None:
    """Adaptive moments: T, e1, e2, x, y (stamp frame, 0-based) and amplitude, or None.

    ``galsim.hsm.FindAdaptiveMom``'s (default precision and first centroid), bit for
    bit, through :class:`._moments._AdaptiveMoments`; pass ``moments`` to reuse its
    buffers over many stamps.
    """
    moments = _AdaptiveMoments() if moments is None else moments
    return moments.shape(moments.load(stamp, bad), guess_sigma)
