"""The task host: a small process that imports papermill once and forks one child per task.

Importing papermill costs about a second, and starting a kernel half a second, more than
the rest of a small task's overhead. Each worker therefore keeps one host process
(``python -m stacklab.toolkit.batch.hostmain``) that has everything imported; for each
task it forks a child, which

- starts its own session (so a timeout can kill it and everything it started),
- asks the kernel to die with it (``PR_SET_PDEATHSIG`` on Linux, and ipykernel's own
  parent polling),
- runs the notebook with papermill in the task's attempt folder, with stdout/stderr in
  ``task.log``, in a kernel forked from itself with the kernel modules already imported
  (`forkkernel`; or, with ``STACKLAB_FORK_KERNELS=0``, a kernel started from this very
  interpreter),
- checks the executed notebook, caps huge stream outputs and the declared outputs, and
- writes ``.result.json`` atomically before exiting.

The host reads one spec path per line on stdin and answers with the child's pid, or
with ``stale`` (and exits) when a source file of a module it imported has changed since
it started, so that no task runs code older than what is on disk. Before forking the
first task whose notebook imports ``stacklab``, a host that forks kernels imports all of
``stacklab.toolkit``, so that such notebooks start with numpy, scipy, astropy and galsim
imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .forkkernel import (
    PROVISIONER_NAME,
    TaskKernelManager,
    fork_kernels_enabled,
    preload_kernel_modules,
)

__all__ = ["RESULT_NAME", "SPEC_NAME", "STALE_ANSWER", "main", "run_notebook_task"]

RESULT_NAME = ".result.json"
#: The host's answer, instead of a pid, when a module it imported changed on disk.
STALE_ANSWER = "stale"
SPEC_NAME = ".task.json"
LOG_NAME = "task.log"
#: Stream outputs longer than this (characters) are cut in the kept notebook.
MAX_STREAM_CHARS = 100_000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PR_SET_PDEATHSIG = 1
#: Environment for kernels: one thread per numerical library, since one task runs per core.
KERNEL_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


def _die_with_parent(sig: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def install_kernelspec(folder: Path, *, fork: bool = False) -> None:
    """Write a ``python3`` kernel spec running this interpreter under ``folder`` and use it.

    ``folder`` is put first on ``JUPYTER_PATH`` of this process (and so of its children),
    so papermill's ``python3`` kernel is always the interpreter the runner runs in,
    whatever kernel specs the environment has installed. With ``fork``, kernels are
    forked from the task process by `forkkernel.ForkProvisioner` instead.
    """
    spec_dir = folder / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (stacklab batch)",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
    }
    if fork:
        spec["metadata"] = {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME}}
    # Hosts of one interpreter share the folder (see `_kernelspec_folder`): the spec is
    # replaced atomically, so a host starting a kernel never reads a half-written file.
    text = json.dumps(spec)
    path = spec_dir / "kernel.json"
    if not path.exists() or path.read_text() != text:
        partial = spec_dir / f".kernel.json.{os.getpid()}"
        partial.write_text(text)
        partial.replace(path)
    existing = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(folder) + (os.pathsep + existing if existing else "")


def _kernelspec_folder(stack: contextlib.ExitStack, *, fork: bool) -> Path:
    """Return the folder for this host's kernel spec: one per interpreter and kernel mode.

    A host normally ends with a SIGKILL (it dies with its worker) and runs no cleanup,
    so a temporary folder per host was left behind in the temporary directory by every
    worker that ever ran. The spec depends only on the interpreter and on ``fork``:
    every host of one interpreter shares a folder in the user's cache. Where the cache
    cannot be written, a temporary folder (removed when ``stack`` closes) is used.
    """
    key = hashlib.sha256(f"{sys.executable}\0{fork}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "stacklab" / "kernelspecs" / key
    try:
        (folder / "kernels" / "python3").mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stacklab-kernels-")))
    return folder


def _descendants_kill() -> None:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(child.pid), signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _on_term(signum: int, frame: Any) -> None:
    _descendants_kill()
    os._exit(128 + signum)


def _original_cell_index(nb: Any) -> int | None:
    """Index, in the source notebook, of the cell that failed (injected cells excluded)."""
    index = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            return index
        if cell.cell_type == "code" and any(
            o.get("output_type") == "error" for o in cell.get("outputs", [])
        ):
            return index
        index += 1
    return None


def _judge_recorded_exception(nb: Any, fail: Any) -> None:
    """Fail unless papermill's recorded exception is a clean ``sys.exit(0)``.

    Papermill stops at ``SystemExit`` with an empty or zero code and returns normally,
    which is success; any other recorded exception, even one without an error output,
    is a failure.
    """
    errors = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    for error in errors:
        clean_exit = error.get("ename") == "SystemExit" and error.get("evalue") in ("", "0", "None")
        if not clean_exit:
            fail("error", error.get("ename"), error.get("evalue"), "\n".join(error["traceback"]))
            return
    if not errors:
        fail("error", "UnknownError", "papermill recorded an exception without error output", None)


def _cap_streams(nb: Any, limit: int) -> bool:
    """Merge each cell's consecutive stream outputs and cut those longer than ``limit``."""
    capped = False
    for cell in nb.cells:
        merged: list[Any] = []
        for output in cell.get("outputs", []):
            if isinstance(output.get("text"), list):  # as stored on disk: a list of lines
                output["text"] = "".join(output["text"])
            last = merged[-1] if merged else None
            if (
                output.get("output_type") == "stream"
                and last is not None
                and last.get("output_type") == "stream"
                and last.get("name") == output.get("name")
            ):
                last["text"] = last["text"] + output["text"]
            else:
                merged.append(output)
        if cell.cell_type == "code":
            cell["outputs"] = merged
        for output in merged:
            text = output.get("text")
            if (
                output.get("output_type") == "stream"
                and isinstance(text, str)
                and len(text) > limit
            ):
                head, tail = text[: limit // 2], text[-limit // 2 :]
                cut = len(text) - len(head) - len(tail)
                output["text"] = (
                    f"{head}\n[... {cut} characters cut by stacklab batch; the output was "
                    f"{len(text)} characters ...]\n{tail}"
                )
                capped = True
    return capped


def run_notebook_task(spec: dict[str, Any], attempt_dir: Path) -> dict[str, Any]:
    """Execute one task's notebook in ``attempt_dir`` (the current folder) and describe it.

    Returns a JSON-able dict: ``status`` (``ok``/``failed``), ``error_class`` (``error``,
    ``exit``, ``kernel-died``, ``startup``, ``missing-output``, ``io``, ``internal``),
    ``ename``, ``evalue``, ``cell_index``, ``traceback``, ``outputs`` (name -> sha256),
    ``executed_notebook`` (file name) and ``capped_outputs``.
    """
    import nbformat
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from .keys import file_sha256

    notebook = Path(spec["notebook"])
    executed = attempt_dir / notebook.name
    result: dict[str, Any] = {
        "status": "ok",
        "error_class": None,
        "ename": None,
        "evalue": None,
        "cell_index": None,
        "traceback": None,
        "outputs": {},
        "executed_notebook": executed.name,
        "capped_outputs": False,
    }

    def fail(error_class: str, ename: str | None, evalue: str | None, tb: str | None) -> None:
        result.update(
            status="failed",
            error_class=error_class,
            ename=ename,
            evalue=evalue,
            traceback=_ANSI.sub("", tb) if tb else tb,
        )

    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=spec["parameters"],
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            start_timeout=spec.get("start_timeout_s", 60),
            request_save_on_cell_execute=True,
            kernel_manager_class=TaskKernelManager,
        )
    except PapermillExecutionError as err:
        kind = "exit" if err.ename == "SystemExit" else "error"
        fail(kind, err.ename, err.evalue, "\n".join(err.traceback))
    except DeadKernelError as err:
        fail("kernel-died", "DeadKernelError", str(err) or "the kernel died", None)
    except (RuntimeError, TimeoutError) as err:
        message = str(err).lower()
        # papermill writes the output notebook before it starts the kernel, so "kernel died
        # before replying to kernel_info" may come with an (unexecuted) notebook on disk.
        started = not any(s in message for s in ("kernel_info", "didn't respond"))
        if "kernel" in message and (not executed.exists() or not started):
            fail("startup", type(err).__name__, str(err), traceback.format_exc())
        else:
            fail("internal", type(err).__name__, str(err), traceback.format_exc())
    except OSError as err:
        fail("io", type(err).__name__, str(err), traceback.format_exc())
    except Exception as err:  # anything else papermill raises still fails only this task
        fail("internal", type(err).__name__, str(err), traceback.format_exc())

    if executed.exists():
        try:
            # Plain JSON: nbformat.read validates the whole document, which costs more than
            # the rest of the check for a small notebook.
            nb = nbformat.from_dict(json.loads(executed.read_text()))
            if result["status"] == "ok" and nb.metadata.get("papermill", {}).get("exception"):
                _judge_recorded_exception(nb, fail)
            if result["status"] != "ok":
                result["cell_index"] = _original_cell_index(nb)
            if _cap_streams(nb, spec.get("max_stream_chars", MAX_STREAM_CHARS)):
                result["capped_outputs"] = True
                tmp = executed.with_name(f".{executed.name}.tmp")
                tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
                tmp.replace(executed)
        except (OSError, ValueError) as err:
            if result["status"] == "ok":
                fail("io", type(err).__name__, f"executed notebook unreadable: {err}", None)
    if result["status"] == "ok":
        missing = [f for f in spec["outputs"].values() if not (attempt_dir / f).is_file()]
        if missing:
            fail(
                "missing-output",
                "MissingOutput",
                f"the notebook did not write its declared outputs {missing}",
                None,
            )
        else:
            result["outputs"] = {
                name: file_sha256(attempt_dir / file) for name, file in spec["outputs"].items()
            }
    return result


def _child(spec_path: Path, host_pid: int) -> None:
    os.setsid()
    _die_with_parent(signal.SIGTERM)
    if os.getppid() != host_pid:  # the host died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    attempt_dir = spec_path.parent
    log_fd = os.open(attempt_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.chdir(attempt_dir)
    started = time.time()
    try:
        spec = json.loads(spec_path.read_text())
        result = run_notebook_task(spec, attempt_dir)
    except BaseException as err:
        result = {
            "status": "failed",
            "error_class": "internal",
            "ename": type(err).__name__,
            "evalue": str(err),
            "traceback": traceback.format_exc(),
            "outputs": {},
        }
    result["child_seconds"] = time.time() - started
    tmp = attempt_dir / f"{RESULT_NAME}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(attempt_dir / RESULT_NAME)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _warm_task_machinery() -> None:
    """Do once in the host what every task would otherwise do for itself.

    papermill validates the notebook each time it saves it, against a schema nbformat
    compiles on first use (30 ms); jupyter_client scans the installed entry points for
    kernel provisioners, and looks up ipykernel's own kernel spec, for every kernel.
    """
    import ipykernel.kernelspec  # noqa: F401
    from jupyter_client.provisioning import KernelProvisionerFactory
    from nbformat.validator import get_validator

    get_validator()  # the current nbformat version's schema, which papermill writes
    KernelProvisionerFactory.instance()


_IMPORTS_STACKLAB = re.compile(r"^\s*(?:import|from)\s+stacklab\b", re.MULTILINE)


def _imports_stacklab(notebook: str, cache: dict[tuple[str, int], bool]) -> bool:
    """Whether a code cell of ``notebook`` imports ``stacklab`` (cached by file and mtime)."""
    try:
        key = (notebook, os.stat(notebook).st_mtime_ns)  # noqa: PTH116 - as below
        if key not in cache:
            cells = json.loads(Path(notebook).read_text()).get("cells", [])
            cache[key] = any(
                cell.get("cell_type") == "code"
                and _IMPORTS_STACKLAB.search("".join(cell.get("source", "")))
                for cell in cells
            )
        return cache[key]
    except (OSError, ValueError, AttributeError, TypeError):
        return False  # the task itself will report an unreadable notebook


def _preload_toolkit(spec_path: Path, cache: dict[tuple[str, int], bool]) -> bool:
    """Import all of ``stacklab.toolkit`` before forking the first task that uses it.

    The package imports its modules on first use; with numpy, scipy, astropy and galsim
    that costs 1.2 s, paid here once instead of in the kernel of every stacklab
    notebook, and not at all by a host that runs no stacklab notebook. Returns whether
    it tried (an import error is printed to the host's stderr and left to the kernel,
    whose own import reports it in the notebook).
    """
    if "stacklab.toolkit.process_frame" in sys.modules:
        return False
    try:
        notebook = json.loads(spec_path.read_text())["notebook"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not _imports_stacklab(str(notebook), cache):
        return False
    try:
        import stacklab.toolkit as toolkit

        for name in toolkit.__all__:
            getattr(toolkit, name)
    except Exception:  # e.g. a module saved mid-edit: the kernel's own import reports it
        traceback.print_exc()
    return True  # what was imported is watched for changes, failed or not


def _module_sources() -> dict[str, int]:
    """Modification times (ns) of the source files of every module imported so far."""
    sources = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                sources[path] = os.stat(path).st_mtime_ns  # noqa: PTH116 - speed, see below
    return sources


def _sources_changed(sources: dict[str, int]) -> bool:
    """Whether any file of `_module_sources` was modified or removed since.

    About 3 µs per file (6 ms for the 2000 files of a host with stacklab imported);
    ``os.stat`` rather than ``Path.stat``, which costs three times as much.
    """
    for path, mtime_ns in sources.items():
        try:
            if os.stat(path).st_mtime_ns != mtime_ns:  # noqa: PTH116
                return True
        except OSError:
            return True
    return False


def main() -> int:
    """Serve fork requests on stdin until it closes (entry point of the host process)."""
    _die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Children are reaped automatically; the worker watches them by pid and result file.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    os.environ.update(KERNEL_ENV)
    # ``python -m`` put the folder the worker started in first on sys.path; a kernel,
    # forked from here, must not import from it (ipykernel adds its own working folder).
    if sys.path and sys.path[0] in ("", str(Path.cwd())):
        del sys.path[0]
    import nbclient  # noqa: F401 - imported once here, inherited by every forked child
    import nbformat  # noqa: F401
    import papermill  # noqa: F401
    import psutil  # noqa: F401

    fork = fork_kernels_enabled()
    if fork:
        preload_kernel_modules()
    _warm_task_machinery()
    # Keep everything imported so far out of the garbage collector's sight: a forked
    # task or kernel that collects (IPython does at exit) would otherwise walk, and so
    # copy, every page of it, 0.17 s per task.
    gc.freeze()
    with contextlib.ExitStack() as stack:
        install_kernelspec(_kernelspec_folder(stack, fork=fork), fork=fork)
        host_pid = os.getpid()
        sources = _module_sources()
        notebooks_seen: dict[tuple[str, int], bool] = {}
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for line in sys.stdin:
            spec_path = Path(line.strip())
            if _sources_changed(sources):
                # Tasks (and forked kernels) must run the code on disk, not what this
                # host imported before a module was edited or reinstalled: ask for a
                # new host.
                sys.stdout.write(f"{STALE_ANSWER}\n")
                sys.stdout.flush()
                return 0
            if fork and _preload_toolkit(spec_path, notebooks_seen):
                gc.freeze()
                # Watch the new modules' files too (the ones already watched keep the
                # modification times they had when first imported).
                sources = {**_module_sources(), **sources}
            pid = os.fork()
            if pid == 0:
                # A forked child must never return into this loop: its unwinding would run
                # the host's cleanup (and delete the kernel spec the host still serves).
                try:
                    _child(spec_path, host_pid)  # ends with os._exit(0) when it succeeds
                except BaseException:
                    with contextlib.suppress(BaseException):
                        traceback.print_exc()
                finally:
                    os._exit(1)
            sys.stdout.write(f"{pid}\n")
            sys.stdout.flush()
    return 0
