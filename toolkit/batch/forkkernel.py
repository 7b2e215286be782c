"""Kernels forked from the task host instead of started as new interpreters.

Starting ``python -m ipykernel_launcher`` costs about half a second of CPU, nearly all of
it importing IPython, ipykernel and debugpy, and then waits on ZeroMQ's reconnect timer
and jupyter_client's 0.2 s IOPub check because the client connects before the kernel has
bound its sockets. For a batch of short notebooks that is most of the per-task cost, so
the task host imports those modules once and the kernel of each task is a fork of the
task's own process (itself a fork of the host):

- `ForkProvisioner` is a jupyter_client kernel provisioner (chosen in the kernel spec's
  ``metadata.kernel_provisioner``) that forks instead of spawning, and returns only once
  the kernel has bound its sockets, so the first ``kernel_info`` request is answered at
  once;
- `TaskKernelManager` and `TaskKernelClient` (what papermill is given for every task,
  forked or not) drop two fixed waits of jupyter_client: the 0.2 s of IOPub silence it
  waits for after the kernel is ready, and the 0.1 s period at which it checks that a
  kernel asked to shut down has ended; and they do not interrupt an idle kernel before
  shutting it down (the interrupt can hang ipykernel's last flush for 2.5 s);
- the forked kernel starts its own session (interrupts and kills reach its whole group),
  dies with the task process (``PR_SET_PDEATHSIG``), takes the environment, working
  folder and arguments jupyter_client prepared, resets the signal handlers and the event
  loop it inherited, drops the exit handlers and finalizers it inherited (they belong to
  the host's objects), and runs its own (IPython's history, the notebook's) when it
  exits. The host freezes its objects out of the garbage collector's sight before
  forking (``gc.freeze``), so that a kernel collecting does not copy the host's pages.

Everything a notebook can observe is as in a new kernel (``sys.argv``, ``sys.path``,
environment, ``__main__``, a random state reseeded at fork), except that the modules the
host imported are already in ``sys.modules``: papermill and jupyter_client, and, once
the host has run a notebook that imports ``stacklab``, ``stacklab.toolkit`` with numpy,
scipy and astropy, so that stacklab notebooks start with their imports done. The host is
replaced when a file of any of those modules changes (see `taskhost`). Set
``STACKLAB_FORK_KERNELS=0`` to start every kernel as a new interpreter instead.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from traitlets import DottedObjectName, Type

__all__ = [
    "PROVISIONER_NAME",
    "ForkProvisioner",
    "TaskKernelClient",
    "TaskKernelManager",
    "fork_kernels_enabled",
    "preload_kernel_modules",
]

#: Name of the provisioner in kernel specs (an entry point of the ``stacklab`` package, so
#: that a process a task starts can resolve the kernel spec it inherits).
PROVISIONER_NAME = "stacklab-fork"
#: How long a launch waits for the forked kernel to bind its sockets (s); after that the
#: client connects anyway and jupyter_client's own start timeout applies.
_BIND_WAIT_S = 60.0
#: Poll period while waiting for a kernel process to end (s); jupyter_client's 0.1 s
#: would be a tenth of a second lost at the end of every task.
_EXIT_POLL_S = 0.005
#: How long a kernel that has left its main loop waits for its control thread (s).
_THREAD_STOP_WAIT_S = 2.0
_PR_SET_PDEATHSIG = 1


def fork_kernels_enabled() -> bool:
    """Whether task kernels are forked (POSIX with ``fork``, not disabled by the user)."""
    setting = os.environ.get("STACKLAB_FORK_KERNELS", "1").strip().lower()
    return hasattr(os, "fork") and setting not in ("0", "false", "no", "off")


#: What a kernel imports while it starts (``ipykernel.debugger`` imports debugpy, a third
#: of the whole start).
_KERNEL_MODULES = (
    "IPython",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "faulthandler",
    "ipykernel.comm",
    "ipykernel.debugger",
    "ipykernel.ipkernel",
    "ipykernel.kernelapp",
    "ipykernel.zmqshell",
    "pdb",
    "tornado.platform.asyncio",
)


def preload_kernel_modules() -> None:
    """Import what a kernel imports while it starts, so that forked kernels start warm."""
    for module in _KERNEL_MODULES:
        importlib.import_module(module)


class _ForkedProcess:
    """The few ``subprocess.Popen`` methods `LocalProvisioner` uses, for a forked child."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): it is gone
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -1
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkProvisioner(LocalProvisioner):
    """Launch an IPython kernel by forking this process (see the module docstring)."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Fork the kernel and return its connection info once its sockets are bound."""
        sys.stdout.flush()
        sys.stderr.flush()
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the kernel process; it never returns
            os.close(ready_read)
            _kernel_process(cmd, kwargs.get("env"), kwargs.get("cwd"), ready_write)
        os.close(ready_write)
        try:
            await _wait_readable(ready_read, _BIND_WAIT_S)
        finally:
            os.close(ready_read)
        self.process = _ForkedProcess(pid)  # type: ignore[assignment]  # Popen-like
        self.pid = pid
        self.pgid = pid  # the kernel leads its own session
        self.cwd = kwargs.get("cwd") or str(Path.cwd())
        return self.connection_info

    async def wait(self) -> int | None:
        """Wait for the kernel process to end, polling every few milliseconds."""
        if self.process is None:
            return 0
        while await self.poll() is None:
            await asyncio.sleep(_EXIT_POLL_S)
        code = self.process.wait()
        self.process = None
        return code

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL the kernel's process group and reap it at once."""
        await super().kill(restart=restart)
        if self.process is not None:
            self.process.wait()


class TaskKernelClient(AsyncKernelClient):
    """A kernel client that is ready as soon as the kernel answers on shell and IOPub."""

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Wait until the kernel answers ``kernel_info`` and IOPub delivers a message.

        jupyter_client then also waits for 0.2 s of IOPub silence to drop the startup
        messages; the notebook client ignores messages that answer other requests, so
        that wait is skipped here.

        Raises
        ------
        RuntimeError
            When the kernel dies or does not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    await self.iopub_channel.get_msg(timeout=0.2)
                except Empty:
                    pass  # IOPub not connected yet: ask again
                else:
                    self._handle_kernel_info_reply(reply)
                    return
            if not await self._async_is_alive():
                msg = "Kernel died before replying to kernel_info"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"Kernel didn't respond in {timeout:g} seconds"
                raise RuntimeError(msg)


class TaskKernelManager(AsyncKernelManager):
    """The kernel manager of batch tasks: `TaskKernelClient`, prompt shutdown checks."""

    client_class = DottedObjectName(f"{__name__}.TaskKernelClient")
    client_factory = Type(TaskKernelClient, klass=AsyncKernelClient)

    async def _async_interrupt_kernel(self) -> None:
        # jupyter_client interrupts every kernel before asking it to shut down. A task's
        # kernel is idle by then, and the SIGINT can land while ipykernel still flushes
        # the last request's output, which then hangs until SIGTERM comes 2.5 s later.
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()

    async def _async_finish_shutdown(
        self, waittime: float | None = None, pollinterval: float = 0.1, restart: bool = False
    ) -> None:
        await super()._async_finish_shutdown(
            waittime=waittime, pollinterval=min(pollinterval, _EXIT_POLL_S), restart=restart
        )


async def _wait_readable(fd: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    except TimeoutError:
        pass  # the client's own start timeout decides what a slow kernel means
    finally:
        loop.remove_reader(fd)


def _kernel_process(
    cmd: list[str], env: dict[str, str] | None, cwd: str | None, ready_fd: int
) -> None:  # pragma: no cover - runs in the forked kernel
    code = 1
    try:
        code = _run_kernel(cmd, env, cwd, ready_fd)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        # Never return into the forking process's stack (its event loop, papermill).
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_kernel(
    cmd: list[str], env: dict[str, str] | None, cwd: str | None, ready_fd: int
) -> int:  # pragma: no cover - runs in the forked kernel
    os.setsid()
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return 1  # the task process died before the death signal was armed
    # Exit handlers and finalizers inherited from the task host belong to its objects
    # (its temporary kernel-spec folder, for one); the kernel must only run its own.
    atexit._clear()
    weakref.finalize._registry.clear()  # type: ignore[attr-defined]
    weakref.finalize._registered_with_atexit = False  # type: ignore[attr-defined]
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The forking process's loop is copied but not running here; a kernel must not share
    # its selector (the epoll instance is the same kernel object in both processes).
    asyncio.set_event_loop(None)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.environ["JPY_PARENT_PID"] = str(parent)
    if cwd:
        os.chdir(cwd)
    arguments = cmd[cmd.index("-f") :] if "-f" in cmd else []
    sys.argv = [cmd[2] if len(cmd) > 2 else "ipykernel_launcher", *arguments]

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.parent_handle = parent
    app.initialize(arguments)
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    app.start()
    # The shutdown request stopped the main loop from the control thread, which still
    # flushes its reply; ipykernel's atexit handler stops IOPub under that flush, which
    # then hangs until SIGTERM. The control thread is told to stop too, so wait for it.
    for thread in (app.control_thread, getattr(app, "shell_channel_thread", None)):
        if thread is not None and thread.is_alive():
            thread.join(timeout=_THREAD_STOP_WAIT_S)
    # Then what the interpreter does when a new kernel's main module returns: wait for
    # threads that are not daemons and run the atexit handlers (IPython's history, the
    # notebook's own).
    main_thread = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    return 0
