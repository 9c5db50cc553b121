"""OmNICCL, its CPU-aggregator twin, and the OmniReduce baseline: zero-block-sparse AllReduce.

All three run the spot protocol (collectives/schedules/spot_protocol.py, data path in
collectives/mpi/spot_executor.py) and differ only in their :class:`SparseConfig` (registered in
collectives/registry.py):

* ``omniccl``: aggregation on the aggregator node's SmartNIC, Rx/Tx spots in
  NIC-reachable memory (the LLC through Direct Cache Access, so finding and
  packing non-zero blocks costs the host nothing), Rx credits that let workers
  write the next window while the result is still being scattered, two Tx
  spots (``--tx-spots 1`` turns double buffering off);
* ``omniccl-cpu``: the same protocol, aggregated by the aggregator node's host
  CPU, which pays PCIe crossings, a wake-up per round and host reduction rate;
* ``omnireduce``: dedicated CPU aggregators one switch hop away, host-driven
  workers that scan and pack every window, a dense first round, one block per
  message, and self-clocked slots. As in OmniReduce's public RDMA code (its
  example configuration and defaults; docs/model.md §10.6 gives the values):
  8 busy-polling host threads on every worker and aggregator (no wake-up per
  message: ``host_event_us=0``), 8 slots per thread and aggregator (64 per
  aggregator), and a thread that packs a slot's next message in the same pass
  that unpacks its result (``pack_on_result``).
"""

from __future__ import annotations

from dataclasses import replace

from nicemu.collectives.schedules.spot_protocol import SparseConfig

OMNICCL = SparseConfig(aggregation="nic", spots=1, name="omniccl")
OMNICCL_CPU = SparseConfig(aggregation="cpu", spots=1, name="omniccl-cpu")
OMNIREDUCE = SparseConfig(aggregation="dedicated", dense_first_round=True, host_packing=True,
                          spots=64, spot_blocks=1, credits=False, host_threads=8, host_event_us=0.0,
                          pack_on_result=True,
                          name="omnireduce")


def configure(base: SparseConfig, nodes: int, block_size: int | None = None,
              aggregators: int | None = None, spots: int | None = None,
              spot_blocks: int | None = None, tx_spots: int | None = None) -> SparseConfig:
    """``base`` with the user's overrides (None keeps the default), checked for ``nodes`` nodes."""
    given = {"block_size": block_size, "aggregators": aggregators, "spots": spots,
             "spot_blocks": spot_blocks, "tx_spots": tx_spots}
    cfg = replace(base, **{k: v for k, v in given.items() if v is not None})
    cfg.check(nodes)
    return cfg
