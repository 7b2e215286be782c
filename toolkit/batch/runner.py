"""Run a planned pipeline on Dask: schedule, record, move outputs into place, resume.

Layout of a run folder::

    RUNDIR/registry.sqlite          the registry (see `Registry`)
    RUNDIR/run.json                 provenance of the latest run (written atomically)
    RUNDIR/tasks/STEP/LABEL/        outputs, executed notebook, task.log, provenance.json
    RUNDIR/failed/STEP/LABEL/       the last failed attempt, executed notebook included
    RUNDIR/.staging/                attempts in progress (never read by anyone else)

A task runs in its own attempt folder under ``.staging``; only when it succeeded is the
folder renamed to ``tasks/STEP/LABEL`` (one atomic rename), and only then is the
registry updated. A crash at any point therefore leaves either the old complete outputs
or the new complete outputs, and the registry never claims outputs that are not there.

Where tasks run
---------------
By default a LocalCluster with one single-threaded worker process per core. With
``scheduler="tcp://HOST:PORT"`` (or the path of a scheduler file written by
``dask scheduler --scheduler-file``) an existing Dask cluster runs them; the run folder
and the notebooks must then be on a filesystem the workers share. Give that scheduler
``distributed.scheduler.allowed-failures: 1`` so that a task whose worker dies is
retried once, as on the LocalCluster.

On Slurm, dask-jobqueue (``pip install dask-jobqueue``) starts the workers as batch
jobs; one single-threaded worker per job CPU keeps one task per worker process::

    # ~/.config/dask/jobqueue.yaml (and distributed.yaml for allowed-failures)
    jobqueue:
      slurm:
        cores: 1            # one task at a time per worker
        processes: 1
        memory: 4GB
        walltime: "02:00:00"
        queue: regular
        account: m1234
        local-directory: $TMPDIR
    distributed:
      scheduler:
        allowed-failures: 1

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    from stacklab.toolkit.batch import run_pipeline

    cluster = SLURMCluster()
    cluster.adapt(minimum_jobs=1, maximum_jobs=64)
    run_pipeline("pipeline.yaml", "/scratch/me/run", client=Client(cluster))

Without Python on the login node, start ``dask scheduler --scheduler-file
$SCRATCH/scheduler.json`` and ``srun dask worker --scheduler-file $SCRATCH/scheduler.json
--nthreads 1`` in a batch job, then ``stacklab run pipeline.yaml --out $SCRATCH/run
--scheduler $SCRATCH/scheduler.json``. Task keys do not depend on where tasks ran, so
the same run folder can be resumed on a laptop or a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bookkeeping import RunBook
from .execute import execute_task
from .pipeline import Pipeline, load_pipeline
from .plan import Plan, Task, plan_pipeline
from .registry import Registry
from .rundir import check_writable, run_lock

__all__ = ["RunSummary", "run_pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What one call of `run_pipeline` did.

    Attributes
    ----------
    run_id : str
        Identifier of the run in the registry.
    rundir : pathlib.Path
        The run folder.
    executed : tuple of str
        Task ids executed by this run (whatever their outcome).
    cached : tuple of str
        Task ids found up to date and not executed.
    failed : tuple of str
        Task ids that failed in this run.
    skipped : tuple of str
        Gather task ids not run because an upstream task failed.
    cancelled : tuple of str
        Task ids cancelled by an interruption.
    interrupted : bool
        Whether the run was interrupted (SIGINT/SIGTERM).
    """

    run_id: str
    rundir: Path
    executed: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when everything succeeded, 130 when interrupted, 1 otherwise."""
        if self.interrupted:
            return 130
        return 1 if (self.failed or self.skipped or self.cancelled) else 0


def _make_client(scheduler: str | None, workers: int | None) -> tuple[Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if Path(scheduler).is_file():
            return Client(scheduler_file=scheduler, timeout="30s"), None
        return Client(scheduler, timeout="30s"), None
    n_workers = workers or os.cpu_count() or 1
    # Ctrl-C in a terminal signals the whole process group. Worker processes started while
    # SIGINT is ignored keep ignoring it, so only the runner reacts: it cancels the tasks
    # and shuts the cluster down in order instead of losing its workers mid-task.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        # One retry when a worker dies mid-task (the default of 3 runs a task up to 4 times).
        # Dask's statistical profiler samples the worker's task thread every 10 ms; ours
        # only waits for a task process, and the sampling cost 1.5% of a core per worker.
        # Every scheduler, nanny and worker also wakes up every 20 ms to time its event
        # loop (for "unresponsive" warnings): 6% of a core for an idle 2-worker cluster,
        # taken from the tasks; once a second it is 1.5%.
        settings = {
            "distributed.scheduler.allowed-failures": 1,
            "distributed.worker.profile.enabled": False,
            "distributed.admin.tick.interval": "1s",
        }
        with dask.config.set(settings):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                memory_limit=0,
            )
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster


def _tqdm_progress(total: int, enabled: bool | str) -> tuple[Callable[[int], None], Any]:
    if enabled is False:
        return (lambda n: None), None
    from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

    bar = tqdm(total=total, unit="task", desc="stacklab run", leave=True)
    return bar.update, bar


def run_pipeline(
    pipeline: Pipeline | str | os.PathLike[str],
    rundir: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    client: Any = None,
    workers: int | None = None,
    allow_partial: bool = False,
    timeout_s: float | None = None,
    variables: dict[str, Any] | None = None,
    progress: bool | str = "auto",
) -> RunSummary:
    """Plan and execute a pipeline into ``rundir``, skipping tasks that are up to date.

    Parameters
    ----------
    pipeline : Pipeline, str or path-like
        A pipeline or the path of a pipeline file.
    rundir : str or path-like
        The run folder (created if missing). Rerunning into the same folder resumes.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://HOST:PORT``) or the path of its
        scheduler file. By default a LocalCluster with one single-threaded worker process
        per core is started.
    client : distributed.Client, optional
        An existing Dask client to use instead (e.g. of a dask-jobqueue cluster).
    workers : int, optional
        Number of LocalCluster workers (default: number of cores).
    allow_partial : bool
        Run gather steps on the outputs that exist when some upstream tasks failed.
    timeout_s : float, optional
        Default wall-clock limit per task (a step's ``timeout`` wins).
    variables : dict, optional
        Values overriding the pipeline file's ``vars``.
    progress : bool or "auto"
        Show a progress bar (a widget in Jupyter, text in a terminal).

    Returns
    -------
    RunSummary

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        For a bad pipeline file or parameters (before anything runs).
    PermissionError
        If ``rundir`` cannot be written.
    OSError
        If the run folder stops being writable during the run (e.g. the disk is full);
        running tasks are stopped and a rerun resumes.
    RundirBusyError
        If another runner is using ``rundir``.

    Examples
    --------
    >>> summary = run_pipeline("notebooks/demo_pipeline.yaml", "demo-run")  # doctest: +SKIP
    >>> summary.exit_code  # doctest: +SKIP
    0
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, variables=variables)
    elif variables:
        pipeline = Pipeline(
            name=pipeline.name,
            root=pipeline.root,
            variables={**pipeline.variables, **variables},
            steps=pipeline.steps,
            source=pipeline.source,
        )
    if timeout_s is not None and timeout_s <= 0:
        msg = f"timeout_s must be > 0 seconds, got {timeout_s}; omit it for no limit"
        raise ValueError(msg)
    plan = plan_pipeline(pipeline)
    folder = Path(rundir).resolve()
    check_writable(folder)
    with run_lock(folder), Registry(folder) as registry:
        return _execute(plan, folder, registry, scheduler, client, workers, allow_partial,
                        timeout_s, progress)  # fmt: skip


def _execute(
    plan: Plan,
    rundir: Path,
    registry: Registry,
    scheduler: str | None,
    client: Any,
    workers: int | None,
    allow_partial: bool,
    timeout_s: float | None,
    progress_mode: bool | str,
) -> RunSummary:
    from distributed import as_completed, wait

    for leftover in (".staging", ".trash"):
        shutil.rmtree(rundir / leftover, ignore_errors=True)
    for stale in rundir.glob(".cancel-*"):
        stale.unlink(missing_ok=True)
    progress, bar = _tqdm_progress(len(plan.tasks), progress_mode)
    run = RunBook(
        plan, rundir, registry, allow_partial=allow_partial, timeout_s=timeout_s, progress=progress
    )
    reclaimed = registry.reclaim_stale(run.run_id)
    if reclaimed:
        log.warning("%d task(s) were left running by a runner that died; rerunning them", reclaimed)
    run_record: dict[str, Any] = {
        "run_id": run.run_id,
        "pipeline": str(plan.pipeline.source or plan.pipeline.name),
        "variables": plan.pipeline.variables,
        "environment": run.env,
        "git": run.git,
        "key_versions": plan.versions,
        "scheduler": scheduler or ("client" if client is not None else "LocalCluster"),
        "started": time.time(),
        "n_tasks": len(plan.tasks),
    }
    tmp = rundir / ".run.json.tmp"
    tmp.write_text(json.dumps(run_record, indent=1))
    tmp.replace(rundir / "run.json")
    registry.start_run(run.run_id, pipeline=run_record["pipeline"], provenance=run_record)

    waiting: list[Task] = list(plan.tasks)
    futures: dict[Any, Task] = {}
    own_client = None
    cluster = None
    queue: Any = None
    interrupted = False

    def dispatch() -> list[Task]:
        nonlocal own_client, cluster, queue
        to_submit: list[Task] = []
        progressing = True
        while progressing:
            progressing = False
            for task in list(waiting):
                decision = run.resolve(task)
                if decision is None:
                    continue
                waiting.remove(task)
                progressing = True
                if decision == "cached":
                    run.record_cached(task)
                elif decision == "skipped":
                    run.record_skipped(task)
                else:
                    run.state[task.task_id] = "running"
                    to_submit.append(task)
        if to_submit:
            registry.upsert_tasks(
                [
                    {**run.base_fields(t), "state": "running", "started": time.time()}
                    for t in to_submit
                ]
            )
            active = client
            if active is None:
                if own_client is None:
                    own_client, cluster = _make_client(scheduler, workers)
                    log.info("Dask dashboard: %s", own_client.dashboard_link)
                active = own_client
            new = [
                active.submit(
                    execute_task,
                    run.spec(t),
                    key=f"stacklab-{run.run_id}-{t.task_id}",
                    pure=False,
                )
                for t in to_submit
            ]
            for future, task in zip(new, to_submit, strict=True):
                futures[future] = task
            if queue is None:
                queue = as_completed(new)
            else:
                queue.update(new)
        return to_submit

    try:
        try:
            # Records of tasks this plan no longer has (another dataset, a narrower grid)
            # must not pass for its results: mark them obsolete and forget their datasets.
            planned = {t.task_id for t in plan.tasks}
            obsolete = [
                r.task_id
                for r in registry.tasks()
                if r.task_id not in planned and r.state != "obsolete"
            ]
            if obsolete:
                log.warning(
                    "%d task(s) of earlier runs are not in this plan: obsolete", len(obsolete)
                )
                registry.set_state(obsolete, "obsolete", run_id=run.run_id)
            registry.upsert_tasks(
                [
                    {**run.base_fields(t), "state": "pending"}
                    for t in plan.tasks
                    if (t.key is None and registry.task(t.task_id) is None)
                    or (t.key is not None and not run.up_to_date(t, t.key))
                ]
            )
            dispatch()
            while queue is not None and not queue.is_empty():
                future = next(queue)
                task = futures.pop(future)
                _collect(run, task, future)
                run.executed.append(task.task_id)
                dispatch()
        except KeyboardInterrupt:
            interrupted = True
            run.cancel_file.touch()
            log.warning("interrupted: cancelling %d running task(s)", len(futures))
            running = list(futures)
            if running:
                with contextlib.suppress(TimeoutError):
                    wait(running, timeout=30)
            for future in running:
                task = futures.pop(future)
                if future.done():
                    _collect(run, task, future)
                    if run.state[task.task_id] != "cancelled":
                        run.executed.append(task.task_id)
                else:
                    future.cancel()
            # Cancel what was running or marked pending by this run; a task never reached
            # keeps its record (e.g. a gather whose earlier result is still up to date).
            left = [
                t.task_id
                for t in plan.tasks
                if run.state.get(t.task_id) == "running"
                or (
                    run.state.get(t.task_id) is None
                    and (record := registry.task(t.task_id)) is not None
                    and record.state == "pending"
                )
            ]
            registry.set_state(left, "cancelled", run_id=run.run_id)
            for task_id in left:
                run.state[task_id] = "cancelled"
        except (sqlite3.Error, OSError) as err:
            # The run folder cannot be written (disk full, permissions changed): stop every
            # task; each registry transaction either happened or not, so a rerun resumes.
            with contextlib.suppress(OSError):
                run.cancel_file.touch()
            if futures:
                with contextlib.suppress(TimeoutError):
                    wait(list(futures), timeout=30)
                for future in futures:
                    future.cancel()
            msg = (
                f"stopped: could not write to the run folder {rundir} ({err}); free space or "
                "fix its permissions, then rerun the same command to resume"
            )
            raise OSError(msg) from err
    finally:
        with contextlib.suppress(OSError):
            run.cancel_file.unlink(missing_ok=True)
        if not futures:
            for leftover in (".staging", ".trash"):
                shutil.rmtree(rundir / leftover, ignore_errors=True)
        if own_client is not None:
            own_client.close()
        if cluster is not None:
            cluster.close()
        if bar is not None:
            bar.close()
    summary = RunSummary(
        run_id=run.run_id,
        rundir=rundir,
        executed=tuple(run.executed),
        cached=tuple(run.cached),
        failed=tuple(t for t in run.executed if run.state.get(t) == "failed"),
        skipped=tuple(t for t, s in run.state.items() if s == "skipped"),
        cancelled=tuple(t for t, s in run.state.items() if s == "cancelled"),
        interrupted=interrupted,
    )
    registry.finish_run(
        run.run_id,
        "interrupted" if interrupted else ("succeeded" if summary.exit_code == 0 else "failed"),
    )
    return summary


def _collect(run: RunBook, task: Task, future: Any) -> None:
    from distributed import CancelledError

    try:
        result = future.result()
    except CancelledError as err:
        run.record_result(
            task,
            {
                "status": "failed",
                "error_class": "cancelled",
                "ename": "Cancelled",
                "evalue": str(err) or "cancelled",
                "attempt_dir": str(run.rundir / ".staging" / "lost" / uuid.uuid4().hex),
                "started": time.time(),
                "finished": time.time(),
                "duration_s": 0.0,
            },
        )
        return
    except Exception as err:  # KilledWorker and any other error of the Dask machinery
        run.record_lost(task, err)
        return
    run.record_result(task, result)
