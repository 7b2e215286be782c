"""Simulated datasets on disk and the ``stacklab`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from stacklab.toolkit import read_exposure
from stacklab.toolkit.cli import main
from stacklab.toolkit.simulate import (
    SimulationConfig,
    make_sky,
    read_manifest,
    simulate_dataset,
    simulate_visit,
)


def test_dataset_files_match_the_in_memory_simulation(tmp_path: Path) -> None:
    config = SimulationConfig(
        size=128, bands=("g", "r"), visits_per_band=2, n_detectors=4, n_bad_columns=1, seed=9
    )
    manifest = simulate_dataset(config, tmp_path / "data", workers=2)
    assert len(manifest.exposures) == 2 * 2 * 4
    again = read_manifest(tmp_path / "data")
    assert again.config == config and again.exposures == manifest.exposures
    entry = next(e for e in manifest.exposures if e["visit"] == 3 and e["detector"] == 2)
    assert entry["band"] == "r"
    on_disk = read_exposure(manifest.root / entry["path"])
    in_memory = simulate_visit(make_sky(config), config, visit=3, detector=2)
    np.testing.assert_array_equal(on_disk.image, in_memory.exposure.image)
    assert (on_disk.visit, on_disk.band, on_disk.detector) == (3, "r", 2)
    truth = Table.read(manifest.root / entry["truth_path"])
    np.testing.assert_allclose(truth["x"], in_memory.truth["x"])
    psf_truth = Table.read(manifest.root / entry["psf_truth_path"])
    assert len(psf_truth) == 25 and np.all(psf_truth["T"] > 0)
    assert len(manifest.paths(band="g")) == 8
    # Detectors tile the focal plane: neighbours see different sky.
    centres = [
        read_exposure(manifest.root / e["path"]).wcs.pixel_to_world(64, 64)
        for e in manifest.exposures
        if e["visit"] == 0
    ]
    assert min(a.separation(b).arcsec for a in centres for b in centres if a is not b) > 20.0


def test_missing_or_broken_manifest_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `stacklab simulate"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"size": 64}}))
    with pytest.raises(ValueError, match="not a stacklab dataset manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"config": {"sizes": 64}, "truth_objects": "", "exposures": []})
    )
    with pytest.raises(ValueError, match="unknown simulation settings"):
        read_manifest(tmp_path)


def test_cli_help_lists_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stacklab.toolkit.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "simulate" in result.stdout


def test_cli_simulate_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--out", str(tmp_path / "d"), "--bands", "r,i", "--visits", "1",
                 "--size", "96", "--seed", "4", "--artifacts"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "simulated 2 exposures" in out and "manifest.json" in out
    manifest = read_manifest(tmp_path / "d")
    assert manifest.config.variable_star and manifest.config.n_bad_columns == 2


def test_cli_reports_bad_input_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--out", str(tmp_path), "--bands", "g,q"]) == 2
    err = capsys.readouterr().err
    assert "stacklab simulate: error: bands must be" in err and "Traceback" not in err
