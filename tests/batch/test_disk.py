"""A full disk under the run folder: a real 3 MiB tmpfs (needs root; skipped otherwise)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from stacklab.toolkit.batch import Registry
from stacklab.toolkit.batch.cli_status import status_rows

from .helpers import write_notebook

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk test runs where it can")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_fails_clearly_and_keeps_the_registry_consistent(tmp_path, small_disk):
    write_notebook(
        tmp_path / "big.ipynb",
        "megabytes = 1",
        "with open('big.bin', 'wb') as stream:\n"
        "    for _ in range(megabytes):\n"
        "        stream.write(bytes(2**20))",
    )
    (tmp_path / "p.yaml").write_text(
        "steps:\n  big:\n    notebook: big.ipynb\n    grid: {megabytes: [1, 8]}\n"
        "    outputs: {big: big.bin}\n"
    )
    rundir = small_disk / "run"
    command = [sys.executable, "-m", "stacklab.toolkit.cli", "run", str(tmp_path / "p.yaml"),
               "--out", str(rundir), "--workers", "1", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr
    db = sqlite3.connect(f"file:{rundir / 'registry.sqlite'}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Registry(rundir, readonly=True) as registry:
        states = {t.task_id: t for t in registry.tasks()}
    big = states["big/megabytes=8"]
    if done.returncode == 2:  # the registry itself could not be written any more
        assert "free space" in done.stderr
        assert big.state in ("running", "pending", "failed")
        shown = {row["task"]: row["state"] for row in status_rows(rundir)}
        assert shown["big/megabytes=8"] in ("interrupted", "pending", "failed")
    else:
        assert big.state == "failed"
        assert "No space left on device" in (big.evalue or "")
    small = states["big/megabytes=1"]
    if small.state == "succeeded":
        assert (rundir / "tasks/big/megabytes=1/big.bin").stat().st_size == 2**20
    assert not (rundir / "tasks/big/megabytes=8").exists()  # no partial outputs visible
