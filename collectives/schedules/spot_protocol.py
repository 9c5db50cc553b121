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

A plan stays small at scale (4,096 nodes x 131,072 blocks): the windows are
computed from the union of the masks, and what each worker writes in a window
is counted from the masks only when it is read (:meth:`Round.sent_rows`). The
masks may be given bit-packed (:class:`PackedMasks`, 1/8 of a bool array).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nicemu.errors import CollectiveError

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
    host_threads: int = 1            # host threads per endpoint; a slot's host work runs on thread
                                     # spot * host_threads // spots (OmniReduce: 8 polling threads)
    host_event_us: float | None = None   # host cost per event (message or round); None: the
                                         # profile's host.overhead_us (a wake-up); OmniReduce: 0 (polling)
    pack_on_result: bool = False     # OmniReduce: a worker thread packs a slot's next record in the
                                     # same pass that unpacks its result (host_packing only)
    name: str = "sparse"             # the registered algorithm (for messages)

    def check(self, nodes: int) -> None:
        for name in ("block_size", "spots", "spot_blocks", "tx_spots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise CollectiveError(f"{name.replace('_', '-')} must be a whole number, got {value!r}")
            if value < 1:
                raise CollectiveError(f"{name.replace('_', '-')} must be at least 1")
        if isinstance(self.host_threads, bool) or not isinstance(self.host_threads, (int, np.integer)) \
                or self.host_threads < 1:
            raise CollectiveError(f"host-threads must be a whole number >= 1, got {self.host_threads!r}")
        if self.host_event_us is not None and not (np.isfinite(self.host_event_us) and self.host_event_us >= 0):
            raise CollectiveError(f"host-event-us must be finite and >= 0, got {self.host_event_us!r}")
        if self.pack_on_result and not self.host_packing:
            raise CollectiveError("pack-on-result needs host packing (the host packs the records)")
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


class PackedMasks:
    """The workers' block masks, 8 blocks per byte (``np.packbits`` along the blocks).

    An alternative to the ``(nodes, nblocks)`` bool array that takes an eighth of
    the memory (4,096 nodes x 131,072 blocks: 64 MiB instead of 512 MiB).
    :func:`plan_rounds` accepts either and plans the same rounds. ``PackedMasks.pack(masks)`` packs a
    bool array; ``PackedMasks(bits, nblocks)`` raises :class:`CollectiveError` if ``bits`` is not
    (nodes, ceil(nblocks / 8)) bytes.
    """

    def __init__(self, bits: np.ndarray, nblocks: int) -> None:
        bits = np.ascontiguousarray(bits, dtype=np.uint8)
        if bits.ndim != 2 or bits.shape[1] != (nblocks + 7) // 8:
            raise CollectiveError(f"packed masks of {nblocks} blocks need shape (nodes, {(nblocks + 7) // 8}), "
                                  f"not {bits.shape}")
        self.bits = bits
        self.nblocks = int(nblocks)

    @classmethod
    def pack(cls, masks: np.ndarray) -> PackedMasks:
        masks = np.asarray(masks)
        return cls(np.packbits(masks != 0, axis=1), masks.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape[0], self.nblocks

    def unpack(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=1, count=self.nblocks).astype(bool)

    def union(self) -> np.ndarray:
        """Blocks that are non-zero on some node."""
        return np.unpackbits(np.bitwise_or.reduce(self.bits, axis=0), count=self.nblocks).astype(bool)

    def columns(self, c0: int, c1: int) -> np.ndarray:
        """Blocks ``c0 .. c1-1`` of every node, (nodes, c1 - c0), 0/1 as uint8."""
        b0 = c0 // 8
        u = np.unpackbits(self.bits[:, b0:(c1 + 7) // 8], axis=1)
        return u[:, c0 - 8 * b0:c1 - 8 * b0]


_COUNT_CHUNK = 1 << 25   # mask entries (bytes) unpacked or read at once when counting windows


class WindowCounts:
    """Per-worker non-zero block counts of windows, straight from the masks.

    ``counts(lo, hi)`` is what a cumulative sum over the whole mask array gives,
    ``csum[:, hi] - csum[:, lo]``, without building that array: the windows
    (ascending, disjoint) are read in column batches of bounded size.
    """

    def __init__(self, masks) -> None:
        self.masks = masks
        self.nodes, self.nblocks = masks.shape

    def _columns(self, c0: int, c1: int) -> np.ndarray:
        if isinstance(self.masks, PackedMasks):
            return self.masks.columns(c0, c1)
        return self.masks[:, c0:c1]

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Blocks ``idx`` of every node, (nodes, len(idx))."""
        if isinstance(self.masks, PackedMasks):
            byte = np.take(self.masks.bits, idx >> 3, axis=1)
            return (byte >> (7 - (idx & 7)).astype(np.uint8)) & 1
        return np.take(self.masks, idx, axis=1)

    def counts(self, lo: np.ndarray, hi: np.ndarray, dtype: type = np.int32) -> np.ndarray:
        """(len(lo), nodes): blocks of each worker in ``[lo[i], hi[i])``, as ``dtype``."""
        m = len(lo)
        out = np.empty((m, self.nodes), dtype=dtype)
        if m == 0:
            return out
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        width = hi - lo
        reach = np.cumsum(width)                     # blocks read up to each window
        limit = max(1, _COUNT_CHUNK // max(self.nodes, 1))
        i = 0
        while i < m:
            # a batch of windows whose blocks fit in one read
            base = int(reach[i - 1]) if i else 0
            j = int(np.searchsorted(reach, base + limit, side="right"))
            j = min(max(j, i + 1), m)
            w = width[i:j]
            c0, c1 = int(lo[i]), int(hi[j - 1])
            if c1 - c0 <= 2 * int(reach[j - 1] - base):
                sub = self._columns(c0, c1)          # the windows are close: read the whole range
                blo, bhi = lo[i:j] - c0, hi[i:j] - c0
            else:                                    # far apart: read only their blocks
                starts = np.zeros(j - i, dtype=np.int64)
                np.cumsum(w[:-1], out=starts[1:])
                idx = np.repeat(lo[i:j] - starts, w) + np.arange(int(reach[j - 1] - base))
                sub = self._gather(idx)
                blo, bhi = starts, starts + w
            if (w == 1).all():
                part = sub if sub.shape[1] == j - i else np.take(sub, blo, axis=1)
            elif (w == w[0]).all() and (blo[1:] == bhi[:-1]).all():
                part = sub.reshape(self.nodes, j - i, int(w[0])).sum(axis=2, dtype=np.int32)
            else:
                cut = np.empty(2 * (j - i), dtype=np.int64)
                cut[0::2], cut[1::2] = blo, bhi
                part = np.add.reduceat(sub, cut[:-1], axis=1, dtype=np.int32)[:, 0::2]
            out[i:j] = part.T
            i = j
        return out


class Round:
    """Round ``index`` of every slot still running.

    ``sent`` and ``reports`` are (active slots, nodes); a plan made by
    :func:`plan_rounds` computes them from the masks when first read (they are
    the bulk of a plan: 4,096 nodes x 32,768 slots is 512 MiB per round), and
    :func:`~nicemu.collectives.model.sparse_timing.sparse_time` reads them in slices with
    :meth:`sent_rows` and :meth:`reports_rows` without keeping them.
    """

    def __init__(self, index: int, slots: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 sent: np.ndarray | None, reports: np.ndarray | None, result: np.ndarray,
                 next_lo: np.ndarray, *, counter: WindowCounts | None = None,
                 dense: bool = False, nodes: int = 0) -> None:
        self.index = index
        self.slots = slots       # active slot ids, ascending
        self.lo = lo             # window start per active slot
        self.hi = hi             # window end (exclusive)
        self._sent = sent        # (active, nodes) blocks each worker writes
        self._reports = reports  # (active, nodes) whether the worker writes a record at all
        self.result = result     # (active,) result blocks scattered
        self.next_lo = next_lo   # (active,) next window start; >= slot_hi means the slot is done
        self._counter = counter
        self._dense = dense      # every worker sends the whole window (OmniReduce's first round)
        self._nodes = nodes if counter is None else counter.nodes
        if sent is None and counter is None and not dense:
            raise ValueError("a Round needs sent, or the masks to compute it from")

    def __repr__(self) -> str:
        return f"Round(index={self.index}, slots={len(self.slots)})"

    def sent_rows(self, j0: int, j1: int, dtype: type | None = None) -> np.ndarray:
        """``sent[j0:j1]``, computed from the masks if it is not held.

        ``dtype``: wanted integer type (the counts are at most the window length), so
        that a caller can ask for 1 byte per count; None: that of ``sent``.
        """
        if self._sent is not None:
            return self._sent[j0:j1]
        if self._dense:
            w = (self.hi[j0:j1] - self.lo[j0:j1])[:, None]
            return np.broadcast_to(w.astype(dtype or w.dtype), (j1 - j0, self._nodes)).copy()
        return self._counter.counts(self.lo[j0:j1], self.hi[j0:j1], dtype or np.int32)

    def reports_rows(self, j0: int, j1: int, sent: np.ndarray | None = None) -> np.ndarray:
        """``reports[j0:j1]`` (``sent``: ``sent_rows(j0, j1)`` if already at hand)."""
        if self._reports is not None:
            return self._reports[j0:j1]
        if self.index == 0:
            return np.ones((j1 - j0, self._nodes), dtype=bool)
        return (self.sent_rows(j0, j1) if sent is None else sent) > 0

    @property
    def sent(self) -> np.ndarray:
        if self._sent is None:
            self._sent = self.sent_rows(0, len(self.slots))
        return self._sent

    @sent.setter
    def sent(self, value: np.ndarray) -> None:
        self._sent = value

    @property
    def reports(self) -> np.ndarray:
        if self._reports is None:
            self._reports = self.reports_rows(0, len(self.slots), self.sent)
        return self._reports

    @reports.setter
    def reports(self, value: np.ndarray) -> None:
        self._reports = value


@dataclass
class Plan:
    layout: Layout
    cfg: SparseConfig
    rounds: list[Round] = field(default_factory=list)

    def count_all(self, limit: int = _COUNT_CHUNK) -> bool:
        """Count what every worker writes in every round at once, if the counts fit in ``limit``
        entries; True if they are now held by the rounds.

        A plan's windows are disjoint (each slot walks its own range forward), so all of
        them, taken in ascending order, are one read of the masks instead of one per
        round; the counts are the integers ``sent_rows`` would give round by round.
        """
        todo = [r for r in self.rounds if r._sent is None and not r._dense and r._counter is not None]
        if not todo:
            return True
        counter = todo[0]._counter
        total = sum(len(r.slots) for r in todo)
        if any(r._counter is not counter for r in todo) or total * counter.nodes > limit:
            return False
        lo = np.concatenate([r.lo for r in todo])
        hi = np.concatenate([r.hi for r in todo])
        order = np.argsort(lo, kind="stable")
        sent = np.empty((total, counter.nodes), dtype=np.int32)
        sent[order] = counter.counts(lo[order], hi[order], np.int32)
        start = 0
        for r in todo:
            r._sent = sent[start:start + len(r.slots)]
            start += len(r.slots)
        return True

    def upstream_bytes(self, block_bytes: int) -> np.ndarray:
        """Bytes each worker writes into Rx spots over the whole call (data + metadata)."""
        out = np.zeros(self.layout.nodes, dtype=np.int64)
        step = max(1, _COUNT_CHUNK // max(self.layout.nodes, 1))
        for r in self.rounds:
            for j0 in range(0, len(r.slots), step):
                j1 = min(j0 + step, len(r.slots))
                sent = r.sent_rows(j0, j1)
                out += (sent * (block_bytes + INDEX_BYTES)
                        + r.reports_rows(j0, j1, sent) * RECORD_HEADER_BYTES).sum(axis=0)
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


def plan_rounds(masks: np.ndarray | PackedMasks, cfg: SparseConfig) -> Plan:
    """All rounds of all slots, from the workers' block masks.

    ``masks``: (nodes, nblocks) bool, or the same bit-packed as :class:`PackedMasks`.
    The rounds' windows and results are computed here; what each worker sends
    (``Round.sent``, ``Round.reports``) is counted from the masks when it is
    read, so the plan keeps a reference to them.
    """
    if isinstance(masks, PackedMasks):
        union = masks.union()
    else:
        masks = np.asarray(masks)
        union = masks.any(axis=0)
    nodes, nblocks = masks.shape
    layout = make_layout(nodes, nblocks, cfg)
    plan = Plan(layout, cfg)
    counter = WindowCounts(masks)
    nxt = next_nonzero(union)
    ucsum = np.concatenate([[0], np.cumsum(union)])
    c = cfg.spot_blocks
    slots = np.flatnonzero(layout.slot_hi > layout.slot_lo)   # empty slots never run
    lo = layout.slot_lo[slots].copy()
    i = 0
    while len(slots):
        hi = np.minimum(lo + c, layout.slot_hi[slots])
        dense = i == 0 and cfg.dense_first_round
        result = ucsum[hi] - ucsum[lo]
        if dense:
            result = hi - lo
        nlo = np.minimum(nxt[hi], layout.slot_hi[slots])
        plan.rounds.append(Round(i, slots, lo, hi, None, None, result, nlo, counter=counter, dense=dense))
        live = nlo < layout.slot_hi[slots]
        slots, lo = slots[live], nlo[live]
        i += 1
    return plan
