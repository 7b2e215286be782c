"""``stacklab demo``: the main job on a small simulated dataset, end to end.

It simulates a small multi-band, multi-epoch dataset, summarizes it in a table,
runs the curated notebooks on it as a batch pipeline (``notebooks/demo_pipeline.yaml``:
single-frame processing of every exposure, one coadd per band, then one multi-band
catalog), writes the run's HTML report and prints where everything is. Rerunning
resumes: the dataset is simulated again only if missing, and up-to-date tasks are not
executed again.
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from .errors import ToolkitError
from .io import atomic_path, read_exposure
from .simulate import Manifest, SimulationConfig, read_manifest, simulate_dataset

__all__ = ["DEMO_CONFIG", "add_arguments", "find_demo_pipeline", "run", "summarize_dataset"]

log = logging.getLogger(__name__)

#: The demo dataset: three bands, three epochs, one 1024² detector, every artifact.
DEMO_CONFIG = SimulationConfig(
    seed=2026,
    bands=("g", "r", "i"),
    visits_per_band=3,
    size=1024,
    cosmic_rays_per_megapixel=20.0,
    satellite_trail_probability=0.3,
    n_bad_columns=2,
    variable_star=True,
    transient=True,
)


def summarize_dataset(manifest: Manifest) -> Table:
    """Return one row per exposure: ids, conditions and pixel statistics.

    Columns: ``visit``, ``band``, ``detector``, ``seeing_arcsec``, ``zero_point``,
    ``sky_adu``, ``noise_adu`` (median sqrt of the variance plane), ``n_objects``
    (truth objects on the detector), ``sat_pixels``, ``bad_pixels``, ``path``.
    """
    rows = []
    for entry in manifest.exposures:
        exposure = read_exposure(manifest.root / entry["path"])
        truth = Table.read(manifest.root / entry["truth_path"])
        rows.append(
            {
                "visit": entry["visit"],
                "band": entry["band"],
                "detector": entry["detector"],
                "seeing_arcsec": round(entry["seeing_arcsec"], 3),
                "zero_point": round(entry["zero_point"], 3),
                "sky_adu": round(entry["sky_adu"], 1),
                "noise_adu": round(float(np.sqrt(np.median(exposure.variance))), 2),
                "n_objects": int(np.sum(truth["in_image"])),
                "sat_pixels": int(exposure.plane("SAT").sum()),
                "bad_pixels": int(exposure.plane("BAD").sum()),
                "path": entry["path"],
            }
        )
    return Table(rows=rows) if rows else Table()


def _write_html(table: Table, path: Path, title: str) -> None:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.colnames)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(row[name]))}</td>" for name in table.colnames)
        + "</tr>"
        for row in table
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        f"</style></head><body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>"
        "</body></html>"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page)


def _existing_demo_dataset(data: Path) -> Manifest | None:
    """Return the demo dataset already in ``data`` if it was made with `DEMO_CONFIG`."""
    try:
        manifest = read_manifest(data)
    except (FileNotFoundError, ValueError):
        return None
    if manifest.config != DEMO_CONFIG:
        return None
    log.info("reusing the demo dataset in %s", data)
    return manifest


def find_demo_pipeline(explicit: str | None = None) -> Path:
    """Return the path of the demo pipeline file.

    Looks at ``explicit`` if given, else ``notebooks/demo_pipeline.yaml`` in the current
    folder, else next to the source tree of an editable install.

    Raises
    ------
    ToolkitError
        If no pipeline file is found.
    """
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        candidates = [
            Path.cwd() / "notebooks" / "demo_pipeline.yaml",
            Path(__file__).resolve().parents[1] / "notebooks" / "demo_pipeline.yaml",
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    msg = (
        f"demo pipeline file not found (tried {tried}); run `stacklab demo` from a checkout "
        "of stacklab or pass --pipeline PATH/TO/demo_pipeline.yaml"
    )
    raise ToolkitError(msg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument(
        "--pipeline",
        default=None,
        help="pipeline file (default notebooks/demo_pipeline.yaml of the checkout)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where its outputs are."""
    # Imported here so that `stacklab simulate` and friends do not pay for Dask.
    from .batch import run_pipeline, write_report
    from .batch.registry import Registry

    pipeline = find_demo_pipeline(args.pipeline)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    manifest = _existing_demo_dataset(data)
    if manifest is None:
        manifest = simulate_dataset(DEMO_CONFIG, data, workers=args.workers)
    summary = summarize_dataset(manifest)
    with atomic_path(out / "summary.csv") as tmp:
        summary.write(tmp, format="ascii.csv", overwrite=True)
    _write_html(summary, out / "summary.html", "stacklab demo dataset")

    rundir = out / "run"
    result = run_pipeline(
        pipeline,
        rundir,
        workers=args.workers,
        variables={"dataset": str(data)},
        progress=not args.no_progress,
    )
    report = write_report(rundir)
    with Registry(rundir, readonly=True) as registry:
        datasets = registry.datasets()
    by_type: dict[str, list[str]] = {}
    for dataset in datasets:
        by_type.setdefault(dataset["dataset_type"], []).append(str(dataset["path"]))

    print(f"dataset:  {manifest.root / 'manifest.json'} ({len(manifest.exposures)} exposures)")
    print(f"summary:  {out / 'summary.csv'}")
    print(
        f"run:      {rundir} ({len(result.executed)} tasks executed, {len(result.cached)} "
        f"up to date, {len(result.failed)} failed, {len(result.skipped)} skipped)"
    )
    print(f"notebooks: {rundir} (executed notebooks in each task folder)")
    for dataset_type in ("single_frame.catalog", "coadd.coadd", "multiband.catalog"):
        paths = sorted(by_type.get(dataset_type, []))
        if paths:
            print(f"{dataset_type}: {len(paths)} files, e.g. {paths[0]}")
    print(f"report:   {report}")
    if result.failed or result.skipped or result.interrupted:
        print("some tasks did not succeed; see the report and `stacklab status`", flush=True)
        return 130 if result.interrupted else 1
    return 0
