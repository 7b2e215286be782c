"""Read a notebook's ``parameters`` cell and check values against it before anything runs.

Papermill only warns about unknown parameter names and injects strings where numbers were
meant. A batch run should fail at plan time instead, naming the parameter, so each
notebook's first code cell tagged ``parameters`` is read as a declaration: every line
``name = literal`` (optionally ``name: type = literal``) declares a parameter whose type is
the annotation, or else the type of the default value.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["NotebookParameter", "read_parameters", "validate_parameters"]

PARAMETERS_TAG = "parameters"

_TYPE_NAMES: dict[str, type] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
}


@dataclass(frozen=True, kw_only=True)
class NotebookParameter:
    """One parameter declared in a notebook's ``parameters`` cell.

    Attributes
    ----------
    name : str
        The variable name.
    default : object
        The literal default value.
    kind : type or None
        The accepted type (``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``);
        ``None`` when the default is ``None`` and no annotation says more, which
        accepts any JSON-like value.
    """

    name: str
    default: Any
    kind: type | None


def _parameters_cell(nb: Any, path: Path) -> Any:
    for cell in nb.cells:
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return cell
    msg = (
        f"notebook {path} has no code cell tagged 'parameters'; tag its first code cell "
        "'parameters' (cell metadata tags) and put the default values of its parameters there"
    )
    raise ValueError(msg)


def read_parameters(notebook: str | os.PathLike[str] | Any) -> dict[str, NotebookParameter]:
    """Return the parameters a notebook declares, in order of appearance.

    Parameters
    ----------
    notebook : str, path-like or nbformat.NotebookNode
        The notebook file, or an already-read notebook.

    Returns
    -------
    dict of str to NotebookParameter

    Raises
    ------
    ValueError
        If the notebook has no cell tagged ``parameters``, or that cell holds anything but
        assignments of literals to plain names.

    Examples
    --------
    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook()
    >>> cell = nbformat.v4.new_code_cell("threshold_sigma = 5.0  # detection threshold")
    >>> cell.metadata["tags"] = ["parameters"]
    >>> nb.cells.append(cell)
    >>> read_parameters(nb)["threshold_sigma"].kind
    <class 'float'>
    """
    if isinstance(notebook, str | os.PathLike):
        path = Path(notebook)
        if not path.is_file():
            msg = f"notebook {path} does not exist; check the 'notebook' entry of the step"
            raise FileNotFoundError(msg)
        nb = nbformat.read(path, as_version=4)
    else:
        path = Path("<notebook>")
        nb = notebook
    cell = _parameters_cell(nb, path)
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as err:
        msg = f"the parameters cell of {path} is not valid Python: {err}"
        raise ValueError(msg) from err
    declared: dict[str, NotebookParameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value, annotation = node.targets[0], node.value, None
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value, annotation = node.target, node.value, node.annotation
        else:
            msg = (
                f"the parameters cell of {path} line {node.lineno} is not 'name = literal'; "
                "keep only literal assignments there and move code to later cells"
            )
            raise ValueError(msg)
        if not isinstance(target, ast.Name):
            msg = f"the parameters cell of {path} line {node.lineno} must assign one plain name"
            raise ValueError(msg)
        try:
            default = ast.literal_eval(value)
        except ValueError as err:
            msg = (
                f"parameter {target.id!r} in {path} has a non-literal default "
                f"{ast.unparse(value)!r}; curated notebooks use literals only"
            )
            raise ValueError(msg) from err
        kind: type | None = None if default is None else type(default)
        if isinstance(default, tuple):
            kind = list
        if annotation is not None:
            name = ast.unparse(annotation).split("|")[0].strip()
            if name in _TYPE_NAMES:
                kind = _TYPE_NAMES[name]
        declared[target.id] = NotebookParameter(name=target.id, default=default, kind=kind)
    return declared


def _check_json_like(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        msg = (
            f"parameter {name!r} is {value!r}; non-finite floats cannot be passed to a "
            "notebook reproducibly, pass None or a finite number"
        )
        raise ValueError(msg)
    if isinstance(value, list | tuple):
        for item in value:
            _check_json_like(name, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"parameter {name!r} has a dict key {key!r}; use string keys"
                raise TypeError(msg)
            _check_json_like(name, item)
    elif value is not None and not isinstance(value, str | int | float | bool):
        msg = (
            f"parameter {name!r} is a {type(value).__name__} ({value!r}); parameters must be "
            "str, int, float, bool, None, or lists/dicts of those"
        )
        raise TypeError(msg)


def validate_parameters(
    values: dict[str, Any], declared: dict[str, NotebookParameter], *, notebook: str = "notebook"
) -> dict[str, Any]:
    """Check ``values`` against the declared parameters and return them normalized.

    Integers are accepted for float parameters (and converted); tuples become lists.

    Parameters
    ----------
    values : dict
        Parameter values to inject.
    declared : dict of str to NotebookParameter
        What the notebook declares (from `read_parameters`).
    notebook : str
        Name of the notebook, for error messages.

    Returns
    -------
    dict
        The values, with ints converted for float parameters.

    Raises
    ------
    ValueError
        For an unknown parameter name or a non-finite float.
    TypeError
        For a value of the wrong type.
    """
    unknown = sorted(set(values) - set(declared))
    if unknown:
        msg = (
            f"{notebook} has no parameter(s) {', '.join(map(repr, unknown))}; it declares "
            f"{', '.join(map(repr, declared)) or 'none'}. Fix the name in the pipeline file "
            "or add the parameter to the notebook's parameters cell"
        )
        raise ValueError(msg)
    normalized: dict[str, Any] = {}
    for name, value in values.items():
        _check_json_like(name, value)
        kind = declared[name].kind
        if isinstance(value, tuple):
            value = list(value)
        if kind is None or value is None:
            normalized[name] = value
            continue
        ok = isinstance(value, kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if kind is int and isinstance(value, bool):
            ok = False
        if not ok:
            msg = (
                f"parameter {name!r} of {notebook} must be {kind.__name__} (the type of its "
                f"default {declared[name].default!r}), got {type(value).__name__} {value!r}; "
                f"write it as a {kind.__name__} literal in the pipeline file"
            )
            raise TypeError(msg)
        normalized[name] = value
    return normalized
