"""The curated notebook and the demo pipeline, on a small simulated dataset."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import papermill
import pytest
from astropy.table import Table

from stacklab.toolkit import read_exposure
from stacklab.toolkit.batch import Registry, load_pipeline, read_parameters, run_pipeline
from stacklab.toolkit.simulate import SimulationConfig, simulate_dataset

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Two visits in g and r, big enough for a PSF model (the demo pipeline's input)."""
    config = SimulationConfig(seed=4, size=512, bands=("g", "r"), visits_per_band=2)
    return simulate_dataset(config, tmp_path_factory.mktemp("small-dataset")).root


def test_curated_notebook_follows_the_house_rules():
    nb = nbformat.read(NOTEBOOKS / "00_inspect_visit.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"]
    assert set(read_parameters(nb)) == {
        "visit_path",
        "stretch_percentiles",
        "summary_path",
        "figure_path",
    }
    for cell in code:
        tree = ast.parse(cell.source)
        assert not any(
            isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda) for n in ast.walk(tree)
        )


def test_curated_notebook_runs_with_defaults(tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "00_inspect_visit.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["shape"] == [256, 256] and summary["band"] == "r"
    assert (tmp_path / "image.png").stat().st_size > 1000


def test_single_frame_notebook_runs_with_defaults(tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_single_frame.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
        parameters={"output_dir": "."},
    )
    catalog = Table.read(tmp_path / "src.fits")
    assert len(catalog) > 100
    assert read_exposure(tmp_path / "calexp.fits").psf is not None
    assert (tmp_path / "frame.png").stat().st_size > 1000


def test_multiband_notebook_runs_with_defaults(tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_multiband.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    summary = json.loads((tmp_path / "multiband_summary.json").read_text())
    assert summary["bands"] == ["g", "r", "i"] and summary["n_sources"] > 40
    assert "colour_r_i_psf" in Table.read(tmp_path / "multiband.fits").colnames
    assert (tmp_path / "colours.png").stat().st_size > 1000


def test_demo_pipeline_on_simulated_dataset(tmp_path, small_dataset, dask_client):
    """The real demo pipeline: single-frame processing of every exposure, then a coadd."""
    pipeline = load_pipeline(
        NOTEBOOKS / "demo_pipeline.yaml", variables={"dataset": str(small_dataset)}
    )
    assert [s.name for s in pipeline.steps] == ["single_frame", "coadd", "multiband"]
    assert pipeline.step("coadd").gather.step == "single_frame"
    summary = run_pipeline(pipeline, tmp_path / "run", client=dask_client, progress=False)
    assert summary.exit_code == 0, summary
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    # one task per exposure, a coadd per band and one multi-band catalog
    assert len(summary.executed) == len(manifest["exposures"]) + 2 + 1
    with Registry(tmp_path / "run", readonly=True) as registry:
        for entry in manifest["exposures"]:
            data_id = {k: entry[k] for k in ("visit", "band", "detector")}
            catalog = Table.read(registry.find_dataset("single_frame.catalog", **data_id))
            assert len(catalog) > 20 and "flux_psf" in catalog.colnames
            calexp = read_exposure(registry.find_dataset("single_frame.calexp", **data_id))
            assert calexp.psf is not None and calexp.band == entry["band"]
            assert registry.find_dataset("single_frame.figure", **data_id).suffix == ".png"
        coadd = read_exposure(registry.find_dataset("coadd.coadd", band="r"))
        result = json.loads(registry.find_dataset("coadd.summary", band="r").read_text())
        multiband = Table.read(registry.find_dataset("multiband.catalog"))
    assert result["n_inputs"] == 2
    assert "colour_g_r_psf" in multiband.colnames and multiband["is_primary"].sum() > 20
    assert coadd.band == "r" and coadd.psf is not None  # the sampled CoaddPsf
    # A rerun resumes: nothing is executed again.
    again = run_pipeline(pipeline, tmp_path / "run", client=dask_client, progress=False)
    assert again.executed == () and len(again.cached) == len(summary.executed)
