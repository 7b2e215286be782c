"""The viewer demo notebook follows the house rules and runs headless with its defaults."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "viewer_demo.ipynb"


def test_demo_notebook_follows_the_house_rules():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"]
    parameters = ast.parse(code[0].source)
    names = set()
    for node in parameters.body:
        assert isinstance(node, ast.Assign), "the parameters cell holds assignments only"
        ast.literal_eval(node.value)  # literals only
        names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    later = "\n".join(c.source for c in code[1:])
    for name in names:  # every parameter is used
        assert name in later, f"parameter {name} is never used"
    for cell in code:
        tree = ast.parse(cell.source)
        assert not any(
            isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda) for n in ast.walk(tree)
        )


@pytest.mark.slow
def test_demo_notebook_runs_and_keeps_a_static_image(tmp_path):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path)
    )
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    executed = nbformat.read(out, as_version=4)
    pngs = [
        output["data"]["image/png"]
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG")
    assert any(
        "100 regions drawn" in str(o.get("text", ""))
        for c in executed.cells
        for o in c.get("outputs", [])
    )
