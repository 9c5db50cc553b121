"""``nicemu sweep``: grid parsing, point order, exclusions, resume, keep-going, --jobs and bad grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nicemu import bench, cli, sweep
from nicemu.collectives.api.model import model_time
from nicemu.errors import UsageError
from nicemu.grid import parse_grid

REPO = Path(__file__).resolve().parents[2]


def _sweep(tmp_path: Path, grid: str, *extra: str, out: str = "out.json") -> tuple[int, list[dict]]:
    (tmp_path / "grid.yml").write_text(grid)
    rc = cli.main(["sweep", str(tmp_path / "grid.yml"), "--json", str(tmp_path / out), *extra])
    path = tmp_path / out
    return rc, json.loads(path.read_text()) if path.exists() else []


def test_product_size_and_order():
    grid = parse_grid("topology: [ring:4, ring:8]\nalgo: [ring, directreduce]\nsizes: [1K, 4K:16K:4]\n")
    points = grid.points()
    assert len(points) == 2 * 2 * 3
    # topology outermost, then sizes, algo innermost
    assert [(p["topology"], p["bytes"], p["algo"]) for p in points[:4]] == [
        ("ring:4", 1024, "ring"), ("ring:4", 1024, "directreduce"),
        ("ring:4", 4096, "ring"), ("ring:4", 4096, "directreduce")]
    assert points[-1] == {"topology": "ring:8", "bytes": 16384, "algo": "directreduce"}


def test_scalar_is_a_one_element_list():
    assert parse_grid("topology: ring:8\nalgo: ring\nsizes: 1K\n").points() == [
        {"topology": "ring:8", "bytes": 1024, "algo": "ring"}]


def test_no_sizes_or_algo_takes_bench_defaults():
    assert [p["bytes"] for p in parse_grid("algo: ring\n").points()] == [1 << k for k in range(10, 25)]
    assert [p["algo"] for p in parse_grid("sizes: 1K\n").points()] == ["ring", "directreduce"]


def test_exclude_skips_matching_points():
    grid = parse_grid("topology: [ring:4, ring:8]\nalgo: [ring, directreduce]\nsizes: [1K, 2K]\n"
                      "exclude:\n  - {topology: ring:4, sizes: 2K}\n  - {algo: directreduce, topology: ring:8}\n")
    got = [(p["topology"], p["bytes"], p["algo"]) for p in grid.points()]
    assert got == [("ring:4", 1024, "ring"), ("ring:4", 1024, "directreduce"),
                   ("ring:8", 1024, "ring"), ("ring:8", 2048, "ring")]


def test_set_axes_become_columns_and_overrides(tmp_path):
    rc, recs = _sweep(tmp_path, "topology: ring:8\nalgo: directreduce\nsizes: 1M\n"
                      "set: {nic.packet_bytes: [1024, 4096]}\n", "--jobs", "1")
    assert rc == 0
    assert [r["nic.packet_bytes"] for r in recs] == [1024, 4096]
    for r in recs:
        want = model_time("allreduce", "directreduce", "ring:8", _profile(r["nic.packet_bytes"]), 1 << 18)
        assert r["emulated_us"] == want.emulated_us
    assert recs[0]["emulated_us"] != recs[1]["emulated_us"]


def _profile(packet_bytes: int):
    from nicemu.nic.profile import load_profile
    return load_profile("directreduce-paper", [f"nic.packet_bytes={packet_bytes}"])


def test_point_equals_model_time_and_bench_record(tmp_path):
    rc, recs = _sweep(tmp_path, "topology: torus:2x3\ncollective: [allreduce, allgather]\nalgo: [ring, directreduce]\n"
                      "sizes: 96K\n", "--jobs", "1")
    assert rc == 0 and len(recs) == 4
    for r in recs:
        t = model_time(r["collective"], r["algo"], "torus:2x3", "directreduce-paper", 96 * 1024 // 4)
        assert r["emulated_us"] == t.emulated_us
        assert r["status"] == "ok" and r["error"] is None and r["wall_us"] is None and r["wrong"] is None
        ref = bench.model_record(sweep.bench_args(_point(r)), r["algo"], *_prepared(r))
        ref.pop("gain_vs_ring")     # bench sets it per size group, sweep across the grid
        assert {k: r[k] for k in ref} == json.loads(json.dumps(ref))


def _point(r: dict) -> dict:
    return {"topology": "torus:2x3", "collective": r["collective"], "bytes": r["bytes"], "algo": r["algo"]}


def _prepared(r: dict):
    args, _, dtype, nbytes, topology, profile = sweep._prepare(_point(r))
    return topology, profile, dtype, nbytes


def test_resume_runs_only_new_points(tmp_path, monkeypatch):
    grid = "topology: ring:8\nalgo: [ring, directreduce]\nsizes: [1K, 4K]\n"
    rc, first = _sweep(tmp_path, grid, "--jobs", "1")
    assert rc == 0 and len(first) == 4
    before = (tmp_path / "out.json").read_bytes()
    calls = []
    real = bench.model_record
    monkeypatch.setattr(bench, "model_record", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    rc, _ = _sweep(tmp_path, grid, "--jobs", "1", "--resume")
    assert rc == 0 and calls == []
    assert (tmp_path / "out.json").read_bytes() == before
    rc, recs = _sweep(tmp_path, grid.replace("[1K, 4K]", "[1K, 4K, 16K]"), "--jobs", "1", "--resume")
    assert rc == 0 and len(calls) == 2 and len(recs) == 6
    assert [r["bytes"] for r in recs] == [1024, 1024, 4096, 4096, 16384, 16384]
    assert recs[:4] == first


def test_keep_going_records_failures(tmp_path, capsys):
    rc, recs = _sweep(tmp_path, "topology: ring:3\ncollective: [allreduce, alltoall]\nalgo: ring\n"
                      "sizes: [12, 16]\n", "--keep-going", "--jobs", "1")
    assert rc == 1
    assert [r["status"] for r in recs] == ["ok", "ok", "ok", "failed"]
    bad = recs[3]
    assert bad["collective"] == "alltoall" and bad["bytes"] == 16 and bad["emulated_us"] is None
    assert bad["error"].startswith("grid point topology=ring:3 collective=alltoall bytes=16 algo=ring cannot run")
    assert "# failed: " in capsys.readouterr().out


def test_jobs_one_and_two_write_identical_files(tmp_path):
    grid = "topology: [ring:4, torus:2x2]\nalgo: [ring, directreduce, omniccl]\nsizes: 1K:64K:4\ndensity: [1, 0.3]\n"
    assert _sweep(tmp_path, grid, "--jobs", "1", out="a.json")[0] == 0
    assert _sweep(tmp_path, grid, "--jobs", "2", "--csv", str(tmp_path / "b.csv"), out="b.json")[0] == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "b.csv").read_text().count("\n") == 1 + 2 * 3 * 4 * 2


BAD = [
    ("topolgy: ring:8\n", "unknown grid key 'topolgy'"),
    ("algo: []\n", "grid key 'algo' is an empty list"),
    ("block_size: [256, big]\n", "grid key 'block_size' has 'big' (str)"),
    ("density: true\n", "grid key 'density' has True (bool)"),
    ("algo: [ring\n", "is malformed YAML"),
    ("- ring\n", "(part 1) must be a YAML mapping"),
    ("[]\n", "is an empty list; give at least one mapping"),
    ("tag: [1]\n", "grid key 'tag' has 1 (int)"),
    ("algo: ring\nexclude: [{algorithm: ring}]\n", "'exclude' names unknown key 'algorithm'"),
    ("set: {nic.packet_bytes: []}\n", "grid key 'set.nic.packet_bytes' is an empty list"),
    ("set: [1]\n", "grid key 'set' must map profile keys"),
    ("sizes: [1K, 2Q]\n", "bad size '2Q'"),
    ("algo: ring,directreduce\n", "write a YAML list, e.g. algo: [ring, directreduce]"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_grid_parse(text, message):
    with pytest.raises(UsageError) as info:
        parse_grid(text, "grid.yml")
    assert message in str(info.value) and "\n" not in str(info.value)


UNRUNNABLE = [
    ("topology: ring:8\nalgo: ring\nsizes: 6\n", "grid point topology=ring:8 bytes=6 algo=ring cannot run: size 6 B"),
    ("topology: ring:3\ncollective: alltoall\nalgo: ring\nsizes: 16\n",
     "grid point topology=ring:3 collective=alltoall bytes=16 algo=ring cannot run: --collective alltoall"),
    ("collective: allgather\nalgo: omniccl\nsizes: 1K\n", "grid point collective=allgather bytes=1K algo=omniccl"),
    ("algo: ring\nset: {nic.no_such_key: [1]}\n", "grid point nic.no_such_key=1 bytes=1K algo=ring cannot run"),
]


@pytest.mark.parametrize("text,message", UNRUNNABLE)
def test_unrunnable_point_stops_before_any_run(tmp_path, capsys, text, message, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "model_record", lambda *a, **k: calls.append(a))
    rc, recs = _sweep(tmp_path, text, "--jobs", "1")
    err = capsys.readouterr().err
    assert rc == 2 and calls == [] and recs == []
    assert err.count("\n") == 1 and err.startswith("nicemu: error: ") and message in err, err


def test_plot_lines_and_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    grid = "topology: [ring:4, ring:8]\nalgo: [ring, directreduce]\nsizes: 1K:1M:32\n"
    assert _sweep(tmp_path, grid, "--jobs", "1", "--plot", str(tmp_path / "l.png"))[0] == 0
    assert _sweep(tmp_path, grid, "--jobs", "1", "--plot", str(tmp_path / "h.png"),
                  "--plot-spec", "x=bytes,y=topology,z=emulated_us", "--resume")[0] == 0
    assert (tmp_path / "l.png").stat().st_size > 0 and (tmp_path / "h.png").stat().st_size > 0


def test_bad_plot_spec(tmp_path, capsys):
    rc, _ = _sweep(tmp_path, "algo: ring\n", "--plot", str(tmp_path / "p.png"), "--plot-spec", "x=bytes")
    assert rc == 2 and "bad --plot-spec 'x=bytes'" in capsys.readouterr().err


def test_paper_directreduce_grid_matches_committed_results():
    """sweeps/paper_directreduce.yml (a union of products) holds the points of
    docs/results/paper_directreduce.json, directreduce-pipelined wherever the page times it (every
    row but torus:8^6 at 1 GiB); its ring rows reproduce the committed times exactly."""
    points = sweep.load_grid(str(REPO / "sweeps/paper_directreduce.yml")).points()
    ref = {(r["topology"], r["bytes"]): r for r in json.loads((REPO / "docs/results/paper_directreduce.json").read_text())}
    assert {(p["topology"], p["bytes"]) for p in points} == set(ref)
    untimed = {k for k, r in ref.items() if r["pipelined_us"] is None}
    assert untimed == {("torus:8^6", 1 << 30)}
    assert len(points) == 3 * len(ref) - len(untimed)
    key = {"ring": "ring_us", "directreduce": "directreduce_us", "directreduce-pipelined": "pipelined_us"}
    sample = [p for p in points if p["topology"] in ("ring:8", "ring:4")]
    assert len(sample) == 3 * 12
    for r in sweep.records(sample, jobs=1):
        row = ref[(r["topology"], r["bytes"])]
        assert r["emulated_us"] == row[key[r["algo"]]]
        assert row["gain"] == 1 - row["directreduce_us"] / row["ring_us"]
        assert row["pipelined_gain"] == 1 - row["pipelined_us"] / row["ring_us"]


def test_paper_omniccl_grid_matches_committed_results():
    """sweeps/paper_omniccl.yml holds the points of docs/results/paper_omniccl.json; a sparse sample (one
    density, both placements, every variant incl. tx_spots 1) reproduces the committed times exactly."""
    points = sweep.load_grid(str(REPO / "sweeps/paper_omniccl.yml")).points()
    rows = json.loads((REPO / "docs/results/paper_omniccl.json").read_text())
    assert {(p["overlap"], p["density"]) for p in points if "overlap" in p} == {(r["overlap"], r["density"]) for r in rows}
    sample = [p for p in points if p.get("density") == 0.1]
    assert len(sample) == 2 * 4
    ref = {r["overlap"]: r for r in rows if r["density"] == 0.1}
    for r in sweep.records(sample, jobs=1):
        label = r["algo"] + (" tx1" if r.get("tx_spots") == 1 else "")
        assert r["emulated_us"] == ref[r["overlap"]][f"{label}_us"]
        assert r["wire_bytes"] == ref[r["overlap"]][f"{label}_wire_bytes"]


def test_union_of_parts_in_order_without_repeats():
    grid = parse_grid("- {topology: ring:8, sizes: [1K, 4K], algo: ring}\n"
                      "- {topology: [ring:4, ring:8], sizes: 4K, algo: ring}\n")
    assert [(p["topology"], p["bytes"]) for p in grid.points()] == [
        ("ring:8", 1024), ("ring:8", 4096), ("ring:4", 4096)]


def test_tag_is_a_column_and_not_a_profile_override(tmp_path):
    rc, recs = _sweep(tmp_path, "- {tag: a, topology: ring:4, sizes: 1K, algo: ring}\n"
                      "- {tag: b, topology: ring:4, sizes: 1K, algo: ring}\n", "--jobs", "1")
    assert rc == 0 and [r["tag"] for r in recs] == ["a", "b"]
    assert recs[0]["emulated_us"] == recs[1]["emulated_us"] == model_time("allreduce", "ring", "ring:4",
                                                                          "directreduce-paper", 256).emulated_us


def test_sparse_axes_reach_the_timing():
    """overlap, seed, spot_blocks and tx_spots act as bench's flags and are kept as columns."""
    import numpy as np

    from nicemu.collectives import model_sparse, sparse_config
    from nicemu.collectives.schedules.sparse_patterns import pattern_mask
    from nicemu.nic.profile import load_profile

    prof = load_profile("omniccl-paper")
    points = parse_grid("topology: ring:4\nprofile: omniccl-paper\nsizes: 64K\ndensity: 0.2\nblock_size: 64\n"
                        "overlap: [all, none]\nseed: [0, 5]\nspot_blocks: 2\ntx_spots: [1, 2]\nalgo: omniccl\n").points()
    recs = sweep.records(points, jobs=1)
    times = set()
    for p, r in zip(points, recs):
        assert (r["overlap"], r["seed"], r["tx_spots"], r["spot_blocks"]) == (p["overlap"], p["seed"], p["tx_spots"], 2)
        masks = np.stack([pattern_mask(w, 4, 16384, 64, 0.2, p["overlap"], p["seed"]) for w in range(4)])
        cfg = sparse_config("omniccl", 4, block_size=64, spot_blocks=2, tx_spots=p["tx_spots"])
        assert r["emulated_us"] == model_sparse(cfg, masks, prof, 4).emulated_us
        times.add(r["emulated_us"])
    assert len(times) > 2


def test_scale_topology_grid_matches_committed_results():
    """sweeps/scale_topology.yml holds the points of docs/results/scale_topology.json; a sample of
    them (the small tori, every algorithm) reproduces its emulated times exactly."""
    grid = sweep.load_grid(str(REPO / "sweeps/scale_topology.yml"))
    ref = {(r["topology"], r["bytes"], r["algo"]): r
           for r in json.loads((REPO / "docs/results/scale_topology.json").read_text())}
    points = grid.points()
    assert {(p["topology"], p["bytes"], p["algo"]) for p in points} == set(ref)
    sample = [p for p in points if p["topology"] in ("torus:3^6", "torus:4^6") and p["bytes"] in (1024, 1 << 20)]
    assert len(sample) == 8
    for p in sample:
        assert sweep.run_point(p)["emulated_us"] == ref[(p["topology"], p["bytes"], p["algo"])]["emulated_us"]


def test_interrupted_sweep_keeps_finished_points(tmp_path, monkeypatch):
    """OUT.json is saved as points finish: after an interrupt --resume runs only the rest."""
    grid = "topology: ring:8\nalgo: [ring, directreduce]\nsizes: [1K, 4K, 16K]\n"
    monkeypatch.setattr(sweep, "SAVE_EVERY_S", 0.0)
    real = sweep.run_point
    calls = []

    def interrupted(point, keep_going=False):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(point)
        return real(point, keep_going)

    monkeypatch.setattr(sweep, "run_point", interrupted)
    rc, recs = _sweep(tmp_path, grid, "--jobs", "1")
    assert rc == 130 and len(recs) == 4
    monkeypatch.setattr(sweep, "run_point", real)
    rc, recs = _sweep(tmp_path, grid, "--jobs", "1", "--resume")
    assert rc == 0 and [r["bytes"] for r in recs] == [1024, 1024, 4096, 4096, 16384, 16384]
    assert _sweep(tmp_path, grid, "--jobs", "1", out="fresh.json")[1] == recs


def test_gain_vs_ring_and_density_as_bench(tmp_path):
    rc, recs = _sweep(tmp_path, "topology: ring:8\nalgo: [ring, directreduce]\nsizes: 1M\ndensity: 1\n", "--jobs", "1")
    assert rc == 0 and recs[0]["gain_vs_ring"] is None and recs[0]["density"] == 1.0
    assert recs[1]["gain_vs_ring"] == 1.0 - recs[1]["emulated_us"] / recs[0]["emulated_us"]


def test_sweep_never_imports_mpi(tmp_path):
    """The sweep is a model-executor run: a fresh interpreter running it (with --jobs 2) never loads MPI."""
    import os
    import subprocess
    import sys

    from nicemu.launch import LAUNCHER_ENV
    (tmp_path / "grid.yml").write_text("topology: ring:4\nalgo: [ring, omniccl]\nsizes: [1K, 64K]\n")
    script = ("import sys\nfrom nicemu.cli import main\n"
              "rc = main(['sweep', 'grid.yml', '--json', 'out.json', '--jobs', '2'])\n"
              "print(rc, 'mpi4py.MPI' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_ENV and not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDI_", "HYDRA_", "MPIR_"))}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.stdout.split()[-2:] == ["0", "False"], proc.stderr


def test_plot_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib now raises ImportError
    rc, recs = _sweep(tmp_path, "algo: ring\nsizes: 1K\n", "--plot", str(tmp_path / "p.png"))
    err = capsys.readouterr().err
    assert rc == 2 and recs == [] and err == "nicemu: error: --plot needs matplotlib: pip install 'nicemu[plot]'\n"


def test_ranks_per_node_and_root_axes_reach_the_timing():
    """A grid's ranks_per_node and root columns time the same call as model_time with those arguments."""
    grid = parse_grid("topology: ring:4\nranks_per_node: [1, 2]\ncollective: allreduce\nsizes: [64K]\n"
                            "algo: [ring, directreduce]\n")
    for p in grid.points():
        rec = sweep.run_point(p)
        want = model_time("allreduce", p["algo"], "ring:4", "directreduce-paper", 16384,
                          ranks_per_node=p["ranks_per_node"])
        assert rec["emulated_us"] == want.emulated_us and rec["ranks_per_node"] == p["ranks_per_node"]
    assert len({sweep.run_point(p)["emulated_us"] for p in grid.points()}) == 4   # P changes the time
    rooted = parse_grid("topology: switch:5\ncollective: reduce\nroot: [0, 3]\nsizes: [64K]\nalgo: tree\n")
    for p in rooted.points():
        rec = sweep.run_point(p)
        want = model_time("reduce", "tree", "switch:5", "directreduce-paper", 16384, root=p["root"])
        assert rec["emulated_us"] == want.emulated_us and rec["root"] == p["root"]


def test_nic_payoff_grid_matches_committed_results():
    """sweeps/nic_payoff.yml holds the points of docs/results/nic_payoff.json (four algorithms in every
    sweep); a sample reproduces every committed time exactly, the pipelined variant's included (with
    several ranks per node too), and each gain is its own ratio of times."""
    points = sweep.load_grid(str(REPO / "sweeps/nic_payoff.yml")).points()
    rows = json.loads((REPO / "docs/results/nic_payoff.json").read_text())

    def key(p: dict) -> tuple:
        link = p.get("link.bandwidth_GBps")
        return (p["tag"], p["topology"], p.get("ranks_per_node", 1), link and 8 * link, p["bytes"],
                p.get("pcie.bandwidth_GBps"))

    ref = {(r["sweep"], r["topology"], r["ranks_per_node"], r["link_Gbps"] if r["overrides"] else None, r["bytes"],
            r["pcie_GBps"] if r["overrides"] else None): r for r in rows}
    assert {key(p) for p in points} == set(ref) and len(ref) == len(rows)
    algos = {"directreduce": "directreduce_us", "directreduce-pipelined": "pipelined_us", "ring": "ring_us",
             "host-best": "host_best_us"}
    by_key: dict[tuple, set] = {}
    for p in points:
        by_key.setdefault(key(p), set()).add(p["algo"])
    assert all(got == set(algos) for got in by_key.values())
    sample = [p for p in points if p["topology"] == "ring:8" and (
        (p["tag"] == "sizes_nodes" and p["bytes"] in (1024, 1 << 20, 64 << 20, 256 << 20))
        or (p["tag"] == "link_pcie" and p["bytes"] in (64 << 20, 256 << 20)
            and (p["link.bandwidth_GBps"], p["pcie.bandwidth_GBps"]) == (12.5, 25))
        or (p["tag"] == "ranks_per_node" and p["bytes"] == 64 << 20 and p["ranks_per_node"] == 4))]
    assert {p["algo"] for p in sample} == set(algos) and len(sample) == 4 * (4 + 2 + 1)
    for p, r in zip(sample, sweep.records(sample, jobs=1)):
        row = ref[key(p)]
        assert r["emulated_us"] == row[algos[p["algo"]]], p
        assert row["pipelined_gain_vs_best_host"] == 1 - row["pipelined_us"] / row["host_best_us"]
        assert row["pipelined_gain_vs_directreduce"] == 1 - row["pipelined_us"] / row["directreduce_us"]
