"""Cosmic-ray masks: growing and counting hits as index lists or, when dense, as images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stacklab.toolkit import CosmicRayConfig, Exposure, cosmic_rays, find_cosmic_rays


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dense", [False, True])
def test_grown_hits_and_their_groups_match_the_image_operations(seed, dense, monkeypatch):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 90)), int(rng.integers(1, 90)))
    plane = rng.random(shape) < rng.uniform(0.001, 0.3)
    hits = np.flatnonzero(plane)
    grow_px = int(rng.integers(1, 4))
    monkeypatch.setattr(cosmic_rays, "_dense", lambda n, shape: dense)
    grown = cosmic_rays._grown(hits, shape, grow_px)
    want = ndimage.binary_dilation(plane, np.ones((3, 3), bool), iterations=grow_px)
    np.testing.assert_array_equal(grown, np.flatnonzero(want))
    n_groups = ndimage.label(want, np.ones((3, 3), bool))[1]
    assert cosmic_rays._count_groups(grown, shape) == n_groups


def test_a_frame_full_of_hot_pixels_gives_the_index_path_result(monkeypatch):
    # 5% of the pixels are sharp hot pixels: their grown mask covers a third of the
    # image, which takes the image path (index lists would hold 9 int64 per hit).
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 10.0, (512, 512)).astype(np.float32)
    image[rng.random(image.shape) < 0.05] += 500.0
    exposure = Exposure(image, variance=np.full(image.shape, 100.0, np.float32))
    config = CosmicRayConfig(grow_px=1, interpolate=False)
    found = find_cosmic_rays(exposure, config)
    assert cosmic_rays._dense(found.n_pixels, image.shape)
    monkeypatch.setattr(cosmic_rays, "_dense", lambda n, shape: False)
    by_index = find_cosmic_rays(exposure, config)
    np.testing.assert_array_equal(found.mask, by_index.mask)
    assert found.n_hits == by_index.n_hits > 1000
