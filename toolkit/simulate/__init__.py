"""Simulated LSST-like data with truth, built on GalSim."""
