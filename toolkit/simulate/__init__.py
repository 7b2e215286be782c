"""Simulated LSST-like data with known truth, built on GalSim.

>>> from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
>>> config = SimulationConfig(size=128, galaxy_density_arcmin2=5.0, seed=2)
>>> sim = simulate_visit(make_sky(config), config, visit=0)
>>> sim.exposure.band
'g'
"""

from .config import BAND_WAVELENGTH_NM, SimulationConfig
from .dataset import Manifest, psf_truth_table, read_manifest, simulate_dataset
from .psf import PsfMoments, SimulatedPsf
from .sky import epoch_mjd, make_sky, visit_magnitudes
from .visit import SimulatedVisit, VisitConditions, simulate_visit, visit_conditions

__all__ = [
    "BAND_WAVELENGTH_NM",
    "Manifest",
    "PsfMoments",
    "SimulatedPsf",
    "SimulatedVisit",
    "SimulationConfig",
    "VisitConditions",
    "epoch_mjd",
    "make_sky",
    "psf_truth_table",
    "read_manifest",
    "simulate_dataset",
    "simulate_visit",
    "visit_conditions",
    "visit_magnitudes",
]
