"""Adaptive moments of a PSF stamp: the size and shape every PSF model reports."""

from __future__ import annotations

import galsim
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["stamp_moments"]


def stamp_moments(stamp: ArrayLike) -> tuple[float, float, float]:
    """Return the adaptive moments ``(T, e1, e2)`` of a PSF stamp.

    Parameters
    ----------
    stamp : array_like, shape (n, n)
        The PSF image (any normalization), pixel scale 1.

    Returns
    -------
    T : float
        ``Ixx + Iyy`` of the adaptive (elliptical Gaussian) weight, px².
    e1, e2 : float
        Distortion-style ellipticity ``(Ixx - Iyy) / T`` and ``2 Ixy / T``.
    """
    image = galsim.ImageD(np.asarray(stamp, dtype=np.float64), scale=1.0)
    shape = galsim.hsm.FindAdaptiveMom(image)
    return (
        2.0 * shape.moments_sigma**2,
        float(shape.observed_shape.e1),
        float(shape.observed_shape.e2),
    )
