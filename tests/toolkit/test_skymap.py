"""Sky map: tracts cover the sky, patches tile tracts, and exposures find their patches."""

from __future__ import annotations

import numpy as np
import pytest

from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import (
    SkyMapConfig,
    make_skymap,
    patch_covering,
    patches_overlapping,
)


@pytest.fixture(scope="module")
def skymap():
    return make_skymap(SkyMapConfig(tract_size_deg=3.0, patch_size_px=2000, patch_overlap_px=50))


@pytest.fixture(scope="module")
def exposures():
    config = SimulationConfig(
        size=256, bands=("r",), visits_per_band=3, galaxy_density_arcmin2=1.0, seed=4
    )
    sky = make_sky(config)
    return [simulate_visit(sky, config, visit=v).exposure for v in range(3)]


def test_every_sky_position_falls_inside_some_tract(skymap) -> None:
    rng = np.random.default_rng(1)
    ra = rng.uniform(0, 360, 200)
    dec = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 200)))
    centres = np.array([[t.ra_deg, t.dec_deg] for t in skymap.tracts])
    for r, d in zip(ra, dec, strict=True):
        cos = np.sin(np.deg2rad(d)) * np.sin(np.deg2rad(centres[:, 1])) + np.cos(
            np.deg2rad(d)
        ) * np.cos(np.deg2rad(centres[:, 1])) * np.cos(np.deg2rad(r - centres[:, 0]))
        near = np.flatnonzero(cos > np.cos(np.deg2rad(10.0)))
        holds = []
        for k in near:
            tract = skymap.tracts[k]
            x, y = tract.wcs.all_world2pix(r, d, 0)
            holds.append(-0.5 <= x <= tract.shape[1] - 0.5 and -0.5 <= y <= tract.shape[0] - 0.5)
        assert any(holds), (r, d)


def test_patches_tile_the_tract_with_overlap(skymap) -> None:
    tract = skymap.tracts[len(skymap.tracts) // 2]
    nx, _ = tract.n_patches
    covered = np.zeros(tract.shape[1], dtype=int)
    for ix in range(nx):
        x0, _, x1, _ = tract.patch(ix, 0).bbox
        covered[x0:x1] += 1
    assert covered.min() >= 1
    assert covered.max() == 2  # overlaps between neighbours
    patch = tract.patch(1, 1)
    # A patch's WCS is the tract's, shifted by the patch origin.
    x0, y0, _, _ = patch.bbox
    world = tract.wcs.all_pix2world(x0 + 10.0, y0 + 20.0, 0)
    assert np.allclose(patch.wcs.all_world2pix(*world, 0), (10.0, 20.0), atol=1e-6)
    with pytest.raises(ValueError, match="outside this tract"):
        tract.patch(nx, 0)


def test_patches_overlapping_contains_the_exposure_centre(skymap, exposures) -> None:
    exposure = exposures[0]
    patches = patches_overlapping(exposure, skymap)
    assert patches
    ra, dec = exposure.wcs.all_pix2world(127.5, 127.5, 0)
    inside = []
    for patch in patches:
        x, y = patch.wcs.all_world2pix(ra, dec, 0)
        inside.append(0 <= x < patch.shape[1] and 0 <= y < patch.shape[0])
    assert any(inside)
    far = exposure.replace(wcs=_moved(exposure.wcs, 180.0))
    assert all(p.tract_id != patches[0].tract_id for p in patches_overlapping(far, skymap))


def test_patch_covering_holds_every_exposure(exposures) -> None:
    patch = patch_covering(exposures, margin_px=2)
    for exposure in exposures:
        corners = np.array([[-0.5, -0.5], [255.5, -0.5], [-0.5, 255.5], [255.5, 255.5]])
        ra, dec = exposure.wcs.all_pix2world(corners[:, 0], corners[:, 1], 0)
        x, y = patch.wcs.all_world2pix(ra, dec, 0)
        assert x.min() >= 0 and y.min() >= 0
        assert x.max() <= patch.shape[1] - 1 and y.max() <= patch.shape[0] - 1
    with pytest.raises(ValueError, match="exposures is empty"):
        patch_covering([])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="patch_overlap_px"):
        SkyMapConfig(patch_size_px=100, patch_overlap_px=60)
    with pytest.raises(ValueError, match="tract_size_deg"):
        SkyMapConfig(tract_size_deg=0)


def _moved(wcs, dra):
    out = wcs.deepcopy()
    out.wcs.crval = [(wcs.wcs.crval[0] + dra) % 360, wcs.wcs.crval[1]]
    out.wcs.set()
    return out
