"""Resume: content keys decide what reruns (real runs on the shared LocalCluster)."""

from __future__ import annotations

import json

import pytest

from stacklab.toolkit.batch import Registry, find_dataset, load_pipeline, run_pipeline

from .helpers import write_notebook

pytestmark = pytest.mark.slow

MAP_CELLS = (
    "import json",
    "text = open(source).read()\njson.dump({'name': name, 'n': len(text)}, open('size.json', 'w'))",
)
PIPELINE = """
name: resume
steps:
  size:
    notebook: size.ipynb
    grid: {name: [a, b, c]}
    parameters: {source: "{name}.txt"}
    inputs: [source]
    outputs: {size: size.json}
  total:
    notebook: total.ipynb
    gather: {step: size, output: size, parameter: paths}
    outputs: {total: total.json}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    for name, text in {"a": "x", "b": "yy", "c": "zzz"}.items():
        (root / f"{name}.txt").write_text(text)
    write_notebook(root / "size.ipynb", "name = ''\nsource = ''", *MAP_CELLS)
    write_notebook(
        root / "total.ipynb",
        "paths = []",
        "import json\nrows = [json.load(open(p)) for p in paths]\n"
        "json.dump({'total': sum(r['n'] for r in rows), 'names': [r['name'] for r in rows]},"
        " open('total.json', 'w'))",
    )
    (root / "pipeline.yaml").write_text(PIPELINE)
    return root


def _run(project, dask_client, **kwargs):
    return run_pipeline(
        load_pipeline(project / "pipeline.yaml"),
        project / "run",
        client=dask_client,
        progress=False,
        **kwargs,
    )


def _total(project):
    return json.loads(find_dataset(project / "run", "total.total").read_text())


ALL = {"size/name=a", "size/name=b", "size/name=c", "total/all"}


def test_resume_sequence(project, dask_client):
    first = _run(project, dask_client)
    assert set(first.executed) == ALL and first.exit_code == 0
    assert _total(project) == {"total": 6, "names": ["a", "b", "c"]}
    with Registry(project / "run", readonly=True) as registry:
        keys = {t.task_id: t.key for t in registry.tasks()}
        assert registry.find_dataset("size.size", name="b").name == "size.json"
        provenance = registry.task("size/name=a").provenance
    assert provenance["inputs"]["source"]["sha256"]
    assert provenance["outputs"]["size"]["sha256"]
    assert provenance["packages"]["papermill"]
    assert "commit" in provenance["git"]

    # Unchanged: nothing reruns.
    again = _run(project, dask_client)
    assert again.executed == () and set(again.cached) == ALL

    # Markdown-only edit of a notebook: nothing reruns.
    write_notebook(
        project / "size.ipynb", "name = ''\nsource = ''", *MAP_CELLS, markdown="# edited words"
    )
    assert _run(project, dask_client).executed == ()

    # One input changes: only its task and the gather rerun.
    (project / "b.txt").write_text("yyyy")
    changed = _run(project, dask_client)
    assert set(changed.executed) == {"size/name=b", "total/all"}
    assert _total(project)["total"] == 8

    # A damaged output: only that task reruns; its output is identical, so the gather does not.
    (project / "run/tasks/size/name=c/size.json").write_text("garbage")
    repaired = _run(project, dask_client)
    assert repaired.executed == ("size/name=c",)
    assert json.loads((project / "run/tasks/size/name=c/size.json").read_text())["n"] == 3

    # A code edit reruns every task of that notebook.
    write_notebook(project / "size.ipynb", "name = ''\nsource = ''", *MAP_CELLS, "x = 1")
    edited = _run(project, dask_client)
    assert {"size/name=a", "size/name=b", "size/name=c"} <= set(edited.executed)
    with Registry(project / "run", readonly=True) as registry:
        assert registry.task("size/name=a").key != keys["size/name=a"]
        assert registry.task("size/name=a").attempts == 2
    assert not (project / "run/.staging").exists()


def test_allow_partial_gathers_what_succeeded(tmp_path, dask_client):
    write_notebook(
        tmp_path / "m.ipynb",
        "i = 0",
        "assert i != 1, 'i is 1'\nopen('o.txt', 'w').write(str(i))",
    )
    write_notebook(tmp_path / "g.ipynb", "paths = []", "open('n.txt', 'w').write(str(len(paths)))")
    (tmp_path / "p.yaml").write_text(
        "steps:\n"
        "  m: {notebook: m.ipynb, grid: {i: [0, 1, 2]}, outputs: {o: o.txt}}\n"
        "  g: {notebook: g.ipynb, gather: {step: m, output: o, parameter: paths},"
        " outputs: {n: n.txt}}\n"
    )
    summary = run_pipeline(
        tmp_path / "p.yaml",
        tmp_path / "run",
        client=dask_client,
        progress=False,
        allow_partial=True,
    )
    assert summary.failed == ("m/i=1",) and summary.skipped == ()
    assert (tmp_path / "run/tasks/g/all/n.txt").read_text() == "2"


def test_a_changed_input_of_a_gather_step_reruns_it(tmp_path, dask_client):
    write_notebook(tmp_path / "m.ipynb", "i = 0", "open('o.txt', 'w').write(str(i))")
    write_notebook(
        tmp_path / "g.ipynb",
        "paths = []\nref = ''",
        "open('n.txt', 'w').write(open(ref).read() + str(len(paths)))",
    )
    (tmp_path / "ref.txt").write_text("first")
    (tmp_path / "p.yaml").write_text(
        "steps:\n"
        "  m: {notebook: m.ipynb, grid: {i: [0, 1]}, outputs: {o: o.txt}}\n"
        "  g: {notebook: g.ipynb, gather: {step: m, output: o, parameter: paths},"
        " parameters: {ref: ref.txt}, inputs: [ref], outputs: {n: n.txt}}\n"
    )

    def run():
        return run_pipeline(
            tmp_path / "p.yaml", tmp_path / "run", client=dask_client, progress=False
        )

    assert set(run().executed) == {"m/i=0", "m/i=1", "g/all"}
    assert (tmp_path / "run/tasks/g/all/n.txt").read_text() == "first2"
    assert run().executed == ()
    (tmp_path / "ref.txt").write_text("second")  # same path, new content
    assert run().executed == ("g/all",)
    assert (tmp_path / "run/tasks/g/all/n.txt").read_text() == "second2"


def test_tasks_no_longer_planned_become_obsolete(tmp_path, dask_client):
    from stacklab.toolkit.batch.cli_status import run as status

    write_notebook(tmp_path / "m.ipynb", "i = 0", "open('o.txt', 'w').write(str(i))")

    def run(values):
        (tmp_path / "p.yaml").write_text(
            f"steps:\n  m: {{notebook: m.ipynb, grid: {{i: {values}}}, outputs: {{o: o.txt}}}}\n"
        )
        return run_pipeline(
            tmp_path / "p.yaml", tmp_path / "run", client=dask_client, progress=False
        )

    assert run([0, 1, 2]).exit_code == 0
    again = run([0, 1])  # a narrower grid into the same folder
    assert again.executed == () and set(again.cached) == {"m/i=0", "m/i=1"}
    with Registry(tmp_path / "run", readonly=True) as registry:
        assert registry.task("m/i=2").state == "obsolete"
        assert registry.task("m/i=0").state == "succeeded"
        assert registry.find_dataset("m.o", i=0).name == "o.txt"
        with pytest.raises(LookupError):
            registry.find_dataset("m.o", i=2)
    args = type("Args", (), {"rundir": str(tmp_path / "run"), "json": True})()
    assert status(args) == 0  # obsolete tasks do not count


def test_task_keys_follow_the_stacklab_sources(tmp_path):
    # An editable install changes code without changing the version: the keys must see it.
    from stacklab.toolkit.batch.keys import key_versions, sources_sha256

    package = tmp_path / "toolkit"
    package.mkdir()
    (package / "step.py").write_text("GAIN = 1.0\n")
    (package / "notes.txt").write_text("not code")
    before = sources_sha256([package])
    (package / "notes.txt").write_text("still not code")
    assert sources_sha256([package]) == before
    (package / "step.py").write_text("GAIN = 2.0\n")
    assert sources_sha256([package]) != before
    assert len(key_versions()["stacklab_sources"]) == 64
