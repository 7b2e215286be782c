"""Packaging: the wheel installs stacklab.toolkit and stacklab.widgets (never bare names),
and binder's pinned requirements agree with pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("stacklab-*.whl")
    return built


def test_wheel_holds_only_namespaced_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"stacklab"}
    assert "stacklab/toolkit/__init__.py" in names and "stacklab/widgets/__init__.py" in names
    assert "stacklab/toolkit/py.typed" in names and "stacklab/widgets/py.typed" in names
    assert not any(name.startswith(("toolkit/", "widgets/")) for name in names)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_imports(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies come from this environment's site-packages, appended *after* the fresh
    # venv's own: a directory added by a .pth file does not run the .pth files inside it, so
    # the editable install's import hook stays off and stacklab can only come from the wheel.
    fresh_site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (fresh_site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import importlib.util, stacklab.toolkit, stacklab.widgets\n"
        "print(stacklab.toolkit.__file__)\n"
        "print(stacklab.widgets.__file__)\n"
        "print(importlib.util.find_spec('toolkit'), importlib.util.find_spec('widgets'))\n"
        "from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit\n"
        "c = SimulationConfig(size=64, galaxy_density_arcmin2=10.0)\n"
        "print(simulate_visit(make_sky(c), c, visit=0).exposure.shape)\n"
    )
    result = subprocess.run(
        [python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    toolkit_file, widgets_file, bare, shape = result.stdout.strip().splitlines()
    assert toolkit_file.startswith(str(fresh_site)) and widgets_file.startswith(str(fresh_site))
    assert bare == "None None"
    assert shape == "(64, 64)"
    help_text = subprocess.run(
        [env_dir / "bin" / "stacklab", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "simulate" in help_text


def _pyproject_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        Requirement(d).name.lower().replace("_", "-"): Requirement(d)
        for d in project["dependencies"]
    }


def test_binder_pins_match_pyproject_dependencies() -> None:
    pins = {}
    for line in (REPO / "binder" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = req
    wanted = _pyproject_dependencies()
    assert set(pins) == set(wanted), (
        "binder/requirements.txt and pyproject.toml name different packages"
    )
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{name} must be pinned with == in binder/requirements.txt"
        assert wanted[name].specifier.contains(spec.version), (
            f"{name}=={spec.version} is outside pyproject's {wanted[name].specifier}"
        )
        assert pin.extras == wanted[name].extras, f"{name}: extras differ"
    assert (REPO / "binder" / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install" in (REPO / "binder" / "postBuild").read_text()
