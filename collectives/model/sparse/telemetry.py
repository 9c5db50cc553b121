"""Telemetry of the spot protocol: bytes and busy time per switch port and per node resource, and the
stream events of traced endpoints.

Off unless asked for (``SpotState.tel is None``: the timing runs exactly as without it). The
fabric is a switch: endpoint ``e`` (the nodes, then any dedicated aggregators, numbered ``nodes +
a``) has one port, the link of dimension 0, slot 0. A port carries what its endpoint sends:

* a worker's records to the aggregators (all but the aggregator node's own record, which stays in
  its node) and the Tx credit it returns for every result it reads;
* an aggregator's Rx credits and the copies of every result it scatters.

Bytes are counted exactly as ``wire_bytes`` counts them, framed bytes as ``framed_bytes``, so the
ports add up to the call's totals. The nodes' resources, per endpoint:

* ``pcie_read`` / ``pcie_write``: a worker's DMA reads of its records and writes of the results;
  an aggregator's writes of the records it aggregates in host memory (``omniccl-cpu``, OmniReduce,
  spilled spots), the reads of spilled records, and the reads of its results. Busy: bytes times
  the endpoint's PCIe microseconds per byte.
* ``nic``: the bytes the NIC reduction engine reduced; busy is the timing's own ``nic_busy``.
* ``host``: the bytes a host reduced, or scanned while packing and unpacking (OmniReduce); busy is
  the timing's own ``host_busy``.

Events (traced endpoints only), each in the round it belongs to (``step``) and its half (``side``
0: upstream, records to the Rx spots; 1: downstream, results back): records and scatters on the
port, DMA reads and writes on the engines the timing queues them on, NIC and host passes, and the
spots' occupancy (``RX_SPOT`` lane = the spot's index in its aggregator; ``TX_SPOT`` lane = spot x
tx_spots + the Tx spot in use).
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES
from nicemu.nic.streams import packets
from nicemu.nic.telemetry import DRAM, HOST, NIC, READ, RX_SPOT, WRITE, LinkStats, Telemetry


class SpotTelemetry:
    """One timing's accumulators (``SpotState.tel``)."""

    def __init__(self, ends: int, beta: float, header: float, packet_bytes: int,
                 traced: np.ndarray | None = None) -> None:
        self.tel = Telemetry((ends,), (1,), 1, True, [beta], header, 0, traced)
        self.header, self.packet_bytes = header, packet_bytes
        self.tracing = traced is not None
        self.traced = traced
        self.rx_start = np.zeros(0)      # per slot of the round: its first record in the Rx spot (traced)

    # ---- bytes -------------------------------------------------------------------------------

    def port(self, senders, msg, times=1) -> None:
        """Endpoints ``senders`` each sent ``times`` messages of ``msg`` bytes on their port."""
        msg = np.asarray(msg, dtype=np.float64)
        nbytes = msg * times
        np.add.at(self.tel.link_bytes[0, 0], senders, nbytes)
        if self.header:
            pk = packets(np.rint(msg).astype(np.int64), self.packet_bytes)
            np.add.at(self.tel.link_framed[0, 0], senders, nbytes + (pk * times) * float(self.header))

    def moved(self, kind: int, ends, nbytes) -> None:
        """Resource ``kind`` of ``ends`` moved (or reduced) ``nbytes``."""
        np.add.at(self.tel.bytes[kind], ends, nbytes)

    # ---- events --------------------------------------------------------------------------------

    def event(self, kind: int, ends, start, end, nbytes, lane=0) -> None:
        """Events of traced ``ends`` that moved bytes or took time (a host pass of empty records)."""
        g = np.atleast_1d(np.asarray(ends, dtype=np.int64))
        n = len(g)
        if not n:
            return
        col = [np.broadcast_to(np.asarray(x, dtype=t), n) for x, t in
               ((lane, np.int64), (start, np.float64), (end, np.float64), (nbytes, np.float64))]
        m = self.traced[g] & ((col[3] > 0) | (col[2] > col[1]))
        if m.any():
            tel = self.tel
            tel.events.append((kind, g[m], col[0][m], col[1][m], col[2][m], col[3][m], tel.step, tel.side))

    def scan_events(self, kind: int, gs: np.ndarray, first: np.ndarray, ready: np.ndarray | None,
                    done: np.ndarray, valid: np.ndarray | None, nbytes: np.ndarray, lane=0) -> None:
        """Events of a FIFO resource of aggregators ``gs`` (rows) that served its records in column
        order: ``ready`` (a copy taken before the scan) and ``done`` per record; ``first``: the
        resource's free time before the row."""
        rows = np.flatnonzero(self.traced[gs])
        if not len(rows) or ready is None:
            return
        d = done[rows]
        prev = np.concatenate([first[rows][:, None], d[:, :-1]], axis=1)
        ready = ready[rows]
        start = np.maximum(prev, ready)
        ok = np.broadcast_to(True, d.shape) if valid is None else valid[rows]
        ok = ok & np.isfinite(ready)
        nb = np.broadcast_to(nbytes[rows], d.shape)
        who = np.broadcast_to(gs[rows][:, None], d.shape)
        lanes = np.broadcast_to(np.asarray(lane)[rows][:, None] if np.ndim(lane) else lane, d.shape)
        self.event(kind, who[ok], start[ok], d[ok], nb[ok], lanes[ok])

    def traced_rows(self, gs: np.ndarray) -> np.ndarray:
        return np.flatnonzero(self.traced[gs])

    # ---- result --------------------------------------------------------------------------------

    def stats(self, st, emulated_us: float, rounds: int) -> LinkStats:
        """The call's statistics: resource busy from the timing's own totals and the bytes moved."""
        tel = self.tel
        pi = st.pi_e if st.slow is not None else st.pi
        busy = np.zeros_like(tel.bytes)
        busy[READ] = tel.bytes[READ] * pi
        busy[WRITE] = tel.bytes[WRITE] * pi
        busy[NIC] = st.nic_busy
        busy[HOST] = st.host_busy
        if st.dram is not None:     # every endpoint's DRAM bytes (docs/model.md §10.5), at the profile's rate
            tel.bytes[DRAM] = st.dram.dram_bytes
            busy[DRAM] = tel.bytes[DRAM] * st.dram.us_per_B
        stats = tel.stats(emulated_us, busy)
        if self.tracing:
            stats.events = tel.event_table()
            stats.events["steps"] = [{"phase": "round", "index": r, "sides": ("up", "down"),
                                      "slots": int(n)} for r, n in enumerate(rounds)]
            stats.events["tx_spots"] = st.cfg.tx_spots
        return stats


def credits_back(st, tel: SpotTelemetry, g: np.ndarray) -> None:
    """Every far worker of each slot (aggregator endpoint ``g``) returns one Tx credit."""
    n = st.n
    per = np.full(n, float(len(g)))
    if not st.dedicated:
        per -= np.bincount(g, minlength=n)[:n]
    tel.port(np.arange(n), CREDIT_BYTES, per)


__all__ = ["SpotTelemetry", "credits_back", "HOST", "NIC", "READ", "RX_SPOT", "WRITE"]


def record_bytes(st, ch, loc: np.ndarray, local_pos: np.ndarray, packed: bool, rb_data: np.ndarray) -> None:
    """The bytes of one chunk's records: the workers' ports, DMA reads and (``packed``) packing scans,
    and what their aggregators write, reduce and read back (``rb_data``: per row, the result's payload)."""
    tel, m, width = st.tel, ch.m, ch.width
    if ch.dense:
        who = np.broadcast_to(np.arange(st.n), (m, width))
        valid = np.ones((m, width), dtype=bool)
    else:
        who = np.zeros((m, width), dtype=np.int64)
        who[ch.pos_of[ch.row], ch.col] = ch.who
        valid = ch.valid
    msg = np.broadcast_to(ch.msg, (m, width))
    data = np.broadcast_to(ch.data, (m, width))
    cross = valid.copy()
    cross[loc, local_pos[loc]] = False
    tel.port(who[cross], msg[cross])
    tel.moved(READ, who[valid], data[valid])
    if packed:
        tel.moved(HOST, who[valid], (ch.window[:, None] + data)[valid])
    # the aggregators: one row per slot, its records in worker order
    dsum = np.where(valid, data, 0.0).sum(axis=1)
    g, kind = ch.g_p, st.cfg.aggregation
    if kind == "nic":
        tel.moved(NIC, g, dsum)
        if st.spilled:
            tel.moved(WRITE, g, dsum)
            tel.moved(READ, g, dsum + rb_data)
    else:
        tel.moved(WRITE, g, dsum)
        tel.moved(HOST, g, dsum)
        tel.moved(READ, g, rb_data)
