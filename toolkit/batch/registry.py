"""The run registry: one SQLite database (WAL mode) per run folder.

Tables
------
``runs``
    One row per invocation of the runner: id, times, state, pipeline file, provenance.
``tasks``
    The latest record of every task: state, key, parameters, timings, attempts, error
    name/value/cell, output checksums, executed notebook and provenance.
``datasets``
    Every declared output of a succeeded task: dataset type (``step.output``), data id,
    path (relative to the run folder), sha256 and producing task.

Only the runner writes (a single writer); ``status`` and notebooks read concurrently.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keys import canonical_json

__all__ = ["REGISTRY_NAME", "TASK_STATES", "Registry", "TaskRecord", "find_dataset"]

REGISTRY_NAME = "registry.sqlite"

#: Task states; ``succeeded`` is the only state whose outputs are trusted.
TASK_STATES = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
    "interrupted",
    "obsolete",  # no longer in the pipeline's plan (e.g. rerun on another dataset)
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    state TEXT NOT NULL,
    pipeline TEXT,
    provenance TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    label TEXT NOT NULL,
    data_id TEXT NOT NULL,
    notebook TEXT NOT NULL,
    key TEXT,
    state TEXT NOT NULL,
    run_id TEXT,
    parameters TEXT NOT NULL,
    inputs TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '{}',
    started REAL,
    finished REAL,
    duration_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_class TEXT,
    ename TEXT,
    evalue TEXT,
    cell_index INTEGER,
    traceback TEXT,
    executed_notebook TEXT,
    worker TEXT,
    provenance TEXT
);
CREATE TABLE IF NOT EXISTS datasets (
    dataset_type TEXT NOT NULL,
    data_id TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    task_id TEXT NOT NULL REFERENCES tasks(task_id),
    run_id TEXT NOT NULL,
    PRIMARY KEY (dataset_type, data_id)
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS datasets_task ON datasets(task_id);
"""

_JSON_COLUMNS = ("data_id", "parameters", "inputs", "outputs", "provenance")


@dataclass(frozen=True, kw_only=True)
class TaskRecord:
    """A row of the ``tasks`` table, JSON columns decoded."""

    task_id: str
    step: str
    label: str
    data_id: dict[str, Any]
    notebook: str
    key: str | None
    state: str
    run_id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    started: float | None
    finished: float | None
    duration_s: float | None
    attempts: int
    error_class: str | None
    ename: str | None
    evalue: str | None
    cell_index: int | None
    traceback: str | None
    executed_notebook: str | None
    worker: str | None
    provenance: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict (JSON-serializable)."""
        return dict(self.__dict__)


class Registry:
    """Read and write the registry of a run folder.

    Parameters
    ----------
    rundir : str or path-like
        The run folder holding ``registry.sqlite``.
    readonly : bool
        Open read-only (for ``status`` and notebooks while a run is going on).

    Raises
    ------
    FileNotFoundError
        When opening read-only and there is no registry yet.
    """

    def __init__(self, rundir: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.rundir = Path(rundir)
        self.path = self.rundir / REGISTRY_NAME
        if readonly:
            if not self.path.is_file():
                msg = f"{self.rundir} holds no registry ({REGISTRY_NAME}); is it a run folder?"
                raise FileNotFoundError(msg)
            # as_uri() percent-encodes '#', '?' and spaces that a raw "file:" URI would misread
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._db:
            yield self._db

    # runs ----------------------------------------------------------------------------
    def start_run(self, run_id: str, *, pipeline: str, provenance: dict[str, Any]) -> None:
        """Record the start of a run."""
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (run_id, started, state, pipeline, provenance)"
                " VALUES (?, ?, 'running', ?, ?)",
                (run_id, time.time(), pipeline, canonical_json(provenance)),
            )

    def finish_run(self, run_id: str, state: str) -> None:
        """Record the end of a run with its final ``state``."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET finished = ?, state = ? WHERE run_id = ?",
                (time.time(), state, run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        """All runs, oldest first."""
        rows = self._db.execute("SELECT * FROM runs ORDER BY started").fetchall()
        return [{**dict(row), "provenance": json.loads(row["provenance"] or "{}")} for row in rows]

    def reclaim_stale(self, run_id: str) -> int:
        """Mark tasks left ``running`` by a dead runner as ``interrupted``; return how many."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET state = 'interrupted', run_id = ? WHERE state = 'running'",
                (run_id,),
            )
            db.execute(
                "UPDATE runs SET state = 'crashed' WHERE state = 'running' AND run_id != ?",
                (run_id,),
            )
        return cursor.rowcount

    # tasks ---------------------------------------------------------------------------
    def upsert_tasks(self, rows: list[dict[str, Any]]) -> None:
        """Insert or update several task records in one transaction.

        Fields missing from a row keep their stored values (or defaults for new tasks).
        """
        if not rows:
            return
        with self._write() as db:
            for fields in rows:
                self._upsert(db, fields)

    def upsert_task(self, **fields: Any) -> None:
        """Insert or update one task record (see `upsert_tasks`)."""
        self.upsert_tasks([fields])

    def _upsert(self, db: sqlite3.Connection, fields: dict[str, Any]) -> None:
        old = db.execute("SELECT * FROM tasks WHERE task_id = ?", (fields["task_id"],)).fetchone()
        row = self._decode(old).as_dict() if old else {"attempts": 0}
        row.update(fields)
        columns = [c for c in TaskRecord.__dataclass_fields__ if c in row]
        values = [
            canonical_json(row[c]) if c in _JSON_COLUMNS and row[c] is not None else row[c]
            for c in columns
        ]
        # An upsert keeps the rowid, so tasks stay listed in the order they were planned.
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "task_id")
        db.execute(
            f"INSERT INTO tasks ({', '.join(columns)})"
            f" VALUES ({', '.join('?' for _ in columns)})"
            f" ON CONFLICT(task_id) DO UPDATE SET {updates}",
            values,
        )
        if row.get("state") != "succeeded":
            # Only succeeded tasks vouch for their outputs.
            db.execute("DELETE FROM datasets WHERE task_id = ?", (fields["task_id"],))

    def record_success(
        self, *, task_fields: dict[str, Any], datasets: list[dict[str, Any]]
    ) -> None:
        """Write a succeeded task and its datasets in one transaction."""
        task_id = task_fields["task_id"]
        with self._write() as db:
            db.execute("DELETE FROM datasets WHERE task_id = ?", (task_id,))
            self._upsert(db, task_fields)
            db.executemany(
                "INSERT OR REPLACE INTO datasets"
                " (dataset_type, data_id, path, sha256, task_id, run_id) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        d["dataset_type"],
                        canonical_json(d["data_id"]),
                        d["path"],
                        d["sha256"],
                        task_id,
                        d["run_id"],
                    )
                    for d in datasets
                ],
            )

    def set_state(self, task_ids: list[str], state: str, *, run_id: str) -> None:
        """Set the state of several existing tasks at once."""
        with self._write() as db:
            db.executemany(
                "UPDATE tasks SET state = ?, run_id = ? WHERE task_id = ?",
                [(state, run_id, task_id) for task_id in task_ids],
            )
            if state != "succeeded":
                db.executemany(
                    "DELETE FROM datasets WHERE task_id = ?", [(task_id,) for task_id in task_ids]
                )

    def _decode(self, row: sqlite3.Row) -> TaskRecord:
        data = dict(row)
        for column in _JSON_COLUMNS:
            if data[column] is not None:
                data[column] = json.loads(data[column])
        return TaskRecord(**data)

    def task(self, task_id: str) -> TaskRecord | None:
        """Return the record of one task, or ``None``."""
        row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return self._decode(row) if row else None

    def tasks(self) -> list[TaskRecord]:
        """All task records, in the order they were first planned."""
        rows = self._db.execute("SELECT * FROM tasks ORDER BY rowid").fetchall()
        return [self._decode(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Count the tasks in each state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    # datasets ------------------------------------------------------------------------
    def datasets(self, dataset_type: str | None = None) -> list[dict[str, Any]]:
        """Return registered datasets, optionally of one type; ``path`` is absolute."""
        query = "SELECT * FROM datasets"
        args: tuple[Any, ...] = ()
        if dataset_type is not None:
            query += " WHERE dataset_type = ?"
            args = (dataset_type,)
        rows = self._db.execute(query + " ORDER BY rowid", args).fetchall()
        return [
            {
                **dict(row),
                "data_id": json.loads(row["data_id"]),
                "path": str(self.rundir / row["path"]),
            }
            for row in rows
        ]

    def find_dataset(self, dataset_type: str, **data_id: Any) -> Path:
        """Return the path of the one dataset of ``dataset_type`` matching ``data_id``.

        Raises
        ------
        LookupError
            If none or several datasets match.
        """
        matches = [
            d
            for d in self.datasets(dataset_type)
            if all(d["data_id"].get(k) == v for k, v in data_id.items())
        ]
        if len(matches) != 1:
            known = sorted({d["dataset_type"] for d in self.datasets()})
            msg = (
                f"{len(matches)} datasets of type {dataset_type!r} match {data_id} in "
                f"{self.rundir} (known types: {known}); give the full data id"
            )
            raise LookupError(msg)
        return Path(matches[0]["path"])


def find_dataset(rundir: str | os.PathLike[str], dataset_type: str, **data_id: Any) -> Path:
    """Return the path of a dataset produced by a run, e.g. from a notebook.

    Parameters
    ----------
    rundir : str or path-like
        The run folder.
    dataset_type : str
        ``step.output``, e.g. ``"inspect.summary"``.
    **data_id
        Dimension values, e.g. ``visit=3, band="r"``.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> find_dataset("run", "inspect.summary", visit=3, band="r")  # doctest: +SKIP
    PosixPath('run/tasks/inspect/visit=3,band=r,detector=0/summary.json')
    """
    with Registry(rundir, readonly=True) as registry:
        return registry.find_dataset(dataset_type, **data_id)
