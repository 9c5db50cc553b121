"""The wheel claims one top-level name, ``nicemu``, and carries every package folder of the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: repository folder -> installed package
LAYERS = {"nicemu": "nicemu", "collectives": "nicemu/collectives", "nic": "nicemu/nic",
          "topologies": "nicemu/topologies", "workloads": "nicemu/workloads"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           str(ROOT), "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("nicemu-*.whl")
    return set(zipfile.ZipFile(whl).namelist())


def test_one_top_level_name(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"nicemu"}
    assert len([t for t in tops if t.endswith(".dist-info")]) == 1


def test_every_package_folder_is_listed_in_pyproject():
    """setuptools would still copy an unlisted subpackage as data (deprecated), so read the list itself."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"/".join([LAYERS[folder], *init.relative_to(ROOT / folder).parent.parts]).replace("/", ".")
               for folder in LAYERS for init in (ROOT / folder).rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - folders == set(), "these listed packages have no folder"


def test_every_package_folder_is_in_the_wheel(wheel_names):
    missing = []
    for folder, installed in LAYERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder).as_posix()
            if f"{installed}/{rel}" not in wheel_names:
                missing.append(f"{folder}/{rel}")
    assert not missing, f"package folders left out of pyproject's [tool.setuptools] packages: {missing}"


def test_package_data_is_in_the_wheel(wheel_names):
    for name in ("nicemu/nic/profiles/ideal.yml", "nicemu/nic/profiles/directreduce-paper.yml",
                 "nicemu/workloads/data/sample_azure_conv.csv"):
        assert name in wheel_names


def test_mpi_runtime_is_an_extra():
    """mpi4py is a dependency; the MPICH wheel is the ``mpich`` extra (and part of ``test``, whose suite runs
    under mpiexec), so a cluster install keeps the site's MPI."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d.split(">")[0].split(";")[0].strip() for d in project["dependencies"]]
    assert "mpi4py" in deps and "mpich" not in deps
    extras = project["optional-dependencies"]
    for extra in ("mpich", "test"):
        assert any(d.startswith("mpich") for d in extras[extra]), extra
