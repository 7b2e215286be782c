"""Faults injected for real into one run on a real LocalCluster with real kernels."""

from __future__ import annotations

import json

import nbformat
import psutil
import pytest

from stacklab.toolkit.batch import Registry, parse_pipeline, run_pipeline

from .helpers import write_notebook

pytestmark = pytest.mark.slow

PID_CELL = "import os, json\nopen('kernel.pid', 'w').write(str(os.getpid()))"


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, dask_client):
    root = tmp_path_factory.mktemp("faults")
    write_notebook(
        root / "map.ipynb",
        "visit = 0",
        "import json",
        "if visit == 1:\n    raise ValueError(f'visit {visit} is bad')",
        "json.dump({'visit': visit}, open('out.json', 'w'))",
    )
    write_notebook(
        root / "gather.ipynb",
        "paths = []",
        "open('n.txt', 'w').write(str(len(paths)))",
    )
    write_notebook(root / "magic.ipynb", "x = 0", "%%bash\nexit 3")
    write_notebook(
        root / "exit0.ipynb",
        "x = 0",
        "open('done.txt', 'w').write('ok')",
        "import sys\nsys.exit(0)",
    )
    write_notebook(root / "exit2.ipynb", "x = 0", "import sys\nsys.exit(2)")
    write_notebook(
        root / "sigkill.ipynb",
        "x = 0",
        PID_CELL,
        "import signal\nos.kill(os.getpid(), signal.SIGKILL)",
    )
    write_notebook(
        root / "hang.ipynb",
        "x = 0",
        PID_CELL,
        "import subprocess\nchild = subprocess.Popen(['sleep', '1000'])\n"
        "open('child.pid', 'w').write(str(child.pid))",
        "import time\ntime.sleep(10**6)",
    )
    write_notebook(
        root / "flood.ipynb",
        "n_lines = 1000000",
        "for i in range(n_lines):\n    print('line', i)",
        "open('done.txt', 'w').write('ok')",
    )
    steps = {
        "map": {
            "notebook": "map.ipynb",
            "grid": {"visit": [0, 1, 2]},
            "outputs": {"out": "out.json"},
        },
        "gather": {
            "notebook": "gather.ipynb",
            "gather": {"step": "map", "output": "out", "parameter": "paths"},
            "outputs": {"n": "n.txt"},
        },
        "magic": {"notebook": "magic.ipynb"},
        "exit0": {"notebook": "exit0.ipynb", "outputs": {"done": "done.txt"}},
        "exit2": {"notebook": "exit2.ipynb"},
        "sigkill": {"notebook": "sigkill.ipynb", "timeout": 120},
        "hang": {"notebook": "hang.ipynb", "timeout": 6},
        "flood": {"notebook": "flood.ipynb", "outputs": {"done": "done.txt"}},
    }
    pipeline = parse_pipeline({"name": "faults", "steps": steps}, root=root)
    rundir = root / "run"
    summary = run_pipeline(pipeline, rundir, client=dask_client, progress=False)
    registry = Registry(rundir, readonly=True)
    yield summary, {t.task_id: t for t in registry.tasks()}, rundir
    registry.close()


def test_cell_error_fails_only_that_task(fault_run):
    summary, tasks, rundir = fault_run
    bad = tasks["map/visit=1"]
    assert bad.state == "failed"
    assert (bad.error_class, bad.ename, bad.evalue) == ("error", "ValueError", "visit 1 is bad")
    assert bad.cell_index == 3  # markdown, parameters, import, then the raising cell
    assert "ValueError" in bad.traceback and "\x1b[" not in bad.traceback
    executed = nbformat.read(rundir / bad.executed_notebook, as_version=4)
    assert executed.metadata.papermill.exception is True
    assert tasks["map/visit=0"].state == tasks["map/visit=2"].state == "succeeded"
    assert json.loads((rundir / "tasks/map/visit=2/out.json").read_text()) == {"visit": 2}
    assert not (rundir / "tasks/map/visit=1").exists()
    assert summary.exit_code == 1


def test_gather_is_skipped_when_upstream_failed(fault_run):
    summary, tasks, _ = fault_run
    gather = tasks["gather/all"]
    assert gather.state == "skipped"
    assert "map/visit=1" in gather.evalue and "--allow-partial" in gather.evalue
    assert "gather/all" in summary.skipped


def test_failing_magic_without_output_fails(fault_run):
    task = fault_run[1]["magic/all"]
    assert task.state == "failed"
    assert task.ename == "CalledProcessError"


def test_sys_exit_zero_succeeds_and_nonzero_fails(fault_run):
    _, tasks, rundir = fault_run
    assert tasks["exit0/all"].state == "succeeded"
    assert (rundir / "tasks/exit0/all/done.txt").read_text() == "ok"
    assert tasks["exit2/all"].state == "failed"
    assert (tasks["exit2/all"].error_class, tasks["exit2/all"].evalue) == ("exit", "2")


def test_killed_kernel_is_detected(fault_run):
    _, tasks, rundir = fault_run
    task = tasks["sigkill/all"]
    assert task.state == "failed"
    assert task.error_class == "kernel-died"  # not "timeout": detected well before 120 s
    kernel_pid = int((rundir / "failed/sigkill/all/kernel.pid").read_text())
    assert not psutil.pid_exists(kernel_pid)


def test_hung_cell_times_out_and_leaves_no_process(fault_run):
    _, tasks, rundir = fault_run
    task = tasks["hang/all"]
    assert task.state == "failed"
    assert task.error_class == "timeout"
    assert "timeout of 6 s" in task.evalue
    folder = rundir / "failed/hang/all"
    for name in ("kernel.pid", "child.pid"):
        assert not psutil.pid_exists(int((folder / name).read_text())), name
    assert (folder / "hang.ipynb").is_file()  # the notebook as saved up to the hang


def test_output_flood_is_capped(fault_run):
    _, tasks, rundir = fault_run
    task = tasks["flood/all"]
    assert task.state == "succeeded"
    executed = rundir / task.executed_notebook
    assert executed.stat().st_size < 1_000_000
    text = executed.read_text()
    assert "characters cut by stacklab batch" in text
    assert "line 999999" in text
