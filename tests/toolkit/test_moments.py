"""Adaptive moments: the direct call of GalSim's HSM routine against its public API."""

from __future__ import annotations

import numpy as np
import pytest

from stacklab.toolkit import _moments, deblend_sources, detect_sources, measure_sources
from stacklab.toolkit._moments import _AdaptiveMoments, _public_moments
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit


@pytest.mark.parametrize("seed", range(12))
def test_direct_hsm_call_gives_the_public_find_adaptive_mom_moments(seed: int) -> None:
    rng = np.random.default_rng(seed)
    moments = _AdaptiveMoments()
    assert moments._fast  # the GalSim this runs with has the internals it calls
    for _ in range(20):
        n = int(rng.integers(9, 40))
        yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0 - rng.uniform(-1.5, 1.5, 2)[:, None, None]
        a, b, c = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(-0.3, 0.3)
        image = 100.0 * np.exp(-0.5 * (xx * xx / a**2 + yy * yy / b**2 + c * xx * yy))
        image += rng.normal(0.0, rng.uniform(0.01, 3.0), image.shape)
        keep = (rng.random(image.shape) > rng.uniform(0.0, 0.3)).astype(np.int32)
        stamp, mask = moments.buffers(image.shape)
        stamp[...] = image
        mask[...] = keep
        assert moments.measure(image.shape) == _public_moments(image, keep)


def test_measurement_without_the_direct_hsm_call_is_unchanged() -> None:
    # A GalSim whose internals differ makes _AdaptiveMoments fall back to the public
    # FindAdaptiveMom: the catalog must not change.
    config = SimulationConfig(size=192, galaxy_density_arcmin2=20.0, seed=6)
    exposure = simulate_visit(make_sky(config), config, visit=0).exposure
    exposure = exposure.replace(image=exposure.image - float(exposure.meta["SKYLEVEL"]))
    sources = deblend_sources(exposure, detect_sources(exposure))
    fast = measure_sources(exposure, sources).catalog
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_moments, "_direct_call_works", lambda: False)
        assert not _AdaptiveMoments()._fast
        slow = measure_sources(exposure, sources).catalog
    assert len(fast) > 5
    for name in ("x", "y", "ixx", "iyy", "ixy", "flux_kron", "flux_psf", "flags"):
        np.testing.assert_array_equal(fast[name], slow[name])


def test_a_psf_with_non_square_stamps_gets_a_clear_error():
    class WidePsf:
        def compute_image(self, x: float, y: float) -> np.ndarray:
            return np.ones((15, 25))

    config = SimulationConfig(size=96, galaxy_density_arcmin2=20.0, seed=6)
    exposure = simulate_visit(make_sky(config), config, visit=0).exposure
    exposure = exposure.replace(image=exposure.image - float(exposure.meta["SKYLEVEL"]))
    sources = deblend_sources(exposure, detect_sources(exposure))
    with pytest.raises(ValueError, match=r"WidePsf.*shape \(15, 25\).*square"):
        measure_sources(exposure, sources, psf=WidePsf())
