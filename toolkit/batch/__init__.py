# ruff: noqa: E402 - the jsonschema import is deferred before the modules below import it
"""Batch runs of curated notebooks: papermill tasks over parameter grids on Dask.

>>> from stacklab.toolkit.batch import load_pipeline, plan_pipeline, run_pipeline
>>> summary = run_pipeline("notebooks/demo_pipeline.yaml", "demo-run")  # doctest: +SKIP

Modules, one job each: `pipeline` (pipeline files), `parameters` (the notebook's
``parameters`` cell), `plan` (tasks), `keys` (content keys for resume), `registry`
(SQLite), `provenance`, `rundir` (lock and atomic moves), `execute` and `taskhost`
(running one task on a worker), `bookkeeping` (states and records of a run), `runner`
(scheduling on Dask), `report` (HTML), and the ``cli_run``/``cli_status`` commands.
"""

from ._deferred_imports import defer_rfc3987_syntax

defer_rfc3987_syntax()  # before nbformat imports jsonschema: a second off every start

from .cli_status import status_rows
from .parameters import NotebookParameter, read_parameters, validate_parameters
from .pipeline import GatherSpec, Pipeline, StepSpec, load_pipeline, parse_pipeline
from .plan import Plan, Task, plan_pipeline
from .registry import Registry, TaskRecord, find_dataset
from .report import write_report
from .rundir import RundirBusyError
from .runner import RunSummary, run_pipeline

__all__ = [
    "GatherSpec",
    "NotebookParameter",
    "Pipeline",
    "Plan",
    "Registry",
    "RunSummary",
    "RundirBusyError",
    "StepSpec",
    "Task",
    "TaskRecord",
    "find_dataset",
    "load_pipeline",
    "parse_pipeline",
    "plan_pipeline",
    "read_parameters",
    "run_pipeline",
    "status_rows",
    "validate_parameters",
    "write_report",
]
