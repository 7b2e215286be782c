"""Fixtures of the batch tests: tiny notebooks written on the fly and one shared Dask cluster."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import write_notebook

# Kernels started by these tests talk over TCP on 127.0.0.1; ipykernel says so on stderr only.
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

NotebookFactory = Callable[..., Path]


@pytest.fixture
def make_notebook(tmp_path: Path) -> NotebookFactory:
    """Return ``make(name, parameters, *cells)`` writing a notebook into ``tmp_path``."""

    def make(name: str, parameters: str, *cells: str, **kwargs: Any) -> Path:
        return write_notebook(tmp_path / name, parameters, *cells, **kwargs)

    return make


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A LocalCluster like the runner's default (2 single-threaded worker processes)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit=0,
        )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()
