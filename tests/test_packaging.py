"""The wheel of a plain `pip install .` holds everything kd-bench needs outside a checkout: every module of the
packages, the data files read through importlib.resources (configs/presets.yaml, slurm/profiles/*.yaml,
slurm/cluster.sh, report/paper_data/*) and the `kd-bench` console script. (.ci/run also installs the wheel into a
fresh venv and runs kd-bench from another folder; this test only reads the wheel's file list, offline.)"""
from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data", "methods", "models", "runner", "report", "configs", "slurm")
# not copied into the build folder: VCS, build leftovers (a stale build/lib would end up in the wheel), run output
SKIP_TOP = {".git", "build", "dist", "results", "datasets", "slurm-logs", ".pytest_cache"}


def _offline_build_reason() -> str | None:
    """Why setuptools cannot build a wheel here without the network, or None if it can."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed, and building it in isolation would need the network"
    version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2] if x.isdigit())
    if version < (64,):
        return f"setuptools {importlib.metadata.version('setuptools')} is older than pyproject.toml's >=64"
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "setuptools before 70.1 needs the `wheel` package to build wheels, and it is not installed"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    reason = _offline_build_reason()
    if reason:
        pytest.skip(f"cannot build the wheel offline: {reason}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build leaves build/ and *.egg-info behind in its source folder

    def ignore(folder, names):
        top = Path(folder) == ROOT
        return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (top and n in SKIP_TOP)}

    shutil.copytree(ROOT, src, ignore=ignore)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip wheel failed:\n{out.stdout}\n{out.stderr}"
    (path,) = (tmp / "dist").glob("kd_bench-*.whl")
    with zipfile.ZipFile(path) as z:
        yield z


def test_wheel_holds_every_module_of_the_packages(wheel):
    names = set(wheel.namelist())
    expected = {"benchmark.py"}
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in names, f"package {pkg} is not in the wheel"
        expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / pkg).rglob("*.py")
                     if "__pycache__" not in p.parts}
    missing = sorted(expected - names)
    assert not missing, (f"modules missing from the wheel (a folder without __init__.py, or a package not in "
                         f"setup.cfg's [options.packages.find] include?): {missing}")


def test_wheel_holds_the_data_files(wheel):
    names = set(wheel.namelist())
    paper_data = {f"report/paper_data/{p.name}" for p in (ROOT / "report" / "paper_data").iterdir() if p.is_file()}
    assert any(n.endswith(".csv") for n in paper_data) and "report/paper_data/README.md" in paper_data
    expected = {"configs/presets.yaml", "slurm/profiles/example.yaml", "slurm/profiles/local.yaml",
                "slurm/cluster.sh"} | paper_data
    missing = sorted(expected - names)
    assert not missing, f"data files missing from the wheel (see setup.cfg's [options.package_data]): {missing}"


def test_wheel_installs_only_the_projects_top_level_names(wheel):
    top = {n.split("/")[0] for n in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"benchmark.py", *PACKAGES}, "unexpected top-level entries (tests/? bench/?)"
    (info,) = dist_info
    assert set(wheel.read(f"{info}/top_level.txt").decode().split()) == {"benchmark", *PACKAGES}


def test_wheel_declares_the_kd_bench_console_script(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    cfg = configparser.ConfigParser()
    cfg.read_string(wheel.read(entry_points).decode())
    assert cfg.has_section("console_scripts"), entry_points
    assert cfg["console_scripts"].get("kd-bench") == "benchmark:main"
