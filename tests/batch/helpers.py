"""Helpers of the batch tests: tiny notebooks written on the fly."""

from __future__ import annotations

from pathlib import Path

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
