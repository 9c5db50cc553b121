"""``nicemu sweep`` as a user runs it: a grid file in, records out, one-line errors for bad grids."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

GRID = "topology: [ring:4, torus:2x2]\nalgo: [ring, directreduce]\nsizes: 1K:64K:8\n"


def test_sweep_jobs_and_resume(nicemu, tmp_path):
    (tmp_path / "grid.yml").write_text(GRID)
    one = nicemu(["sweep", "grid.yml", "--json", "one.json", "--jobs", "1", "--csv", "one.csv"])
    two = nicemu(["sweep", "grid.yml", "--json", "two.json", "--jobs", "2"])
    assert one.returncode == 0 and two.returncode == 0, f"{one}\n{two}"
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    recs = json.loads((tmp_path / "one.json").read_text())
    assert len(recs) == 2 * 3 * 2 and all(r["status"] == "ok" and r["emulated_us"] > 0 for r in recs)
    again = nicemu(["sweep", "grid.yml", "--json", "two.json", "--jobs", "2", "--resume"])
    assert again.returncode == 0 and "12 kept from two.json, 0 to run" in again.stdout, str(again)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


BAD = [
    ("sizes: 1K\nnodes_per_rank: 2\n", "unknown grid key 'nodes_per_rank'"),
    ("sizes: 1K\nranks_per_node: [0]\n", "--ranks-per-node 0 must be at least 1"),
    ("algo: []\n", "grid key 'algo' is an empty list"),
    ("block_size: 1.5\n", "grid key 'block_size' has 1.5 (float)"),
    ("algo: [ring\n", "grid.yml is malformed YAML"),
    ("algo: ring\nexclude: [{size: 1K}]\n", "'exclude' names unknown key 'size'"),
    ("topology: ring:8\nalgo: ring\nsizes: 6\n", "grid point topology=ring:8 bytes=6 algo=ring cannot run"),
    ("topology: ring:3\ncollective: alltoall\nalgo: ring\nsizes: 16\n",
     "grid point topology=ring:3 collective=alltoall bytes=16 algo=ring cannot run"),
    ("collective: reducescatter\nalgo: omnireduce\nsizes: 1K\n",
     "grid point collective=reducescatter bytes=1K algo=omnireduce cannot run"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_grid_one_line(nicemu, tmp_path, text, message):
    (tmp_path / "grid.yml").write_text(text)
    proc = nicemu(["sweep", "grid.yml", "--json", "out.json"])
    assert proc.returncode == 2, str(proc)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, str(proc)
    assert proc.stderr.startswith("nicemu: error: ") and message in proc.stderr, str(proc)
    assert not (tmp_path / "out.json").exists()


def test_keep_going_exit_status_and_records(nicemu, tmp_path):
    (tmp_path / "grid.yml").write_text("topology: ring:8\nalgo: [ring, omniccl]\ncollective: [allreduce, allgather]\n"
                                       "sizes: 4K\n")
    proc = nicemu(["sweep", "grid.yml", "--json", "out.json", "--keep-going"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, str(proc)
    recs = json.loads((tmp_path / "out.json").read_text())
    assert [(r["collective"], r["algo"], r["status"]) for r in recs] == [
        ("allreduce", "ring", "ok"), ("allreduce", "omniccl", "ok"),
        ("allgather", "ring", "ok"), ("allgather", "omniccl", "failed")]
    assert "AllReduce only" in recs[3]["error"]


def test_missing_grid_file(nicemu):
    proc = nicemu(["sweep", "nope.yml", "--json", "out.json"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read grid nope.yml" in proc.stderr, \
        str(proc)
