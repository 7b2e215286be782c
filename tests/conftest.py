"""Shared fixtures: seeded simulations with truth, and the real FITS files of ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stacklab.toolkit.simulate import SimulatedVisit, SimulationConfig, make_sky, simulate_visit

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("STACKLAB_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of real public FITS/region files (skips when it is absent)."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent; set STACKLAB_REAL_DATA")
    return REAL_DATA


@pytest.fixture(scope="session")
def artifact_config() -> SimulationConfig:
    """A 1024² three-band setup with every artifact switched on."""
    return SimulationConfig(
        seed=11,
        size=1024,
        visits_per_band=2,
        star_mag_range=(14.5, 25.0),
        cosmic_rays_per_megapixel=40.0,
        satellite_trail_probability=1.0,
        n_bad_columns=3,
        variable_star=True,
        transient=True,
    )


@pytest.fixture(scope="session")
def artifact_visit(artifact_config: SimulationConfig) -> SimulatedVisit:
    """Visit 1 (r band) of ``artifact_config``."""
    return simulate_visit(make_sky(artifact_config), artifact_config, visit=1)


@pytest.fixture(scope="session")
def clean_config() -> SimulationConfig:
    """A 2048² field without artifacts and with plenty of stars for PSF checks."""
    return SimulationConfig(seed=5, size=2048, star_density_arcmin2=30.0, bands=("r", "i"))


@pytest.fixture(scope="session")
def clean_visit(clean_config: SimulationConfig) -> SimulatedVisit:
    """Visit 0 of ``clean_config``."""
    return simulate_visit(make_sky(clean_config), clean_config, visit=0)
