"""A real Dask scheduler and two worker processes on 127.0.0.1, started as commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from stacklab.toolkit.batch import Registry, parse_pipeline, run_pipeline

from .helpers import write_notebook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    common = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            **common,
        )
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0"],
                **common,
            )
        )  # fmt: skip
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pipeline(root):
    write_notebook(
        root / "square.ipynb",
        "n = 0",
        "open('square.txt', 'w').write(str(n * n))",
    )
    write_notebook(
        root / "sum.ipynb",
        "paths = []",
        "open('sum.txt', 'w').write(str(sum(int(open(p).read()) for p in paths)))",
    )
    steps = {
        "square": {
            "notebook": "square.ipynb",
            "grid": {"n": [1, 2, 3]},
            "outputs": {"sq": "square.txt"},
        },
        "sum": {
            "notebook": "sum.ipynb",
            "gather": {"step": "square", "output": "sq", "parameter": "paths"},
            "outputs": {"sum": "sum.txt"},
        },
    }
    return parse_pipeline({"name": "squares", "steps": steps}, root=root)


def _fingerprint(rundir):
    with Registry(rundir, readonly=True) as registry:
        return {t.task_id: (t.state, t.key, t.outputs) for t in registry.tasks()}


def test_same_keys_and_checksums_on_local_and_remote(tmp_path, scheduler_address, dask_client):
    pipeline = _pipeline(tmp_path)
    remote = run_pipeline(
        pipeline, tmp_path / "remote", scheduler=scheduler_address, progress=False
    )
    local = run_pipeline(pipeline, tmp_path / "local", client=dask_client, progress=False)
    assert remote.exit_code == local.exit_code == 0
    assert _fingerprint(tmp_path / "remote") == _fingerprint(tmp_path / "local")
    assert (tmp_path / "remote/tasks/sum/all/sum.txt").read_text() == "14"
    with Registry(tmp_path / "remote", readonly=True) as registry:
        workers = {t.worker for t in registry.tasks()}
    assert len(workers) >= 1


def test_worker_killed_mid_task_is_retried_once(tmp_path, scheduler_address):
    write_notebook(
        tmp_path / "slow.ipynb",
        "seconds = 4.0",
        "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\ntime.sleep(seconds)",
        "open('done.txt', 'w').write('done')",
    )
    pipeline = parse_pipeline(
        {"steps": {"slow": {"notebook": "slow.ipynb", "outputs": {"done": "done.txt"}}}},
        root=tmp_path,
    )
    rundir = tmp_path / "run"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            run_pipeline, pipeline, rundir, scheduler=scheduler_address, progress=False
        )
        deadline = time.monotonic() + 60
        pid_files: list = []
        while not pid_files and time.monotonic() < deadline:
            pid_files = [p for p in rundir.glob(".staging/*/*/*/kernel.pid") if p.read_text()]
            time.sleep(0.1)
        kernel = psutil.Process(int(pid_files[0].read_text()))
        worker = kernel.parent().parent().parent()  # kernel <- task process <- host <- worker
        assert "dask_worker" in " ".join(worker.parent().cmdline())  # under the nanny
        worker.kill()
        summary = future.result(timeout=120)
    assert summary.exit_code == 0
    psutil.wait_procs([kernel], timeout=10)
    assert not kernel.is_running()
    with Registry(rundir, readonly=True) as registry:
        (record,) = registry.tasks()
        assert (record.state, record.attempts) == ("succeeded", 2)
        assert len(registry.datasets("slow.done")) == 1
