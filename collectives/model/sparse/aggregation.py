"""Aggregation of the Rx records into a slot's Tx spot, on the NIC, the aggregator's host, or a
dedicated aggregator's CPU.

The work starts once the Tx spot (round mod T) is free again, i.e. once every
reader of the result it held ``T`` rounds ago has returned its Tx credit.

* ``nic`` (OmNICCL): the NIC reduction engine serves the records as they
  arrive; with spilled spots every record goes to host memory and back over
  PCIe first, and the result is read back once more.
* ``cpu`` (OmNICCL on the host): the records are DMA-written to host memory;
  the host reduces them all once the last has landed.
* ``dedicated`` (OmniReduce): the aggregator's CPU handles each message as it
  arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nicemu.collectives.model.sparse.maxplus import row_sums
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.nic.telemetry import HOST, NIC, WRITE


@dataclass
class Block:
    """The q-th slots of a chunk's aggregators: one row per aggregator, its records in worker order."""

    gs: np.ndarray               # aggregator endpoints
    ss: np.ndarray               # slots
    rows: np.ndarray             # the slots' positions in the round
    arrival: np.ndarray          # per record: in the aggregator's NIC (-inf on padding); overwritten
    csum: np.ndarray             # work array of arrival's shape
    data: np.ndarray             # per record: payload bytes
    data_pi: np.ndarray          # per record: the aggregator's DMA write
    valid: np.ndarray | None     # None when every entry is a record
    length: np.ndarray           # records per row
    sval: np.ndarray             # per record: blocks
    rb_data: np.ndarray          # per row: payload bytes of the result
    const: bool                  # one value per row in the per-record arrays


class _Rates(NamedTuple):
    """The aggregators' service parameters: scalars, or (--straggler) per row plus the same as columns."""

    a_p: float | np.ndarray
    o_h: float | np.ndarray
    pi: float | np.ndarray
    gamma: float | np.ndarray
    nu: float | np.ndarray
    a_n: float | np.ndarray
    a_p_c: np.ndarray | None = None
    o_h_c: np.ndarray | None = None
    pi_c: np.ndarray | None = None
    gamma_c: np.ndarray | None = None
    nu_c: np.ndarray | None = None


def _rates(st: SpotState, gs: np.ndarray) -> _Rates:
    if st.slow is None:
        return _Rates(st.a_p, st.o_h, st.pi, st.gamma, st.nu, st.a_n)
    per_row = [x[gs] for x in (st.a_p_e, st.o_h_e, st.pi_e, st.gamma_e, st.nu_e, st.a_n_e)]
    return _Rates(*per_row, *(x[:, None] for x in per_row[:5]))


def aggregate(st: SpotState, blk: Block, tx: int) -> None:
    """Time the aggregation of one block; sets when its Rx spots are consumed and its results ready."""
    r = _rates(st, blk.gs)
    tx_free = st.tx_free[blk.ss, tx]
    kind = st.cfg.aggregation
    if kind == "nic":
        consumed, ready_at = _on_nic(st, blk, r, tx_free)
    elif kind == "cpu":
        consumed, ready_at = _on_host(st, blk, r, tx_free)
    else:
        consumed, ready_at = _on_dedicated(st, blk, r, tx_free)
    st.consumed[blk.rows] = consumed
    st.ready_at[blk.rows] = ready_at


def _on_nic(st: SpotState, blk: Block, r: _Rates, tx_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, arrival, data = blk.gs, blk.arrival, blk.data
    if st.spilled:
        if r.a_p_c is None:
            arrival += 2 * r.a_p + 2 * data * r.pi
        else:
            arrival += 2 * r.a_p_c + 2 * data * r.pi_c
    first = np.maximum(tx_free, st.nic_free[gs])
    svc = data * (r.nu if r.nu_c is None else r.nu_c)
    ready = arrival.copy() if st.trace else None
    done, st.nic_free[gs] = st.ws.scan(first, arrival, svc, blk.valid, blk.length, blk.const, blk.csum, "agg")
    if st.trace:
        st.tel.scan_events(NIC, gs, first, ready, done, blk.valid, data)
    st.nic_busy[gs] += (st.ws.const_sums(svc[:, 0], blk.length) if blk.const
                        else row_sums(svc, blk.length))
    consumed = st.nic_free[gs] + r.a_n
    ready_at = consumed + (r.a_p + blk.rb_data * r.pi) if st.spilled else consumed
    return consumed, ready_at


def _on_host(st: SpotState, blk: Block, r: _Rates, tx_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, length = blk.gs, blk.length
    thr = st.slot_thread[blk.ss]
    ready, first = (blk.arrival.copy(), st.wr_free[gs].copy()) if st.trace else (None, None)
    done, landed = st.ws.scan(st.wr_free[gs], blk.arrival, blk.data_pi, blk.valid, length, blk.const, blk.csum,
                              "agg")
    if st.trace:
        st.tel.scan_events(WRITE, gs, first, ready, done, blk.valid, blk.data)
    some = length > 0
    st.wr_free[gs] = np.where(some, landed, st.wr_free[gs])
    last = np.where(some, landed, 0.0) + r.a_p
    begin = np.maximum(np.maximum(last, st.host_thr[thr, gs]), tx_free)
    start = begin + r.o_h
    dsum = (blk.sval[:, 0] * length if blk.const else blk.sval.sum(axis=1)) * st.bb   # exact: integers
    consumed = start + dsum * r.gamma
    if st.trace:
        tr = st.tel.traced_rows(gs)
        st.tel.event(HOST, gs[tr], begin[tr], consumed[tr], dsum[tr], thr[tr])
    st.host_thr[thr, gs] = consumed
    st.host_busy[gs] += r.o_h + dsum * r.gamma
    ready_at = consumed + r.a_p + blk.rb_data * r.pi
    return consumed, ready_at


def _on_dedicated(st: SpotState, blk: Block, r: _Rates, tx_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, arrival, data, valid = blk.gs, blk.arrival, blk.data, blk.valid
    thr = st.slot_thread[blk.ss]      # the aggregator thread that serves the slot
    start0 = np.maximum(st.host_thr[thr, gs], tx_free)
    if r.o_h_c is None:
        svc = r.o_h + data * r.gamma
        arrival += r.a_p
    else:
        svc = r.o_h_c + data * r.gamma_c
        arrival += r.a_p_c
    arrival += blk.data_pi
    ready = arrival.copy() if st.trace else None
    done, consumed = st.ws.scan(start0, arrival, svc, valid, blk.length, blk.const, blk.csum, "agg")
    if st.trace:
        st.tel.scan_events(HOST, gs, start0, ready, done, valid, data, thr)
    st.host_thr[thr, gs] = consumed
    st.host_busy[gs] += (st.ws.const_sums(svc[:, 0], blk.length) if blk.const
                         else row_sums(np.where(valid, svc, 0.0) if valid is not None else svc, blk.length))
    ready_at = consumed + r.a_p + blk.rb_data * r.pi
    return consumed, ready_at
