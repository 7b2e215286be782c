"""The stacklab run/status/report commands as separate processes, and runner-level faults."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stacklab.toolkit.batch import Registry

from .helpers import write_notebook

pytestmark = pytest.mark.slow

SLOW_CELLS = (
    "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))",
    "if not os.path.exists(fast_flag):\n    time.sleep(seconds)",
    "open('out.txt', 'w').write(f'task {i}')",
)


def _stacklab(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "stacklab.toolkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "stacklab.toolkit.cli", "run", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _states(rundir: Path) -> dict[str, str]:
    if not (rundir / "registry.sqlite").exists():
        return {}
    try:
        with Registry(rundir, readonly=True) as registry:
            return {t.task_id: t.state for t in registry.tasks()}
    except Exception:  # the registry may be in creation
        return {}


@pytest.fixture
def slow_pipeline(tmp_path):
    write_notebook(tmp_path / "slow.ipynb", "i = 0\nseconds = 1.0\nfast_flag = ''", *SLOW_CELLS)
    (tmp_path / "p.yaml").write_text(
        "name: slow\nvars: {seconds: 1.0}\nsteps:\n"
        "  slow:\n    notebook: slow.ipynb\n    grid: {i: [0, 1, 2, 3, 4, 5]}\n"
        "    parameters: {seconds: '{seconds}', fast_flag: '{flag}'}\n"
        "    outputs: {out: out.txt}\n"
    )
    return tmp_path


def _cleanup(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_run_status_report(tmp_path):
    write_notebook(
        tmp_path / "fig.ipynb",
        "value = 1",
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([0, value]); plt.savefig('fig.png')\nopen('v.txt', 'w').write(str(value))",
    )
    (tmp_path / "p.toml").write_text(
        '[steps.fig]\nnotebook = "fig.ipynb"\ngrid = { value = [1, 2] }\n'
        'outputs = { figure = "fig.png", value = "v.txt" }\n'
    )
    done = _stacklab("run", str(tmp_path / "p.toml"), "--out", str(tmp_path / "run"),
                     "--workers", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 executed" in done.stdout
    status = _stacklab("status", str(tmp_path / "run"), "--json")
    assert status.returncode == 0
    rows = json.loads(status.stdout)
    assert [(r["task"], r["state"]) for r in rows] == [
        ("fig/value=1", "succeeded"),
        ("fig/value=2", "succeeded"),
    ]
    table = _stacklab("status", str(tmp_path / "run"))
    assert "2 succeeded" in table.stdout
    report = _stacklab("report", str(tmp_path / "run"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "run/report/index.html").read_text()
    assert "notebooks/fig/value=1.html" in page and "fig.png" in page
    assert (tmp_path / "run/report/notebooks/fig/value=2.html").stat().st_size > 10_000


def test_bad_input_is_a_clear_error(tmp_path, slow_pipeline):
    bad = _stacklab("run", str(slow_pipeline / "p.yaml"), "--out", str(tmp_path / "r"),
                    "--set", "seconds=abc", "--set", "flag=x")  # fmt: skip
    assert bad.returncode == 2
    assert "parameter 'seconds'" in bad.stderr and "must be float" in bad.stderr
    readonly = _stacklab("run", str(slow_pipeline / "p.yaml"), "--out", "/sys/fs/stacklab-run",
                         "--set", "flag=x")  # fmt: skip
    if readonly.returncode == 0:
        pytest.skip("/sys is writable here")
    assert readonly.returncode == 2
    assert "is not writable" in readonly.stderr and "Traceback" not in readonly.stderr


def test_second_runner_refuses_and_sigint_is_resumable(slow_pipeline):
    rundir = slow_pipeline / "run"
    args = [str(slow_pipeline / "p.yaml"), "--out", str(rundir), "--workers", "2",
            "--set", "seconds=60", "--set", f"flag={slow_pipeline / 'fast'}"]  # fmt: skip
    first = _start(*args)
    try:
        _wait_for(lambda: "running" in _states(rundir).values())
        second = _stacklab("run", *args)
        assert second.returncode == 2
        assert "is in use by pid" in second.stderr
        kernels = [int(p.read_text()) for p in _wait_for_pids(rundir, 2)]
        os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
        assert first.wait(timeout=60) == 130
        assert "rerun the same command to resume" in first.stderr.read()
    finally:
        _cleanup(first)
    assert not any(psutil.pid_exists(pid) for pid in kernels)
    assert set(_states(rundir).values()) == {"cancelled"}
    (slow_pipeline / "fast").touch()
    resumed = _stacklab("run", *args, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert set(_states(rundir).values()) == {"succeeded"}


def _wait_for_pids(rundir: Path, n: int) -> list[Path]:
    found: list[Path] = []

    def enough() -> bool:
        found[:] = list((rundir / ".staging").glob("*/*/attempt-*/kernel.pid"))
        return len(found) >= n and all(p.read_text() for p in found)

    _wait_for(enough)
    return found


def test_runner_killed_with_sigkill_resumes(slow_pipeline):
    rundir = slow_pipeline / "run"
    args = [str(slow_pipeline / "p.yaml"), "--out", str(rundir), "--workers", "2",
            "--set", "seconds=1.5", "--set", "flag="]  # fmt: skip
    first = _start(*args)
    try:
        _wait_for(lambda: list(_states(rundir).values()).count("succeeded") >= 2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        before = _states(rundir)
        with Registry(rundir, readonly=True) as registry:
            done_before = {t.task_id: t.run_id for t in registry.tasks() if t.state == "succeeded"}
        kernels = [int(p.read_text()) for p in (rundir / ".staging").glob("*/*/*/kernel.pid")
                   if p.read_text()]  # fmt: skip
        # Tasks of a dead runner stop by themselves: their watchers see the runner gone.
        _wait_for(lambda: not any(psutil.pid_exists(pid) for pid in kernels), timeout=30)
    finally:
        _cleanup(first)
    assert "running" in before.values()
    shown = {
        r["task"]: r["state"] for r in json.loads(_stacklab("status", str(rundir), "--json").stdout)
    }
    assert "running" not in shown.values() and "interrupted" in shown.values()
    resumed = _stacklab("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    with Registry(rundir, readonly=True) as registry:
        records = {t.task_id: t for t in registry.tasks()}
    assert {t.state for t in records.values()} == {"succeeded"}
    for task_id, run_id in done_before.items():
        assert records[task_id].run_id == run_id  # not executed again
        assert records[task_id].attempts == 1
    for i in range(6):
        assert (rundir / f"tasks/slow/i={i}/out.txt").read_text() == f"task {i}"
    leftovers = [p for p in rundir.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.parts]
    assert leftovers == []
