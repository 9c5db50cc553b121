"""Broadcast and Reduce: closed forms under `ideal`, the schedules' invariants, any root, refusals, and
real data with every node in one process (the MPI tests run them across ranks)."""

import math

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import CollectiveError, Emulator, build_schedule, model_time, names
from nicemu.collectives.schedules.rooted import translation
from nicemu.nic.ops import OPS
from nicemu.nic.profile import load_profile
from nicemu.report import bus_factor
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")
ALPHA = IDEAL.link.latency_us
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)   # us per byte
GAMMA = 1.0 / (IDEAL.host.reduce_GBps * 1e3)
SEGMENT = int(IDEAL.host.segment_KiB * 1024)      # bytes per ring-pipelined segment
ALGOS = ["tree", "ring", "rabenseifner", "ring-pipelined", "directreduce"]


def lg(p: int) -> int:
    return math.ceil(math.log2(p))


def ideal(collective: str, algo: str, p: int, count: int, root: int = 0) -> float:
    return model_time(collective, algo, f"switch:{p}", IDEAL, count, "float32", root=root).emulated_us


@pytest.mark.parametrize("p", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [4, 1 << 12, 1 << 20, 1 << 26])
def test_binomial_tree_closed_forms(p, n):
    rounds = lg(p)
    assert ideal("broadcast", "tree", p, n // 4) == pytest.approx(rounds * (ALPHA + n * BETA), rel=1e-9)
    assert ideal("reduce", "tree", p, n // 4) == pytest.approx(rounds * (ALPHA + n * BETA + n * GAMMA), rel=1e-9)


def binomial_bcast_arrivals(p: int, n: int) -> list[float]:
    """When every node has the vector: a node sends to its children one after another on its one port,
    so its j-th child (j = 0, 1, ...) has it α + (j+1)nβ after the parent did."""
    have = [0.0] + [math.nan] * (p - 1)
    for k in range(lg(p) - 1, -1, -1):
        for v in range(0, p, 2 << k):
            if v + (1 << k) < p:
                sent_before = sum(1 for kk in range(lg(p) - 1, k, -1)
                                  if v % (2 << kk) == 0 and v + (1 << kk) < p)
                have[v + (1 << k)] = have[v] + ALPHA + (sent_before + 1) * n * BETA
    return have


@pytest.mark.parametrize("p", [3, 5, 6, 7, 12])
@pytest.mark.parametrize("n", [4, 1 << 20])
def test_binomial_broadcast_non_power_of_two(p, n):
    """⌈lg p⌉ rounds, but a root with fewer levels below one child reaches it sooner: the slowest node is
    the critical path, at most ⌈lg p⌉(α + nβ)."""
    t = ideal("broadcast", "tree", p, n // 4)
    assert t == pytest.approx(max(binomial_bcast_arrivals(p, n)), rel=1e-9)
    assert t <= lg(p) * (ALPHA + n * BETA) * (1 + 1e-12)


@pytest.mark.parametrize("p", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [1 << 12, 1 << 20, 1 << 26])
def test_scatter_allgather_broadcast_closed_form(p, n):
    """Van de Geijn: lg p scatter rounds and p-1 ring steps; (lg p + p - 1)α + 2((p-1)/p)nβ."""
    expected = (lg(p) + p - 1) * ALPHA + 2 * (p - 1) / p * n * BETA
    assert ideal("broadcast", "ring", p, n // 4) == pytest.approx(expected, rel=1e-9)
    # the same with the recursive-doubling allgather: 2 lg p α + 2((p-1)/p)nβ
    assert ideal("broadcast", "rabenseifner", p, n // 4) == pytest.approx(
        2 * lg(p) * ALPHA + 2 * (p - 1) / p * n * BETA, rel=1e-9)


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("n", [1 << 12, 1 << 20, 1 << 26])
def test_reduce_scatter_gather_closed_forms(p, n):
    count = (n // 4) // p * p                     # equal chunks
    nb = count * 4
    ring = 2 * (p - 1) * ALPHA + 2 * (p - 1) / p * nb * BETA + (p - 1) / p * nb * GAMMA
    assert ideal("reduce", "ring", p, count) == pytest.approx(ring, rel=1e-9)
    # DirectReduce: the same steps, the reduction in the NIC (free under ideal)
    assert ideal("reduce", "directreduce", p, count) == pytest.approx(ring - (p - 1) / p * nb * GAMMA, rel=1e-9)
    if p & (p - 1) == 0:
        assert ideal("broadcast", "directreduce", p, count) == pytest.approx(
            (lg(p) + p - 1) * ALPHA + 2 * (p - 1) / p * nb * BETA, rel=1e-9)
    if p & (p - 1) == 0:                          # recursive halving + binomial gather
        raben = 2 * lg(p) * ALPHA + 2 * (p - 1) / p * nb * BETA + (p - 1) / p * nb * GAMMA
        assert ideal("reduce", "rabenseifner", p, count) == pytest.approx(raben, rel=1e-9)


@pytest.mark.parametrize("p", [2, 3, 8])
@pytest.mark.parametrize("segments", [1, 2, 7])
def test_pipelined_chain_closed_forms(p, segments):
    """Every link of the chain carries S segments back to back; the last one crosses p-1 links (and p-1 host
    reductions, which keep up as long as γ <= β)."""
    assert GAMMA <= BETA
    s = SEGMENT                                   # every segment full
    count = segments * s // 4
    waves = p + segments - 2
    assert ideal("broadcast", "ring-pipelined", p, count) == pytest.approx((p - 1) * ALPHA + waves * s * BETA,
                                                                           rel=1e-9)
    assert ideal("reduce", "ring-pipelined", p, count) == pytest.approx(
        (p - 1) * (ALPHA + s * GAMMA) + waves * s * BETA, rel=1e-9)


@pytest.mark.parametrize("topology", ["ring:6", "switch:5", "torus:3x4", "torus:2x2x3"])
@pytest.mark.parametrize("collective", ["broadcast", "reduce"])
def test_every_root_takes_the_same_time(topology, collective):
    """A translation of the topology moves the root: links map onto links, so timing does not change."""
    p = parse_topology(topology).nodes
    for algo in ALGOS + ["host-best"]:
        times = {model_time(collective, algo, topology, "directreduce-paper", 1000, root=r).emulated_us
                 for r in range(p)}
        assert len(times) == 1, (algo, times)


@pytest.mark.parametrize("topology", ["ring:7", "torus:3x4", "switch:8"])
def test_translation_is_a_permutation_that_keeps_neighbours(topology):
    topo = parse_topology(topology)
    nodes = np.arange(topo.nodes)
    for root in range(topo.nodes):
        t = translation(topo, root)
        assert t[0] == root and sorted(t) == list(nodes)
        for d in range(topo.ndim):
            assert np.array_equal(t[topo.neighbor(nodes, d, 1)], topo.neighbor(t, d, 1))


@pytest.mark.parametrize("topology", ["ring:5", "switch:8", "torus:3x2x2"])
@pytest.mark.parametrize("collective", ["broadcast", "reduce"])
@pytest.mark.parametrize("algo", ALGOS)
def test_steps_keep_the_step_invariants(topology, collective, algo):
    """One send and one receive per node per step; no node writes a range it sends in that step."""
    sched = build_schedule(collective, algo, topology, 101, segment_elems=9, root=3)
    for step in sched.steps():
        assert len(set(step.src.tolist())) == len(step.src)
        assert len(set(step.dst.tolist())) == len(step.dst)
        sent = {int(s): (int(o), int(o + c)) for s, o, c in zip(step.src, step.offset, step.count)}
        for d, o, c in zip(step.dst, step.offset, step.count):
            if int(d) in sent and c:
                a, b = sent[int(d)]
                assert b <= o or o + c <= a


def test_registry_and_bus_factor():
    assert names(collective="broadcast") == ["ring", "ring-pipelined", "directreduce", "rabenseifner", "tree",
                                             "host-best", "mpi"]
    assert names(collective="reduce") == names(collective="broadcast")
    assert bus_factor("broadcast", 8) == bus_factor("reduce", 3) == 1.0


@pytest.mark.parametrize("call, match", [
    (lambda: model_time("broadcast", "ring", "ring:8", "ideal", 64, root=8), "root 8 is not a node of ring:8"),
    (lambda: model_time("reduce", "ring", "ring:8", "ideal", 64, root=-1), "root -1 is not a node"),
    (lambda: model_time("reduce", "ring", "ring:8", "ideal", 64, root=1.5), "root must be a whole node number"),
    (lambda: model_time("allreduce", "ring", "ring:8", "ideal", 64, root=2), "applies to broadcast and reduce"),
    (lambda: model_time("reduce", "ring", "ring:8", "ideal", 64, faults="drop=0.01"), "not modelled for reduce"),
    (lambda: model_time("broadcast", "recursive-doubling", "ring:8", "ideal", 64), "does not implement broadcast"),
    (lambda: build_schedule("reduce", "omniccl", "ring:8", 64), "implements AllReduce only"),
    (lambda: model_time("reduce", "ring", "ring:4", "ideal", 64, ranks_per_node=2), "one rank per node"),
])
def test_refusals_are_one_line(call, match):
    with pytest.raises(CollectiveError) as info:
        call()
    assert match in str(info.value) and "\n" not in str(info.value)


def _inputs(nodes: int, count: int, dtype: str, op: str) -> np.ndarray:
    rng = np.random.default_rng(nodes * 1000 + count)
    if op == "prod":
        return rng.choice([-1, 1, 2], size=(nodes, count)).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0 if np.dtype(dtype).kind == "u" else -50, 50, size=(nodes, count)).astype(dtype)
    return rng.standard_normal((nodes, count)).astype(dtype)


@pytest.fixture(scope="module", params=["ring:5", "torus:2x3", "switch:4"])
def emu(request):
    with Emulator(MPI.COMM_SELF, request.param, "directreduce-paper") as e:
        yield e


@pytest.mark.parametrize("algo", ALGOS + ["host-best", "mpi"])
@pytest.mark.parametrize("dtype, op", [("int32", "sum"), ("uint8", "max"), ("int64", "prod"), ("float64", "avg"),
                                       ("float32", "min"), ("bfloat16", "sum")])
def test_reduce_on_one_process_matches_numpy(emu, algo, dtype, op):
    p = emu.topology.nodes
    x = _inputs(p, 23, dtype, op)
    root = (p * 7 + len(algo)) % p
    res = emu.reduce(x, op=op, root=root, algo=algo)
    exact = OPS[op].reduce(x.astype(np.float64) if x.dtype.kind == "f" or dtype == "bfloat16" else x, axis=0)
    if op == "avg":
        exact = exact / p
    got = res.data[root]
    if np.dtype(x.dtype).kind in "iu":
        assert np.array_equal(got, exact.astype(x.dtype))
    else:
        tol = 2e-2 if dtype == "bfloat16" else 1e-6
        np.testing.assert_allclose(got.astype(np.float64), exact, rtol=tol, atol=tol * p)
    if algo != "mpi":
        assert res.emulated_us == model_time("reduce", algo, emu.topology, "directreduce-paper", 23, x.dtype,
                                             root=root).emulated_us


@pytest.mark.parametrize("algo", ALGOS + ["host-best", "mpi"])
@pytest.mark.parametrize("count", [0, 1, 4, 37])
def test_broadcast_on_one_process_every_root(emu, algo, count):
    p = emu.topology.nodes
    x = _inputs(p, count, "uint32", "sum")
    for root in range(p):
        res = emu.broadcast(x, root=root, algo=algo)
        assert np.array_equal(res.data, np.broadcast_to(x[root], x.shape))


def test_bench_records_root_busbw_and_refusals(tmp_path, capsys):
    from nicemu.cli import main
    out = tmp_path / "r.json"
    assert main(["bench", "--executor", "model", "--collective", "reduce", "--root", "5", "--topology", "ring:8",
                 "--algo", "tree,directreduce", "--sizes", "4K", "--json", str(out)]) == 0
    import json
    recs = json.loads(out.read_text())
    assert [r["root"] for r in recs] == [5, 5] and all(r["busbw_GBps"] == r["algbw_GBps"] for r in recs)
    assert recs[0]["emulated_us"] == model_time("reduce", "tree", "ring:8", "directreduce-paper", 1024,
                                                root=5).emulated_us
    assert "root 5" in capsys.readouterr().out
    assert main(["bench", "--executor", "model", "--collective", "broadcast", "--root", "8", "--topology", "ring:8",
                 "--sizes", "4K"]) != 0
    assert "root 8 is not a node of ring:8" in capsys.readouterr().err
