"""``--straggler`` with the sparse algorithms (collectives/model/sparse_timing.py, docs/model.md §12).

A straggler's host, NIC and PCIe service times are F times longer, whether
the node is a worker or an aggregator; links are not slowed.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, names, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.collectives.schedules.spot_protocol import plan_rounds
from nicemu.nic.profile import load_profile

PROFILE = load_profile("omniccl-paper")
PAPER = load_profile("directreduce-paper")
N, NBLOCKS = 8, 48


def masks_for(kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "dense":
        return np.ones((N, NBLOCKS), dtype=bool)
    if kind == "random":                      # uneven records: the per-record (non-constant) path
        return rng.random((N, NBLOCKS)) < 0.4
    m = np.zeros((N, NBLOCKS), dtype=bool)    # every worker the same blocks: constant records
    m[:, ::3] = True
    return m


def timing(algo, masks, profile=PROFILE, stragglers=None, aggregators=None):
    cfg = sparse_config(algo, N, aggregators=aggregators)
    return model_sparse(cfg, masks, profile, 4, stragglers=stragglers)


def same(a, b) -> None:
    assert a.emulated_us == b.emulated_us
    np.testing.assert_array_equal(a.node_done_us, b.node_done_us)
    assert (a.host_busy_us, a.nic_busy_us, a.wire_bytes) == (b.host_busy_us, b.nic_busy_us, b.wire_bytes)


@pytest.mark.parametrize("algo", names(kind="sparse"))
@pytest.mark.parametrize("kind", ["dense", "random", "same"])
@pytest.mark.parametrize("aggregators", [None, 2])
def test_factor_one_is_bit_identical(algo, kind, aggregators):
    masks = masks_for(kind)
    clean = timing(algo, masks, aggregators=aggregators)
    same(clean, timing(algo, masks, stragglers={}, aggregators=aggregators))
    same(clean, timing(algo, masks, stragglers={0: 1.0, 5: 1.0}, aggregators=aggregators))


@pytest.mark.parametrize("profile", [PROFILE, PAPER], ids=["omniccl-paper", "directreduce-paper"])
@pytest.mark.parametrize("algo", names(kind="sparse"))
@pytest.mark.parametrize("kind", ["dense", "random"])
def test_slower_with_the_factor(profile, algo, kind):
    """Every service time only grows with F and the order of service is fixed, so the
    max-plus recursion of §10.5 cannot give a shorter time; at F = 16 the node's service
    times are longer than what its link hides, so the call is strictly slower."""
    masks = masks_for(kind)
    clean = timing(algo, masks, profile)
    for node in (0, 3):
        times = [timing(algo, masks, profile, {node: f}).emulated_us for f in (1.5, 4.0, 16.0)]
        assert clean.emulated_us <= times[0] <= times[1] <= times[2]
        assert times[2] > clean.emulated_us
        assert timing(algo, masks, profile, {node: 16.0}).wire_bytes == clean.wire_bytes


def test_aggregator_straggler_hurts_more_with_cpu_aggregation():
    """omniccl-cpu: an aggregator's host reduces every worker's record of its shard (N·γ per
    block), a pure worker only DMAs its own record and the result: slowing the aggregator
    costs more. (With NIC aggregation the order depends on the profile: not asserted.)"""
    masks = masks_for("dense")
    cfg = sparse_config("omniccl-cpu", N, aggregators=2)
    aggs = set(cfg_layout_aggregators(cfg, masks))
    worker = min(set(range(N)) - aggs)
    for f in (2.0, 4.0):
        agg_t = timing("omniccl-cpu", masks, PAPER, {min(aggs): f}, aggregators=2).emulated_us
        worker_t = timing("omniccl-cpu", masks, PAPER, {worker: f}, aggregators=2).emulated_us
        assert agg_t > worker_t


def cfg_layout_aggregators(cfg, masks) -> list[int]:
    return plan_rounds(masks, cfg).layout.aggregator_node.tolist()


@pytest.mark.parametrize("algo,busy", [("omniccl", "nic_busy_us"), ("omniccl-cpu", "host_busy_us")])
def test_single_aggregator_busy_time_scales_by_the_factor(algo, busy):
    """With one aggregator (K = 1), the busiest reduction engine is that node's: its busy
    time is the sum of its (now F times longer) service times."""
    masks = masks_for("random")
    cfg = sparse_config(algo, N, aggregators=1)
    agg = cfg_layout_aggregators(cfg, masks)[0]
    clean = getattr(timing(algo, masks, PAPER, aggregators=1), busy)
    slow = getattr(timing(algo, masks, PAPER, {agg: 3.0}, aggregators=1), busy)
    assert clean > 0
    assert slow == pytest.approx(3.0 * clean, rel=1e-12)


def test_omnireduce_worker_host_busy_scales_by_the_factor():
    """OmniReduce's workers pack and unpack on their host: the straggler's host is the busiest,
    F times a clean worker's (every worker has the same work with dense masks)."""
    masks = masks_for("dense")
    clean = timing("omnireduce", masks, PAPER).host_busy_us
    slow = timing("omnireduce", masks, PAPER, {6: 2.5}).host_busy_us
    assert slow == pytest.approx(2.5 * clean, rel=1e-12)


@pytest.mark.parametrize("algo", names(kind="sparse"))
def test_mpi_executor_equals_model_with_a_straggler(algo):
    """One process holding every node: real data through RMA, time from the same function."""
    rng = np.random.default_rng(2)
    count, block = N * 64 * 3 + 5, 64
    x = rng.integers(-1000, 1000, size=(N, count))
    x[:, 64 * 4:64 * 11] = 0
    x[::3, 64 * 14:64 * 20] = 0
    with Emulator(MPI.COMM_SELF, f"ring:{N}", PROFILE, stragglers="2:3.5") as emu:
        work = x.copy()
        t = emu.run_inplace("allreduce", work, "sum", algo, {"block_size": block})
        for row in work:
            np.testing.assert_array_equal(row, x.sum(axis=0))
    cfg = sparse_config(algo, N, block_size=block)
    model = model_sparse(cfg, block_mask(x, block), PROFILE, 8, stragglers={2: 3.5})
    clean = model_sparse(cfg, block_mask(x, block), PROFILE, 8)
    assert t.emulated_us == model.emulated_us
    assert model.emulated_us > clean.emulated_us
