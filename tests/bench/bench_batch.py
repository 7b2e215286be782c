"""Batch runner speed and resource use, against plain papermill in the same session.

Peers and measures (issue 5 goals in brackets):

1. per-task overhead: median wall time of a one-cell notebook run by the runner on one
   worker (measured inside the worker, and end to end per task) minus the median of
   ``papermill.execute_notebook`` called in-process [<= 150 ms];
2. throughput: 32 tasks of 2 s CPU each on 2 workers, makespan over the ideal
   (32 x 2 / 2 s plus one kernel start) [<= 1.15];
3. planning and status of a 2000-task grid [< 2 s], the runner's RSS [< 300 MB];
4. leaks: open file descriptors of the worker and kernels left over after N sequential
   tasks [flat, none].

Run ``python tests/bench/bench_batch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill
import psutil

from stacklab.toolkit.batch import Registry, parse_pipeline, plan_pipeline, run_pipeline
from stacklab.toolkit.batch.cli_status import status_rows


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def client_for(workers: int):
    """The LocalCluster ``stacklab run`` starts, with ``workers`` workers."""
    from stacklab.toolkit.batch.runner import _make_client

    return _make_client(None, workers)


def overhead(root: Path, n: int) -> None:
    notebook = write_notebook(root / "trivial.ipynb", "i = 0", "x = i + 1")
    papermill.execute_notebook(
        str(notebook), str(root / "warm.ipynb"), kernel_name="python3", progress_bar=False
    )
    plain = []
    for i in range(n):
        start = time.perf_counter()
        papermill.execute_notebook(
            str(notebook),
            str(root / "plain.ipynb"),
            parameters={"i": i},
            kernel_name="python3",
            progress_bar=False,
        )
        plain.append(time.perf_counter() - start)
    pipeline = parse_pipeline(
        {"steps": {"t": {"notebook": "trivial.ipynb", "grid": {"i": list(range(n))}}}}, root=root
    )
    client, cluster = client_for(1)
    try:
        run_pipeline(
            parse_pipeline(
                {"steps": {"w": {"notebook": "trivial.ipynb", "grid": {"i": [-1]}}}}, root=root
            ),
            root / "warm-run",
            client=client,
            progress=False,
        )  # starts the worker's task host
        start = time.perf_counter()
        run_pipeline(pipeline, root / "overhead-run", client=client, progress=False)
        end_to_end = (time.perf_counter() - start) / n
    finally:
        client.close()
        cluster.close()
    with Registry(root / "overhead-run", readonly=True) as registry:
        in_worker = [t.duration_s for t in registry.tasks() if t.duration_s is not None]
    median_plain = statistics.median(plain)
    median_worker = statistics.median(in_worker)
    print(f"[1] one-cell notebook, {n} tasks on 1 worker")
    print(f"    papermill in-process      median {median_plain * 1000:7.0f} ms")
    print(
        f"    runner, inside the worker median {median_worker * 1000:7.0f} ms  "
        f"overhead {(median_worker - median_plain) * 1000:+6.0f} ms  "
        f"ratio {median_worker / median_plain:.2f}"
    )
    print(
        f"    runner, end to end / task       {end_to_end * 1000:7.0f} ms  "
        f"overhead {(end_to_end - median_plain) * 1000:+6.0f} ms  "
        f"ratio {end_to_end / median_plain:.2f}  (goal: overhead <= 150 ms)"
    )


def throughput(root: Path, n_tasks: int, seconds: float) -> None:
    notebook = write_notebook(
        root / "cpu.ipynb",
        "i = 0\nseconds = 2.0",
        "import time\nend = time.process_time() + seconds\nwhile time.process_time() < end:\n"
        "    pass",
    )
    # The fastest of three (a run can stall for seconds on a busy machine, and a longer
    # kernel start would only make the ideal easier to approach).
    starts = []
    for _ in range(3):
        start = time.perf_counter()
        papermill.execute_notebook(
            str(notebook),
            str(root / "cpu-plain.ipynb"),
            parameters={"seconds": 0.0},
            kernel_name="python3",
            progress_bar=False,
        )
        starts.append(time.perf_counter() - start)
    kernel_start = min(starts)
    pipeline = parse_pipeline(
        {
            "steps": {
                "cpu": {
                    "notebook": "cpu.ipynb",
                    "grid": {"i": list(range(n_tasks))},
                    "parameters": {"seconds": seconds},
                }
            }
        },
        root=root,
    )
    client, cluster = client_for(2)
    try:
        start = time.perf_counter()
        run_pipeline(pipeline, root / "cpu-run", client=client, progress=False)
        makespan = time.perf_counter() - start
    finally:
        client.close()
        cluster.close()
    ideal = n_tasks * seconds / 2 + kernel_start
    with Registry(root / "cpu-run", readonly=True) as registry:
        tasks = sorted(registry.tasks(), key=lambda t: t.started or 0.0)
    durations = [t.duration_s for t in tasks if t.duration_s is not None]
    typical = statistics.median(durations)
    first_by_worker: dict[str, float] = {}
    for task in tasks:
        if task.duration_s is not None:
            first_by_worker.setdefault(task.worker, task.duration_s)
    host_start = statistics.mean(first_by_worker.values()) - typical
    print(f"[2] {n_tasks} tasks x {seconds:g} s CPU on 2 workers")
    print(
        f"    makespan {makespan:6.1f} s, ideal {ideal:6.1f} s (fastest papermill run of an "
        f"empty task: {kernel_start:.2f} s)  ratio {makespan / ideal:.2f}  (goal <= 1.15)"
    )
    print(
        f"    where it goes: each worker's first task also starts its task host "
        f"(+{host_start:.2f} s); a task takes {typical:.2f} s for {seconds:g} s of CPU "
        f"(+{typical - seconds:.2f} s: kernel fork, papermill, and the other worker's "
        f"overhead on the shared cores)"
    )
    sequential = n_tasks * (seconds + kernel_start)
    print(
        f"    plain papermill one after the other would take about {sequential:6.1f} s: "
        f"ratio {makespan / sequential:.2f}"
    )


def planning(root: Path, n_tasks: int) -> None:
    write_notebook(root / "noop.ipynb", "visit = 0\nband = 'g'", "pass")
    bands = ["u", "g", "r", "i", "z"]
    pipeline = parse_pipeline(
        {
            "steps": {
                "noop": {
                    "notebook": "noop.ipynb",
                    "grid": {"visit": list(range(n_tasks // len(bands))), "band": bands},
                }
            }
        },
        root=root,
    )
    start = time.perf_counter()
    plan = plan_pipeline(pipeline)
    plan_s = time.perf_counter() - start
    rundir = root / "plan-run"
    rundir.mkdir()
    with Registry(rundir) as registry:
        start = time.perf_counter()
        registry.upsert_tasks(
            [
                {
                    "task_id": t.task_id,
                    "step": t.step,
                    "label": t.label,
                    "data_id": t.data_id,
                    "notebook": str(t.notebook),
                    "key": t.key,
                    "state": "pending",
                    "parameters": t.parameters,
                }
                for t in plan.tasks
            ]
        )
        register_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = status_rows(str(rundir))
    status_s = time.perf_counter() - start
    rss_mb = psutil.Process().memory_info().rss / 2**20
    print(f"[3] {len(plan.tasks)}-task grid")
    print(
        f"    plan {plan_s:.2f} s + register {register_s:.2f} s, status of {len(rows)} tasks "
        f"{status_s:.2f} s  (goal < 2 s); this process RSS {rss_mb:.0f} MB (goal < 300 MB)"
    )


def leaks(root: Path, n_tasks: int) -> None:
    write_notebook(root / "leak.ipynb", "i = 0", "x = i")
    client, cluster = client_for(1)

    def fds() -> int:
        return psutil.Process().num_fds()

    def processes() -> int:
        # Everything the worker started and still runs: its task host, and any task
        # process or kernel (forked or not) left behind.
        return len(psutil.Process().children(recursive=True))

    try:
        warm = parse_pipeline(
            {"steps": {"w": {"notebook": "leak.ipynb", "grid": {"i": [-1]}}}}, root=root
        )
        run_pipeline(warm, root / "leak-warm", client=client, progress=False)
        before = next(iter(client.run(fds).values()))
        processes_before = next(iter(client.run(processes).values()))
        pipeline = parse_pipeline(
            {"steps": {"l": {"notebook": "leak.ipynb", "grid": {"i": list(range(n_tasks))}}}},
            root=root,
        )
        run_pipeline(pipeline, root / "leak-run", client=client, progress=False)
        after = next(iter(client.run(fds).values()))
        processes_after = next(iter(client.run(processes).values()))
    finally:
        client.close()
        cluster.close()
    print(f"[4] {n_tasks} sequential tasks on 1 worker")
    print(
        f"    worker fds {before} -> {after}; processes under the worker (task host, "
        f"tasks, kernels) {processes_before} -> {processes_after}  (goal: flat, none left)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    args = parser.parse_args()
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        root = Path(folder)
        overhead(root, 10 if args.quick else 30)
        throughput(root, 8 if args.quick else 32, 2.0)
        planning(root, 2000)
        leaks(root, 30 if args.quick else 500)
    return 0


if __name__ == "__main__":
    sys.exit(main())
