"""``stacklab simulate``: write a simulated dataset from the command line."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .config import SimulationConfig
from .dataset import simulate_dataset

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("--out", required=True, help="folder to write the dataset into")
    parser.add_argument("--bands", default="g,r,i", help="comma-separated filters (default g,r,i)")
    parser.add_argument("--visits", type=int, default=6, help="visits per band (default 6)")
    parser.add_argument("--size", type=int, default=2048, help="detector size in pixels")
    parser.add_argument("--detectors", type=int, default=1, help="detectors per visit (1, 4, 9)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument(
        "--artifacts",
        action="store_true",
        help="add cosmic rays, satellite trails, bad columns, a variable star and a transient",
    )
    parser.add_argument(
        "--brighter-fatter",
        type=float,
        default=0.0,
        metavar="STRENGTH",
        help="brighter-fatter strength: fractional size growth per 1e5 e- peak (e.g. 0.02)",
    )


def run(args: argparse.Namespace) -> int:
    """Simulate the dataset described by ``args`` and print where it is."""
    extra: dict[str, Any] = {}
    if args.artifacts:
        extra = {
            "cosmic_rays_per_megapixel": 20.0,
            "satellite_trail_probability": 0.3,
            "n_bad_columns": 2,
            "variable_star": True,
            "transient": True,
        }
    config = SimulationConfig(
        seed=args.seed,
        bands=tuple(args.bands.split(",")),
        visits_per_band=args.visits,
        size=args.size,
        n_detectors=args.detectors,
        brighter_fatter=args.brighter_fatter,
        **extra,
    )
    start = time.perf_counter()
    manifest = simulate_dataset(config, args.out, workers=args.workers)
    seconds = time.perf_counter() - start
    print(
        f"simulated {len(manifest.exposures)} exposures ({config.size}x{config.size}, "
        f"bands {','.join(config.bands)}) in {seconds:.1f} s"
    )
    print(f"manifest: {manifest.root / 'manifest.json'}")
    return 0
