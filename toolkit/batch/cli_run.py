"""``stacklab run PIPELINE --out RUNDIR``: plan and execute a pipeline, resuming if possible."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from .rundir import RundirBusyError
from .runner import run_pipeline

__all__ = ["add_arguments", "parse_assignments", "run"]


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """Turn ``NAME=VALUE`` strings into a dict.

    Values naming an existing file or folder are made absolute (so they do not depend on
    the pipeline file's folder); ``true``/``false``, integers and floats are converted.
    """
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            msg = f"--set {item!r} must look like NAME=VALUE, e.g. --set dataset=demo-output/data"
            raise ValueError(msg)
        value: Any = text
        if text.lower() in {"true", "false"}:
            value = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        if isinstance(value, str) and value and Path(value).exists():
            value = str(Path(value).resolve())
        values[name] = value
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options to ``parser``."""
    parser.add_argument("pipeline", help="pipeline file (.yaml or .toml)")
    parser.add_argument("--out", required=True, help="run folder (rerunning into it resumes)")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address tcp://HOST:PORT or scheduler file (default: a local cluster)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: cores)"
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="run gather steps on the outputs that exist when some upstream tasks failed",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="wall-clock limit per task in seconds"
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a pipeline variable (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the pipeline; exit 0 if every task succeeded, 1 if some failed, 130 if interrupted."""
    if args.workers is not None and args.workers < 1:
        msg = f"--workers must be >= 1, got {args.workers}"
        raise ValueError(msg)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Dask logs every worker start and stop at INFO; keep the terminal for our output.
        import distributed  # noqa: F401 - creates the loggers configured below

        for name in list(logging.root.manager.loggerDict):
            if name == "distributed" or name.startswith("distributed."):
                logging.getLogger(name).setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = run_pipeline(
            args.pipeline,
            args.out,
            scheduler=args.scheduler,
            workers=args.workers,
            allow_partial=args.allow_partial,
            timeout_s=args.timeout,
            variables=parse_assignments(args.assignments),
            progress=not args.no_progress,
        )
    except (RundirBusyError, OSError) as err:
        print(f"stacklab run: error: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"run {summary.run_id}: {len(summary.executed)} executed, {len(summary.cached)} up to "
        f"date, {len(summary.failed)} failed, {len(summary.skipped)} skipped, "
        f"{len(summary.cancelled)} cancelled -> {summary.rundir}"
    )
    if summary.interrupted:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
    return summary.exit_code
