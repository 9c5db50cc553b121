"""``nicemu bench --link-stats / --link-summary / --trace / --plot-links`` end to end.

The JSON contract (one entry per record with ``algo``, ``bytes``, ``links`` and ``resources``), its
consistency with the records (links add up to ``wire_bytes``, utilisation in [0, 1]), CSV, the trace
file's format, the MPI executor's files equal to the model executor's, and the one-line errors.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import run_cli_batch

from nicemu.cli import main
from tests.trace_format import check_trace_format

pytestmark = pytest.mark.e2e

FAST = ["--iters", "1", "--warmup", "0"]
LINK_KEYS = {"src", "dst", "dim", "dir", "bytes", "busy_us", "utilization"}
TOPOLOGIES = ["ring:6", "torus:2x3", "switch:6"]
ALGOS = "ring,directreduce,rabenseifner,tree,host-best"


def bench_files(tmp_path, topology, executor="model", extra=()):
    """Run bench in-process with every telemetry output; the records, link stats and trace."""
    out = tmp_path / topology.replace(":", "_")
    out.mkdir()
    argv = ["bench", "--executor", executor, "--topology", topology, "--algo", ALGOS, "--sizes", "1K,96K",
            *FAST, "--json", str(out / "r.json"), "--link-stats", str(out / "l.json"),
            "--trace", str(out / "t.json"), "--trace-nodes", "0-2", *extra]
    assert main(argv) == 0
    return (json.loads((out / "r.json").read_text()), json.loads((out / "l.json").read_text()),
            json.loads((out / "t.json").read_text()))


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_link_stats_contract(tmp_path, topology, capsys):
    records, stats, trace = bench_files(tmp_path, topology)
    assert len(stats) == len(records) == 10
    for rec, entry in zip(records, stats):
        assert (entry["algo"], entry["bytes"]) == (rec["algo"], rec["bytes"])
        assert entry["links"] and all(LINK_KEYS <= set(link) for link in entry["links"])
        assert sum(link["bytes"] for link in entry["links"]) == rec["wire_bytes"]
        assert all(0.0 <= link["utilization"] <= 1.0 for link in entry["links"])
        assert all(link["busy_us"] <= rec["emulated_us"] * (1 + 1e-12) for link in entry["links"])
        kinds = {r["resource"] for r in entry["resources"]}
        assert kinds == {"pcie_read", "pcie_write", "nic", "host", "dram", "nvlink"}
        host = max(r["busy_us"] for r in entry["resources"] if r["resource"] == "host")
        assert host == pytest.approx(rec["host_busy_us"], rel=1e-12, abs=1e-12)
        assert rec["link_summary"] and rec["resource_summary"]["host"]["busy_us_max"] == pytest.approx(host)
    check_trace_format(trace)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {f"{a} {s} · node {n}" for a in ALGOS.split(",") for s in ("1K", "96K") for n in range(3)}
    out = capsys.readouterr().out
    assert "#   links d0 +1:" in out and "open it in ui.perfetto.dev" in out


def test_link_stats_csv(tmp_path):
    path = tmp_path / "l.csv"
    assert main(["bench", "--executor", "model", "--topology", "torus:2x3", "--algo", "ring", "--sizes", "4K",
                 *FAST, "--json", str(tmp_path / "r.json"), "--link-stats", str(path)]) == 0
    rows = list(csv.DictReader(path.open()))
    rec = json.loads((tmp_path / "r.json").read_text())[0]
    links = [r for r in rows if r["kind"] == "link"]
    assert len(links) == 6 * 2 * 2
    assert sum(int(r["link_bytes"]) for r in links) == rec["wire_bytes"]
    assert {r["kind"] for r in rows} == {"link", "pcie_read", "pcie_write", "nic", "host", "dram", "nvlink"}


def test_link_summary_without_files(tmp_path, capsys):
    assert main(["bench", "--executor", "model", "--topology", "torus:4x4", "--algo", "ring", "--sizes", "64K",
                 *FAST, "--link-summary", "--json", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())[0]
    dims = {(s["dim"], s["dir"]) for s in rec["link_summary"]}
    assert dims == {(0, 1), (0, -1), (1, 1), (1, -1)}
    assert "#   links d1" in capsys.readouterr().out


def test_plot_links(tmp_path):
    pytest.importorskip("matplotlib")
    for topo in ("ring:6", "torus:3x4"):
        path = tmp_path / f"{topo.replace(':', '_')}.png"
        assert main(["bench", "--executor", "model", "--topology", topo, "--algo", "ring,directreduce",
                     "--sizes", "64K", *FAST, "--plot-links", str(path)]) == 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, words", [
    (["--trace-nodes", "0-3"], "add --trace"),
    (["--trace", "t.json", "--trace-nodes", "0-99"], "outside 0..5"),
    (["--trace", "t.json", "--trace-nodes", "3-1"], "backwards"),
    (["--link-summary", "--algo", "ring,mpi"], "no emulated links"),
])
def test_telemetry_errors(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    full = ["bench", "--topology", "ring:6", "--sizes", "1K", *FAST, *argv]
    assert main(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nicemu: error:") and words in err[0], err


def test_mpi_executor_files_equal_the_model(tmp_path):
    """Under mpiexec -n 2 (real data) the link statistics and trace equal the model executor's."""
    argv = ["bench", "--topology", "torus:2x3", "--algo", "ring,directreduce,rabenseifner", "--sizes", "1K,12K",
            *FAST, "--json", "r.json", "--link-stats", "l.json", "--trace", "t.json"]
    got = run_cli_batch(tmp_path, [("mpi", [*argv, "--executor", "mpi"]),
                                   ("model", [*argv, "--executor", "model"])], nprocs=2)
    for case in got.values():
        assert case.statuses == [0, 0], case
    mpi, model = got["mpi"].cwd, got["model"].cwd
    assert json.loads((mpi / "l.json").read_text()) == json.loads((model / "l.json").read_text())
    a, b = json.loads((mpi / "t.json").read_text()), json.loads((model / "t.json").read_text())
    check_trace_format(a)

    def key(e):
        return (e["pid"], e.get("tid", -1), e.get("ts", -1), e["name"], e.get("cat", ""))

    assert sorted(a["traceEvents"], key=key) == sorted(b["traceEvents"], key=key)
