"""The worker side alone (no Dask): the task host survives being killed between tasks."""

from __future__ import annotations

import os
import socket

import pytest

from stacklab.toolkit.batch import execute

from .helpers import write_notebook

pytestmark = pytest.mark.slow


def test_a_dead_task_host_is_restarted(tmp_path):
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", "open('o.txt', 'w').write(str(x))")

    def spec(x):
        return {
            "task_id": f"t/x={x}",
            "notebook": str(notebook),
            "parameters": {"x": x},
            "outputs": {"o": "o.txt"},
            "staging": str(tmp_path / f"staging-{x}"),
            "timeout_s": 120,
            "cancel_file": str(tmp_path / "cancel"),
            "runner_pid": os.getpid(),
            "runner_host": socket.gethostname(),
        }

    host = execute.TaskHost()
    first = execute.execute_task(spec(1), host=host)
    assert first["status"] == "ok" and first["attempt"] == 1
    host._proc.kill()
    host._proc.wait()
    second = execute.execute_task(spec(2), host=host)
    assert second["status"] == "ok", second
    assert (tmp_path / "staging-2").glob("attempt-*/o.txt")
    host.close()
