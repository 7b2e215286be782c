"""The run folder: its lock, atomic replacement of task folders, and output checks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .keys import file_sha256

__all__ = [
    "LOCK_NAME",
    "RundirBusyError",
    "check_writable",
    "outputs_intact",
    "replace_dir",
    "run_lock",
]

LOCK_NAME = ".lock"


class RundirBusyError(RuntimeError):
    """Another runner holds the run folder."""


@contextlib.contextmanager
def run_lock(rundir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block.

    The lock is an ``flock`` on ``RUNDIR/.lock``; the kernel releases it when the holder
    dies, so a runner killed with SIGKILL never leaves a stale lock behind.

    Raises
    ------
    RundirBusyError
        If another process holds the lock.
    """
    path = rundir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # `stacklab status` probes the lock with a brief shared hold: retry for a second
        # so that a status call at the wrong moment does not refuse a starting run.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            holder = Path(path).read_text().strip() or "another process"
            msg = (
                f"run folder {rundir} is in use by {holder}; wait for that run to finish, "
                "stop it, or choose another --out folder"
            )
            raise RundirBusyError(msg) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)


def replace_dir(src: Path, dst: Path, trash: Path) -> None:
    """Move folder ``src`` to ``dst`` by renames, replacing any old ``dst`` as a whole.

    The old folder is first renamed into ``trash`` and deleted afterwards, so readers
    see the old complete folder or the new complete folder, never a mix.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    src.chmod(0o777 & ~umask)  # attempt folders are created owner-only
    old = None
    if dst.exists():
        trash.mkdir(parents=True, exist_ok=True)
        old = trash / uuid.uuid4().hex
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(rundir: Path) -> None:
    """Create ``rundir`` if needed and check a file can be written in it.

    Raises
    ------
    PermissionError
        With the reason and the fix, if it cannot.
    """
    try:
        rundir.mkdir(parents=True, exist_ok=True)
        probe = rundir / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as err:
        msg = (
            f"run folder {rundir} is not writable ({err.strerror or err}); choose a folder "
            "on a writable disk with free space for --out"
        )
        raise PermissionError(msg) from err


def outputs_intact(rundir: Path, record: Any) -> bool:
    """Tell whether every output of a succeeded task record exists with its checksum."""
    folder = rundir / "tasks" / record.step / record.label
    for entry in record.outputs.values():
        path = folder / entry["file"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            return False
    return True
