"""Kernels forked from the task host behave, for a notebook, like new kernels."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from stacklab.toolkit.batch import execute

from .helpers import task_spec, write_notebook

pytestmark = pytest.mark.slow

REPORT = {"report": "report.json"}
# Each task records what a notebook can see of its kernel process, registers an exit
# handler and leaves a temporary folder for the kernel's own finalizers to remove.
REPORT_CELL = """
import atexit, json, os, random, sys, tempfile
import numpy, psutil
threads_before = psutil.Process().num_threads()
matrix = numpy.ones((400, 400))
matrix @ matrix  # a BLAS that uses threads starts them now
scratch = tempfile.TemporaryDirectory()
exit_mark = os.path.join(os.getcwd(), 'exit.txt')
atexit.register(lambda: open(exit_mark, 'w').write('ran'))
json.dump({
    'pid': os.getpid(),
    'cmdline': psutil.Process().cmdline(),
    'parent_pid': os.getppid(),
    'session_leader': os.getsid(0) == os.getpid(),
    'cwd': os.getcwd(),
    'path': sys.path,
    'main': sys.modules['__main__'].__name__,
    'omp': os.environ.get('OMP_NUM_THREADS'),
    'blas_threads': psutil.Process().num_threads() - threads_before,
    'random': random.random(),
    'scratch': scratch.name,
    'x': x,
}, open('report.json', 'w'))
"""


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked-kernel", "new-interpreter"])
def test_every_task_gets_a_fresh_kernel_that_exits_cleanly(tmp_path, monkeypatch, fork):
    monkeypatch.setenv("STACKLAB_FORK_KERNELS", fork)
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", REPORT_CELL)
    host = execute.TaskHost()
    reports = []
    try:
        for x in range(3):  # the host serves several tasks: each must get its own kernel
            result = execute.execute_task(task_spec(tmp_path, notebook, x, REPORT), host=host)
            assert result["status"] == "ok", result
            attempt = Path(result["attempt_dir"])
            report = json.loads((attempt / "report.json").read_text())
            reports.append(report)
            assert report["x"] == x
            # The kernel ran in the attempt folder, exited, ran the notebook's exit
            # handler and its own finalizers, and left no process behind.
            assert Path(report["cwd"]) == attempt.resolve()
            assert (attempt / "exit.txt").read_text() == "ran"
            assert not Path(report["scratch"]).exists()
            assert not psutil.pid_exists(report["pid"])
    finally:
        host.close()
    forked = [" ".join(r["cmdline"]).count("ipykernel_launcher") == 0 for r in reports]
    assert forked == [fork == "1"] * 3
    for report in reports:
        assert report["session_leader"]  # interrupts and kills reach the kernel's group
        # ipykernel's working-folder entry, and not the folder the host was started in
        assert "" in report["path"] and os.getcwd() not in report["path"]
        assert report["main"] == "__main__"
        assert report["omp"] == "1"
        assert report["blas_threads"] == 0  # one task per core: single-threaded BLAS
    assert len({r["pid"] for r in reports}) == 3
    assert len({r["random"] for r in reports}) == 3  # not one random state copied thrice


def test_a_host_whose_imported_code_changed_is_replaced(tmp_path, monkeypatch):
    # The host imports sitecustomize at start; editing it must reach the next task's
    # kernel, as it would reach a new interpreter.
    site = tmp_path / "site"
    site.mkdir()
    module = site / "sitecustomize.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    notebook = write_notebook(
        tmp_path / "t.ipynb",
        "x = 0",
        "import json, sitecustomize\n"
        "json.dump({'value': sitecustomize.VALUE}, open('report.json', 'w'))",
    )
    host = execute.TaskHost()
    values = []
    try:
        for x in range(3):
            if x == 2:
                module.write_text("VALUE = 2\n")
                stat = module.stat()
                os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
            result = execute.execute_task(task_spec(tmp_path, notebook, x, REPORT), host=host)
            assert result["status"] == "ok", result
            report = json.loads((Path(result["attempt_dir"]) / "report.json").read_text())
            values.append(report["value"])
    finally:
        host.close()
    assert values == [1, 1, 2]


def test_host_imports_the_toolkit_once_a_notebook_imports_stacklab(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKLAB_FORK_KERNELS", "1")
    # What the kernel had imported before the notebook's own imports ran.
    probe = (
        "import json, sys\n"
        "json.dump({'toolkit': 'stacklab.toolkit.process_frame' in sys.modules,\n"
        "           'scipy': 'scipy.ndimage' in sys.modules}, open('report.json', 'w'))"
    )
    plain = write_notebook(tmp_path / "plain.ipynb", "x = 0", probe)
    stacklab = write_notebook(
        tmp_path / "uses.ipynb", "x = 0", probe, "from stacklab.toolkit import Exposure"
    )
    host = execute.TaskHost()
    seen = []
    try:
        for x, notebook in enumerate([plain, stacklab, plain]):
            result = execute.execute_task(task_spec(tmp_path, notebook, x, REPORT), host=host)
            assert result["status"] == "ok", result
            seen.append(json.loads((Path(result["attempt_dir"]) / "report.json").read_text()))
    finally:
        host.close()
    # A notebook without stacklab does not make the host import it; the first one that
    # imports stacklab finds it imported, and so does every later task of this host.
    assert seen == [
        {"toolkit": False, "scipy": False},
        {"toolkit": True, "scipy": True},
        {"toolkit": True, "scipy": True},
    ]
