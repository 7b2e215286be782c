"""Command-line plumbing without kernels: --set parsing, the run lock, status of a stale run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stacklab.toolkit.batch import Registry, RundirBusyError
from stacklab.toolkit.batch.cli_run import parse_assignments
from stacklab.toolkit.batch.cli_status import runner_active, status_rows
from stacklab.toolkit.batch.rundir import run_lock
from stacklab.toolkit.cli import _parser


def test_set_values_are_typed_and_existing_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    values = parse_assignments(["n=3", "x=0.5", "flag=true", "name=r", "dataset=data"])
    assert values == {
        "n": 3,
        "x": 0.5,
        "flag": True,
        "name": "r",
        "dataset": str(tmp_path / "data"),
    }
    with pytest.raises(ValueError, match="must look like NAME=VALUE"):
        parse_assignments(["oops"])


def test_commands_are_registered():
    args = _parser("run").parse_args(
        ["run", "p.yaml", "--out", "r", "--allow-partial", "--timeout", "5"]
    )
    assert (args.pipeline, args.out, args.allow_partial, args.timeout) == ("p.yaml", "r", True, 5.0)
    assert _parser("status").parse_args(["status", "r", "--json"]).json is True
    assert _parser("report").parse_args(["report", "r"]).rundir == "r"


def test_the_command_line_imports_only_the_command_it_runs():
    # ``stacklab status`` must not pay for scipy, astropy and papermill before printing.
    probe = (
        "import sys\n"
        "from stacklab.toolkit.cli import main\n"
        "try:\n"
        "    main(['status', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('scipy', 'astropy', 'papermill', 'stacklab.toolkit.coadd')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_lock_refuses_a_second_holder_and_status_sees_stale_tasks(tmp_path):
    with Registry(tmp_path) as registry:
        registry.upsert_task(
            task_id="s/all",
            step="s",
            label="all",
            data_id={},
            notebook="n.ipynb",
            state="running",
            parameters={},
        )
    with run_lock(tmp_path):
        assert runner_active(tmp_path)
        assert status_rows(tmp_path)[0]["state"] == "running"
        with pytest.raises(RundirBusyError, match=r"is in use by pid \d+"), run_lock(tmp_path):
            pass
    assert not runner_active(tmp_path)
    assert status_rows(tmp_path)[0]["state"] == "interrupted"
