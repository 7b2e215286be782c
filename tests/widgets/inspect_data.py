"""Shared data of the inspection tests: one small processed frame, made once per session."""

from __future__ import annotations

import functools

import numpy as np

from stacklab.toolkit import FrameResult, RhoStatistics, process_frame, rho_statistics
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit


@functools.lru_cache(maxsize=1)
def small_frame() -> FrameResult:
    """A 512² field with stars, galaxies and blends, processed by process_frame."""
    config = SimulationConfig(
        size=512, star_density_arcmin2=60.0, seed=4, bands=("r",), visits_per_band=1
    )
    return process_frame(simulate_visit(make_sky(config), config, visit=0).exposure)


@functools.lru_cache(maxsize=1)
def random_rho() -> RhoStatistics:
    """Rho statistics of 400 random stars with small random residuals (seeded)."""
    rng = np.random.default_rng(3)
    n = 400
    x, y = rng.uniform(0, 4000, n), rng.uniform(0, 4000, n)
    T = rng.normal(8.0, 0.2, n)
    e1, e2 = rng.normal(0, 0.03, n), rng.normal(0, 0.03, n)
    return rho_statistics(
        x, y, star_T=T, star_e1=e1, star_e2=e2, model_T=T * (1 + rng.normal(0, 0.01, n)),
        model_e1=e1 + rng.normal(0, 0.002, n), model_e2=e2 + rng.normal(0, 0.002, n),
    )  # fmt: skip
