"""The installable package (pyproject.toml): the wheel holds the library and its ``ftlab`` command
and nothing of the app, its dependencies are requirements.txt's, and the command of an installed
copy runs from any folder without the checkout."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import ftlab

ROOT = Path(__file__).resolve().parents[1]
APP_ONLY = {"streamlit", "plotly", "pandas"}  # what only the app (app.py, app_pages/, ui/) imports
OUTSIDE_THE_WHEEL = ("ui", "app_pages", "bench", "tests", "app.py")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_dependencies_are_the_pinned_requirements():
    project = _project()
    library, extras = project["dependencies"], project["optional-dependencies"]
    app = extras["app"]
    assert sorted(library + app + extras["ray"]) == sorted(_requirements())  # the same pins, each once
    assert [_name(r) for r in extras["ray"]] == ["ray"] and set(extras) == {"app", "ray"}
    assert len(set(library + app)) == len(library + app)
    assert {_name(r) for r in app} == APP_ONLY
    assert all("==" in r for r in library + app)


def test_the_library_imports_none_of_the_app_only_packages():
    """What the wheel needs is `dependencies`: the app's packages are an extra, so ftlab may not import them."""
    found = []
    for path in (ROOT / "ftlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in APP_ONLY]
    assert found == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and *.egg-info where it
    runs), offline and with the installed setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "dist", "*.egg-info",
                                                                "screenshots"))
    out = work / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    wheels = list(out.glob("ftlab-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_the_library_and_its_command_only(wheel):
    assert wheel.name == f"ftlab-{ftlab.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    info = f"ftlab-{ftlab.__version__}.dist-info"
    assert {n.split("/")[0] for n in names} == {"ftlab", info}
    for outside in OUTSIDE_THE_WHEEL:
        assert not any(n == outside or n.startswith(outside + "/") for n in names)
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "ftlab").rglob("*.py"))
    assert "ftlab/data/registry.py" in sources and "ftlab/cli.py" in sources
    assert sorted(n for n in names if n.startswith("ftlab/")) == sources  # every module, nothing else

    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        metadata = z.read(f"{info}/METADATA").decode()
    assert re.search(r"\[console_scripts\]\s*ftlab = ftlab\.cli:main", entry_points)
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    assert sorted(r for r in requires if "extra ==" not in r) == sorted(_project()["dependencies"])
    assert "Provides-Extra: app" in metadata


def _installed(wheel: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel in it (torch and the rest from the system's site-packages: no
    download), and an environment without the checkout on any path."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "FTLAB_HOME", "FTLAB_DATA")}
    env["FTLAB_OFFLINE"] = "1"
    python = venv / "bin" / "python"
    # the system's pip, run by the venv's python, installs into the venv (it has none of its own)
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return venv, env


@pytest.mark.slow
def test_the_installed_command_runs_from_any_folder(wheel, tmp_path):
    from ftlab import backbones

    venv, env = _installed(wheel, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = str(venv / "bin" / "ftlab")

    def ftlab_(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([command, *args], cwd=elsewhere, capture_output=True, text=True,
                              env={**env, **extra}, timeout=600)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import ftlab; print(ftlab.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, timeout=120)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv) and not Path(where.stdout.strip()).is_relative_to(ROOT)

    home = tmp_path / "home"
    listed = ftlab_("backbones", "--json", FTLAB_HOME=str(home))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout.splitlines()[-1])
    assert [r["name"] for r in rows] == backbones.list_backbones()
    assert [r["description"] for r in rows] == [backbones.get_spec(n).description for n in backbones.list_backbones()]

    helped = ftlab_("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ftlab ")
    # main's return value is the exit status: 1 for a run that is not there, 2 for bad input
    missing = ftlab_("runs", "--delete", "nosuchrun", FTLAB_HOME=str(home))
    assert missing.returncode == 1 and "nosuchrun" in missing.stderr
    assert ftlab_("train", "--epochs", "0").returncode == 2

    # a tiny run with no FTLAB_HOME: the run store is ./.ftlab of the folder it runs in, not the checkout's
    before = sorted((ROOT / ".ftlab").rglob("*")) if (ROOT / ".ftlab").exists() else []
    trained = ftlab_("train", "--dataset", "shapes", "--shapes-per-class", "6", "--backbone", "small_cnn",
                     "--weights", "random", "--image-size", "16", "--epochs", "1", "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads(trained.stdout.splitlines()[-1])
    assert summary["stopped_reason"] == "completed" and summary["epochs_run"] == 1
    assert (elsewhere / ".ftlab" / "runs.db").is_file()
    assert (sorted((ROOT / ".ftlab").rglob("*")) if (ROOT / ".ftlab").exists() else []) == before
    runs = ftlab_("runs", "--json")
    assert [r["id"] for r in json.loads(runs.stdout.splitlines()[-1])] == [summary["run_id"]]
