"""The worker side alone (no Dask): the task host survives being killed between tasks."""

from __future__ import annotations

import pytest

from stacklab.toolkit.batch import execute

from .helpers import task_spec, write_notebook

pytestmark = pytest.mark.slow


def test_a_dead_task_host_is_restarted(tmp_path):
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", "open('o.txt', 'w').write(str(x))")

    def spec(x):
        return task_spec(tmp_path, notebook, x, {"o": "o.txt"})

    host = execute.TaskHost()
    first = execute.execute_task(spec(1), host=host)
    assert first["status"] == "ok" and first["attempt"] == 1
    host._proc.kill()
    host._proc.wait()
    second = execute.execute_task(spec(2), host=host)
    assert second["status"] == "ok", second
    assert (tmp_path / "staging-2").glob("attempt-*/o.txt")
    host.close()


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked-kernel", "new-interpreter"])
def test_a_kernel_that_dies_at_startup_is_tried_again(tmp_path, monkeypatch, fork):
    # A real kernel death: an IPython startup file that ends the first kernel at once
    # (IPython runs startup files while the kernel initialises, forked or not).
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-die-once.py").write_text(
        "import os\n"
        "flag = os.environ.get('STACKLAB_TEST_KERNEL_DIES_ONCE', '')\n"
        "if flag and os.path.exists(flag):\n"
        "    os.remove(flag)\n"
        "    os._exit(1)\n"
    )
    flag = tmp_path / "die-once"
    flag.touch()
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("STACKLAB_TEST_KERNEL_DIES_ONCE", str(flag))
    monkeypatch.setenv("STACKLAB_FORK_KERNELS", fork)
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", "open('o.txt', 'w').write(str(x))")
    spec = task_spec(tmp_path, notebook, 1, {"o": "o.txt"})
    host = execute.TaskHost()
    try:
        result = execute.execute_task(spec, host=host)
        assert not flag.exists()  # the first kernel did die
        assert result["status"] == "ok" and result["attempt"] == 2, result
        # A failing notebook, in contrast, is not tried again.
        write_notebook(tmp_path / "t.ipynb", "x = 0", "raise ValueError('no')")
        spec.update(staging=str(tmp_path / "staging-2"))
        failed = execute.execute_task(spec, host=host)
        assert failed["error_class"] == "error" and failed["attempt"] == 1
    finally:
        host.close()


def test_task_hosts_share_one_kernel_spec_folder_and_leave_no_temporary_folder(
    tmp_path, monkeypatch
):
    # A host ends with SIGKILL when its worker goes, and then runs no cleanup: its kernel
    # spec must not live in a folder of its own in the temporary directory.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", "open('o.txt', 'w').write(str(x))")
    host = execute.TaskHost()
    for x in (1, 2):
        result = execute.execute_task(task_spec(tmp_path, notebook, x, {"o": "o.txt"}), host=host)
        assert result["status"] == "ok", result
        host._proc.kill()
        host._proc.wait()
    host.close()
    assert not list(temporary.glob("stacklab-kernels-*"))
    specs = list((tmp_path / "cache" / "stacklab" / "kernelspecs").glob("*/kernels/python3"))
    assert len(specs) == 1
    assert [p.name for p in specs[0].iterdir()] == ["kernel.json"]


def test_a_task_host_without_a_writable_cache_uses_a_temporary_folder(tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    notebook = write_notebook(tmp_path / "t.ipynb", "x = 0", "open('o.txt', 'w').write(str(x))")
    host = execute.TaskHost()
    result = execute.execute_task(task_spec(tmp_path, notebook, 1, {"o": "o.txt"}), host=host)
    assert result["status"] == "ok", result
    assert len(list(temporary.glob("stacklab-kernels-*"))) == 1
    host.close()  # a clean stop removes it
    assert not list(temporary.glob("stacklab-kernels-*"))
