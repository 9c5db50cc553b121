"""Zero-block-sparse AllReduce (omniccl, omniccl-cpu, omnireduce) in one process, nodes virtual."""

from dataclasses import replace

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import CollectiveError, Emulator, model_sparse, sparse_config
from nicemu.collectives.registry import names
from nicemu.collectives.schedules.sparse_patterns import block_mask, pattern_mask, sparse_input
from nicemu.collectives.schedules.spot_protocol import INDEX_BYTES, RECORD_HEADER_BYTES, plan_rounds
from nicemu.nic.profile import load_profile
from tests.sparse_cases import CASES, case_inputs, check_sum

PROFILE = load_profile("omniccl-paper")
SPARSE = tuple(names(kind="sparse"))


@pytest.fixture(scope="module", params=["ring:4", "ring:5", "torus:2x2x2"])
def emu(request):
    with Emulator(MPI.COMM_SELF, request.param, PROFILE) as e:
        yield e


@pytest.mark.parametrize("algo", SPARSE)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "float16"])
@pytest.mark.parametrize("count,block", [(1000, 16), (37, 8), (3, 4), (256, 256)])
def test_sparse_allreduce_cases(emu, algo, case, dtype, count, block):
    n = emu.topology.nodes
    x = case_inputs(case, n, count, block, dtype, seed=count)
    work = x.copy()
    t = emu.run_inplace("allreduce", work, "sum", algo,
                        {"block_size": block, "spot_blocks": 3, "tx_spots": 1 + count % 2})
    check_sum(work, x)
    # the MPI executor's time is the model's, from the same masks
    cfg = sparse_config(algo, n, block_size=block, spot_blocks=3, tx_spots=1 + count % 2)
    assert t.emulated_us == model_sparse(cfg, block_mask(x, block), PROFILE, x.dtype.itemsize).emulated_us


@pytest.mark.parametrize("algo", SPARSE)
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_refused(emu, algo, op):
    with pytest.raises(CollectiveError, match="identity"):
        emu.run_inplace("allreduce", np.ones((emu.local_nodes, 8), np.float32), op, algo)


def test_only_allreduce(emu):
    with pytest.raises(CollectiveError, match="AllReduce only"):
        emu.run_inplace("reducescatter", np.ones((emu.local_nodes, 8), np.float32), "sum", "omniccl")


def test_bad_spot_options():
    with pytest.raises(CollectiveError, match="tx-spots"):
        sparse_config("omniccl", 8, tx_spots=3)
    with pytest.raises(CollectiveError, match="aggregators"):
        sparse_config("omniccl", 8, aggregators=9)
    with pytest.raises(CollectiveError, match="spots"):
        sparse_config("omniccl", 8, spots=0)


@pytest.mark.parametrize("extra,named", [(dict(host_threads=0), "host-threads"),
                                         (dict(host_event_us=-1.0), "host-event-us"),
                                         (dict(host_event_us=float("inf")), "host-event-us"),
                                         (dict(pack_on_result=True, host_packing=False), "pack-on-result")])
def test_bad_host_options(extra, named):
    with pytest.raises(CollectiveError, match=named):
        replace(sparse_config("omnireduce", 8), **extra).check(8)


def test_aggregator_count_and_spots(emu):
    n = emu.topology.nodes
    x = case_inputs("random-sparse", n, 2000, 16, "int64")
    for k in (1, 2, n):
        for spots in (1, 3):
            work = x.copy()
            emu.run_inplace("allreduce", work, "sum", "omniccl",
                            {"block_size": 16, "aggregators": k, "spots": spots, "spot_blocks": 5})
            check_sum(work, x)


def naive_traffic(masks, cfg, bb):
    """An independent walk over the protocol: bytes over links, up and down, with metadata."""
    nodes, nb = masks.shape
    k = cfg.aggregators or nodes
    union = masks.any(axis=0)
    up = down = 0
    for a in range(k):
        node = a * nodes // k
        s0, s1 = a * nb // k, (a + 1) * nb // k
        for sp in range(cfg.spots):
            lo = s0 + sp * (s1 - s0) // cfg.spots
            hi = s0 + (sp + 1) * (s1 - s0) // cfg.spots
            if lo == hi:
                continue
            m, first = lo, True
            while True:
                e = min(m + cfg.spot_blocks, hi)
                for w in range(nodes):
                    sent = int(masks[w, m:e].sum())
                    if (sent or first) and w != node:
                        up += sent * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
                res = int(union[m:e].sum())
                down += (nodes - 1) * (res * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES)
                nxt = [i for i in range(e, hi) if union[i]]
                m, first = (nxt[0] if nxt else hi), False
                up += (nodes - 1) * 16                       # Tx credits back to the aggregator
                if m >= hi:
                    break
                down += (nodes - 1) * 16                     # Rx credits with the next window
    return up, down


@pytest.mark.parametrize("overlap", ["all", "none"])
def test_traffic_matches_protocol_accounting(overlap):
    nodes, count, block = 8, 64 * 1024, 256
    cfg = sparse_config("omniccl", nodes)
    masks = np.stack([pattern_mask(n, nodes, count, block, 0.1, overlap, 3) for n in range(nodes)])
    t = model_sparse(cfg, masks, PROFILE, 4)
    up, down = naive_traffic(masks, cfg, block * 4)
    assert (t.upstream_bytes, t.downstream_bytes) == (up, down)
    assert t.wire_bytes == up + down


def test_overlap_none_sends_more_down_than_all():
    nodes, count, block = 8, 64 * 1024, 256
    cfg = sparse_config("omniccl", nodes)
    res = {}
    for overlap in ("all", "none"):
        masks = np.stack([pattern_mask(n, nodes, count, block, 0.1, overlap, 3) for n in range(nodes)])
        res[overlap] = model_sparse(cfg, masks, PROFILE, 4)
    # the same blocks go up either way; disjoint blocks make the union (and the scatter) 8x larger
    assert res["none"].upstream_bytes == pytest.approx(res["all"].upstream_bytes, rel=0.02)
    assert res["none"].downstream_bytes > 6 * res["all"].downstream_bytes


def test_wire_bytes_fall_in_proportion_to_density():
    nodes, count, block = 8, 256 * 1024, 256
    cfg = sparse_config("omniccl", nodes)
    wire = {}
    for d in (0.4, 0.2, 0.1, 0.05):
        masks = np.stack([pattern_mask(n, nodes, count, block, d, "all", 1) for n in range(nodes)])
        wire[d] = model_sparse(cfg, masks, PROFILE, 4).wire_bytes
    for hi, lo in ((0.4, 0.2), (0.2, 0.1), (0.1, 0.05)):
        assert wire[hi] / wire[lo] == pytest.approx(2.0, rel=0.1)


def test_plan_skips_blocks_zero_everywhere():
    masks = np.zeros((4, 100), dtype=bool)
    masks[1, 10] = masks[2, 90] = True
    plan = plan_rounds(masks, sparse_config("omniccl", 4, spots=1, aggregators=1, spot_blocks=5))
    assert [int(r.lo[0]) for r in plan.rounds] == [0, 10, 90]
    assert sum(int(r.result.sum()) for r in plan.rounds) == 2


def test_sparse_input_helper_matches_pattern():
    x = sparse_input(2, 8, 1000, "float32", density=0.3, block_size=16, overlap="random", seed=5)
    assert np.array_equal(block_mask(x, 16), pattern_mask(2, 8, 1000, 16, 0.3, "random", 5))
    with pytest.raises(CollectiveError, match="overlap none"):
        pattern_mask(0, 8, 1000, 16, 0.5, "none")
