import math

import nbformat
import pytest

from stacklab.toolkit.batch import read_parameters, validate_parameters


def _nb(source, tagged=True):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    if tagged:
        cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    return nb


def test_types_come_from_defaults_and_annotations():
    declared = read_parameters(
        _nb(
            "visit = 3\nband = 'r'\nscale = 1.5\nflag = False\nitems = [1, 2]\n"
            "maybe = None\ncount: int = 0\nthreshold: float = 5"
        )
    )
    assert {n: p.kind for n, p in declared.items()} == {
        "visit": int,
        "band": str,
        "scale": float,
        "flag": bool,
        "items": list,
        "maybe": None,
        "count": int,
        "threshold": float,
    }
    assert declared["items"].default == [1, 2]


def test_missing_parameters_cell_is_refused(tmp_path):
    path = tmp_path / "untagged.ipynb"
    nbformat.write(_nb("x = 1", tagged=False), path)
    with pytest.raises(ValueError, match=r"no code cell tagged 'parameters'"):
        read_parameters(path)


def test_non_literal_parameters_are_refused():
    with pytest.raises(ValueError, match=r"is not 'name = literal'"):
        read_parameters(_nb("import numpy as np\n"))
    with pytest.raises(ValueError, match=r"non-literal"):
        read_parameters(_nb("x = len('abc')"))


def test_validation_rejects_unknown_names_and_wrong_types():
    declared = read_parameters(_nb("visit = 0\nscale = 1.0\nband = 'g'\nextra = None"))
    assert validate_parameters({"visit": 3, "scale": 2, "extra": [1]}, declared) == {
        "visit": 3,
        "scale": 2.0,
        "extra": [1],
    }
    with pytest.raises(ValueError, match=r"no parameter.*'visti'.*declares 'visit'"):
        validate_parameters({"visti": 3}, declared)
    with pytest.raises(TypeError, match=r"'visit'.*must be int.*got str '3'"):
        validate_parameters({"visit": "3"}, declared)
    with pytest.raises(TypeError, match=r"'visit'.*must be int.*got bool"):
        validate_parameters({"visit": True}, declared)
    with pytest.raises(TypeError, match=r"'band' .*must be str.*got list"):
        validate_parameters({"band": ["g", "r"]}, declared)


def test_validation_rejects_nan_and_objects():
    declared = read_parameters(_nb("scale = 1.0\nextra = None"))
    with pytest.raises(ValueError, match=r"non-finite"):
        validate_parameters({"scale": math.nan}, declared)
    with pytest.raises(TypeError, match=r"must be str, int, float"):
        validate_parameters({"extra": object()}, declared)
