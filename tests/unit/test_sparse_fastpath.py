"""The fast paths of the spot-protocol timing give the numbers of the round-by-round code.

Two checks over many random masks, configs, profiles, faults and stragglers:

* ``tests/sparse_fastpath_numbers.json``: every number (times, byte counts, fault statistics) of a
  fixed set of random cases, recorded with the round-by-round code from before the fast paths existed
  (commit 5b9b41c^), so any change of an emulated time beyond float rounding fails the test.
  The cases predate OmniReduce's polling threads (docs/model.md §10.5), so its OmniReduce
  cases run with the settings of then (``LEGACY``: one host thread, the profile's wake-up per message,
  packing before the send): the new settings are switches that leave every other number as it was.
  They predate host DRAM charging, so they run with ``host.memory_GBps=.inf``.

  Times are compared with a relative tolerance of ``RTOL`` (1e-12), integers and fault statistics
  exactly. The test used to compare a SHA-256 digest of the floats' raw bits; on a new machine that
  digest failed even with the very code that recorded it, while every number came out bit-identical
  there under numpy 2.0.2 to 2.4.6 and from the recording code and today's code: the last bits depended
  on the machine (its CPU's SIMD paths or libm), not on numpy's version or on our code. A raw-bit digest
  cannot tell a last-bit difference in a library's sum or ``exp`` from a real change, and it cannot say
  which number moved; a stored table with a tolerance a thousand times the rounding of one float
  operation can. For the same reason the random profile values are written with 9 significant digits, so
  the profile the model sees does not depend on the last bit of ``np.exp``/``np.log`` (a slot count from
  ``nic.memory_KiB`` would).
* with the fast paths switched off (``COUNT_ALL_LIMIT = 0``: counts read round by
  round; ``SCALAR = False``: no scalar path for few nodes; ``upstream.BY_WORKER = False``:
  records sent slot by slot) the same cases give the same numbers, bit for bit (one machine, one run).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nicemu.collectives import model_sparse, names, sparse_config
from nicemu.collectives.model import sparse_timing
from nicemu.collectives.model.sparse import upstream
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import load_profile
from nicemu.workloads.embedding_shards import batch_token_ids, embedding_block_mask

ALGOS = tuple(names(kind="sparse"))
BASE = ("omniccl-paper", "directreduce-paper")
#: the base profiles as they were shipped when FROZEN was recorded (no framing; omniccl-paper's earlier
#: aggregation rate, docs/model.md §7), so that the frozen numbers stay a fixed reference
PINNED = {"omniccl-paper": ["link.header_bytes=0", "nic.reduce_GBps=25.0"],
          "directreduce-paper": ["link.header_bytes=0"]}


def _masks(rng: np.random.Generator, nodes: int) -> np.ndarray:
    kind = int(rng.integers(5))
    if kind == 0:       # an embedding batch: each token's row is non-zero on the rank that owns it
        ids = batch_token_ids(int(rng.integers(1, 80)), 4096, int(rng.integers(1000)))
        return embedding_block_mask(ids, 4096, nodes, int(rng.choice([64, 256, 1024])), 16)
    nblocks = int(rng.choice([int(rng.integers(1, 40)), int(rng.integers(40, 600))]))
    if kind == 1:
        return np.ones((nodes, nblocks), dtype=bool)
    if kind == 2:       # runs of zero blocks: windows get skipped
        keep = rng.random(nblocks) < 0.2
        return (rng.random((nodes, nblocks)) < rng.random()) & keep
    if kind == 3:       # one worker holds everything
        m = np.zeros((nodes, nblocks), dtype=bool)
        m[rng.integers(nodes)] = rng.random(nblocks) < 0.3
        return m
    return rng.random((nodes, nblocks)) < rng.choice([0.02, 0.1, 0.5, 0.9])


def _profile(rng: np.random.Generator, dram: bool = True):
    """``dram=False``: host DRAM off (``FROZEN`` predates it; docs/model.md §10.5)."""
    sets = [] if dram else ["host.memory_GBps=.inf"]
    if rng.random() < 0.5:
        def num(lo: float, hi: float) -> str:
            return f"{float(np.exp(rng.uniform(np.log(lo), np.log(hi)))):.9g}"   # not the last bit
        sets += [f"link.bandwidth_GBps={num(0.5, 400)}", f"link.latency_us={num(0.01, 20)}",
                f"pcie.bandwidth_GBps={num(1, 200)}", f"pcie.latency_us={num(0.01, 5)}",
                f"host.reduce_GBps={num(0.5, 100)}", f"host.overhead_us={num(0.01, 30)}",
                f"nic.reduce_GBps={num(0.5, 300)}", f"nic.memory_KiB={num(1, 4096)}"]
    base = BASE[int(rng.integers(2))]
    return load_profile(base, PINNED[base] + sets)


def cases(count: int, seed: int, dram: bool = True):
    """``count`` random (cfg, masks, profile, itemsize, faults, call, stragglers)."""
    rng = np.random.default_rng([seed, 5150])
    for _ in range(count):
        nodes = int(rng.integers(2, 10))
        algo = ALGOS[int(rng.integers(len(ALGOS)))]
        cfg = sparse_config(algo, nodes, block_size=int(rng.choice([1, 16, 256])),
                            aggregators=[None, 1, 2][int(rng.integers(3))], spots=int(rng.integers(1, 5)),
                            spot_blocks=int(rng.choice([1, 3, 16, 32])), tx_spots=int(rng.integers(1, 3)))
        faults = None
        if rng.random() < 0.3:
            faults = FaultSpec(drop=float(rng.choice([1e-3, 0.05])), corrupt=float(rng.choice([0.0, 0.02])),
                               seed=int(rng.integers(100)))
        stragglers = None
        if rng.random() < 0.3:
            stragglers = {int(rng.integers(nodes)): float(rng.choice([1.5, 3.25]))}
        yield (cfg, _masks(rng, nodes), _profile(rng, dram), int(rng.choice([2, 4])), faults,
               int(rng.integers(5)), stragglers)


#: OmniReduce's settings before its polling threads
LEGACY = dict(host_threads=1, host_event_us=None, pack_on_result=False)


def digest(count: int, seed: int, legacy: bool = False, dram: bool = True) -> str:
    """Every number of the cases' timings, hashed (floats by their bits); ``legacy``: OmniReduce
    cases with the ``LEGACY`` settings; ``dram=False``: host DRAM off."""
    h = hashlib.sha256()
    for cfg, masks, profile, itemsize, faults, call, stragglers in cases(count, seed, dram):
        if legacy and cfg.name == "omnireduce":
            cfg = replace(cfg, **LEGACY)
        t = model_sparse(cfg, masks, profile, itemsize, faults, call, stragglers)
        h.update(struct.pack("<3d", t.emulated_us, t.host_busy_us, t.nic_busy_us))
        h.update(np.asarray(t.node_done_us, dtype=np.float64).tobytes())
        h.update(repr((int(t.wire_bytes), int(t.upstream_bytes), int(t.downstream_bytes), bool(t.spilled),
                       t.faults)).encode())
    return h.hexdigest()


def numbers(count: int, seed: int, legacy: bool = False, dram: bool = True) -> list[list]:
    """Every number of the cases' timings, one row per case: emulated, host busy and NIC busy time,
    the nodes' done times, wire, upstream and downstream bytes, spilled, fault statistics."""
    rows = []
    for cfg, masks, profile, itemsize, faults, call, stragglers in cases(count, seed, dram):
        if legacy and cfg.name == "omnireduce":
            cfg = replace(cfg, **LEGACY)
        t = model_sparse(cfg, masks, profile, itemsize, faults, call, stragglers)
        rows.append([float(t.emulated_us), float(t.host_busy_us), float(t.nic_busy_us),
                     [float(x) for x in t.node_done_us], int(t.wire_bytes), int(t.upstream_bytes),
                     int(t.downstream_bytes), bool(t.spilled), t.faults])
    return rows


#: numbers(60, seed) per seed, recorded with the round-by-round timing (commit 5b9b41c^, before host
#: DRAM was charged and before OmniReduce's polling threads); JSON keeps floats exactly (repr)
RECORDED = json.loads((Path(__file__).parent.parent / "sparse_fastpath_numbers.json").read_text())
#: a thousand times the rounding of one float64 operation: summation order (numpy's SIMD sums, a
#: machine's libm) moves the last bits, a real change of a time moves far more
RTOL = 1e-12


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-9)      # times in us: 1e-9 us is nothing


def assert_same_numbers(got: list[list], want: list[list]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        where = f"case {i}: got {g}, recorded {w}"
        assert all(_close(a, b) for a, b in zip(g[:3], w[:3])), where
        assert len(g[3]) == len(w[3]) and all(_close(a, b) for a, b in zip(g[3], w[3])), where
        assert g[4:] == w[4:], where            # bytes, spilled, fault statistics: exact


@pytest.mark.parametrize("scalar", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numbers_are_those_of_the_round_by_round_code(seed, scalar, monkeypatch):
    """With the scalar path for few nodes (docs/model.md §10.8) and with the numpy path alone."""
    monkeypatch.setattr(sparse_timing, "SCALAR", scalar)
    assert_same_numbers(numbers(60, seed, legacy=True, dram=False), RECORDED[str(seed)])


@pytest.mark.parametrize("seed", range(2))
def test_fast_paths_off_give_the_same_numbers(seed, monkeypatch):
    fast = digest(40, 100 + seed)
    monkeypatch.setattr(sparse_timing, "COUNT_ALL_LIMIT", 0)
    monkeypatch.setattr(sparse_timing, "SCALAR", False)
    monkeypatch.setattr(upstream, "BY_WORKER", False)
    assert digest(40, 100 + seed) == fast
