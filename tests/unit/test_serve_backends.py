"""workloads/comm_backends.py: group topologies, algorithm pairing, and the real-data checks (one process)."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import LinkParams, Torus, parse_topology, ring
from nicemu.workloads import PRESETS, Parallelism, make_batch
from nicemu.workloads.comm_backends import (
    PATTERN_PERIOD,
    ModelComm,
    algos_for,
    dense_input,
    dense_reference,
    group_topology,
)
from nicemu.workloads.comm_mpi import MpiComm
from nicemu.workloads.embedding_shards import embedding_rows
from nicemu.workloads.traffic import iteration_traffic

PAPER = load_profile("directreduce-paper")
L7 = PRESETS["Llama-2-7B"]


def test_group_topology_whole_subtorus_or_ring():
    assert group_topology(ring(8), range(8)) == ring(8)
    rows = group_topology(parse_topology("torus:2x8"), range(8, 16))
    assert rows.shape == (8,)
    sub = group_topology(parse_topology("torus:2x4x4"), range(16))
    assert sub.shape == (4, 4)
    arc = group_topology(ring(16), range(8))
    assert arc.shape == (8,) and arc.name == "ring:8"
    fast = LinkParams(50.0, 0.5)
    links = Torus((2, 4), dim_links=(None, fast))
    assert group_topology(links, range(4)).dim_links == (fast,)
    # nodes of a switch keep their own ports: a smaller switch, not a ring
    part = group_topology(parse_topology("switch:16"), range(8, 16))
    assert part.switched and part.name == "switch:8"


def test_group_topology_with_ranks_per_node():
    """TP groups of ranks: inside one node a single-node topology, of whole nodes the hierarchical one."""
    ranks = ring(4).with_ranks_per_node(8)
    assert group_topology(ranks, range(32)) == ranks
    inside = group_topology(ranks, range(8, 16))
    assert inside.single and inside.nodes == 8
    half = group_topology(ranks, range(4))
    assert half.single and half.nodes == 4
    two = group_topology(ranks, range(16, 32))
    assert two.ranks_per_node == 8 and two.node_topology.shape == (2,) and two.nodes == 16
    # the group's AllReduce is the intra-node phases, then (for whole nodes) the rails
    t = model_time("allreduce", "ring", two, PAPER, 16 * 1024)
    assert t.emulated_us == model_time("allreduce", "ring", ring(2), PAPER, 16 * 1024, ranks_per_node=8).emulated_us
    assert model_time("allreduce", "directreduce", inside, PAPER, 8192).wire_bytes == 0


def test_sparse_algorithms_pair_with_a_dense_one():
    assert algos_for("ring") == ("ring", "ring", "ring", "p2p-host")
    assert algos_for("directreduce") == ("directreduce", "directreduce", "directreduce", "p2p-nic")
    assert algos_for("omniccl") == ("directreduce", "omniccl", "directreduce", "p2p-nic")
    assert algos_for("omniccl-cpu")[0] == "ring" and algos_for("omnireduce")[0] == "ring"
    assert algos_for("ring-pipelined") == ("ring-pipelined", "ring-pipelined", "ring", "p2p-host")


def test_dense_inputs_sum_to_the_reference_exactly_in_bfloat16():
    nodes = range(8)
    count = 3 * PATTERN_PERIOD + 5
    inputs = [dense_input(n, count, 1) for n in nodes]
    assert inputs[0].dtype.name == "bfloat16"
    total = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    assert np.array_equal(total, dense_reference(nodes, count, 1))
    assert np.abs(total).max() <= 8
    acc = inputs[0].copy()        # summed in bfloat16 itself, one rounding per addition: still exact
    for x in inputs[1:]:
        acc += x
    assert np.array_equal(acc.astype(np.float64), total)


def test_embedding_rows_are_nonzero_functions_of_the_token():
    rows = embedding_rows(np.array([5, 5 + 257, 6]), 64)
    assert rows.dtype.name == "bfloat16" and np.all(rows != 0) and np.all(np.abs(rows) <= 4)
    assert np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[0], rows[2])


def records(par, tokens=24):
    batch = make_batch([(tokens - 2, 0)], [100, 200])
    dense, emb, a2a, p2p = algos_for("omniccl")
    return iteration_traffic(0, batch, L7, par, dense, emb, a2a, p2p)


def test_model_backend_uses_the_group_topology_and_counts_each_record():
    par = Parallelism(tp=4, pp=2)
    topo = parse_topology("torus:2x4")
    recs = records(par)
    backend = ModelComm(topo, PAPER, L7, seed=0)
    total = backend.iteration_cost(0, recs)
    layer = next(r for r in recs if r.what == "attn_out")
    t_layer = model_time("allreduce", "directreduce", ring(4), PAPER, layer.bytes // 2, "float16").emulated_us
    assert backend.stats.per_what_us["attn_out"] == pytest.approx(L7.layers * t_layer)
    assert total.emulated_us == pytest.approx(sum(backend.stats.per_what_us.values()))
    assert total.host_busy_us == 0.0                    # every path of omniccl/directreduce is on the NIC


def test_sparse_algorithm_on_dense_activations_agrees_between_backends():
    """Not what serve issues (it pairs sparse algorithms with a dense one), but both backends must agree."""
    rec = next(r for r in records(Parallelism(tp=4)) if r.what == "attn_out")._replace(algo="omniccl")
    model = ModelComm(ring(4), PAPER, L7, seed=0).iteration_cost(0, [rec])
    real = MpiComm(MPI.COMM_SELF, ring(4), PAPER, L7, seed=0)
    try:
        assert real.iteration_cost(0, [rec]) == model and real.stats.wrong == 0
    finally:
        real.free()


def test_single_process_real_data_matches_model_and_catches_corruption():
    par = Parallelism(tp=4, pp=2)
    topo = parse_topology("torus:2x4")
    recs = records(par)
    model = ModelComm(topo, PAPER, L7, seed=2).iteration_cost(0, recs)
    real = MpiComm(MPI.COMM_SELF, topo, PAPER, L7, seed=2)
    try:
        got = real.iteration_cost(0, recs)
        assert got == model
        assert real.stats.wrong == 0 and real.stats.checked_elements > 0
        ref = dense_reference(range(4), PATTERN_PERIOD, 2)
        row = np.resize(ref, 2 * PATTERN_PERIOD + 3).astype(np.float16)
        real._check(row, ref)
        assert real.stats.wrong == 0
        row[-1] += 1
        row[7] = 0
        real._check(row, ref)
        assert real.stats.wrong == 2
    finally:
        real.free()


def test_stage_pcie_us_splits_the_reads_by_stage():
    """Each pipeline stage's PCIe reads are its own collectives' (the embedding AllReduce on stage 0, the
    activations' p2p counting 0): they add up to the pass's, and each is the sum of its records'."""
    par = Parallelism(tp=4, pp=2)
    recs = iteration_traffic(0, make_batch([(64, 0)], [10, 20]), L7, par, "ring", p2p_algo="p2p-host")
    backend = ModelComm(parse_topology("torus:2x4"), PAPER, L7, 0)
    groups = [set(par.tp_group(s)) for s in range(2)]
    per_stage = backend.stage_pcie_us(recs, groups)
    for s, g in enumerate(groups):
        want = sum(backend.pcie_read_us(r) for r in recs if r.nodes[0] in g)
        assert per_stage[s] == pytest.approx(want, rel=1e-12)
    assert per_stage[0] > per_stage[1] > 0                       # stage 0 also reads for the embedding
    assert sum(per_stage) == pytest.approx(backend.iteration_pcie_us(recs), rel=1e-12)
