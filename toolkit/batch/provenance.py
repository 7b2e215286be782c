"""Provenance: what ran, where, with which software and which notebook commit."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["PROVENANCE_PACKAGES", "environment", "git_state"]

#: Packages whose versions are recorded with every run and task.
PROVENANCE_PACKAGES = (
    "stacklab",
    "numpy",
    "scipy",
    "astropy",
    "galsim",
    "sep",
    "papermill",
    "nbclient",
    "nbformat",
    "ipykernel",
    "jupyter_client",
    "dask",
    "distributed",
)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the git commit of ``folder`` and whether its files differ from it.

    Returns ``{"commit": None, "dirty": None}`` outside a git checkout or without git.
    Only ``folder`` itself is checked for changes (the notebooks), not the whole
    repository.
    """
    path = Path(folder)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changes)}


def environment() -> dict[str, Any]:
    """Describe the current process: Python, platform, host and package versions."""
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {name: _version(name) for name in PROVENANCE_PACKAGES},
    }
