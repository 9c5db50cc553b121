"""The Rx records of one chunk of a round's slots: who writes them, how big they are, what they cost.

A round's slots are taken a chunk at a time (``SpotState.chunk`` (slot,
worker) pairs). For each slot of the chunk, every worker that writes a record
(``Round.reports``) sends ``sent`` non-zero blocks. Rows (slots) are stored
grouped by their position within their aggregator, so that the aggregators'
work takes contiguous blocks of rows; the workers still walk the slots in
ascending order, through ``pos_of``. When every record of a slot has the same
block count (always so for OmniReduce) the per-record arrays have one column
(``const``), and their values are also kept as Python lists for the
per-slot loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.schedules.spot_protocol import INDEX_BYTES, RECORD_HEADER_BYTES, Round


@dataclass
class Chunk:
    """Slots ``j0..j1`` of a round (``m`` of them) and their records."""

    j0: int
    j1: int
    m: int
    slots: np.ndarray             # the chunk's slots, in the round's (ascending) order
    g: np.ndarray                 # their aggregator endpoints
    sent: Any                     # blocks per (slot, worker) (an array, or the round's own rows)
    length_j: np.ndarray          # records per slot (workers that write)
    top: np.ndarray               # largest block count per slot
    dense: bool                   # every worker writes into every slot
    const: bool                   # the same block count in every record of a slot
    # sparse chunks: the writing workers of slot j are who[ptr[j]:ptr[j + 1]], ascending
    who: np.ndarray | None = None
    ptr: np.ndarray | None = None
    row: np.ndarray | None = None   # per record: its slot (chunk row)
    col: np.ndarray | None = None   # per record: its position among its slot's records
    vals: np.ndarray | None = None  # per record: its block count
    # aggregator order (see the module docstring)
    order: np.ndarray | None = None
    pos_of: np.ndarray | None = None
    bounds: np.ndarray | None = None  # rows bounds[q]:bounds[q + 1] are the q-th slots of their aggregators
    length: np.ndarray | None = None
    slots_p: np.ndarray | None = None
    g_p: np.ndarray | None = None
    width: int = 0
    valid: np.ndarray | None = None   # None when dense: every entry is a record
    # per record, rows in aggregator order
    sval: np.ndarray | None = None    # block count
    data: np.ndarray | None = None    # payload bytes
    msg: np.ndarray | None = None     # bytes on the wire
    msg_b: np.ndarray | None = None   # time on a link
    data_pi: np.ndarray | None = None       # the worker's DMA read
    data_pi_agg: np.ndarray | None = None   # the aggregator's DMA write
    has_all: list | None = None       # per row: every record carries data
    pack: np.ndarray | None = None    # OmniReduce: the worker host finds and packs the blocks
    pack_busy: np.ndarray | None = None
    window: np.ndarray | None = None  # OmniReduce: per row, the bytes of the slot's window the host scans
    pack_l: list | None = None        # const: the one value per row, as a list
    pack_busy_l: list | None = None
    data_pi_l: list | None = None
    msg_b_l: list | None = None


def build_chunk(st: SpotState, rnd: Round, j0: int, j1: int) -> Chunk:
    """Every per-record quantity of slots ``j0..j1`` of ``rnd``."""
    ch = _writers(st, rnd, j0, j1)
    _order_by_aggregator(ch, st, rnd)
    _record_sizes(ch, st)
    _record_service(ch, st, rnd)
    return ch


def _writers(st: SpotState, rnd: Round, j0: int, j1: int) -> Chunk:
    """Who writes a record into each slot, and with how many blocks."""
    n, m = st.n, j1 - j0
    if hasattr(rnd, "sent_rows"):
        if getattr(rnd, "_sent", None) is not None:      # counted already (Plan.count_all)
            sent = rnd.sent_rows(j0, j1)
        else:
            small = np.uint8 if int((rnd.hi[j0:j1] - rnd.lo[j0:j1]).max()) < 256 else np.int32
            sent = rnd.sent_rows(j0, j1, small)
        rep = np.asarray(rnd.reports_rows(j0, j1, sent), dtype=bool)
    else:                           # rounds given as plain arrays
        sent, rep = rnd.sent[j0:j1], np.asarray(rnd.reports[j0:j1], dtype=bool)
    slots = rnd.slots[j0:j1]
    length_j = np.count_nonzero(rep, axis=1)
    dense = bool((length_j == n).all())
    ch = Chunk(j0, j1, m, slots, st.slot_g[slots], sent, length_j, None, dense, False)
    if dense:
        top, low = sent.max(axis=1), sent.min(axis=1)
    else:
        flat = np.flatnonzero(rep)
        row = flat // n
        vals = np.ascontiguousarray(sent).reshape(-1)[flat]
        ptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(length_j, out=ptr[1:])
        top = np.zeros(m, dtype=vals.dtype)
        low = np.zeros(m, dtype=vals.dtype)
        some = np.flatnonzero(length_j > 0)
        if len(some):
            top[some] = np.maximum.reduceat(vals, ptr[some])
            low[some] = np.minimum.reduceat(vals, ptr[some])
        ch.who, ch.ptr, ch.row, ch.vals = flat - row * n, ptr, row, vals
        ch.col = np.arange(len(flat)) - ptr[row]
    ch.top = top
    ch.const = st.slow is None and bool(((top == low) | (length_j == 0)).all())
    return ch


def _order_by_aggregator(ch: Chunk, st: SpotState, rnd: Round) -> None:
    """Rows grouped by the slot's position within its aggregator (stable, so slots stay ascending)."""
    m = ch.m
    rank = st.slot_rank(rnd.slots if ch.m == len(rnd.slots) else ch.slots)
    ch.order = order = np.argsort(rank, kind="stable")
    ch.pos_of = np.empty(m, dtype=np.int64)
    ch.pos_of[order] = np.arange(m)
    ch.bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
    ch.length = ch.length_j[order]
    ch.slots_p, ch.g_p = ch.slots[order], ch.g[order]
    ch.width = st.n if ch.dense else max(int(ch.length.max()), 1)
    ch.valid = None if ch.dense else np.arange(ch.width)[None, :] < ch.length[:, None]


def _record_sizes(ch: Chunk, st: SpotState) -> None:
    """Blocks, payload bytes, wire bytes and link time of every record."""
    if ch.const:
        ch.sval = np.where(ch.length > 0, ch.top[ch.order], 0).astype(np.float64)[:, None]
    elif ch.dense:
        ch.sval = np.array(ch.sent[ch.order], dtype=np.float64, order="C")
    else:
        ch.sval = np.zeros((ch.m, ch.width))
        ch.sval[ch.pos_of[ch.row], ch.col] = ch.vals
    ch.data = data = ch.sval * st.bb
    ch.msg = ch.sval * (st.bb + INDEX_BYTES) + RECORD_HEADER_BYTES
    ch.msg_b = st.wire_us(ch.msg)
    if ch.const:
        ch.has_all = ((data[:, 0] > 0) | (ch.length == 0)).tolist()
    elif ch.dense:
        ch.has_all = (data > 0).all(axis=1).tolist()
    else:
        ch.has_all = ((data > 0) | ~ch.valid).all(axis=1).tolist()


def _record_service(ch: Chunk, st: SpotState, rnd: Round) -> None:
    """DMA and (OmniReduce) packing times of every record; with --straggler each record's worker
    and aggregator serve at their own rates."""
    data, slow = ch.data, st.slow is not None
    if slow:
        if ch.dense:
            wk = np.broadcast_to(np.arange(st.n), (ch.m, ch.width))
        else:
            wk = np.zeros((ch.m, ch.width), dtype=np.int64)
            wk[ch.pos_of[ch.row], ch.col] = ch.who
        ch.data_pi = data * st.pi_e[wk]
        ch.data_pi_agg = data * st.pi_e[ch.g_p][:, None]
    else:
        ch.data_pi = ch.data_pi_agg = data * st.pi
    if st.cfg.host_packing:
        window = ((rnd.hi[ch.j0:ch.j1] - rnd.lo[ch.j0:ch.j1]) * st.bb)[ch.order]
        ch.window = window
        if slow:
            ch.pack = (window[:, None] + data) * st.gamma_e[wk]
            ch.pack_busy = st.o_h_e[wk] + ch.pack
        else:
            ch.pack = (window[:, None] + data) * st.gamma
            ch.pack_busy = st.o_h + ch.pack
        if ch.const:
            ch.pack_l, ch.pack_busy_l = ch.pack[:, 0].tolist(), ch.pack_busy[:, 0].tolist()
    if ch.const:
        ch.data_pi_l, ch.msg_b_l = ch.data_pi[:, 0].tolist(), ch.msg_b[:, 0].tolist()
