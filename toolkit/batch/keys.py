"""Content keys: what decides whether a task must run again.

A task key is the sha256 of a canonical JSON document holding the notebook's code cells
(markdown and outputs excluded, trailing whitespace normalized), the parameter values, the
checksums of its inputs (not their paths or modification times) and the versions that can
change results. Equal keys and intact outputs mean the task is up to date.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["canonical_json", "file_sha256", "key_versions", "notebook_code_sha256", "task_key"]

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """Serialize ``value`` to JSON with sorted keys and no whitespace (stable across runs)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def notebook_code_sha256(path: str | os.PathLike[str]) -> str:
    """Hash the code cells of a notebook only, so markdown edits and outputs do not count.

    Each cell's source has trailing whitespace stripped on every line and leading/trailing
    blank lines removed; empty code cells are ignored.
    """
    nb = nbformat.read(Path(path), as_version=4)
    sources = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [line.rstrip() for line in cell.source.splitlines()]
        text = "\n".join(lines).strip("\n")
        if text:
            sources.append(text)
    return hashlib.sha256(canonical_json(sources).encode()).hexdigest()


def sources_sha256(folders: list[Path]) -> str:
    """Hash the ``.py`` files under ``folders`` (relative paths and contents, sorted)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _stacklab_folders() -> list[Path]:
    folders: list[Path] = []
    for package in ("stacklab.toolkit", "stacklab.widgets"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            folders.extend(Path(p) for p in spec.submodule_search_locations)
    return folders


def key_versions() -> dict[str, str]:
    """Versions that enter every task key.

    stacklab's version, a hash of its source files (an editable install changes code
    without changing its version, and results computed with the old code must not pass
    for new ones; about 5 ms) and the Python minor version.
    """
    try:
        stacklab = version("stacklab")
    except PackageNotFoundError:  # running from a source tree that is not installed
        stacklab = "unknown"
    return {
        "stacklab": stacklab,
        "stacklab_sources": sources_sha256(_stacklab_folders()),
        "python": ".".join(platform.python_version_tuple()[:2]),
    }


def task_key(
    *,
    step: str,
    code_sha256: str,
    parameters: dict[str, Any],
    inputs: dict[str, Any],
    outputs: dict[str, str],
    versions: dict[str, str],
) -> str:
    """Return the hex sha256 identifying one task's work.

    Parameters
    ----------
    step : str
        Step name.
    code_sha256 : str
        From `notebook_code_sha256`.
    parameters : dict
        Parameter values, excluding those that only carry input paths.
    inputs : dict
        Input checksums by parameter name (a str, or a list of ``[data_id, sha256]``
        pairs for gathered inputs).
    outputs : dict of str to str
        Declared outputs (name -> file name).
    versions : dict of str to str
        From `key_versions`.

    Returns
    -------
    str
    """
    document = {
        "step": step,
        "code": code_sha256,
        "parameters": parameters,
        "inputs": inputs,
        "outputs": outputs,
        "versions": versions,
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()
