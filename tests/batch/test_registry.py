"""The SQLite registry (real sqlite3, WAL mode)."""

from __future__ import annotations

import sqlite3

import pytest

from stacklab.toolkit.batch import Registry, find_dataset


def _task(task_id, **extra):
    step, label = task_id.split("/")
    return {
        "task_id": task_id,
        "step": step,
        "label": label,
        "data_id": {"visit": int(label.split("=")[1])},
        "notebook": "n.ipynb",
        "state": "pending",
        "parameters": {},
        **extra,
    }


@pytest.mark.parametrize("folder", ["run", "run #1?x"])
def test_wal_mode_upsert_order_and_concurrent_reader(tmp_path, folder):
    tmp_path = tmp_path / folder
    tmp_path.mkdir()
    with Registry(tmp_path) as registry:
        assert registry._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        registry.upsert_tasks([_task(f"s/visit={i}") for i in range(3)])
        reader = Registry(tmp_path, readonly=True)
        registry.upsert_task(task_id="s/visit=0", state="running", attempts=1)
        assert [t.task_id for t in reader.tasks()] == ["s/visit=0", "s/visit=1", "s/visit=2"]
        assert reader.task("s/visit=0").state == "running"
        assert reader.task("s/visit=0").parameters == {}  # untouched fields kept
        assert reader.counts() == {"pending": 2, "running": 1}
        with pytest.raises(sqlite3.OperationalError):
            reader._db.execute("DELETE FROM tasks")
        reader.close()


def test_datasets_and_find_dataset(tmp_path):
    with Registry(tmp_path) as registry:
        registry.upsert_tasks([_task("s/visit=1"), _task("s/visit=2")])
        for visit in (1, 2):
            registry.record_success(
                task_fields={"task_id": f"s/visit={visit}", "state": "succeeded"},
                datasets=[
                    {
                        "dataset_type": "s.cat",
                        "data_id": {"visit": visit, "band": "r"},
                        "path": f"tasks/s/visit={visit}/cat.fits",
                        "sha256": "0" * 64,
                        "run_id": "r1",
                    }
                ],
            )
    assert (
        find_dataset(tmp_path, "s.cat", visit=2, band="r") == tmp_path / "tasks/s/visit=2/cat.fits"
    )
    with pytest.raises(LookupError, match=r"2 datasets of type 's.cat' match"):
        find_dataset(tmp_path, "s.cat", band="r")
    with pytest.raises(LookupError, match=r"known types: \['s.cat'\]"):
        find_dataset(tmp_path, "s.catalog", visit=1)


def test_reclaim_stale_marks_running_as_interrupted(tmp_path):
    with Registry(tmp_path) as registry:
        registry.start_run("old", pipeline="p", provenance={})
        registry.upsert_tasks([_task("s/visit=1", state="running"), _task("s/visit=2")])
        registry.start_run("new", pipeline="p", provenance={})
        assert registry.reclaim_stale("new") == 1
        assert registry.task("s/visit=1").state == "interrupted"
        assert [r["state"] for r in registry.runs()] == ["crashed", "running"]


def test_status_of_a_missing_registry_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no registry"):
        Registry(tmp_path, readonly=True)
