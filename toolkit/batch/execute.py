"""Worker side: run one task through the task host and watch it until it ends.

`execute_task` is what the runner submits to Dask. It creates a fresh attempt folder
(so a retried task never shares files with a previous attempt), has the worker's task
host fork a child for it, and checks every 50 ms, and at once when the child exits, for:
the result file, the child's death without a result (a crash), the per-task deadline, the
run's cancel file and the runner's death. On a timeout or a cancellation it kills the
child's whole process tree, kernel included, with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from .taskhost import KERNEL_ENV, RESULT_NAME, SPEC_NAME, STALE_ANSWER

__all__ = ["TaskHost", "execute_task", "kill_tree"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


class TaskHost:
    """A ``taskhost`` process owned by this (worker) process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._owner = os.getpid()

    def _start(self) -> subprocess.Popen[str]:
        # The kernel environment is set before the host starts: its kernels are forks of
        # it, and numerical libraries fix their thread counts when they are imported.
        proc = subprocess.Popen(
            [sys.executable, "-m", "stacklab.toolkit.batch.hostmain"],
            env={**os.environ, **KERNEL_ENV},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        stdout: IO[str] = proc.stdout  # type: ignore[assignment]
        if stdout.readline().strip() != "ready":
            proc.kill()
            msg = (
                "the stacklab task host did not start; run "
                "'python -m stacklab.toolkit.batch.hostmain' to see why"
            )
            raise RuntimeError(msg)
        return proc

    def launch(self, spec_path: Path) -> int:
        """Fork a child running the task described by ``spec_path``; return its pid.

        A host that died since the last task (killed, out of memory) is restarted once,
        and so is a host that reports a module it imported changed on disk.
        """
        with self._lock:
            try:
                return self._request(spec_path)
            except (OSError, ValueError):
                if self._proc is not None:
                    self._proc.kill()
                    self._proc.wait()
                return self._request(spec_path)

    def close(self) -> None:
        """Stop the host process (it also stops by itself when this process exits)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            if self._proc is not None:
                # A host that died (killed, out of memory) still has its pipes open here.
                for stream in (self._proc.stdin, self._proc.stdout):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            self._proc = None

    def _request(self, spec_path: Path, *, restart_stale: bool = True) -> int:
        if self._proc is None or self._proc.poll() is not None or self._owner != os.getpid():
            if self._proc is not None and self._owner == os.getpid():
                for stream in (self._proc.stdin, self._proc.stdout):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            self._proc = self._start()
            self._owner = os.getpid()
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{spec_path}\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        if answer == STALE_ANSWER and restart_stale:
            self._proc.wait()  # the host exits; a new one imports the code on disk
            return self._request(spec_path, restart_stale=False)
        return int(answer)


_HOST = TaskHost()


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its descendants and their process groups (other than ours)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    own_group = os.getpgid(0)
    groups = set()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(proc.pid))
    for group in groups - {own_group}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def _runner_alive(spec: dict[str, Any]) -> bool:
    if spec.get("runner_host") != socket.gethostname():
        return True  # cannot tell from another machine; the scheduler's loss handles it
    return psutil.pid_exists(int(spec["runner_pid"]))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _ExitWaiter:
    """Sleep up to a timeout, waking early when process ``pid`` exits.

    Uses a pidfd on Linux (the task child is the host's child, not ours, so ``waitpid``
    is not available); elsewhere it simply sleeps.
    """

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._fd = None

    def wait(self, seconds: float) -> None:
        if self._fd is None:
            time.sleep(seconds)
        else:
            select.select([self._fd], [], [], seconds)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: Attempts of a task whose kernel fails to start (a transient failure of the machine,
#: e.g. a kernel port taken between choosing and binding it), not of its notebook.
STARTUP_ATTEMPTS = 2


def execute_task(spec: dict[str, Any], *, host: TaskHost | None = None) -> dict[str, Any]:
    """Run one task and return its outcome (called on a Dask worker).

    A task whose kernel dies or times out before running any cell (``error_class``
    ``startup``) is tried again, up to `STARTUP_ATTEMPTS` times, each in a new attempt
    folder; its notebook's own failures are never retried.

    Parameters
    ----------
    spec : dict
        ``task_id``, ``notebook``, ``parameters``, ``outputs``, ``staging`` (the task's
        staging folder), ``timeout_s``, ``cancel_file``, ``runner_pid``, ``runner_host``.
    host : TaskHost, optional
        The task host to fork from (default: the one of this process).

    Returns
    -------
    dict
        The child's result (see `run_notebook_task`) plus ``attempt_dir``, ``attempt``
        (1 for the first), ``started``, ``finished``, ``duration_s``, ``worker``; the
        ``error_class`` is ``timeout``, ``cancelled`` or ``crashed`` when the child
        had to be killed or died without a result.
    """
    for _ in range(STARTUP_ATTEMPTS - 1):
        result = _execute_once(spec, host)
        if result.get("error_class") != "startup":
            return result
        log.warning(
            "task %s: kernel failed to start (%s); trying again",
            spec["task_id"],
            result.get("evalue"),
        )
    return _execute_once(spec, host)


def _execute_once(spec: dict[str, Any], host: TaskHost | None) -> dict[str, Any]:
    staging = Path(spec["staging"])
    staging.mkdir(parents=True, exist_ok=True)
    attempt_dir = Path(tempfile.mkdtemp(prefix="attempt-", dir=staging))
    attempt = len(list(staging.glob("attempt-*")))
    spec_path = attempt_dir / SPEC_NAME
    spec_path.write_text(json.dumps(spec))
    result_path = attempt_dir / RESULT_NAME
    cancel_file = Path(spec["cancel_file"])
    timeout_s = spec.get("timeout_s")
    started = time.time()
    pid = (host or _HOST).launch(spec_path)
    try:
        proc: psutil.Process | None = psutil.Process(pid)
    except psutil.NoSuchProcess:
        proc = None
    killed: tuple[str, str] | None = None
    waiter = _ExitWaiter(pid)
    while True:
        if result_path.exists() and (proc is None or not _alive(proc)):
            break
        if proc is None or not _alive(proc):
            time.sleep(0.01)  # the result may land just after the exit
            break
        if timeout_s is not None and time.time() - started > timeout_s:
            killed = ("timeout", f"the task ran longer than its timeout of {timeout_s:g} s")
        elif cancel_file.exists():
            killed = ("cancelled", "the run was interrupted")
        elif not _runner_alive(spec):
            killed = ("cancelled", "the runner process is gone")
        if killed:
            kill_tree(pid)
            break
        waiter.wait(_POLL_S)
    waiter.close()
    finished = time.time()
    if killed is None and result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        error_class, evalue = killed or (
            "crashed",
            "the task process died without a result (killed from outside or out of memory)",
        )
        result = {
            "status": "failed",
            "error_class": error_class,
            "ename": {"timeout": "TaskTimeout", "cancelled": "Cancelled"}.get(
                error_class, "TaskCrashed"
            ),
            "evalue": evalue,
            "cell_index": None,
            "traceback": None,
            "outputs": {},
            "executed_notebook": Path(spec["notebook"]).name,
        }
    result.update(
        attempt_dir=str(attempt_dir),
        attempt=attempt,
        started=started,
        finished=finished,
        duration_s=finished - started,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    return result
