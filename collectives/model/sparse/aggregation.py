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

from nicemu.collectives.model.sparse.dram import dedicated_roof, fifo_roof, roof, spill_all
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
        pre = arrival.copy() if st.dram is not None else None
        if r.a_p_c is None:
            arrival += 2 * r.a_p + 2 * data * r.pi
        else:
            arrival += 2 * r.a_p_c + 2 * data * r.pi_c
        if pre is not None:     # written to host memory (past DDIO, to DRAM) and read back (from DRAM)
            for i in range(len(gs)):
                g, cols = int(gs[i]), _cols(blk, i)
                for c, a, d in zip(cols, pre[i, cols].tolist(), _row(blk.data, i, cols)):
                    arrival[i, c] = roof(st.dram, g, a, float(arrival[i, c]), st.dram.spill(d) + d)
    first = np.maximum(tx_free, st.nic_free[gs])
    svc = data * (r.nu if r.nu_c is None else r.nu_c)
    ready = arrival.copy() if st.trace else None
    done, st.nic_free[gs] = st.ws.scan(first, arrival, svc, blk.valid, blk.length, blk.const, blk.csum, "agg")
    if st.trace:
        st.tel.scan_events(NIC, gs, first, ready, done, blk.valid, data)
    st.nic_busy[gs] += (st.ws.const_sums(svc[:, 0], blk.length) if blk.const
                        else row_sums(svc, blk.length))
    consumed = st.nic_free[gs] + r.a_n
    if not st.spilled:
        return consumed, consumed
    ready_at = consumed + (r.a_p + blk.rb_data * r.pi)
    return consumed, _result_read(st, blk, consumed, ready_at)


def _on_host(st: SpotState, blk: Block, r: _Rates, tx_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, length = blk.gs, blk.length
    thr = st.slot_thread[blk.ss]
    ready, first = (blk.arrival.copy(), st.wr_free[gs].copy()) if st.trace else (None, None)
    loop = _dram_rows(st, blk)
    pre = (blk.arrival.copy(), st.wr_free[gs].copy()) if len(loop) else None
    done, landed = st.ws.scan(st.wr_free[gs], blk.arrival, blk.data_pi, blk.valid, length, blk.const, blk.csum,
                              "agg")
    for i in loop.tolist():     # the DMA writes spill past DDIO into DRAM: one record at a time
        cols = _cols(blk, i)
        data = _row(blk.data, i, cols)
        out, _ = fifo_roof(st.dram, int(gs[i]), float(pre[1][i]), pre[0][i, cols].tolist(),
                           _row(blk.data_pi, i, cols), [st.dram.spill(d) for d in data])
        done[i, cols] = out
        landed[i] = out[-1]
    if st.trace:
        st.tel.scan_events(WRITE, gs, first, ready, done, blk.valid, blk.data)
    some = length > 0
    st.wr_free[gs] = np.where(some, landed, st.wr_free[gs])
    last = np.where(some, landed, 0.0) + r.a_p
    begin = np.maximum(np.maximum(last, st.host_thr[thr, gs]), tx_free)
    start = begin + r.o_h
    dsum = (blk.sval[:, 0] * length if blk.const else blk.sval.sum(axis=1)) * st.bb   # exact: integers
    consumed = start + dsum * r.gamma
    waits = None
    if st.dram is not None:     # the pass reads what DDIO did not keep of the records and writes the result
        waits = np.zeros(len(gs))
        for i in range(len(gs)):
            cols = _cols(blk, i)
            dram = sum(st.dram.spill(d) for d in _row(blk.data, i, cols)) + float(blk.rb_data[i])
            end = roof(st.dram, int(gs[i]), float(start[i]), float(consumed[i]), dram)
            waits[i], consumed[i] = end - consumed[i], end
    if st.trace:
        tr = st.tel.traced_rows(gs)
        st.tel.event(HOST, gs[tr], begin[tr], consumed[tr], dsum[tr], thr[tr])
    st.host_thr[thr, gs] = consumed
    st.host_busy[gs] += r.o_h + dsum * r.gamma
    if waits is not None:
        st.host_busy[gs] += waits
    ready_at = consumed + r.a_p + blk.rb_data * r.pi
    return consumed, _result_read(st, blk, consumed, ready_at)


def _on_dedicated(st: SpotState, blk: Block, r: _Rates, tx_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, arrival, data, valid = blk.gs, blk.arrival, blk.data, blk.valid
    thr = st.slot_thread[blk.ss]      # the aggregator thread that serves the slot
    start0 = np.maximum(st.host_thr[thr, gs], tx_free)
    loop = _dram_rows(st, blk)
    pre = arrival.copy() if len(loop) else None
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
    waits = []
    for i in loop.tolist():     # records spill past DDIO into DRAM: one message at a time
        cols = _cols(blk, i)
        out, w = dedicated_roof(st.dram, int(gs[i]), float(start0[i]), pre[i, cols].tolist(), _row(data, i, cols),
                                _at(r.a_p, i), _at(r.pi, i), _at(r.o_h, i), _at(r.gamma, i))
        done[i, cols] = out
        consumed[i] = out[-1]
        waits.append((i, w))
    st.host_thr[thr, gs] = consumed
    st.host_busy[gs] += (st.ws.const_sums(svc[:, 0], blk.length) if blk.const
                         else row_sums(np.where(valid, svc, 0.0) if valid is not None else svc, blk.length))
    for i, w in waits:
        for x in w:
            st.host_busy[gs[i]] += x
    ready_at = consumed + r.a_p + blk.rb_data * r.pi
    return consumed, _result_read(st, blk, consumed, ready_at)


def _result_read(st: SpotState, blk: Block, consumed: np.ndarray, ready_at: np.ndarray) -> np.ndarray:
    """The NIC DMA-reads each result from host memory (every byte from DRAM) before it is scattered."""
    if st.dram is None:
        return ready_at
    for i in range(len(blk.gs)):
        ready_at[i] = roof(st.dram, int(blk.gs[i]), float(consumed[i]), float(ready_at[i]), float(blk.rb_data[i]))
    return ready_at


def _dram_rows(st: SpotState, blk: Block) -> np.ndarray:
    """Rows with a record whose DMA write spills past DDIO into DRAM (none when DRAM is not charged)."""
    if st.dram is None:
        return np.zeros(0, dtype=np.int64)
    some = np.broadcast_to(spill_all(st.dram, blk.data) > 0.0, blk.arrival.shape)
    if blk.valid is not None:
        some = some & blk.valid
    return np.flatnonzero(some.any(axis=1))


def _cols(blk: Block, i: int) -> np.ndarray:
    """The columns of row ``i`` that hold records, in worker order."""
    width = blk.arrival.shape[1]
    return np.arange(width) if blk.valid is None else np.flatnonzero(blk.valid[i])


def _row(x: np.ndarray, i: int, cols: np.ndarray) -> list[float]:
    """A per-record quantity (one column when it is the same for the whole row) at ``cols`` of row ``i``."""
    return (x[i, cols] if x.shape[1] > 1 else np.full(len(cols), x[i, 0])).tolist()


def _at(x, i: int) -> float:
    """A service parameter of row ``i``: the scalar, or (--straggler) the row's own."""
    return float(x[i]) if isinstance(x, np.ndarray) else x
