"""Pipeline files: which notebooks run, over which grid, with which parameters.

A pipeline file is YAML (``.yaml``/``.yml``) or TOML (``.toml``)::

    name: demo
    vars:                          # strings usable as {name} in templates
      dataset: ../demo-output/data
    steps:
      inspect:                     # a map step: one task per exposure of a dataset
        notebook: 00_inspect_visit.ipynb
        manifest: "{dataset}/manifest.json"
        where: {band: [g, r]}      # optional filter on manifest entries
        parameters:
          visit_path: "{path}"     # {field} of the manifest entry, or of vars
        inputs: [visit_path]       # parameters that name input files (checksummed)
        outputs: {summary: summary.json, figure: figure.png}
        timeout: 600               # seconds for the whole task (default none)
      grid_example:                # a map step over named dimensions (Cartesian product)
        notebook: other.ipynb
        grid: {visit: [0, 1, 2], band: [g, r]}
      coadd:                       # a gather step: consumes the outputs of a map step
        notebook: coadd.ipynb
        gather:
          step: inspect
          output: summary          # which declared output of 'inspect'
          parameter: summary_paths # receives the list of paths, ordered by data id
          group_by: [band]         # one task per band (default: one task for all)

Relative paths (notebooks, manifests, input parameters) resolve against the folder of
the pipeline file. A string parameter that is exactly ``"{name}"`` receives the value
with its type (an int stays an int); other strings are formatted with `str.format`.
Grid dimensions and manifest data ids (``visit``, ``band``, ``detector``) are passed to
the notebook as parameters when it declares a parameter of that name.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

__all__ = ["GatherSpec", "Pipeline", "StepSpec", "load_pipeline", "parse_pipeline"]

_STEP_KEYS = {
    "notebook",
    "parameters",
    "grid",
    "manifest",
    "where",
    "inputs",
    "outputs",
    "gather",
    "timeout",
}
_GATHER_KEYS = {"step", "output", "parameter", "group_by"}


@dataclass(frozen=True, kw_only=True)
class GatherSpec:
    """How a gather step consumes the outputs of a map step."""

    #: Name of the upstream step whose outputs are gathered.
    step: str
    #: Name of the upstream step's declared output.
    output: str
    #: Notebook parameter receiving the list of output paths (ordered by data id).
    parameter: str
    #: Data-id dimensions to group by: one gather task per group (empty: one task).
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of a pipeline: a notebook and how to fan it out."""

    #: Step name (letters, digits, ``_`` and ``-``).
    name: str
    #: Absolute path of the notebook.
    notebook: Path
    #: Constant or templated parameter values.
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Named dimensions to expand (Cartesian product), or ``None``.
    grid: dict[str, list[Any]] | None = None
    #: A dataset ``manifest.json`` (template allowed) giving one task per exposure, or ``None``.
    manifest: str | None = None
    #: Filter on manifest entries: field -> accepted values.
    where: dict[str, list[Any]] = field(default_factory=dict)
    #: Parameters whose values are input file paths (checksummed for resume).
    inputs: tuple[str, ...] = ()
    #: Declared outputs: name -> file name inside the task folder.
    outputs: dict[str, str] = field(default_factory=dict)
    #: Gather specification for a gather step, or ``None``.
    gather: GatherSpec | None = None
    #: Wall-clock limit for one task in seconds, or ``None`` for none.
    timeout_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A parsed pipeline file."""

    #: Pipeline name.
    name: str
    #: Folder that relative paths resolve against.
    root: Path
    #: Template variables.
    variables: dict[str, Any] = field(default_factory=dict)
    #: Steps in dependency order.
    steps: tuple[StepSpec, ...] = ()
    #: The file it was read from, if any.
    source: Path | None = None

    def step(self, name: str) -> StepSpec:
        """Return the step called ``name``."""
        for step in self.steps:
            if step.name == name:
                return step
        msg = f"pipeline {self.name!r} has no step {name!r}; steps: {[s.name for s in self.steps]}"
        raise ValueError(msg)


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"expected a list of names, got {value!r}")
    return tuple(value)


def _parse_gather(raw: Any, where: str) -> GatherSpec:
    if not isinstance(raw, dict):
        raise _fail(where, f"'gather' must be a mapping with keys {sorted(_GATHER_KEYS)}")
    unknown = set(raw) - _GATHER_KEYS
    if unknown:
        raise _fail(
            where, f"unknown gather keys {sorted(unknown)}; allowed: {sorted(_GATHER_KEYS)}"
        )
    missing = {"step", "output", "parameter"} - set(raw)
    if missing:
        raise _fail(where, f"gather needs {sorted(missing)} (the step, its output and a parameter)")
    return GatherSpec(
        step=str(raw["step"]),
        output=str(raw["output"]),
        parameter=str(raw["parameter"]),
        group_by=_str_list(raw.get("group_by", []), f"{where}.group_by"),
    )


def _parse_step(name: str, raw: Any, root: Path, source: str) -> StepSpec:
    where = f"{source}: step {name!r}"
    if not name.replace("_", "").replace("-", "").isalnum():
        raise _fail(where, "step names use letters, digits, '_' and '-' only")
    if not isinstance(raw, dict):
        raise _fail(where, "each step must be a mapping with at least a 'notebook' key")
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(_STEP_KEYS)}")
    if "notebook" not in raw:
        raise _fail(where, "missing 'notebook' (path of the notebook, relative to the file)")
    notebook = Path(str(raw["notebook"]))
    notebook = notebook if notebook.is_absolute() else (root / notebook)
    if notebook.suffix != ".ipynb":
        raise _fail(where, f"notebook {notebook} is not an .ipynb file")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(where, f"'parameters' must be a mapping, got {parameters!r}")
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise _fail(where, "'grid' must map dimension names to lists of values")
        for dim, values in grid.items():
            if not isinstance(values, list) or not values:
                raise _fail(
                    where, f"grid dimension {dim!r} must be a non-empty list, got {values!r}"
                )
    outputs = raw.get("outputs") or {}
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        raise _fail(where, "'outputs' must map output names to file names")
    for out_name, file_name in outputs.items():
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise _fail(where, f"output {out_name!r} = {file_name!r} must be a relative file name")
    where_filter = raw.get("where") or {}
    if not isinstance(where_filter, dict):
        raise _fail(where, "'where' must map manifest fields to lists of accepted values")
    gather = _parse_gather(raw["gather"], where) if "gather" in raw else None
    sources = [k for k in ("grid", "manifest", "gather") if raw.get(k) is not None]
    if len(sources) > 1:
        raise _fail(where, f"use only one of 'grid', 'manifest' and 'gather', got {sources}")
    if where_filter and raw.get("manifest") is None:
        raise _fail(where, "'where' filters manifest entries; it needs a 'manifest' step")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise _fail(where, f"timeout must be a positive number of seconds, got {timeout!r}")
    return StepSpec(
        name=name,
        notebook=notebook.resolve(),
        parameters=dict(parameters),
        grid={str(k): list(v) for k, v in grid.items()} if grid else None,
        manifest=str(raw["manifest"]) if raw.get("manifest") is not None else None,
        where={str(k): v if isinstance(v, list) else [v] for k, v in where_filter.items()},
        inputs=_str_list(raw.get("inputs", []), f"{where}.inputs"),
        outputs={str(k): v for k, v in outputs.items()},
        gather=gather,
        timeout_s=float(timeout) if timeout is not None else None,
    )


def _order(steps: dict[str, StepSpec], source: str) -> tuple[StepSpec, ...]:
    ordered: list[StepSpec] = []
    done: set[str] = set()
    for name in steps:
        chain: list[str] = []
        current: str | None = name
        while current is not None and current not in done:
            if current in chain:
                msg = f"{source}: gather steps form a cycle {' -> '.join([*chain, current])}"
                raise ValueError(msg)
            chain.append(current)
            spec = steps[current]
            upstream = spec.gather.step if spec.gather else None
            if upstream is not None and upstream not in steps:
                msg = (
                    f"{source}: step {current!r} gathers from unknown step {upstream!r}; "
                    f"steps are {sorted(steps)}"
                )
                raise ValueError(msg)
            current = upstream
        for step_name in reversed(chain):
            if step_name not in done:
                ordered.append(steps[step_name])
                done.add(step_name)
    for spec in ordered:
        if spec.gather is not None:
            source_step = steps[spec.gather.step]
            if spec.gather.output not in source_step.outputs:
                msg = (
                    f"{source}: step {spec.name!r} gathers output {spec.gather.output!r} but step "
                    f"{source_step.name!r} declares outputs {sorted(source_step.outputs)}"
                )
                raise ValueError(msg)
    return tuple(ordered)


def parse_pipeline(
    document: dict[str, Any], *, root: str | os.PathLike[str], source: str = "<pipeline>"
) -> Pipeline:
    """Build a `Pipeline` from an already-loaded mapping.

    Parameters
    ----------
    document : dict
        The mapping read from a YAML/TOML pipeline file.
    root : str or path-like
        Folder that relative paths resolve against.
    source : str
        Name used in error messages.

    Returns
    -------
    Pipeline

    Raises
    ------
    ValueError
        For any structural problem, naming the step and key.
    """
    if not isinstance(document, dict):
        msg = f"{source}: a pipeline file must be a mapping with 'name' and 'steps'"
        raise ValueError(msg)
    unknown = set(document) - {"name", "vars", "steps"}
    if unknown:
        msg = f"{source}: unknown top-level keys {sorted(unknown)}; allowed: name, vars, steps"
        raise ValueError(msg)
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, dict) or not raw_steps:
        msg = f"{source}: 'steps' must be a non-empty mapping of step name to step"
        raise ValueError(msg)
    variables = document.get("vars") or {}
    if not isinstance(variables, dict):
        msg = f"{source}: 'vars' must be a mapping of names to values"
        raise ValueError(msg)
    root_path = Path(root).resolve()
    steps = {
        str(name): _parse_step(str(name), raw, root_path, source) for name, raw in raw_steps.items()
    }
    return Pipeline(
        name=str(document.get("name", "pipeline")),
        root=root_path,
        variables=dict(variables),
        steps=_order(steps, source),
        source=None,
    )


def load_pipeline(
    path: str | os.PathLike[str], *, variables: dict[str, Any] | None = None
) -> Pipeline:
    """Read a pipeline file (YAML or TOML).

    Parameters
    ----------
    path : str or path-like
        The pipeline file.
    variables : dict, optional
        Values overriding the file's ``vars``.

    Returns
    -------
    Pipeline

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be parsed or is malformed.
    """
    file = Path(path)
    if not file.is_file():
        msg = f"pipeline file {file} does not exist; pass the path of a .yaml or .toml file"
        raise FileNotFoundError(msg)
    text = file.read_text()
    try:
        if file.suffix == ".toml":
            document: Any = tomllib.loads(text)
        elif file.suffix in {".yaml", ".yml"}:
            document = yaml.safe_load(text)
        else:
            msg = f"pipeline file {file} must end in .yaml, .yml or .toml"
            raise ValueError(msg)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        msg = f"pipeline file {file} cannot be parsed: {err}"
        raise ValueError(msg) from err
    pipeline = parse_pipeline(document, root=file.parent, source=str(file))
    merged = {**pipeline.variables, **(variables or {})}
    return Pipeline(
        name=pipeline.name,
        root=pipeline.root,
        variables=merged,
        steps=pipeline.steps,
        source=file.resolve(),
    )
