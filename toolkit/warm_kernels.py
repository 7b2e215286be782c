"""Compile the toolkit's numba kernels ahead of use: ``python -m stacklab.toolkit.warm_kernels``.

The inner loops of background, cosmic rays, detection, deblending, measurement,
warping and coaddition are numba kernels, compiled on first call and cached on
disk (see ``_jit``). From an empty cache the first ``process_frame`` spends about
15 s compiling, and several batch workers starting at once would each compile the
same kernels into the same cache folder. ``make install`` runs this module once
after installing, so that users, tests and workers start from a full cache: it
processes a small simulated visit and coadds two small visits, which calls every
kernel with the argument types the toolkit passes.
"""

from __future__ import annotations

import logging
import time
import warnings

__all__ = ["warm_kernels"]

log = logging.getLogger(__name__)


def warm_kernels() -> float:
    """Run the kernels once on small simulated data; return the seconds it took.

    Returns
    -------
    float
        Wall time (s): about 20-40 s from an empty cache, about 1 s from a full one.
    """
    from .coadd import CoaddConfig, coadd
    from .process_frame import process_frame
    from .simulate import SimulationConfig, make_sky, simulate_visit
    from .skymap import patch_covering

    start = time.perf_counter()
    config = SimulationConfig(
        size=256, bands=("r",), visits_per_band=2, seed=3, star_density_arcmin2=60.0,
        galaxy_density_arcmin2=10.0,
    )  # fmt: skip
    sky = make_sky(config)
    visits = [simulate_visit(sky, config, visit=v) for v in range(2)]
    with warnings.catch_warnings():
        # A 256-pixel frame is smaller than the usual meshes and PSF orders allow.
        warnings.simplefilter("ignore")
        process_frame(visits[0].exposure)
        exposures = [v.exposure.replace(image=v.exposure.image - v.sky) for v in visits]
        patch = patch_covering(exposures)
        for statistic in ("mean", "safe_clip", "compare_warp"):
            coadd(exposures, patch, CoaddConfig(statistic=statistic))
    return time.perf_counter() - start


if __name__ == "__main__":
    seconds = warm_kernels()
    print(f"stacklab: numba kernels compiled and cached ({seconds:.1f} s)")
