"""OmNICCL, its CPU-aggregator twin, and the OmniReduce baseline: zero-block-sparse AllReduce.

All three run the spot protocol (collectives/spot_protocol.py, data path in
collectives/spot_executor.py) and differ only in their :class:`SparseConfig`:

* ``omniccl``: aggregation on the aggregator node's SmartNIC, Rx/Tx spots in
  NIC-reachable memory (the LLC through Direct Cache Access, so finding and
  packing non-zero blocks costs the host nothing), Rx credits that let workers
  write the next window while the result is still being scattered, two Tx
  spots (``--tx-spots 1`` turns double buffering off);
* ``omniccl-cpu``: the same protocol, aggregated by the aggregator node's host
  CPU, which pays PCIe crossings, a wake-up per round and host reduction rate;
* ``omnireduce``: dedicated CPU aggregators one switch hop away, host-driven
  workers that scan and pack every window, a dense first round, one block per
  message and 8 self-clocked slots per aggregator.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from mpi4py import MPI

from collectives.errors import CollectiveError
from collectives.executor_model import Timing
from collectives.sparse_timing import SparseTiming, sparse_time
from collectives.spot_protocol import SparseConfig, plan_rounds
from nic.faults import FaultSpec
from nic.profile import Profile

SPARSE_ALGOS: dict[str, SparseConfig] = {
    "omniccl": SparseConfig(aggregation="nic", spots=1),
    "omniccl-cpu": SparseConfig(aggregation="cpu", spots=1),
    "omnireduce": SparseConfig(aggregation="dedicated", dense_first_round=True, host_packing=True,
                               spots=8, spot_blocks=1, credits=False),
}


def sparse_config(algo: str, nodes: int, block_size: int | None = None,
                  aggregators: int | None = None, spots: int | None = None,
                  spot_blocks: int | None = None, tx_spots: int | None = None) -> SparseConfig:
    """The algorithm's configuration with the user's overrides (None keeps the default)."""
    cfg = SPARSE_ALGOS[algo]
    given = {"block_size": block_size, "aggregators": aggregators, "spots": spots,
             "spot_blocks": spot_blocks, "tx_spots": tx_spots}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    cfg.check(nodes)
    return cfg


def check_sparse_call(algo: str, collective: str, op: str) -> None:
    if collective != "allreduce":
        raise CollectiveError(f"{algo} implements AllReduce only; use ring or directreduce for "
                              f"{collective}")
    if op != "sum":
        raise CollectiveError(f"{algo} cannot compute '{op}': blocks that are zero are skipped, and "
                              "zero is not the identity of max/min; use --op sum or a dense algorithm")


def as_timing(t: SparseTiming) -> Timing:
    return Timing(t.emulated_us, t.node_done_us, t.host_busy_us, t.nic_busy_us, t.wire_bytes,
                  upstream_bytes=t.upstream_bytes, downstream_bytes=t.downstream_bytes,
                  spilled=t.spilled, faults=t.faults)


def model_sparse(cfg: SparseConfig, masks: np.ndarray, profile: Profile, itemsize: int,
                 faults: FaultSpec | None = None, call: int = 0,
                 stragglers: dict[int, float] | None = None) -> Timing:
    """Emulated time from the block masks alone (nodes x nblocks); faults on the Rx-spot writes,
    stragglers slow their nodes' host, NIC and PCIe service times."""
    return as_timing(sparse_time(plan_rounds(masks, cfg), profile, itemsize, faults, call, stragglers))


def gather_masks(comm: MPI.Comm, local: np.ndarray, bounds: np.ndarray, nblocks: int) -> np.ndarray:
    """Every node's block mask on every rank (one Allgatherv of packed bits)."""
    packed = np.packbits(local, axis=1)
    width = packed.shape[1]
    counts = [int(bounds[r + 1] - bounds[r]) * width for r in range(comm.size)]
    everything = np.empty(sum(counts), dtype=np.uint8)
    comm.Allgatherv(np.ascontiguousarray(packed).reshape(-1), [everything, counts])
    return np.unpackbits(everything.reshape(-1, width), axis=1, count=nblocks).astype(bool)
