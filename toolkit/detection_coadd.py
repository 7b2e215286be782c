"""Detection coadds: one image of several bands' coadds of a patch to detect sources on.

Every band's coadd must be on the same patch grid (same shape and WCS, checked
to ``tolerance_px``), with a PSF model and a zero point. Methods:

* ``"snr"``: the bands scaled to the zero point of the bluest band and averaged
  with weights ``w_b = 1 / median(V_b)`` (per pixel over the bands with data),
  the S/N-optimal sum for a source of flat ``f_nu``; variance
  ``sum_b w_b**2 V_b / (sum_b w_b)**2``; its PSF is the same weighted mean of the
  band PSFs. Linear, so it also serves for deblending and centroids.
* ``"chi2"``: the chi-square image of Szalay, Connolly & Szokoly (1999, AJ 117,
  68), ``y = sum_b I_b**2 / V_b`` over the ``n`` bands with data at each pixel,
  turned into the Gaussian-equivalent significance ``z = Phi^-1(F_chi2(y; n))``
  (variance 1; the far tail from the asymptotic series of the incomplete gamma
  function), which is N(0, 1) in blank sky whatever the sources' colours.
  :func:`~stacklab.toolkit.detect_sources` then smooths it with the mean PSF.
  Being quadratic, it favours sources bright in one band over a flat-spectrum sum
  and loses some depth for sources below 1 sigma per pixel.

Pixel positions are 0-based pixel centres, ``(y, x)`` array indexing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from .coadd import Coadd
from .exposure import Exposure
from .mask import MaskPlanes
from .simulate.config import BAND_WAVELENGTH_NM

__all__ = ["DetectionMethod", "detection_coadd"]

log = logging.getLogger(__name__)

DetectionMethod = Literal["snr", "chi2"]
_METHODS = ("snr", "chi2")
_Z_FLOOR = -8.0  # chi2 significance of empty pixels (y = 0 would give -inf)


@dataclass(frozen=True)
class _WeightedPsf:
    """Weighted mean of several PSF models, ``sum_b w_b P_b / sum_b w_b``.

    Bands whose model has no data at ``(x, y)`` (a CoaddPsf on NO_DATA) are left
    out; where no band has data, the models at ``fallback`` (the patch centre) are used.
    """

    psfs: tuple[Any, ...]
    weights: tuple[float, ...]
    stamp_size: int
    fallback: tuple[float, float]

    def compute_image(self, x: float, y: float, size: int | None = None) -> NDArray[np.float64]:
        """Return the normalized weighted-mean stamp at ``(x, y)``."""
        size = self.stamp_size if size is None else int(size)
        for px, py in ((x, y), self.fallback):
            total = np.zeros((size, size))
            weight_sum = 0.0
            for psf, weight in zip(self.psfs, self.weights, strict=True):
                try:
                    stamp = np.asarray(psf.compute_image(px, py, size=size), dtype=np.float64)
                except ValueError:  # no input of this band there
                    continue
                total += weight * stamp / stamp.sum()
                weight_sum += weight
            if weight_sum > 0:
                return total / weight_sum
        msg = f"no band's PSF model can be evaluated at ({x:.1f}, {y:.1f}) nor at the centre"
        raise ValueError(msg)


def _combined_psf(exposures: Sequence[Exposure], weights: Sequence[float]) -> _WeightedPsf:
    ny, nx = exposures[0].shape
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    psfs = tuple(e.psf for e in exposures)
    size = max(np.asarray(p.compute_image(*centre)).shape[0] for p in psfs)  # type: ignore[union-attr]
    return _WeightedPsf(psfs, tuple(weights), size, centre)


def _band_order(bands: Sequence[str]) -> list[str]:
    return sorted(bands, key=lambda b: (BAND_WAVELENGTH_NM.get(b, np.inf), bands.index(b)))


def _check_bands(
    coadds_by_band: Any, tolerance_px: float, name: str = "coadds_by_band"
) -> dict[str, Exposure]:
    if not isinstance(coadds_by_band, Mapping):
        msg = f"{name} must be a mapping of band to Coadd or Exposure, got {type(coadds_by_band)}"
        raise TypeError(msg)
    if len(coadds_by_band) < 2:
        msg = (
            f"{name} has {len(coadds_by_band)} band(s) {list(coadds_by_band)}; a multi-band "
            "catalog needs at least two, e.g. {'g': coadd_g, 'r': coadd_r}"
        )
        raise ValueError(msg)
    out: dict[str, Exposure] = {}
    for band, value in coadds_by_band.items():
        exposure = value.exposure if isinstance(value, Coadd) else value
        if not isinstance(exposure, Exposure):
            msg = f"{name}[{band!r}] is a {type(value).__name__}, not a Coadd or Exposure"
            raise TypeError(msg)
        if exposure.band is not None and str(exposure.band) != str(band):
            msg = f"{name}[{band!r}] holds a coadd of band {exposure.band!r}; fix the key"
            raise ValueError(msg)
        if exposure.psf is None:
            msg = (
                f"band {band!r} has no PSF model; coadd inputs with PSFs (CoaddConfig("
                "require_psf=True)) so that forced PSF fluxes can be measured"
            )
            raise ValueError(msg)
        if exposure.wcs is None:
            msg = f"band {band!r} has no WCS; coadd every band on one patch with coadd_bands"
            raise ValueError(msg)
        if exposure.zero_point is None:
            msg = f"band {band!r} has no zero_point; colours need calibrated coadds"
            raise ValueError(msg)
        out[str(band)] = exposure
    first, reference = next(iter(out.items()))
    for band, exposure in out.items():
        if exposure.shape != reference.shape:
            msg = (
                f"band {band!r} has shape {exposure.shape}, band {first!r} {reference.shape}; "
                "coadd every band on the same patch (coadd_bands, or coadd(..., patch=...))"
            )
            raise ValueError(msg)
        offset = _grid_offset(reference, exposure)
        if not offset <= tolerance_px:
            msg = (
                f"band {band!r} is on another grid than band {first!r} (pixels differ by up to "
                f"{offset:.3g} px, tolerance {tolerance_px} px); coadd every band on the same "
                "patch (coadd_bands, or coadd(..., patch=...))"
            )
            raise ValueError(msg)
    return {band: out[band] for band in _band_order(list(out))}


def _grid_offset(reference: Exposure, other: Exposure) -> float:
    """Largest distance (px) between ``other``'s corner and centre pixels and ``reference``'s."""
    ny, nx = reference.shape
    xs = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
    ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
    world = other.wcs.celestial.pixel_to_world_values(xs, ys)  # type: ignore[union-attr]
    bx, by = reference.wcs.celestial.world_to_pixel_values(*world)  # type: ignore[union-attr]
    return float(np.max(np.hypot(bx - xs, by - ys)))


def _common_planes(exposures: Sequence[Exposure]) -> MaskPlanes:
    planes = MaskPlanes.default()
    for exposure in exposures:
        planes = planes.union(exposure.mask_planes)
    return planes


def detection_coadd(
    coadds_by_band: Mapping[str, Coadd | Exposure],
    *,
    method: DetectionMethod = "snr",
    tolerance_px: float = 0.01,
) -> Exposure:
    """Combine per-band coadds of one patch into the image sources are detected on.

    Parameters
    ----------
    coadds_by_band : mapping of str to Coadd or Exposure
        Background-subtracted coadds of at least two bands on the same patch,
        each with a PSF and a zero point.
    method : str
        ``"snr"``: S/N-weighted sum of the bands scaled to the zero point of the
        bluest band (ADU at that zero point), PSF the same weighted mean of the
        band PSFs. ``"chi2"``: Gaussian-equivalent significance of the
        chi-square image (dimensionless, variance 1), PSF the same mean.
    tolerance_px : float
        Largest grid disagreement between bands accepted (pixels).

    Returns
    -------
    Exposure
        Image, variance and mask (NO_DATA where no band has data; other planes
        OR-ed over the bands), the patch WCS and the combined PSF; ``band`` is
        the bands joined (e.g. ``"gri"``), ``meta["DETMETH"]`` the method.

    Raises
    ------
    ValueError
        If fewer than two bands are given, the grids differ (naming the band), a
        band has no PSF, WCS or zero point, or ``method`` is unknown.
    TypeError
        If ``coadds_by_band`` is not a mapping of Coadd/Exposure.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> from stacklab.toolkit.psf_match import TargetPsf
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> wcs.wcs.cdelt = [-5.6e-5, 5.6e-5]
    >>> bands = {
    ...     b: Exposure(np.zeros((32, 32)), variance=np.ones((32, 32)), wcs=wcs,
    ...                 psf=TargetPsf(3.0), zero_point=30.0, band=b)
    ...     for b in "gr"
    ... }
    >>> detection_coadd(bands, method="chi2").image.shape
    (32, 32)
    """
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}"
        raise ValueError(msg)
    exposures = _check_bands(coadds_by_band, tolerance_px)
    if method == "snr":
        return _snr_sum(exposures)
    return _chi2_image(exposures)


def _usable(exposure: Exposure, planes: MaskPlanes) -> NDArray[np.bool_]:
    mask = exposure.mask_planes.remap(exposure.mask, planes)
    return (
        ((mask & planes.bitmask("NO_DATA")) == 0)
        & np.isfinite(exposure.image)
        & np.isfinite(exposure.variance)
        & (exposure.variance > 0)
    )


def _combined_mask(
    exposures: Sequence[Exposure], planes: MaskPlanes, has_data: NDArray[np.bool_]
) -> NDArray[np.int32]:
    no_data = np.int32(planes.bitmask("NO_DATA"))
    mask = np.zeros(exposures[0].shape, dtype=np.int32)
    for exposure in exposures:
        mask |= exposure.mask_planes.remap(exposure.mask, planes) & ~no_data
    mask[~has_data] |= no_data
    return mask


def _snr_sum(exposures: Mapping[str, Exposure]) -> Exposure:
    bands = list(exposures)
    values = list(exposures.values())
    planes = _common_planes(values)
    zero_point = float(values[0].zero_point)  # type: ignore[arg-type]
    numerator = np.zeros(values[0].shape)
    variance = np.zeros(values[0].shape)
    weight_sum = np.zeros(values[0].shape)
    weights = []
    for exposure in values:
        scale = 10.0 ** (0.4 * (zero_point - float(exposure.zero_point)))  # type: ignore[arg-type]
        usable = _usable(exposure, planes)
        var = exposure.variance.astype(np.float64) * scale**2
        weight = 1.0 / float(np.median(var[usable])) if usable.any() else 0.0
        weights.append(weight)
        w = np.where(usable, weight, 0.0)
        numerator += w * np.where(usable, exposure.image, 0.0) * scale
        variance += w * w * np.where(usable, var, 0.0)
        weight_sum += w
    has_data = weight_sum > 0
    safe = np.where(has_data, weight_sum, 1.0)
    psf = _combined_psf(values, weights)
    return Exposure(
        np.where(has_data, numerator / safe, 0.0).astype(np.float32),
        variance=np.where(has_data, variance / safe**2, np.inf).astype(np.float32),
        mask=_combined_mask(values, planes, has_data),
        wcs=values[0].wcs,
        psf=psf,
        zero_point=zero_point,
        band="".join(bands),
        mask_planes=planes,
        meta={"DETMETH": "snr", "BANDS": ",".join(bands)},
    )


def _chi2_image(exposures: Mapping[str, Exposure]) -> Exposure:
    bands = list(exposures)
    values = list(exposures.values())
    planes = _common_planes(values)
    chi2 = np.zeros(values[0].shape)
    n_bands = np.zeros(values[0].shape, dtype=np.int64)
    weights = []
    for exposure in values:
        usable = _usable(exposure, planes)
        var = np.where(usable, exposure.variance, 1.0).astype(np.float64)
        chi2 += np.where(usable, exposure.image.astype(np.float64) ** 2 / var, 0.0)
        n_bands += usable
        weights.append(1.0 / float(np.median(var[usable])) if usable.any() else 0.0)
    has_data = n_bands > 0
    z = np.full(chi2.shape, _Z_FLOOR)
    # Phi^-1 of the chi-square CDF, from the log survival function so that bright
    # pixels (sf far below 1e-300) keep finite, growing significances.
    y, a = chi2[has_data], n_bands[has_data] / 2.0
    log_sf = stats.chi2.logsf(y, 2.0 * a)
    # Far tail (sf < 1e-308 underflows to log 0 = -inf): the asymptotic series
    # Q(a, x) ~ x**(a-1) exp(-x) / Gamma(a) (1 + (a-1)/x), x = y/2.
    tail = ~np.isfinite(log_sf)
    x = y[tail] / 2.0
    log_sf[tail] = (
        (a[tail] - 1) * np.log(x) - x - special.gammaln(a[tail]) + np.log1p((a[tail] - 1) / x)
    )
    z[has_data] = np.maximum(-special.ndtri_exp(log_sf), _Z_FLOOR)
    psf = _combined_psf(values, weights)
    return Exposure(
        np.where(has_data, z, 0.0).astype(np.float32),
        variance=np.where(has_data, 1.0, np.inf).astype(np.float32),
        mask=_combined_mask(values, planes, has_data),
        wcs=values[0].wcs,
        psf=psf,
        band="".join(bands),
        mask_planes=planes,
        meta={"DETMETH": "chi2", "BANDS": ",".join(bands)},
    )
