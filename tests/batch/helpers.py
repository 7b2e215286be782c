"""Helpers of the batch tests: tiny notebooks written on the fly."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import nbformat


def write_notebook(
    path: Path, parameters: str, *cells: str, markdown: str = "# test notebook"
) -> Path:
    """Write a notebook: a markdown cell, a ``parameters`` cell, then code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), params]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def task_spec(folder: Path, notebook: Path, x: int, outputs: dict[str, str]) -> dict[str, Any]:
    """The spec of one task (parameter ``x``) for `execute.execute_task`, staged in ``folder``."""
    return {
        "task_id": f"t/x={x}",
        "notebook": str(notebook),
        "parameters": {"x": x},
        "outputs": outputs,
        "staging": str(folder / f"staging-{x}"),
        "timeout_s": 120,
        "cancel_file": str(folder / "cancel"),
        "runner_pid": os.getpid(),
        "runner_host": socket.gethostname(),
    }
