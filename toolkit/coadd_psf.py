"""CoaddPsf: the PSF of a coadd as the weighted sum of its inputs' warped PSFs.

At coadd pixel ``(x, y)`` the model is ``sum_i w_i P_i(x, y) / sum_i w_i`` over
exactly the inputs that contributed to that pixel (the coadd's
``contributors`` bit image, so clipped and masked inputs are left out), with
the same weights ``w_i`` the coadd used. Each ``P_i`` is normalized to unit sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import galsim
import numpy as np
from numpy.typing import NDArray

__all__ = ["CoaddPsf"]


@dataclass(frozen=True, eq=False)
class CoaddPsf:
    """PSF model of a coadd, consistent with the weights and inputs used per pixel.

    Parameters
    ----------
    psfs : sequence of Psf
        Warped PSF models of the inputs, in the coadd's pixel frame.
    weights : sequence of float
        Coadd weight of each input (the same order).
    contributors : numpy.ndarray of int64, shape (ny, nx)
        Bit ``i`` set where input ``i`` contributed to the coadd pixel.
    stamp_size : int
        Odd size of the returned stamps (px).
    """

    psfs: Sequence[Any]
    weights: Sequence[float]
    contributors: NDArray[np.int64] = field(repr=False)
    stamp_size: int = 25

    def __post_init__(self) -> None:
        if len(self.psfs) != len(self.weights) or not self.psfs:
            msg = (
                f"psfs and weights must be non-empty and of equal length, got "
                f"{len(self.psfs)} and {len(self.weights)}"
            )
            raise ValueError(msg)
        if self.stamp_size < 3 or self.stamp_size % 2 == 0:
            msg = f"stamp_size must be an odd number >= 3, got {self.stamp_size}"
            raise ValueError(msg)

    def inputs_at(self, x: float, y: float) -> list[int]:
        """Return the indices of the inputs used at the coadd pixel nearest ``(x, y)``."""
        ny, nx = self.contributors.shape
        ix = int(np.clip(round(float(x)), 0, nx - 1))
        iy = int(np.clip(round(float(y)), 0, ny - 1))
        bits = int(self.contributors[iy, ix])
        return [i for i in range(len(self.psfs)) if bits >> i & 1]

    def compute_image(self, x: float, y: float, size: int | None = None) -> NDArray[np.float64]:
        """Return the normalized coadd PSF stamp at ``(x, y)``.

        Raises
        ------
        ValueError
            If no input contributed at ``(x, y)`` (the coadd pixel is NO_DATA).
        """
        size = self.stamp_size if size is None else int(size)
        used = self.inputs_at(x, y)
        if not used:
            msg = f"no input contributed to the coadd at ({x:.1f}, {y:.1f}); it is NO_DATA there"
            raise ValueError(msg)
        total = np.zeros((size, size))
        weight_sum = 0.0
        for i in used:
            stamp = np.asarray(self.psfs[i].compute_image(x, y, size=size), dtype=np.float64)
            total += self.weights[i] * stamp / stamp.sum()
            weight_sum += self.weights[i]
        return total / weight_sum

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        """Adaptive moments ``(T, e1, e2)`` (px²) of the model at ``(x, y)``."""
        stamp = self.compute_image(x, y, size=2 * self.stamp_size + 1)
        shape = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp, scale=1.0))
        return (
            2.0 * shape.moments_sigma**2,
            float(shape.observed_shape.e1),
            float(shape.observed_shape.e2),
        )
