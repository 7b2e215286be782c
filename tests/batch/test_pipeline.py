"""Pipeline files and planning: parsing, grids, manifests, templates, keys (no kernels)."""

from __future__ import annotations

import json

import pytest

from stacklab.toolkit.batch import load_pipeline, parse_pipeline, plan_pipeline

from .helpers import write_notebook


@pytest.fixture
def project(tmp_path):
    write_notebook(tmp_path / "map.ipynb", "visit = 0\nband = 'g'\npath = ''\nscale = 1.0", "x = 1")
    write_notebook(tmp_path / "gather.ipynb", "paths = []\nband = ''", "y = 2")
    return tmp_path


def _plan(project, steps, **top):
    return plan_pipeline(parse_pipeline({"steps": steps, **top}, root=project))


def test_grid_is_a_cartesian_product_with_typed_templates(project):
    plan = _plan(
        project,
        {
            "map": {
                "notebook": "map.ipynb",
                "grid": {"visit": [1, 2], "band": ["g", "r"]},
                "parameters": {"scale": "{factor}", "path": "v{visit:03d}-{band}.fits"},
            }
        },
        vars={"factor": 2},
    )
    assert [t.task_id for t in plan.tasks] == [
        "map/visit=1,band=g",
        "map/visit=1,band=r",
        "map/visit=2,band=g",
        "map/visit=2,band=r",
    ]
    first = plan.tasks[0]
    assert first.parameters == {"visit": 1, "band": "g", "scale": 2.0, "path": "v001-g.fits"}
    assert first.data_id == {"visit": 1, "band": "g"}
    assert len({t.key for t in plan.tasks}) == 4


def test_manifest_grid_and_where_filter(project):
    (project / "data" / "exposures").mkdir(parents=True)
    entries = []
    for visit, band in [(0, "g"), (1, "r"), (2, "g")]:
        path = f"exposures/v{visit}.fits"
        (project / "data" / path).write_bytes(bytes([visit]) * 10)
        entries.append({"visit": visit, "band": band, "detector": 0, "path": path})
    (project / "data" / "manifest.json").write_text(json.dumps({"exposures": entries}))
    plan = _plan(
        project,
        {
            "map": {
                "notebook": "map.ipynb",
                "manifest": "{dataset}/manifest.json",
                "where": {"band": "g"},
                "parameters": {"path": "{path}"},
                "inputs": ["path"],
                "outputs": {"s": "s.json"},
            },
            "coadd": {
                "notebook": "gather.ipynb",
                "gather": {
                    "step": "map",
                    "output": "s",
                    "parameter": "paths",
                    "group_by": ["band"],
                },
            },
        },
        vars={"dataset": "data"},
    )
    maps = [t for t in plan.tasks if t.step == "map"]
    assert [t.label for t in maps] == ["visit=0,band=g,detector=0", "visit=2,band=g,detector=0"]
    assert maps[0].inputs["path"] == str((project / "data/exposures/v0.fits").resolve())
    (coadd,) = [t for t in plan.tasks if t.step == "coadd"]
    assert coadd.task_id == "coadd/band=g" and coadd.parameters["band"] == "g"
    assert coadd.upstream == tuple(t.task_id for t in maps) and coadd.key is None


def test_keys_ignore_markdown_and_follow_code_and_inputs(project):
    (project / "in.txt").write_text("one")
    steps = {
        "map": {
            "notebook": "map.ipynb",
            "parameters": {"path": "in.txt"},
            "inputs": ["path"],
        }
    }
    key = _plan(project, steps).tasks[0].key
    write_notebook(
        project / "map.ipynb",
        "visit = 0\nband = 'g'\npath = ''\nscale = 1.0",
        "x = 1   ",
        markdown="# other words",
    )
    assert _plan(project, steps).tasks[0].key == key
    (project / "in.txt").write_text("two")
    changed = _plan(project, steps).tasks[0].key
    assert changed != key
    write_notebook(project / "map.ipynb", "visit = 0\nband = 'g'\npath = ''\nscale = 1.0", "x = 2")
    assert _plan(project, steps).tasks[0].key not in {key, changed}


def test_toml_and_yaml_give_the_same_plan(project):
    (project / "p.yaml").write_text(
        "name: same\nsteps:\n  map:\n    notebook: map.ipynb\n    grid: {visit: [1, 2]}\n"
    )
    (project / "p.toml").write_text(
        'name = "same"\n[steps.map]\nnotebook = "map.ipynb"\ngrid = { visit = [1, 2] }\n'
    )
    keys = [
        [t.key for t in plan_pipeline(load_pipeline(project / name)).tasks]
        for name in ("p.yaml", "p.toml")
    ]
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    ("steps", "error", "match"),
    [
        ({"map": {"grid": {"visit": [1]}}}, ValueError, "missing 'notebook'"),
        ({"map": {"notebook": "map.ipynb", "grdi": {}}}, ValueError, r"unknown keys \['grdi'\]"),
        ({"map": {"notebook": "nope.ipynb"}}, FileNotFoundError, "nope.ipynb does not exist"),
        (
            {"map": {"notebook": "map.ipynb", "parameters": {"visti": 1}}},
            ValueError,
            "no parameter.*'visti'",
        ),
        (
            {"map": {"notebook": "map.ipynb", "parameters": {"visit": "1"}}},
            TypeError,
            "'visit'.*must be int",
        ),
        (
            {"map": {"notebook": "map.ipynb", "parameters": {"path": "{dataset}/x"}}},
            ValueError,
            r"uses \{dataset\} which is not defined",
        ),
        (
            {"map": {"notebook": "map.ipynb", "manifest": "missing/manifest.json"}},
            FileNotFoundError,
            "simulate the dataset first",
        ),
        (
            {
                "g": {
                    "notebook": "gather.ipynb",
                    "gather": {"step": "x", "output": "o", "parameter": "paths"},
                }
            },
            ValueError,
            "gathers from unknown step 'x'",
        ),
        (
            {
                "map": {"notebook": "map.ipynb", "outputs": {"s": "s.json"}},
                "g": {
                    "notebook": "gather.ipynb",
                    "gather": {"step": "map", "output": "t", "parameter": "paths"},
                },
            },
            ValueError,
            r"gathers output 't' but step 'map' declares outputs \['s'\]",
        ),
        (
            {"map": {"notebook": "map.ipynb", "outputs": {"s": "../escape.json"}}},
            ValueError,
            "must be a relative file name",
        ),
        (
            {"map": {"notebook": "map.ipynb", "timeout": -1}},
            ValueError,
            "timeout must be a positive number",
        ),
        (
            {"map": {"notebook": "map.ipynb", "grid": {"visit": [1]}, "where": {"band": ["r"]}}},
            ValueError,
            "'where' filters manifest entries",
        ),
    ],
)
def test_bad_pipelines_are_refused_with_a_clear_message(project, steps, error, match):
    with pytest.raises(error, match=match):
        _plan(project, steps)


def test_unparsable_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed")
    with pytest.raises(ValueError, match=r"bad.yaml cannot be parsed"):
        load_pipeline(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "absent.yaml")
