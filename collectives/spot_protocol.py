"""The zero-block-sparse AllReduce protocol as data: shards, spots and rounds.

The block space is sharded over ``K`` aggregators and each shard is split
over the aggregator's ``S`` Rx spots; every (aggregator, spot) pair is an
independent *slot* that walks its block range in windows of ``C`` blocks (the
spot capacity). One round of a slot:

1. every worker that has a non-zero block in the window writes those blocks,
   their indices and its next-non-zero pointer (its first non-zero block past
   the window) into its region of the Rx spot;
2. the aggregator reduces the contributions into a Tx spot and scatters the
   result blocks (the union of what was written), with their indices and the
   start of the next window, to every worker;
3. the next window starts at the smallest next-non-zero pointer of all
   workers, so ranges that are zero on every worker are skipped: those blocks
   never travel. A slot is done when that pointer is past its range.

In the first round every worker reports (an empty record when it has nothing),
because the aggregator does not yet know its pointer. OmniReduce sends its
first round dense instead (``dense_first_round``).

Both executors derive the same rounds from the block masks; the MPI executor
additionally checks, as it runs, that the pointers the workers really wrote
lead to exactly these windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from collectives.errors import CollectiveError

INDEX_BYTES = 8          # one block index
RECORD_HEADER_BYTES = 16  # block count + next-non-zero pointer (Rx record) / next window (Tx record)
CREDIT_BYTES = 16         # round number + next window start


@dataclass(frozen=True)
class SparseConfig:
    """How a sparse AllReduce is run; the three algorithms differ only here."""

    block_size: int = 256            # elements per block
    aggregators: int | None = None   # K; None: every node aggregates one shard
    spots: int = 4                   # Rx spots (independent slots) per aggregator
    spot_blocks: int = 32            # C: blocks a worker may write per spot and round
    tx_spots: int = 2                # 2 = double buffering, 1 = off
    aggregation: str = "nic"         # "nic" (SmartNIC), "cpu" (aggregator node's host), "dedicated"
    dense_first_round: bool = False  # OmniReduce: the first window is sent dense
    host_packing: bool = False       # OmniReduce: worker hosts find and pack non-zero blocks
    credits: bool = True             # OmNICCL: Rx credits (with the next window) precede the result;
                                     # False: self-clocked by the result (OmniReduce)

    def check(self, nodes: int) -> None:
        for name in ("block_size", "spots", "spot_blocks", "tx_spots"):
            if getattr(self, name) < 1:
                raise CollectiveError(f"{name.replace('_', '-')} must be at least 1")
        if self.tx_spots > 2:
            raise CollectiveError("tx-spots must be 1 (no double buffering) or 2")
        if self.aggregators is not None and not 1 <= self.aggregators <= nodes:
            raise CollectiveError(
                f"aggregators {self.aggregators} must be between 1 and the {nodes} nodes")


@dataclass
class Layout:
    """Which aggregator owns which blocks, split into slots."""

    nodes: int
    nblocks: int
    aggregator_node: np.ndarray   # per aggregator: the node whose NIC (or host) aggregates
    slot_agg: np.ndarray          # per slot: its aggregator
    slot_lo: np.ndarray           # per slot: first block
    slot_hi: np.ndarray           # per slot: one past the last block

    @property
    def slots(self) -> int:
        return len(self.slot_lo)


def make_layout(nodes: int, nblocks: int, cfg: SparseConfig) -> Layout:
    k = cfg.aggregators or nodes
    agg_nodes = np.array([a * nodes // k for a in range(k)], dtype=np.int64)
    shard = np.array([a * nblocks // k for a in range(k + 1)], dtype=np.int64)
    lo, hi, owner = [], [], []
    for a in range(k):
        cuts = shard[a] + (np.arange(cfg.spots + 1) * (shard[a + 1] - shard[a])) // cfg.spots
        lo.extend(cuts[:-1])
        hi.extend(cuts[1:])
        owner.extend([a] * cfg.spots)
    return Layout(nodes, nblocks, agg_nodes, np.array(owner, dtype=np.int64),
                  np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64))


@dataclass
class Round:
    """Round ``index`` of every slot still running."""

    index: int
    slots: np.ndarray        # active slot ids, ascending
    lo: np.ndarray           # window start per active slot
    hi: np.ndarray           # window end (exclusive)
    sent: np.ndarray         # (active, nodes) blocks each worker writes
    reports: np.ndarray      # (active, nodes) whether the worker writes a record at all
    result: np.ndarray       # (active,) result blocks scattered
    next_lo: np.ndarray      # (active,) next window start; >= slot_hi means the slot is done


@dataclass
class Plan:
    layout: Layout
    cfg: SparseConfig
    rounds: list[Round] = field(default_factory=list)

    def upstream_bytes(self, block_bytes: int) -> np.ndarray:
        """Bytes each worker writes into Rx spots over the whole call (data + metadata)."""
        out = np.zeros(self.layout.nodes, dtype=np.int64)
        for r in self.rounds:
            out += (r.sent * (block_bytes + INDEX_BYTES) + r.reports * RECORD_HEADER_BYTES).sum(axis=0)
        return out

    def downstream_bytes(self, block_bytes: int) -> np.ndarray:
        """Bytes each aggregator scatters per worker over the whole call (data + metadata)."""
        out = np.zeros(len(self.layout.aggregator_node), dtype=np.int64)
        for r in self.rounds:
            np.add.at(out, self.layout.slot_agg[r.slots],
                      r.result * (block_bytes + INDEX_BYTES) + RECORD_HEADER_BYTES)
        return out


def next_nonzero(union: np.ndarray) -> np.ndarray:
    """nxt[x] = first block >= x that is non-zero on some worker (len(union) if none)."""
    n = len(union)
    idx = np.where(union, np.arange(n), n)
    nxt = np.minimum.accumulate(idx[::-1])[::-1]
    return np.append(nxt, n)


def plan_rounds(masks: np.ndarray, cfg: SparseConfig) -> Plan:
    """All rounds of all slots, from the workers' block masks (nodes x nblocks, bool)."""
    nodes, nblocks = masks.shape
    layout = make_layout(nodes, nblocks, cfg)
    plan = Plan(layout, cfg)
    union = masks.any(axis=0)
    nxt = next_nonzero(union)
    csum = np.zeros((nodes, nblocks + 1), dtype=np.int32)
    np.cumsum(masks, axis=1, out=csum[:, 1:])
    ucsum = np.concatenate([[0], np.cumsum(union)])
    c = cfg.spot_blocks
    slots = np.flatnonzero(layout.slot_hi > layout.slot_lo)   # empty slots never run
    lo = layout.slot_lo[slots].copy()
    i = 0
    while len(slots):
        hi = np.minimum(lo + c, layout.slot_hi[slots])
        if i == 0 and cfg.dense_first_round:
            sent = np.broadcast_to((hi - lo)[:, None], (len(slots), nodes)).copy()
        else:
            sent = (csum[:, hi] - csum[:, lo]).T
        reports = sent > 0
        if i == 0:
            reports[:] = True
        result = ucsum[hi] - ucsum[lo]
        if i == 0 and cfg.dense_first_round:
            result = hi - lo
        nlo = np.minimum(nxt[hi], layout.slot_hi[slots])
        plan.rounds.append(Round(i, slots, lo, hi, sent, reports, result, nlo))
        live = nlo < layout.slot_hi[slots]
        slots, lo = slots[live], nlo[live]
        i += 1
    return plan
