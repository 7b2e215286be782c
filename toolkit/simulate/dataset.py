"""Write a whole simulated dataset to disk: exposures, truth tables and a JSON manifest."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..io import atomic_path, write_exposure
from .config import SimulationConfig
from .sky import make_sky
from .visit import SimulatedVisit, simulate_visit

__all__ = ["Manifest", "psf_truth_table", "read_manifest", "simulate_dataset"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What a simulated dataset folder holds.

    Attributes
    ----------
    root : pathlib.Path
        The dataset folder; every path below is relative to it.
    config : SimulationConfig
        The configuration that made the dataset.
    truth_objects : str
        Path of the sky truth catalog (FITS).
    exposures : list of dict
        One entry per visit/band/detector: ``visit``, ``band``, ``detector``,
        ``mjd``, ``path``, ``truth_path``, ``psf_truth_path``, ``artifact_path``,
        ``seeing_arcsec``, ``zero_point``, ``sky_adu``, ``seconds``.
    """

    root: Path
    config: SimulationConfig
    truth_objects: str
    exposures: list[dict[str, Any]]

    def paths(self, *, band: str | None = None) -> list[Path]:
        """Absolute exposure paths, optionally of one band only."""
        return [
            self.root / entry["path"]
            for entry in self.exposures
            if band is None or entry["band"] == band
        ]


def psf_truth_table(sim: SimulatedVisit, n_grid: int = 5) -> Table:
    """Tabulate the true PSF of a visit on an ``n_grid`` x ``n_grid`` grid of positions.

    Columns: ``x``, ``y`` (px), ``fwhm_px`` (Kolmogorov FWHM before pixelization),
    ``g1``, ``g2`` (applied shear), and the adaptive moments of the pixelized PSF
    ``T`` (px²), ``e1``, ``e2``.
    """
    psf = sim.exposure.psf
    ny, nx = sim.exposure.shape
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, n_grid), np.linspace(0, ny - 1, n_grid))
    x, y = xs.ravel(), ys.ravel()
    fwhm, g1, g2 = psf.parameters_at(x, y)  # type: ignore[union-attr]
    moments = [psf.moments(float(a), float(b)) for a, b in zip(x, y, strict=True)]  # type: ignore[union-attr]
    table = Table(
        {
            "x": x,
            "y": y,
            "fwhm_px": fwhm,
            "g1": g1,
            "g2": g2,
            "T": [m.T for m in moments],
            "e1": [m.e1 for m in moments],
            "e2": [m.e2 for m in moments],
        }
    )
    table.meta["VISIT"] = sim.conditions.visit
    table.meta["BAND"] = sim.conditions.band
    table.meta["SEEING"] = sim.conditions.seeing_fwhm_arcsec
    return table


def _write_table(table: Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.write(tmp, format="fits", overwrite=True)


def _render(task: tuple[Table, SimulationConfig, int, int, str]) -> dict[str, Any]:
    sky, config, visit, detector, root_name = task
    root = Path(root_name)
    start = time.perf_counter()
    sim = simulate_visit(sky, config, visit=visit, detector=detector)
    seconds = time.perf_counter() - start
    band = sim.conditions.band
    stem = f"visit{visit:04d}-{band}-det{detector:02d}"
    entry: dict[str, Any] = {
        "visit": visit,
        "band": band,
        "detector": detector,
        "mjd": sim.conditions.mjd,
        "path": f"exposures/{stem}.fits",
        "truth_path": f"truth/{stem}-objects.fits",
        "psf_truth_path": f"truth/{stem}-psf.fits",
        "artifact_path": f"truth/{stem}-artifacts.fits",
        "seeing_arcsec": sim.conditions.seeing_fwhm_arcsec,
        "zero_point": sim.conditions.zero_point,
        "sky_adu": sim.conditions.sky_adu,
        "seconds": round(seconds, 3),
    }
    write_exposure(sim.exposure, root / entry["path"])
    _write_table(sim.truth, root / entry["truth_path"])
    _write_table(psf_truth_table(sim), root / entry["psf_truth_path"])
    header = fits.Header()
    sim.artifact_planes.to_header(header)
    with atomic_path(root / entry["artifact_path"]) as tmp:
        fits.HDUList(
            [fits.PrimaryHDU(), fits.ImageHDU(sim.artifact_mask, header=header, name="ARTIFACTS")]
        ).writeto(tmp)
    return entry


def simulate_dataset(
    config: SimulationConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 1,
    visits: Iterable[int] | None = None,
) -> Manifest:
    """Simulate every visit and detector of ``config`` into ``out_dir``.

    Parameters
    ----------
    config : SimulationConfig
        What to simulate.
    out_dir : str or path-like
        Folder to write into (created if missing). Holds ``exposures/``,
        ``truth/`` and ``manifest.json``; the manifest is written last, so a
        folder without one is incomplete.
    workers : int
        Processes rendering visits in parallel.
    visits : iterable of int, optional
        Only these visit numbers (default: all ``config.n_visits``).

    Returns
    -------
    Manifest

    Examples
    --------
    >>> config = SimulationConfig(size=128, visits_per_band=1, bands=("r",))
    >>> manifest = simulate_dataset(config, "sim-out")  # doctest: +SKIP
    """
    if workers < 1:
        msg = f"workers must be >= 1, got {workers}"
        raise ValueError(msg)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        msg = f"out_dir {root} exists and is not a folder; choose another path"
        raise ValueError(msg)
    for sub in ("exposures", "truth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sky = make_sky(config)
    _write_table(sky, root / "truth" / "objects.fits")
    chosen = list(range(config.n_visits)) if visits is None else sorted(set(visits))
    bad = [v for v in chosen if not 0 <= v < config.n_visits]
    if bad:
        msg = f"visits {bad} are outside 0..{config.n_visits - 1} of this configuration"
        raise ValueError(msg)
    tasks = [
        (sky, config, visit, detector, str(root))
        for visit in chosen
        for detector in range(config.n_detectors)
    ]
    if workers == 1 or len(tasks) == 1:
        entries = [_render(task) for task in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            entries = list(pool.map(_render, tasks))
    manifest = {
        "format_version": _FORMAT_VERSION,
        "created_by": f"stacklab {version('stacklab')}",
        "galsim_version": version("galsim"),
        "config": config.to_dict(),
        "truth_objects": "truth/objects.fits",
        "exposures": entries,
    }
    with atomic_path(root / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    log.info("wrote %d exposures to %s", len(entries), root)
    return Manifest(root, config, "truth/objects.fits", entries)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a dataset's manifest (``path`` is the folder or its ``manifest.json``).

    Raises
    ------
    FileNotFoundError
        If there is no manifest (the dataset is missing or was not finished).
    ValueError
        If the manifest is not valid JSON or lacks required keys.
    """
    source = Path(path)
    if source.is_dir():
        source = source / MANIFEST_NAME
    if not source.is_file():
        msg = f"no dataset manifest at {source}; run `stacklab simulate --out DIR` first"
        raise FileNotFoundError(msg)
    try:
        data = json.loads(source.read_text())
        return Manifest(
            source.parent,
            SimulationConfig.from_dict(data["config"]),
            data["truth_objects"],
            list(data["exposures"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        msg = f"{source} is not a stacklab dataset manifest ({type(err).__name__}: {err})"
        raise ValueError(msg) from err
