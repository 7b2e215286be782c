"""Rho statistics of PSF-model residuals (Rowe 2010; Jarvis et al. 2016), through TreeCorr.

With ``e`` a star's shear-type ellipticity, ``de = e_star - e_model`` and
``dT = T_star - T_model``, the statistics are the ``xi+`` correlation functions::

    rho1 = <de* de>, rho2 = <e* de>, rho3 = <(e dT/T)* (e dT/T)>,
    rho4 = <de* (e dT/T)>, rho5 = <e* (e dT/T)>

measured on stars kept out of the PSF fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import treecorr
from numpy.typing import NDArray

__all__ = ["RhoStatistics", "rho_statistics"]


@dataclass(frozen=True, eq=False)
class RhoStatistics:
    """Rho statistics (xi+ parts) of PSF-model residuals at reserved stars.

    Attributes
    ----------
    theta_arcmin : numpy.ndarray
        Mean separation of each bin (arcmin).
    rho1, rho2, rho3, rho4, rho5 : numpy.ndarray
        ``xi+`` of each statistic in each bin (dimensionless).
    sigma1 : numpy.ndarray
        Shot-noise error of ``rho1`` per bin.
    n_pairs : numpy.ndarray
        Pairs per bin.
    """

    theta_arcmin: NDArray[np.float64]
    rho1: NDArray[np.float64]
    rho2: NDArray[np.float64]
    rho3: NDArray[np.float64]
    rho4: NDArray[np.float64]
    rho5: NDArray[np.float64]
    sigma1: NDArray[np.float64]
    n_pairs: NDArray[np.float64]

    def mean(self, name: str, min_arcmin: float, max_arcmin: float) -> float:
        """Pair-weighted mean of statistic ``name`` (e.g. ``"rho1"``) over a range of scales."""
        values = getattr(self, name)
        sel = (self.theta_arcmin >= min_arcmin) & (self.theta_arcmin <= max_arcmin)
        sel &= self.n_pairs > 0
        if not sel.any():
            return float("nan")
        return float(np.average(values[sel], weights=self.n_pairs[sel]))


def _shear(e1: NDArray[np.float64], e2: NDArray[np.float64]) -> NDArray[np.complex128]:
    e = e1 + 1j * e2
    return np.asarray(e / (1.0 + np.sqrt(np.maximum(1.0 - np.abs(e) ** 2, 0.0))))


def rho_statistics(
    x: NDArray[np.floating],
    y: NDArray[np.floating],
    *,
    star_T: NDArray[np.floating],
    star_e1: NDArray[np.floating],
    star_e2: NDArray[np.floating],
    model_T: NDArray[np.floating],
    model_e1: NDArray[np.floating],
    model_e2: NDArray[np.floating],
    pixel_scale_arcsec: float = 0.2,
    min_sep_arcmin: float = 0.2,
    max_sep_arcmin: float = 10.0,
    n_bins: int = 10,
) -> RhoStatistics:
    """Rho statistics 1-5 of PSF-model residuals (Rowe 2010; Jarvis et al. 2016).

    With ``e`` the star's shear-type ellipticity (converted from the distortions
    given), ``de = e_star - e_model`` and ``dT = T_star - T_model``::

        rho1 = <de* de>, rho2 = <e* de>, rho3 = <(e dT/T)* (e dT/T)>,
        rho4 = <de* (e dT/T)>, rho5 = <e* (e dT/T)>

    (the ``xi+`` parts, from TreeCorr's ``GGCorrelation``).

    Parameters
    ----------
    x, y : array_like
        Star positions (pixels).
    star_T, star_e1, star_e2 : array_like
        Adaptive-moment size (px²) and distortion of the stars.
    model_T, model_e1, model_e2 : array_like
        The same for the PSF model at the stars.
    pixel_scale_arcsec : float
        Pixel scale (arcsec per pixel).
    min_sep_arcmin, max_sep_arcmin : float
        Range of separations (arcmin).
    n_bins : int
        Logarithmic bins.

    Returns
    -------
    RhoStatistics

    Raises
    ------
    ValueError
        If the arrays differ in length or hold fewer than 2 stars.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in
              (x, y, star_T, star_e1, star_e2, model_T, model_e1, model_e2)]  # fmt: skip
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or len(arrays[0]) < 2:
        msg = "x, y and the moment arrays must be 1-D, of equal length and hold >= 2 stars"
        raise ValueError(msg)
    xa, ya, sT, se1, se2, mT, me1, me2 = arrays
    g_star = _shear(se1, se2)
    g_model = _shear(me1, me2)
    dg = g_star - g_model
    dTT = (sT - mT) / sT
    weighted = g_star * dTT
    kwargs = {"x": xa * pixel_scale_arcsec, "y": ya * pixel_scale_arcsec, "x_units": "arcsec",
              "y_units": "arcsec"}  # fmt: skip

    def catalog(g: NDArray[np.complex128]) -> treecorr.Catalog:
        return treecorr.Catalog(g1=g.real, g2=g.imag, **kwargs)

    def xi(a: NDArray[np.complex128], b: NDArray[np.complex128]) -> treecorr.GGCorrelation:
        corr = treecorr.GGCorrelation(
            min_sep=min_sep_arcmin, max_sep=max_sep_arcmin, nbins=n_bins, sep_units="arcmin",
            bin_slop=0.0 if len(xa) < 5000 else 0.1,
        )  # fmt: skip
        if a is b:
            corr.process(catalog(a))
        else:
            corr.process(catalog(a), catalog(b))
        return corr

    c1 = xi(dg, dg)
    return RhoStatistics(
        theta_arcmin=np.exp(c1.meanlogr),
        rho1=np.asarray(c1.xip),
        rho2=np.asarray(xi(g_star, dg).xip),
        rho3=np.asarray(xi(weighted, weighted).xip),
        rho4=np.asarray(xi(dg, weighted).xip),
        rho5=np.asarray(xi(g_star, weighted).xip),
        sigma1=np.sqrt(np.asarray(c1.varxip)),
        n_pairs=np.asarray(c1.npairs),
    )
