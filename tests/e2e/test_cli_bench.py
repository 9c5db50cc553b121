"""End-to-end runs of ``nicemu bench``, ``info`` and ``schedule``, alone and under ``mpiexec``.

The central property: emulated times are a function of the topology, profile,
algorithm and size only. They must not change with the number of MPI ranks
(i.e. the node-to-rank mapping) nor with the executor (``mpi`` moves real data,
``model`` computes the timing without data), so they are compared with ``==``.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import run_cli_batch

pytestmark = pytest.mark.e2e

#: record keys every bench record has (at least these; docs/usage.md documents them)
RECORD_KEYS = {
    "collective", "algo", "topology", "nodes", "ranks", "ranks_per_node", "executor", "bytes", "count", "dtype", "op",
    "density", "block_size", "iters", "emulated_us", "wall_us", "algbw_GBps", "busbw_GBps",
    "host_busy_us", "nic_busy_us", "wire_bytes", "wrong",
}
FAST = ["--iters", "1", "--warmup", "0"]
SIZES = [1024, 65536]
SIZES_ARG = "1K,64K"
EMULATED_ALGOS = ["ring", "directreduce"]
ALL_ALGOS = [*EMULATED_ALGOS, "mpi"]


def _bench_args(topology: str, algos: list[str], sizes: str = SIZES_ARG, executor: str = "mpi",
                extra: tuple[str, ...] = ()) -> list[str]:
    return ["--topology", topology, "--algo", ",".join(algos), "--sizes", sizes,
            "--executor", executor, *FAST, *extra]


def _by_key(records: list[dict]) -> dict[tuple[int, str], dict]:
    """Records keyed by (bytes, algo); asserts there is exactly one per pair."""
    out: dict[tuple[int, str], dict] = {}
    for r in records:
        key = (r["bytes"], r["algo"])
        assert key not in out, f"two records for {key}"
        out[key] = r
    return out


def _emulated(records: list[dict]) -> dict[tuple[int, str], float]:
    return {(r["bytes"], r["algo"]): r["emulated_us"] for r in records if r["algo"] != "mpi"}


def _check_records(records: list[dict], sizes: list[int], algos: list[str], *, ranks: int, executor: str,
                   nodes: int, collective: str = "allreduce", itemsize: int = 4) -> None:
    keyed = _by_key(records)
    assert set(keyed) == {(s, a) for s in sizes for a in algos}, sorted(keyed)
    for r in records:
        missing = RECORD_KEYS - set(r)
        assert not missing, f"record lacks documented keys {sorted(missing)}: {r}"
        assert r["ranks"] == ranks, r
        assert r["executor"] == executor, r
        assert r["nodes"] == nodes, r
        assert r["collective"] == collective, r
        assert r["count"] * itemsize == r["bytes"], r
        if executor == "mpi":
            assert r["wrong"] == 0, r
            assert r["wall_us"] is not None and r["wall_us"] > 0, r
        if r["algo"] == "mpi":
            assert r["emulated_us"] is None, f"the mpi algorithm has no emulated time: {r}"
            continue
        t = r["emulated_us"]
        assert isinstance(t, float) and math.isfinite(t) and t > 0, r
        # nccl-tests conventions, decimal GB/s, from the emulated time
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / (t * 1e3), rel=1e-9), r
        n = r["nodes"] * r["ranks_per_node"]      # nccl-tests' n: every rank
        factor = (2 * (n - 1) / n if collective == "allreduce" else 1.0 if collective in ("broadcast", "reduce")
                  else (n - 1) / n)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * factor, rel=1e-9), r


# --- standalone ------------------------------------------------------------------------------------

def test_standalone_ring8_table_and_json(nicemu, tmp_path):
    proc = nicemu(["bench", *_bench_args("ring:8", ALL_ALGOS), "--json", "out.json"])
    assert proc.returncode == 0, str(proc)
    assert "Traceback" not in proc.stderr, str(proc)
    lines = proc.stdout.splitlines()
    header = [ln for ln in lines if ln.startswith("#") and "#wrong" in ln]
    assert len(header) == 1 and "busbw" in header[0] and "algbw" in header[0], str(proc)
    rows = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert len(rows) == len(SIZES) * len(ALL_ALGOS), str(proc)
    assert {(int(row[0]), row[4]) for row in rows} == {(s, a) for s in SIZES for a in ALL_ALGOS}, str(proc)
    assert all(row[-1] == "0" for row in rows), f"#wrong column not 0\n{proc}"
    assert any("out of bounds values : 0 OK" in ln for ln in lines), str(proc)

    records = json.loads((tmp_path / "out.json").read_text())
    _check_records(records, SIZES, ALL_ALGOS, ranks=1, executor="mpi", nodes=8)
    assert all(r["topology"] == "ring:8" for r in records)


def test_standalone_default_algos(bench_json):
    """No --algo: ring and directreduce, one record per (size, algo)."""
    records = bench_json(["--topology", "ring:8", "--sizes", SIZES_ARG, *FAST])
    _check_records(records, SIZES, EMULATED_ALGOS, ranks=1, executor="mpi", nodes=8)


# --- under mpiexec: emulated times independent of rank mapping and executor -------------------------

@pytest.mark.parametrize("nprocs", [2, 4, 8])
def test_mpiexec_ring8_matches_standalone_and_model(bench_json, nprocs):
    records = bench_json(_bench_args("ring:8", ALL_ALGOS), n=nprocs)
    _check_records(records, SIZES, ALL_ALGOS, ranks=nprocs, executor="mpi", nodes=8)

    alone = bench_json(_bench_args("ring:8", ALL_ALGOS))
    model = bench_json(_bench_args("ring:8", EMULATED_ALGOS, executor="model"))
    _check_records(model, SIZES, EMULATED_ALGOS, ranks=1, executor="model", nodes=8)
    got = _emulated(records)
    assert got == _emulated(alone), "emulated times depend on the number of ranks"
    assert got == _emulated(model), "emulated times differ between --executor mpi and --executor model"
    # the other timing statistics are deterministic too
    for key in ("host_busy_us", "nic_busy_us", "wire_bytes"):
        mine = {(r["bytes"], r["algo"]): r[key] for r in records if r["algo"] != "mpi"}
        theirs = {(r["bytes"], r["algo"]): r[key] for r in model}
        assert mine == theirs, key


@pytest.mark.parametrize("topology, nodes", [("torus:2x2x2", 8), ("torus:3x3", 9)])
def test_mpiexec_torus_matches_model(bench_json, topology, nodes):
    """torus:3x3 on 4 ranks gives uneven node blocks; 4100 B (1025 elements) gives uneven chunks."""
    sizes = "1K,4100,64K"
    records = bench_json(_bench_args(topology, ALL_ALGOS, sizes), n=4)
    _check_records(records, [1024, 4100, 65536], ALL_ALGOS, ranks=4, executor="mpi", nodes=nodes)
    model = bench_json(_bench_args(topology, EMULATED_ALGOS, sizes, executor="model"))
    assert _emulated(records) == _emulated(model)


def test_ranks_per_node_under_mpiexec_matches_model(bench_json):
    """--ranks-per-node 2 on ring:2: four ranks, real data right, the model's times; records say N and P."""
    algos = ["ring", "directreduce", "host-best", "mpi"]
    extra = ("--ranks-per-node", "2")
    records = bench_json(_bench_args("ring:2", algos, "1K,4100", extra=extra), n=4)
    _check_records(records, [1024, 4100], algos, ranks=4, executor="mpi", nodes=2)
    model = bench_json(_bench_args("ring:2", algos[:-1], "1K,4100", executor="model", extra=extra))
    assert _emulated(records) == _emulated(model)
    assert {r["ranks_per_node"] for r in records + model} == {2}   # busbw over N * P ranks: _check_records


def test_model_executor_huge_torus(nicemu, tmp_path):
    """729 nodes at 1 GiB per node: timing only, fast, and DirectReduce beats the host ring."""
    proc = nicemu(["bench", *_bench_args("torus:3x3x3x3x3x3", EMULATED_ALGOS, "1G", executor="model"),
                   "--json", "out.json"])
    assert proc.returncode == 0, str(proc)
    records = json.loads((tmp_path / "out.json").read_text())
    _check_records(records, [1 << 30], EMULATED_ALGOS, ranks=1, executor="model", nodes=729)
    t = {r["algo"]: r["emulated_us"] for r in records}
    assert t["directreduce"] < t["ring"], t


# --- output formats, collectives, dtypes and ops --------------------------------------------------

def test_csv_matches_json(nicemu, tmp_path):
    proc = nicemu(["bench", *_bench_args("ring:8", ALL_ALGOS), "--json", "out.json", "--csv", "out.csv"], n=4)
    assert proc.returncode == 0, str(proc)
    records = json.loads((tmp_path / "out.json").read_text())
    with open(tmp_path / "out.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        rows = list(reader)
    assert columns == list(records[0].keys()), "CSV columns differ from the JSON keys"
    assert RECORD_KEYS <= set(columns)
    assert len(rows) == len(records) == len(SIZES) * len(ALL_ALGOS)
    for row, rec in zip(rows, records):
        for key in columns:
            value = rec[key]
            if value is None:
                assert row[key] == "", (key, row, rec)
            elif isinstance(value, float):
                assert float(row[key]) == value, (key, row, rec)
            else:
                assert row[key] == str(value), (key, row, rec)


DTYPE_OP_CASES = [
    ("reducescatter", "int64", "max", "ring:8", ()),
    ("reducescatter", "float64", "sum", "torus:2x2x2", ()),
    ("allgather", "int64", "max", "torus:2x2x2", ()),
    ("allgather", "float32", "sum", "ring:8", ()),
    ("allreduce", "int32", "min", "torus:3x3", ()),
    ("allreduce", "float16", "sum", "ring:8", ()),
    ("allreduce", "float64", "sum", "torus:2x2x2", ("--density", "0.3", "--block-size", "64", "--warmup", "1")),
    ("reducescatter", "float32", "sum", "torus:3x3", ("--density", "0.5", "--block-size", "16")),
    # int32 sum: numpy's add.reduce widens int32 to int64, which the mpi algorithm must not pass on
    ("reducescatter", "int32", "sum", "ring:8", ()),
    # the nccl-tests types and ops: low-precision floats within the rounding bound, wrapping integers
    ("allreduce", "bfloat16", "avg", "ring:8", ()),
    ("reducescatter", "float8_e4m3fn", "sum", "torus:2x2x2", ()),
    ("allreduce", "uint8", "prod", "torus:3x3", ()),
    ("allreduce", "half", "max", "ring:8", ()),       # nccl-tests' alias, recorded as float16
    # rooted: every node's row against the root's input, the root's row against the reduction
    ("broadcast", "float8_e4m3fn", "sum", "torus:3x3", ("--root", "7")),
    ("reduce", "bfloat16", "avg", "ring:8", ("--root", "5")),
    ("reduce", "int64", "prod", "torus:2x2x2", ("--root", "3")),
]
SPARSE_AVG = ("--dtype", "bfloat16", "--op", "avg", "--density", "0.3", "--block-size", "64")
SPARSE_AVG_ALGOS = ["ring", "omniccl", "omnireduce"]


def _dtype_op_args(case: tuple, executor: str) -> list[str]:
    collective, dtype, op, topology, extra = case
    algos = ALL_ALGOS if executor == "mpi" else EMULATED_ALGOS
    return _bench_args(topology, algos, executor=executor,
                       extra=("--collective", collective, "--dtype", dtype, "--op", op, *extra))


@pytest.fixture(scope="module")
def dtype_op_runs(tmp_path_factory):
    """``(mpi, model)``: the records of every DTYPE_OP_CASES bench (and the sparse avg one), keyed by
    case index (``"sparse-avg"``): one ``mpiexec -n 4`` job runs all the real-data benches in turn and one
    plain job all the ``--executor model`` ones (``run_cli_batch``), instead of one launch per bench."""
    cases = {str(i): c for i, c in enumerate(DTYPE_OP_CASES)}
    runs = {}
    for executor, n in (("mpi", 4), ("model", None)):
        argv = {k: ["bench", *_dtype_op_args(c, executor), "--json", "out.json"] for k, c in cases.items()}
        argv["sparse-avg"] = ["bench", *_bench_args("ring:8", SPARSE_AVG_ALGOS, executor=executor,
                                                           extra=SPARSE_AVG),
                              "--json", "out.json"]
        outcomes = run_cli_batch(tmp_path_factory.mktemp(f"dtype_op_{executor}"), list(argv.items()), n)
        records = {}
        for key, proc in outcomes.items():
            assert proc.statuses == [0] * (n or 1), str(proc)
            assert "Traceback" not in proc.stderr, str(proc)
            records[key] = json.loads((proc.cwd / "out.json").read_text())
        runs[executor] = records
    return runs["mpi"], runs["model"]


@pytest.mark.parametrize("index", range(len(DTYPE_OP_CASES)),
                         ids=[" ".join((*c[:4], " ".join(c[4]))) for c in DTYPE_OP_CASES])
def test_collectives_dtypes_ops(dtype_op_runs, index):
    collective, dtype, op, topology, extra = DTYPE_OP_CASES[index]
    name = {"half": "float16"}.get(dtype, dtype)
    itemsize = {"float16": 2, "float32": 4, "int32": 4, "float64": 8, "int64": 8, "bfloat16": 2,
                "float8_e4m3fn": 1, "uint8": 1}[name]
    records, model = dtype_op_runs[0][str(index)], dtype_op_runs[1][str(index)]
    nodes = {"ring:8": 8, "torus:2x2x2": 8, "torus:3x3": 9}[topology]
    _check_records(records, SIZES, ALL_ALGOS, ranks=4, executor="mpi", nodes=nodes, collective=collective,
                   itemsize=itemsize)
    assert all(r["dtype"] == name and r["op"] == ("none" if collective == "broadcast" else op) for r in records)
    _check_records(model, SIZES, EMULATED_ALGOS, ranks=1, executor="model", nodes=nodes, collective=collective,
                   itemsize=itemsize)
    assert _emulated(records) == _emulated(model)


def test_sparse_avg_in_bfloat16(dtype_op_runs):
    """The sparse algorithms take avg (a sum, divided once at the end) in any float type."""
    records, model = dtype_op_runs[0]["sparse-avg"], dtype_op_runs[1]["sparse-avg"]
    _check_records(records, SIZES, SPARSE_AVG_ALGOS, ranks=4, executor="mpi", nodes=8, itemsize=2)
    assert all(r["dtype"] == "bfloat16" and r["op"] == "avg" for r in records)
    assert _emulated(records) == _emulated(model)


# --- ASTRA-sim network files ------------------------------------------------------------------------

ASTRA_NET = """\
topology: [Ring, Ring]
npus_count: [4, 2]
bandwidth: [25.0, 25.0]   # GB/s
latency: [500.0, 500.0]   # ns
"""


def test_astra_network_file(bench_json, tmp_path):
    net = tmp_path / "network.yml"
    net.write_text(ASTRA_NET)
    astra = bench_json(_bench_args(f"astra:{net}", EMULATED_ALGOS, "1M", executor="model"))
    torus = bench_json(_bench_args("torus:4x2", EMULATED_ALGOS, "1M", executor="model"))
    _check_records(astra, [1 << 20], EMULATED_ALGOS, ranks=1, executor="model", nodes=8)
    for algo in EMULATED_ALGOS:
        a = next(r["emulated_us"] for r in astra if r["algo"] == algo)
        t = next(r["emulated_us"] for r in torus if r["algo"] == algo)
        # 25 GB/s links in the file versus the profile's 12.5 GB/s: the file's links are used
        assert a < t, (algo, a, t)


def test_astra_network_file_under_mpiexec(bench_json, tmp_path):
    net = tmp_path / "network.yml"
    net.write_text(ASTRA_NET)
    records = bench_json(_bench_args(f"astra:{net}", ALL_ALGOS), n=4)
    _check_records(records, SIZES, ALL_ALGOS, ranks=4, executor="mpi", nodes=8)
    model = bench_json(_bench_args(f"astra:{net}", EMULATED_ALGOS, executor="model"))
    assert _emulated(records) == _emulated(model)


# --- plot, info, schedule ---------------------------------------------------------------------------

def test_plot_writes_png(nicemu, tmp_path):
    pytest.importorskip("matplotlib")
    proc = nicemu(["bench", *_bench_args("ring:8", EMULATED_ALGOS, executor="model"), "--plot", "out.png"])
    assert proc.returncode == 0, str(proc)
    png = tmp_path / "out.png"
    assert png.is_file(), str(proc)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("nprocs", [None, 2])
def test_info(nicemu, nprocs):
    proc = nicemu(["info"], n=nprocs)
    assert proc.returncode == 0, str(proc)
    out = proc.stdout
    for word in ("ring:", "torus:", "astra:", "ring", "directreduce", "mpi", "ideal", "directreduce-paper",
                 "allreduce", "reducescatter", "allgather"):
        assert word in out, f"{word!r} missing from nicemu info\n{proc}"
    assert out.count("topologies:") == 1, f"printed more than once\n{proc}"


def test_info_profile(nicemu):
    proc = nicemu(["info", "--profile", "ideal"])
    assert proc.returncode == 0, str(proc)
    assert "link.bandwidth_GBps" in proc.stdout and "nic.packet_bytes" in proc.stdout, str(proc)


def test_schedule(nicemu):
    proc = nicemu(["schedule", "--algo", "directreduce", "--topology", "ring:4", "--count", "8"])
    assert proc.returncode == 0, str(proc)
    out = proc.stdout
    assert "directreduce" in out and "ring:4" in out, str(proc)
    # reduce-scatter and allgather: 2 x (4 - 1) steps on a ring of 4
    assert sum("step=" in ln for ln in out.splitlines()) == 6, str(proc)
    assert "->" in out, str(proc)


def test_schedule_with_ranks_per_node(nicemu):
    # the hierarchical program: one intra-node reduce-scatter step, the ring's 2 x (4 - 1) steps over the
    # nodes, one intra-node allgather step (P - 1 = 1 each)
    proc = nicemu(["schedule", "--algo", "directreduce", "--topology", "ring:4", "--ranks-per-node", "2",
                   "--count", "8"])
    assert proc.returncode == 0, str(proc)
    out = proc.stdout
    assert "x 2 ranks per node" in out, str(proc)
    steps = [ln for ln in out.splitlines() if "step=" in ln]
    assert len(steps) == 8 and "local(" in steps[0] and "local(" in steps[-1], str(proc)
    bad = nicemu(["schedule", "--ranks-per-node", "0"])
    assert bad.returncode != 0 and "--ranks-per-node 0 must be >= 1" in bad.stderr, str(bad)
