"""``nicemu bench --density 0``: an all-zero input (a frozen layer's gradient) on every algorithm.

Every algorithm must return zeros (``#wrong`` 0), with a finite, positive
emulated time that is the same on the model executor, the MPI executor alone
and under ``mpiexec -n 2``. The dense algorithms do not look at the data, so
their time equals the dense input's. The sparse ones send the protocol's
minimum, derived from collectives/schedules/spot_protocol.py:

* ``omniccl`` and ``omniccl-cpu`` (aggregators on the nodes, Rx credits): a
  slot with a non-empty block range runs one round; each of the ``N - 1``
  remote workers writes an empty record (16 B header), receives an empty
  result (16 B) and returns a Tx credit (16 B): ``48 (N - 1)`` bytes per slot.
  With every node aggregating one shard and one spot, ``min(nblocks, N)``
  slots are non-empty.
* ``omnireduce`` (dedicated aggregators, dense first round, one block per
  record): every one of the ``N`` workers sends its slot's first block dense
  (``B + 8`` B of block and index, 16 B header), receives the one-block result
  (as much) and returns a credit (16 B): ``N (2 (B + 24) + 16)`` bytes per
  slot, with ``min(nblocks, 64 N)`` slots non-empty (64 spots per aggregator: 8 per
  host thread, 8 threads).
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.e2e

NODES = 4
SIZES = [1024, 65536]            # 1 block and 64 blocks of 256 float32 elements
BLOCK = 256
ITEM = 4
SPARSE = ["omniccl", "omniccl-cpu", "omnireduce"]
DENSE = ["ring", "directreduce"]
BASE = ["--topology", f"ring:{NODES}", "--sizes", ",".join(map(str, SIZES)), "--iters", "1", "--warmup", "0"]
ARGS = [*BASE, "--density", "0"]


def minimum_wire_bytes(algo: str, nbytes: int) -> int:
    nblocks = -(-nbytes // ITEM // BLOCK)
    if algo == "omnireduce":
        return min(nblocks, 64 * NODES) * NODES * (2 * (BLOCK * ITEM + 24) + 16)
    return min(nblocks, NODES) * (NODES - 1) * 48


def by_key(records: list[dict]) -> dict[tuple[int, str], dict]:
    return {(r["bytes"], r["algo"]): r for r in records}


@pytest.fixture(scope="module")
def runs(bench_json) -> dict[str, dict]:
    algos = ",".join(DENSE + SPARSE)
    return {
        "model": by_key(bench_json([*ARGS, "--algo", algos, "--executor", "model"])),
        "mpi": by_key(bench_json([*ARGS, "--algo", algos + ",mpi"])),
        "mpi-np2": by_key(bench_json([*ARGS, "--algo", algos + ",mpi"], n=2)),
        "mpi-np2-overlap-none": by_key(bench_json([*ARGS, "--algo", algos, "--overlap", "none"], n=2)),
    }


def test_results_are_zero_on_every_algorithm(runs):
    for name in ("mpi", "mpi-np2", "mpi-np2-overlap-none"):
        for key, r in runs[name].items():
            assert r["wrong"] == 0, (name, key)


def test_times_are_finite_positive_and_equal_across_executors(runs):
    model = runs["model"]
    assert set(model) == {(s, a) for s in SIZES for a in DENSE + SPARSE}
    for key, m in model.items():
        assert math.isfinite(m["emulated_us"]) and m["emulated_us"] > 0, key
        for name in ("mpi", "mpi-np2", "mpi-np2-overlap-none"):
            r = runs[name][key]
            for field in ("emulated_us", "wire_bytes", "host_busy_us", "nic_busy_us"):
                assert r[field] == m[field], (name, key, field)


def test_sparse_algorithms_send_the_protocol_minimum(runs):
    for nbytes in SIZES:
        for algo in SPARSE:
            r = runs["model"][(nbytes, algo)]
            assert r["wire_bytes"] == minimum_wire_bytes(algo, nbytes), (algo, nbytes)
            assert r["upstream_bytes"] + r["downstream_bytes"] == r["wire_bytes"], (algo, nbytes)


def test_overlap_patterns_agree_at_zero(bench_json, runs):
    """At density 0 every overlap pattern is the same all-zero input."""
    for overlap in ("all", "none"):
        other = by_key(bench_json([*ARGS, "--algo", ",".join(DENSE + SPARSE), "--executor", "model",
                                   "--overlap", overlap]))
        for key, r in other.items():
            assert r["emulated_us"] == runs["model"][key]["emulated_us"], (overlap, key)
            assert r["wire_bytes"] == runs["model"][key]["wire_bytes"], (overlap, key)


def test_dense_algorithms_ignore_the_data(bench_json, runs):
    dense = by_key(bench_json([*BASE, "--density", "1", "--algo", ",".join(DENSE), "--executor", "model"]))
    for key, r in dense.items():
        assert runs["model"][key]["emulated_us"] == r["emulated_us"], key
        assert runs["model"][key]["wire_bytes"] == r["wire_bytes"], key


def test_zero_is_the_least_any_density_sends(bench_json, runs):
    """The minimum: a few non-zero blocks cost more bytes than none."""
    sparse = by_key(bench_json([*BASE, "--density", "0.05", "--algo", ",".join(SPARSE), "--executor", "model"]))
    for key, r in sparse.items():
        assert runs["model"][key]["wire_bytes"] <= r["wire_bytes"], key
