"""The scalar fast path of the spot-protocol timing (collectives/model/sparse/scalar.py) against the numpy path.

Every case is timed twice, with ``sparse_timing.SCALAR`` on and off, and every number is
compared with ``==``: emulated time, each node's done time, host and NIC busy time, byte
counts, spill. The cases cover the three sparse algorithms (OmniReduce also with its earlier
settings and other thread counts), node counts up to the scalar path's limits, densities and
mask shapes, block sizes, spot counts, spot capacities, aggregator counts, one or two Tx
spots, element sizes of 1 to 8 bytes, awkward profiles (spilled spots, an infinitely fast
NIC), and the 926 embedding AllReduces ``nicemu serve`` times in its default Llama-3-70B run.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from nicemu.collectives import model_sparse, sparse_config
from nicemu.collectives.model import sparse_timing
from nicemu.collectives.model.sparse import scalar
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.schedules.spot_protocol import plan_rounds
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import load_profile
from nicemu.workloads.embedding_shards import batch_token_ids, embedding_block_mask
from tests.serve_embedding_calls import SHAPE, TOKENS

ALGOS = ("omniccl", "omniccl-cpu", "omnireduce")
#: OmniReduce's settings before its polling threads (one thread, a wake-up per message, packing before the send)
LEGACY = dict(host_threads=1, host_event_us=None, pack_on_result=False)


@pytest.fixture
def used(monkeypatch):
    """Counts the plans the scalar path times."""
    hits = [0]
    orig = scalar.time_plan

    def spy(st, plan):
        hits[0] += 1
        orig(st, plan)
    monkeypatch.setattr(scalar, "time_plan", spy)
    return hits


def both(monkeypatch, *args, **kw):
    """The timing with the scalar path, then with the numpy path."""
    monkeypatch.setattr(sparse_timing, "SCALAR", True)
    fast = model_sparse(*args, **kw)
    monkeypatch.setattr(sparse_timing, "SCALAR", False)
    slow = model_sparse(*args, **kw)
    monkeypatch.setattr(sparse_timing, "SCALAR", True)
    return fast, slow


def assert_identical(a, b) -> None:
    for name in ("emulated_us", "host_busy_us", "nic_busy_us", "wire_bytes", "upstream_bytes",
                 "downstream_bytes", "spilled", "framed_bytes", "faults"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.node_done_us.dtype == b.node_done_us.dtype
    assert np.array_equal(a.node_done_us, b.node_done_us)


def random_masks(rng: np.random.Generator, nodes: int) -> np.ndarray:
    kind = int(rng.integers(6))
    if kind == 0:       # an embedding batch: each token's row is non-zero on the rank that owns it
        ids = batch_token_ids(int(rng.integers(1, 120)), 4096, int(rng.integers(1000)))
        return embedding_block_mask(ids, 4096, nodes, int(rng.choice([64, 256, 1024])), 16)
    nblocks = int(rng.choice([int(rng.integers(1, 40)), int(rng.integers(40, 700))]))
    if kind == 1:
        return np.ones((nodes, nblocks), dtype=bool)
    if kind == 2:       # runs of zero blocks: windows get skipped
        keep = rng.random(nblocks) < 0.2
        return (rng.random((nodes, nblocks)) < rng.random()) & keep
    if kind == 3:       # one worker holds everything
        m = np.zeros((nodes, nblocks), dtype=bool)
        m[rng.integers(nodes)] = rng.random(nblocks) < 0.3
        return m
    if kind == 4:       # all zero
        return np.zeros((nodes, nblocks), dtype=bool)
    return rng.random((nodes, nblocks)) < rng.choice([0.01, 0.05, 0.25, 0.5, 0.75, 0.99])


#: the scalar path covers links without framing (docs/model.md §10.8); the shipped profiles but ideal frame
#: every packet with RoCEv2 headers, so the cases here take them off
NO_HEADERS = ["link.header_bytes=0"]


def random_profile(rng: np.random.Generator):
    """Awkward (non-round) numbers, so that any difference in rounding would show; small NIC
    memories spill the spots."""
    def num(lo: float, hi: float) -> str:
        return repr(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    base = ("omniccl-paper", "directreduce-paper")[int(rng.integers(2))]
    if rng.random() < 0.3:
        return load_profile(base, NO_HEADERS)
    sets = [f"link.bandwidth_GBps={num(0.5, 400)}", f"link.latency_us={num(0.01, 20)}",
            f"pcie.bandwidth_GBps={num(1, 200)}", f"pcie.latency_us={num(0.01, 5)}",
            f"host.reduce_GBps={num(0.5, 100)}", f"host.overhead_us={num(0.01, 30)}",
            f"nic.reduce_GBps={num(0.5, 300)}", f"nic.latency_us={num(0.01, 5)}",
            f"nic.memory_KiB={num(1, 4096)}"]
    if rng.random() < 0.15:
        sets.append("nic.reduce_GBps=.inf")
    if rng.random() < 0.4:      # host DRAM slow enough to bind, with or without DDIO (docs/model.md §10.5)
        sets += [f"host.memory_GBps={num(0.5, 300)}", f"host.ddio_KiB={rng.choice([0, 0.5, 4, 64, 8192])}"]
    return load_profile(base, sets + NO_HEADERS)


def random_case(rng: np.random.Generator):
    algo = ALGOS[int(rng.integers(3))]
    top = scalar.MAX_NODES_DEDICATED if algo == "omnireduce" else scalar.MAX_NODES
    nodes = int(rng.integers(2, 13)) if rng.random() < 0.85 else int(rng.integers(13, top + 1))
    spots = int(rng.integers(1, 6)) if algo != "omnireduce" or rng.random() < 0.5 else None
    cfg = sparse_config(algo, nodes, block_size=int(rng.choice([1, 4, 16, 256])),
                        aggregators=[None, 1, 2, int(rng.integers(1, nodes + 1))][int(rng.integers(4))],
                        spots=spots, spot_blocks=int(rng.choice([1, 2, 3, 16, 32, 64])),
                        tx_spots=int(rng.integers(1, 3)))
    if algo == "omnireduce":
        if rng.random() < 0.3:
            cfg = replace(cfg, **LEGACY)
        elif rng.random() < 0.3:
            cfg = replace(cfg, host_threads=int(rng.integers(1, 9)), host_event_us=float(rng.choice([0.0, 0.37])))
    elif rng.random() < 0.1:
        cfg = replace(cfg, dense_first_round=True)
    return cfg, random_masks(rng, nodes), random_profile(rng), int(rng.choice([1, 2, 4, 8]))


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_are_identical(seed, monkeypatch, used):
    rng = np.random.default_rng([seed, 0xFA57])
    count = 25
    for _ in range(count):
        cfg, masks, prof, itemsize = random_case(rng)
        call = int(rng.integers(4))
        fast, slow = both(monkeypatch, cfg, masks, prof, itemsize, None, call)
        assert_identical(fast, slow)
    assert used[0] == count         # every case took the scalar path once


def test_spilled_and_cpu_cases_are_covered(monkeypatch, used):
    """Both OmNICCL aggregations, with and without spilled spots, at the defaults of 8 nodes."""
    rng = np.random.default_rng(3)
    masks = rng.random((8, 3000)) < 0.3
    seen = set()
    for algo in ALGOS[:2]:
        for mem in ("1", "100000"):
            prof = load_profile("omniccl-paper", [f"nic.memory_KiB={mem}", *NO_HEADERS])
            fast, slow = both(monkeypatch, sparse_config(algo, 8), masks, prof, 4)
            assert_identical(fast, slow)
            seen.add((algo, fast.spilled))
    assert seen == {("omniccl", True), ("omniccl", False), ("omniccl-cpu", False)}
    assert used[0] == 4


@pytest.mark.parametrize("algo", ALGOS)
def test_dram_cases_are_identical(algo, monkeypatch, used):
    """Host DRAM that binds (it changes the time), with and without DDIO, spilled spots, one Tx spot."""
    rng = np.random.default_rng(29)
    changed = 0
    for k in range(6):
        nodes = 3 + 2 * k
        masks = rng.random((nodes, 900)) < (1.0, 0.5, 0.2, 0.05)[k % 4]
        cfg = sparse_config(algo, nodes, tx_spots=1 + k % 2)
        sets = [f"host.memory_GBps={(2.0, 11.3, 5.0)[k % 3]}", f"host.ddio_KiB={(0, 3, 0.5)[k % 3]}"]
        if algo == "omniccl" and k % 2:
            sets.append("nic.memory_KiB=1")
        prof = load_profile("omniccl-paper", sets + NO_HEADERS)    # the scalar path needs unframed links
        fast, slow = both(monkeypatch, cfg, masks, prof, 4)
        assert_identical(fast, slow)
        without = model_sparse(cfg, masks, load_profile("omniccl-paper", sets[2:] + NO_HEADERS), 4)
        changed += fast.emulated_us > without.emulated_us
    assert changed == 6
    assert used[0] == 6 + 6


def serve_calls() -> list[int]:
    """Every 20th of serve's recorded calls (first and last included); all with NICEMU_SERVE_CALLS_ALL=1."""
    if os.environ.get("NICEMU_SERVE_CALLS_ALL"):
        return list(TOKENS)
    return sorted(set(TOKENS[::20]) | {min(TOKENS), max(TOKENS)})


def test_serve_embedding_calls_are_identical(monkeypatch, used):
    vocab, nodes, hidden, block, itemsize, profile = SHAPE
    prof = load_profile(profile, NO_HEADERS)
    cfg = sparse_config("omniccl", nodes)
    calls = serve_calls()
    for tokens in calls:
        masks = embedding_block_mask(batch_token_ids(tokens, vocab, 0), vocab, nodes, hidden, block)
        fast, slow = both(monkeypatch, cfg, masks, prof, itemsize)
        assert_identical(fast, slow)
        assert fast.emulated_us > 0 and fast.wire_bytes > 0
    assert used[0] == len(calls)


def _applies(cfg, masks, prof, itemsize=4, faults=None, slow=None, telemetry=False):
    plan = plan_rounds(masks, cfg)
    st = SpotState(plan, prof, itemsize, faults, 0, slow)
    if telemetry:
        st.tel = object()
    return scalar.applies(st, plan)


def test_the_numpy_path_keeps_what_the_scalar_one_does_not_cover(monkeypatch, used):
    """Faults, stragglers, telemetry, packet headers and large node counts take the numpy path;
    their numbers do not depend on the switch."""
    rng = np.random.default_rng(11)
    masks = rng.random((6, 400)) < 0.4
    prof = load_profile("omniccl-paper", NO_HEADERS)
    cfg = sparse_config("omniccl", 6)
    assert _applies(cfg, masks, prof)
    assert not _applies(cfg, masks, load_profile("omniccl-paper"))     # as shipped: RoCEv2 framing
    assert not _applies(cfg, masks, prof, faults=FaultSpec(drop=0.05, seed=1))
    assert not _applies(cfg, masks, prof, slow=np.array([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]))
    assert not _applies(cfg, masks, prof, telemetry=True)
    assert not _applies(cfg, masks, load_profile("omniccl-paper", ["link.header_bytes=64"]))
    assert _applies(sparse_config("omnireduce", 6), masks, prof)
    big = rng.random((scalar.MAX_NODES + 1, 200)) < 0.4
    assert not _applies(sparse_config("omniccl", scalar.MAX_NODES + 1), big, prof)
    over = scalar.MAX_NODES_DEDICATED + 1
    mid = rng.random((over, 200)) < 0.4
    assert _applies(sparse_config("omniccl", over), mid, prof)
    assert not _applies(sparse_config("omnireduce", over), mid, prof)
    for args, kw in (((cfg, masks, prof, 4, FaultSpec(drop=0.05, seed=1)), {}),
                     ((cfg, masks, prof, 4), {"stragglers": {2: 3.0}}),
                     ((cfg, masks, prof, 4), {"telemetry": True}),
                     ((sparse_config("omnireduce", 6), masks, prof, 4), {"stragglers": {1: 2.5}}),
                     ((sparse_config("omnireduce", over), mid, prof, 4), {}),
                     ((sparse_config("omniccl", scalar.MAX_NODES + 1), big, prof, 4), {})):
        fast, slow = both(monkeypatch, *args, **kw)
        assert_identical(fast, slow)
    assert used[0] == 0


@pytest.mark.parametrize("seed", range(4))
def test_np_sum_is_numpys_pairwise_sum(seed):
    rng = np.random.default_rng(seed)
    for n in list(range(0, 40)) + [127, 128, 129, 200, 255, 256, 257, 1000]:
        a = rng.random(n) * 10.0 ** rng.integers(-6, 7)
        assert scalar.np_sum(a.tolist()) == float(a.sum())
        c = float(rng.random())
        assert scalar.np_sum([c] * n) == float(np.full(n, c).sum())
