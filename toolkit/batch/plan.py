"""Expand a pipeline into tasks, validating every parameter before anything runs."""

from __future__ import annotations

import itertools
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .keys import file_sha256, key_versions, notebook_code_sha256, task_key
from .parameters import NotebookParameter, read_parameters, validate_parameters
from .pipeline import GatherSpec, Pipeline, StepSpec

__all__ = ["Plan", "Task", "plan_pipeline"]

#: Manifest fields that form an exposure's data id, in this order.
MANIFEST_DIMENSIONS = ("visit", "band", "detector")

_WHOLE_FIELD = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True, kw_only=True)
class Task:
    """One notebook execution of a pipeline.

    Attributes
    ----------
    task_id : str
        ``step/label``, unique in the pipeline.
    step : str
        Step name.
    label : str
        Folder-safe data id such as ``visit=1,band=r`` (``all`` for a single task).
    data_id : dict
        Dimension values of the task.
    notebook : pathlib.Path
        The notebook to execute.
    parameters : dict
        Validated parameter values (a gather step's list parameter is filled at run time).
    inputs : dict of str to str
        Input files: parameter name -> absolute path.
    input_sha256 : dict of str to str
        Checksums of the input files at planning time: parameter name -> sha256.
    outputs : dict of str to str
        Declared outputs: name -> file name inside the task folder.
    upstream : tuple of str
        Task ids whose outputs a gather task consumes.
    gather : GatherSpec or None
        The gather specification of a gather task.
    timeout_s : float or None
        Wall-clock limit.
    code_sha256 : str
        Hash of the notebook's code cells.
    key : str or None
        Content key; ``None`` for gather tasks until their upstream tasks finish.
    """

    task_id: str
    step: str
    label: str
    data_id: dict[str, Any]
    notebook: Path
    parameters: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    input_sha256: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    gather: GatherSpec | None = None
    timeout_s: float | None = None
    code_sha256: str = ""
    key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """All tasks of a pipeline, in an order where upstream tasks come first."""

    #: The pipeline.
    pipeline: Pipeline
    #: Tasks in dependency order.
    tasks: tuple[Task, ...]
    #: Versions entering each key.
    versions: dict[str, str]

    def by_id(self) -> dict[str, Task]:
        """Tasks keyed by task id."""
        return {task.task_id: task for task in self.tasks}


def _label(data_id: dict[str, Any]) -> str:
    if not data_id:
        return "all"
    return _UNSAFE.sub("_", ",".join(f"{k}={v}" for k, v in data_id.items()))


def _render(value: Any, context: dict[str, Any], where: str) -> Any:
    if isinstance(value, list):
        return [_render(item, context, where) for item in value]
    if isinstance(value, dict):
        return {k: _render(v, context, where) for k, v in value.items()}
    if not isinstance(value, str) or "{" not in value:
        return value
    whole = _WHOLE_FIELD.match(value)
    try:
        if whole:
            return context[whole.group(1)]
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f}
        missing = sorted(n for n in names if n.split(".")[0].split("[")[0] not in context)
        if missing:
            raise KeyError(missing[0])
        return value.format(**context)
    except KeyError as err:
        msg = (
            f"{where}: template {value!r} uses {{{err.args[0]}}} which is not defined; "
            f"known names: {sorted(context)} (add it under 'vars' or to the grid)"
        )
        raise ValueError(msg) from None


def _manifest_rows(step: StepSpec, context: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    assert step.manifest is not None
    path = Path(str(_render(step.manifest, context, f"step {step.name!r} manifest")))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        msg = (
            f"step {step.name!r}: manifest {path} does not exist; simulate the dataset first "
            "(stacklab simulate) or set the dataset folder with --set"
        )
        raise FileNotFoundError(msg)
    document = json.loads(path.read_text())
    entries = document.get("exposures") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        msg = f"step {step.name!r}: manifest {path} has no 'exposures' list"
        raise ValueError(msg)
    rows = []
    for entry in entries:
        if any(entry.get(k) not in accepted for k, accepted in step.where.items()):
            continue
        row = dict(entry)
        for key, value in entry.items():
            if (key == "path" or key.endswith("_path")) and isinstance(value, str):
                row[key] = str((path.parent / value).resolve())
        rows.append(row)
    if not rows:
        msg = f"step {step.name!r}: no manifest entries of {path} match where={step.where}"
        raise ValueError(msg)
    return rows


def _expand(step: StepSpec, pipeline: Pipeline) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Return (data_id, template context) pairs of a map or single step."""
    base = dict(pipeline.variables)
    if step.grid is not None:
        dims = list(step.grid)
        return [
            (dict(zip(dims, combo, strict=True)), {**base, **dict(zip(dims, combo, strict=True))})
            for combo in itertools.product(*step.grid.values())
        ]
    if step.manifest is not None:
        out = []
        for row in _manifest_rows(step, base, pipeline.root):
            data_id = {k: row[k] for k in MANIFEST_DIMENSIONS if k in row}
            out.append((data_id, {**base, **row}))
        return out
    return [({}, base)]


def _build_task(
    step: StepSpec,
    data_id: dict[str, Any],
    context: dict[str, Any],
    declared: dict[str, NotebookParameter],
    code: str,
    pipeline: Pipeline,
    versions: dict[str, str],
    upstream: tuple[str, ...] = (),
) -> Task:
    label = _label(data_id)
    where = f"step {step.name!r} task {label}"
    values = {name: value for name, value in data_id.items() if name in declared}
    values.update(_render(step.parameters, context, where))
    if step.gather is not None:
        if step.gather.parameter not in declared:
            msg = (
                f"step {step.name!r}: gather parameter {step.gather.parameter!r} is not declared "
                f"in {step.notebook.name}; add '{step.gather.parameter} = []' to its "
                "parameters cell"
            )
            raise ValueError(msg)
        values[step.gather.parameter] = []
    values = validate_parameters(values, declared, notebook=f"{step.notebook.name} ({where})")
    inputs: dict[str, str] = {}
    for name in step.inputs:
        if name not in values:
            msg = f"{where}: input {name!r} is not one of its parameters {sorted(values)}"
            raise ValueError(msg)
        if not isinstance(values[name], str):
            msg = f"{where}: input parameter {name!r} must be a file path, got {values[name]!r}"
            raise TypeError(msg)
        path = Path(values[name])
        path = path if path.is_absolute() else (pipeline.root / path).resolve()
        if not path.is_file():
            msg = f"{where}: input {name}={values[name]!r} is not an existing file ({path})"
            raise FileNotFoundError(msg)
        values[name] = str(path)
        inputs[name] = str(path)
    checksums = {name: file_sha256(path) for name, path in inputs.items()}
    key = None
    if step.gather is None:
        key = task_key(
            step=step.name,
            code_sha256=code,
            parameters={k: v for k, v in values.items() if k not in inputs},
            inputs=checksums,
            outputs=step.outputs,
            versions=versions,
        )
    return Task(
        task_id=f"{step.name}/{label}",
        step=step.name,
        label=label,
        data_id=data_id,
        notebook=step.notebook,
        parameters=values,
        inputs=inputs,
        input_sha256=checksums,
        outputs=dict(step.outputs),
        upstream=upstream,
        gather=step.gather,
        timeout_s=step.timeout_s,
        code_sha256=code,
        key=key,
    )


def plan_pipeline(pipeline: Pipeline) -> Plan:
    """Expand every step into tasks and validate their parameters.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline (see `load_pipeline`).

    Returns
    -------
    Plan
        Map tasks carry their key already; gather tasks get theirs once their
        upstream tasks have finished.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        For a notebook without a ``parameters`` cell, an unknown or mistyped parameter,
        a missing input or manifest, or a template naming an undefined variable.
    """
    versions = key_versions()
    tasks: list[Task] = []
    by_step: dict[str, list[Task]] = {}
    for step in pipeline.steps:
        declared = read_parameters(step.notebook)
        code = notebook_code_sha256(step.notebook)
        step_tasks: list[Task] = []
        if step.gather is not None:
            upstream_tasks = by_step[step.gather.step]
            groups: dict[tuple[Any, ...], list[str]] = {}
            for up in upstream_tasks:
                missing = [d for d in step.gather.group_by if d not in up.data_id]
                if missing:
                    msg = (
                        f"step {step.name!r}: group_by {missing} is not a dimension of step "
                        f"{up.step!r} (its data id has {sorted(up.data_id)})"
                    )
                    raise ValueError(msg)
                group = tuple(up.data_id[d] for d in step.gather.group_by)
                groups.setdefault(group, []).append(up.task_id)
            for group, members in groups.items():
                data_id = dict(zip(step.gather.group_by, group, strict=True))
                context = {**pipeline.variables, **data_id}
                step_tasks.append(
                    _build_task(
                        step, data_id, context, declared, code, pipeline, versions, tuple(members)
                    )
                )
        else:
            for data_id, context in _expand(step, pipeline):
                step_tasks.append(
                    _build_task(step, data_id, context, declared, code, pipeline, versions)
                )
        seen: set[str] = set()
        for task in step_tasks:
            if task.task_id in seen:
                msg = (
                    f"step {step.name!r} has two tasks labelled {task.label!r}; "
                    "make data ids unique"
                )
                raise ValueError(msg)
            seen.add(task.task_id)
        by_step[step.name] = step_tasks
        tasks.extend(step_tasks)
    return Plan(pipeline=pipeline, tasks=tuple(tasks), versions=versions)
