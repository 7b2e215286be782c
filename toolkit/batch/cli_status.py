"""``stacklab status RUNDIR``: a table (or JSON) of the tasks of a run folder and their states."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from .registry import Registry
from .rundir import LOCK_NAME

__all__ = ["add_arguments", "run", "runner_active", "status_rows"]


def runner_active(rundir: str | os.PathLike[str]) -> bool:
    """Tell whether a runner holds the run folder's lock right now."""
    path = Path(rundir) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases a lock we just took
    return False


def status_rows(rundir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One dict per task: id, state, duration, attempts, error and executed notebook.

    Tasks recorded as ``running`` while no runner holds the folder are reported as
    ``interrupted``: their runner died before it could record them (a rerun resumes).
    """
    active = runner_active(rundir)
    with Registry(rundir, readonly=True) as registry:
        return [
            {
                "task": t.task_id,
                "state": "interrupted" if t.state == "running" and not active else t.state,
                "duration_s": None if t.duration_s is None else round(t.duration_s, 3),
                "attempts": t.attempts,
                "error": None
                if t.error_class is None
                else f"{t.error_class}: {t.ename}: {t.evalue}",
                "cell_index": t.cell_index,
                "notebook": t.executed_notebook,
                "data_id": t.data_id,
            }
            for t in registry.tasks()
        ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``status`` options to ``parser``."""
    parser.add_argument("rundir", help="run folder written by 'stacklab run'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print the status; exit 0 when every task of the plan succeeded, 1 otherwise.

    Tasks of earlier plans that the latest run no longer has are shown as ``obsolete``
    and do not count.
    """
    rows = status_rows(args.rundir)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        width = max([len("task"), *(len(r["task"]) for r in rows)])
        print(f"{'task':<{width}}  {'state':<11}  {'seconds':>8}  tries  error")
        for r in rows:
            seconds = "" if r["duration_s"] is None else f"{r['duration_s']:.2f}"
            error = (r["error"] or "")[:100].replace("\n", " ")
            print(
                f"{r['task']:<{width}}  {r['state']:<11}  {seconds:>8}  {r['attempts']:>5}  {error}"
            )
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tasks")
    current = [r for r in rows if r["state"] != "obsolete"]
    return 0 if current and all(r["state"] == "succeeded" for r in current) else 1
