"""Bookkeeping of one run: which tasks are ready or up to date, and recording outcomes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .keys import task_key
from .plan import Plan, Task
from .provenance import environment, git_state
from .registry import Registry
from .rundir import outputs_intact, replace_dir

__all__ = ["RunBook"]

log = logging.getLogger(__name__)


class RunBook:
    """State of one invocation of `run_pipeline`: task states, keys, outputs, records."""

    def __init__(
        self,
        plan: Plan,
        rundir: Path,
        registry: Registry,
        *,
        allow_partial: bool,
        timeout_s: float | None,
        progress: Callable[[int], None],
    ) -> None:
        self.plan = plan
        self.rundir = rundir
        self.registry = registry
        self.allow_partial = allow_partial
        self.timeout_s = timeout_s
        self.progress = progress
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.tasks = plan.by_id()
        self.keys: dict[str, str | None] = {t.task_id: t.key for t in plan.tasks}
        self.parameters = {t.task_id: dict(t.parameters) for t in plan.tasks}
        self.state: dict[str, str] = {}
        self.outputs: dict[str, dict[str, dict[str, str]]] = {}
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.cancel_file = rundir / f".cancel-{self.run_id}"
        self._fresh: dict[tuple[str, str], bool] = {}
        self.env = environment()
        self.git = {
            folder: git_state(folder) for folder in {str(t.notebook.parent) for t in plan.tasks}
        }

    # planning --------------------------------------------------------------------
    def up_to_date(self, task: Task, key: str) -> bool:
        """Tell whether ``task`` succeeded before with ``key`` and its outputs are intact."""
        memo = (task.task_id, key)
        if memo not in self._fresh:
            record = self.registry.task(task.task_id)
            self._fresh[memo] = (
                record is not None
                and record.state == "succeeded"
                and record.key == key
                and outputs_intact(self.rundir, record)
            )
        return self._fresh[memo]

    def resolve(self, task: Task) -> str | None:
        """Decide a ready task: ``'cached'``, ``'skipped'``, ``'submit'`` or None (not ready)."""
        if task.gather is None:
            assert task.key is not None
            return "cached" if self.up_to_date(task, task.key) else "submit"
        states = [self.state.get(up) for up in task.upstream]
        if any(s in (None, "running", "pending") for s in states):
            return None
        good = [up for up in task.upstream if self.state[up] == "succeeded"]
        if len(good) < len(task.upstream) and not (self.allow_partial and good):
            return "skipped"
        name = task.gather.output
        gathered = [[up, self.outputs[up][name]["sha256"]] for up in good]
        paths = [
            str(self.rundir / "tasks" / self.tasks[up].step / self.tasks[up].label / file)
            for up in good
            for file in [self.outputs[up][name]["file"]]
        ]
        # Declared inputs count by content, as for map steps, not by path.
        params = {
            k: v
            for k, v in task.parameters.items()
            if k != task.gather.parameter and k not in task.inputs
        }
        key = task_key(
            step=task.step,
            code_sha256=task.code_sha256,
            parameters=params,
            inputs={task.gather.parameter: gathered, **task.input_sha256},
            outputs=task.outputs,
            versions=self.plan.versions,
        )
        self.keys[task.task_id] = key
        self.parameters[task.task_id][task.gather.parameter] = paths
        return "cached" if self.up_to_date(task, key) else "submit"

    def spec(self, task: Task) -> dict[str, Any]:
        """Return the JSON-able description `execute_task` runs."""
        return {
            "task_id": task.task_id,
            "notebook": str(task.notebook),
            "parameters": self.parameters[task.task_id],
            "outputs": task.outputs,
            "staging": str(self.rundir / ".staging" / task.step / task.label),
            "timeout_s": task.timeout_s if task.timeout_s is not None else self.timeout_s,
            "cancel_file": str(self.cancel_file),
            "runner_pid": os.getpid(),
            "runner_host": socket.gethostname(),
        }

    def base_fields(self, task: Task) -> dict[str, Any]:
        """Return the registry fields every record of ``task`` carries."""
        return {
            "task_id": task.task_id,
            "step": task.step,
            "label": task.label,
            "data_id": task.data_id,
            "notebook": str(task.notebook),
            "key": self.keys[task.task_id],
            "run_id": self.run_id,
            "parameters": self.parameters[task.task_id],
            "inputs": task.inputs,
        }

    # recording -------------------------------------------------------------------
    def record_cached(self, task: Task) -> None:
        """Take an up-to-date task's outputs from the registry without running it."""
        record = self.registry.task(task.task_id)
        assert record is not None
        self.state[task.task_id] = "succeeded"
        self.outputs[task.task_id] = record.outputs
        self.cached.append(task.task_id)
        self.progress(1)

    def record_skipped(self, task: Task) -> None:
        """Record a gather task skipped because some upstream tasks did not succeed."""
        missing = [up for up in task.upstream if self.state.get(up) != "succeeded"]
        self.state[task.task_id] = "skipped"
        self.registry.upsert_task(
            **self.base_fields(task),
            state="skipped",
            error_class="upstream-failed",
            ename="UpstreamFailed",
            evalue=f"{len(missing)} upstream task(s) did not succeed: {', '.join(missing)}; "
            "fix them and rerun, or pass --allow-partial",
        )
        self.progress(1)

    def record_result(self, task: Task, result: dict[str, Any]) -> None:
        """Move an attempt's folder into place and record its outcome (outputs first)."""
        attempt_dir = Path(result["attempt_dir"])
        final = self.rundir / "tasks" / task.step / task.label
        failed_dir = self.rundir / "failed" / task.step / task.label
        old = self.registry.task(task.task_id)
        attempts = (old.attempts if old else 0) + int(result.get("attempt", 1))
        fields = {
            **self.base_fields(task),
            "started": result["started"],
            "finished": result["finished"],
            "duration_s": result["duration_s"],
            "attempts": attempts,
            "worker": result.get("worker"),
        }
        outputs = {
            name: {"file": task.outputs[name], "sha256": sha}
            for name, sha in result.get("outputs", {}).items()
        }
        provenance = {
            "run_id": self.run_id,
            "key": self.keys[task.task_id],
            "notebook": str(task.notebook),
            "notebook_code_sha256": task.code_sha256,
            "git": self.git.get(str(task.notebook.parent)),
            "parameters": self.parameters[task.task_id],
            "inputs": self.input_checksums(task),
            "outputs": outputs,
            "python": self.env["python"],
            "packages": self.env["packages"],
            "worker": result.get("worker"),
            "started": result["started"],
            "finished": result["finished"],
        }
        if result["status"] == "ok":
            try:
                (attempt_dir / "provenance.json").write_text(json.dumps(provenance, indent=1))
                replace_dir(attempt_dir, final, self.rundir / ".trash")
                shutil.rmtree(self.rundir / "failed" / task.step / task.label, ignore_errors=True)
            except OSError as err:
                result = {
                    **result,
                    "status": "failed",
                    "error_class": "io",
                    "ename": type(err).__name__,
                    "evalue": f"could not move outputs into {final}: {err}; free space or "
                    "fix permissions of the run folder, then rerun",
                }
            else:
                self.state[task.task_id] = "succeeded"
                self.outputs[task.task_id] = outputs
                self.registry.record_success(
                    task_fields={
                        **fields,
                        "state": "succeeded",
                        "outputs": outputs,
                        "error_class": None,
                        "ename": None,
                        "evalue": None,
                        "cell_index": None,
                        "traceback": None,
                        "executed_notebook": str(
                            (final / result["executed_notebook"]).relative_to(self.rundir)
                        ),
                        "provenance": provenance,
                    },
                    datasets=[
                        {
                            "dataset_type": f"{task.step}.{name}",
                            "data_id": task.data_id,
                            "path": str((final / entry["file"]).relative_to(self.rundir)),
                            "sha256": entry["sha256"],
                            "run_id": self.run_id,
                        }
                        for name, entry in outputs.items()
                    ],
                )
                self.progress(1)
                return
        state = "cancelled" if result["error_class"] == "cancelled" else "failed"
        executed = None
        try:
            replace_dir(attempt_dir, failed_dir, self.rundir / ".trash")
            notebook = failed_dir / str(result.get("executed_notebook") or "")
            if notebook.is_file():
                executed = str(notebook.relative_to(self.rundir))
        except OSError as err:
            log.warning("could not keep the failed attempt of %s: %s", task.task_id, err)
        self.state[task.task_id] = state
        self.registry.upsert_task(
            **fields,
            state=state,
            outputs={},
            error_class=result["error_class"],
            ename=result.get("ename"),
            evalue=result.get("evalue"),
            cell_index=result.get("cell_index"),
            traceback=result.get("traceback"),
            executed_notebook=executed,
            provenance=provenance,
        )
        log.warning(
            "task %s %s (%s): %s: %s",
            task.task_id,
            state,
            result["error_class"],
            result.get("ename"),
            result.get("evalue"),
        )
        self.progress(1)

    def record_lost(self, task: Task, err: BaseException) -> None:
        """Record a task that failed in the execution machinery, not in its notebook.

        A `distributed.KilledWorker` means the task's Dask worker died more often than
        allowed; anything else (a task host that cannot start, an unreadable result file)
        is recorded as ``internal`` with its traceback.
        """
        from distributed import KilledWorker

        now = time.time()
        if isinstance(err, KilledWorker):
            error_class, evalue = "worker-lost", f"the Dask worker running the task died: {err}"
        else:
            error_class, evalue = "internal", f"the task could not be run: {err}"
        self.record_result(
            task,
            {
                "status": "failed",
                "error_class": error_class,
                "ename": type(err).__name__,
                "evalue": evalue,
                "traceback": "".join(traceback.format_exception(err)),
                "attempt_dir": str(self.rundir / ".staging" / "lost" / uuid.uuid4().hex),
                "attempt": 1,
                "started": now,
                "finished": now,
                "duration_s": 0.0,
            },
        )

    def input_checksums(self, task: Task) -> dict[str, Any]:
        """Return the checksums of a task's inputs for its provenance."""
        sums: dict[str, Any] = {
            name: {"path": path, "sha256": task.input_sha256[name]}
            for name, path in task.inputs.items()
        }
        if task.gather is not None:
            sums[task.gather.parameter] = [
                {"task": up, "sha256": self.outputs[up][task.gather.output]["sha256"]}
                for up in task.upstream
                if self.state.get(up) == "succeeded"
            ]
        return sums
