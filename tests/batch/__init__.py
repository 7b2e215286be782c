"""Tests of stacklab.toolkit.batch; a package so that its conftest keeps its own name."""
