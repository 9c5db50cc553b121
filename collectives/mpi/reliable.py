"""Reliable delivery of real data over faulty links: CRC32 per packet and go-back-N.

With ``--faults`` the MPI executor runs its schedule through :func:`run_reliable`
instead of its plain step loop. Timing is exactly the plain loop's (the sender
half already holds the go-back-N delays, collectives/model/link_faults.py); what
changes is how a chunk's bytes travel. Every transfer is an exchange of
attempts, receiver-driven:

1. The sender sends an attempt: from the first packet the receiver has not
   acknowledged, a header ``[payload bytes, CRC32 of every packet]`` (the CRCs
   are computed on the true data, before the wire) and the payload. The
   transfer's fault events (nic/faults.py) say what the wire does to it: a
   *dropped* packet and everything behind it never arrive (the payload stops
   before it); a *corrupted* packet arrives with a byte flipped in a copy of
   the payload (the packets behind it are not sent: a go-back-N receiver would
   discard them anyway).
2. The receiver checks the CRC32 of every packet it got and replies with a
   cumulative ACK: the index of the first packet that is missing or fails its
   CRC. A short ACK after a drop is what the sender's timeout stands for.
3. The sender resends from the ACKed packet until the ACK covers the chunk.

The receiver never learns the fault draws: it finds corruption by CRC and loss
by the length of what arrived, and the sender checks that every ACK is the one
the draws predict, so a fault that slipped through raises :class:`ProtocolError`.
Transfers between two nodes of the same rank go through the same attempts in
memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import FaultStats
from nicemu.collectives.model.step_timing import receive_half, send_half
from nicemu.collectives.mpi.executor import TAG_TIME
from nicemu.collectives.mpi.watchdog import culprit_text, nodes_text
from nicemu.collectives.schedules.steps import Schedule, step_groups
from nicemu.errors import ProtocolError

TAG_HDR = 21
TAG_PAYLOAD = 22
TAG_ACK = 23


def packet_crcs(data: np.ndarray, first: int, stop: int, packet_bytes: int) -> list[int]:
    """CRC32 of packets ``first .. stop-1`` of ``data`` (uint8)."""
    return [zlib.crc32(data[p * packet_bytes:(p + 1) * packet_bytes]) for p in range(first, stop)]


def first_bad_packet(data: np.ndarray, start: int, crcs: np.ndarray, nbytes: int,
                     packet_bytes: int) -> int:
    """Cumulative ACK: the first packet from ``start`` that did not arrive whole and intact."""
    got = -(-nbytes // packet_bytes)
    for j in range(got):
        p = start + j
        if zlib.crc32(data[p * packet_bytes:(p + 1) * packet_bytes]) != int(crcs[j]):
            return p
    return start + got


@dataclass
class Outgoing:
    """A chunk being sent reliably: its true bytes and the fault events still ahead of it."""

    peer: int
    true: np.ndarray                       # uint8 view of the sender's chunk
    events: list[tuple[int, bool]]         # (packet index, dropped?) in order
    packet_bytes: int
    start: int = 0                         # first packet not yet acknowledged
    expect: int = 0                        # the ACK the draws predict for the attempt in flight
    done: bool = False
    keep: list = field(default_factory=list)

    @property
    def packets(self) -> int:
        return -(-len(self.true) // self.packet_bytes)

    def attempt(self) -> tuple[np.ndarray, np.ndarray]:
        """(header, payload) of the next attempt, with the next fault (if any) applied."""
        P, k = self.packet_bytes, self.packets
        event = self.events[0] if self.events else None
        if event is None:
            stop, bad = k, -1
        elif event[1]:
            stop, bad = event[0], -1              # dropped: it and the packets behind it are lost
        else:
            stop, bad = event[0] + 1, event[0]    # corrupted: delivered with a flipped byte
        self.expect = k if event is None else event[0]
        payload = self.true[self.start * P:min(stop * P, len(self.true))]
        header = np.zeros(1 + k - self.start, dtype=np.int64)
        header[0] = len(payload)
        header[1:1 + stop - self.start] = packet_crcs(self.true, self.start, stop, P)
        if bad >= 0:
            payload = payload.copy()
            at = (bad - self.start) * P
            size = min(P, len(payload) - at)
            payload[at + size // 2] ^= 0xFF
        self.keep = [header, payload]             # alive until the sends complete
        return header, payload

    def acknowledged(self, ack: int) -> None:
        if ack != self.expect:
            raise ProtocolError(f"receiver acknowledged packet {ack}, the fault draws say {self.expect}")
        if self.events:
            self.events.pop(0)
        self.start = ack
        self.done = ack >= self.packets


@dataclass
class Incoming:
    """A chunk being received reliably into ``dest`` (uint8, the chunk's final staging bytes)."""

    peer: int
    dest: np.ndarray
    packet_bytes: int
    start: int = 0
    done: bool = False

    @property
    def packets(self) -> int:
        return -(-len(self.dest) // self.packet_bytes)


def loopback(true: np.ndarray, events: list[tuple[int, bool]], packet_bytes: int) -> None:
    """A transfer inside one rank: the same attempts, CRC checks and ACKs, in memory."""
    out = Outgoing(-1, true, list(events), packet_bytes)
    landing = np.empty_like(true)
    while not out.done:
        header, payload = out.attempt()
        at = out.start * packet_bytes
        landing[at:at + len(payload)] = payload
        out.acknowledged(first_bad_packet(landing, out.start, header[1:], int(header[0]), packet_bytes))
    if not np.array_equal(landing, true):
        raise ProtocolError("a transfer inside a rank was not delivered intact")


def exchange(comm: MPI.Comm, outgoing: list[Outgoing], incoming: list[Incoming], wait,
             describe) -> None:
    """Rounds of attempts and ACKs until every chunk of this rank is delivered intact.

    Both ends know which transfers are unfinished (the receiver from its own ACKs,
    the sender from the ACKs it got), so per pair of ranks the messages of a round
    match in order without any extra signalling.
    """
    rnd = 0
    while True:
        outs = [o for o in outgoing if not o.done]
        ins = [i for i in incoming if not i.done]
        if not outs and not ins:
            return
        sends, recvs, ack_recvs = [], [], []
        by_peer: dict[int, list[Outgoing]] = {}
        for o in outs:
            header, payload = o.attempt()
            sends += [comm.Isend(header, o.peer, TAG_HDR), comm.Isend(payload, o.peer, TAG_PAYLOAD)]
            by_peer.setdefault(o.peer, []).append(o)
        ack_bufs = []
        for peer, group in by_peer.items():
            buf = np.empty(len(group), dtype=np.int64)
            ack_bufs.append((group, buf))
            ack_recvs.append(comm.Irecv(buf, peer, TAG_ACK))
        headers = []
        for i in ins:
            header = np.empty(1 + i.packets - i.start, dtype=np.int64)
            headers.append(header)
            recvs += [comm.Irecv(header, i.peer, TAG_HDR),
                      comm.Irecv(i.dest[i.start * i.packet_bytes:], i.peer, TAG_PAYLOAD)]
        wait(recvs, describe, rnd, [i.peer for i in ins], True)
        acks: dict[int, list[int]] = {}
        for i, header in zip(ins, headers):
            ack = first_bad_packet(i.dest, i.start, header[1:], int(header[0]), i.packet_bytes)
            i.start = ack
            i.done = ack >= i.packets
            acks.setdefault(i.peer, []).append(ack)
        ack_arrays = [np.array(v, dtype=np.int64) for v in acks.values()]
        sends += [comm.Isend(a, peer, TAG_ACK) for peer, a in zip(acks, ack_arrays)]
        wait(ack_recvs + sends, describe, rnd, list(by_peer), False)
        for group, buf in ack_bufs:
            for o, ack in zip(group, buf.tolist()):
                o.acknowledged(ack)
        rnd += 1


def _events_at(tf, pos: int) -> list[tuple[int, bool]]:
    return [(int(i[pos]), bool(d[pos])) for mask, i, d in tf.events if mask[pos]]


def run_reliable(ex, schedule: Schedule, data: np.ndarray, op: str) -> Timing:
    """:meth:`MpiExecutor.run` with the data moved by the retransmission protocol."""
    raw = data.view(np.uint8).reshape(data.shape[0], -1)
    agents = ex._agents
    agents.reset()
    faults = agents.faults
    P = faults.packet_bytes
    comm = ex.comm
    wait = ex.watchdog.wait
    plans = ex._plan(schedule, data.dtype.itemsize)
    where = f"{schedule.algo} {schedule.collective}"

    def describe(elapsed, pending, rnd, peers, receiving):
        what = "data from" if receiving else "the acknowledgements of"
        return (f"{where}: {nodes_text(range(ex.lo, ex.hi))} (rank {ex.rank}) waited {elapsed:.1f} s "
                f"in retransmission round {rnd} for {what} rank(s) {sorted(set(peers))}; "
                f"{culprit_text(sorted(set(peers)))}")

    k = -1
    for k, group in enumerate(step_groups(plans)):
        if ex._fault is not None:
            ex._fault.at_step(k, where)
        requests, outs, outgoing, incoming, time_bufs = [], [], [], [], []
        for plan in group:
            if plan.relayout is not None:   # all-to-all between torus dimensions
                rows = data.reshape(data.shape[0], len(plan.relayout), -1)
                rows[:] = rows[:, plan.relayout]
            first_out, last_out = send_half(agents, plan.step, plan.send_ix, plan.send_nbytes,
                                            plan.send_host_nbytes)
            outs.append((first_out, last_out))
            tf = faults.last[2]
            for peer, pos, items in plan.sends:
                if plan.single:
                    times = np.array([[first_out, last_out]])
                else:
                    times = np.stack([first_out[pos], last_out[pos]], axis=1)
                requests.append(comm.Isend(times, peer, TAG_TIME))
                for m, (src_local, boff, nb) in enumerate(items):
                    if nb:
                        outgoing.append(Outgoing(peer, raw[src_local, boff:boff + nb],
                                                 _events_at(tf, int(pos[m])), P))
            if tf.any:
                send_ix = np.atleast_1d(plan.send_ix)
                size = data.dtype.itemsize
                for j, (_, a, b, src_local, _) in enumerate(plan.ops):
                    if src_local >= 0:
                        p = int(np.flatnonzero(send_ix == src_local)[0])
                        events = _events_at(tf, p)
                        start = a if plan.src_starts is None else plan.src_starts[j]
                        if events:
                            loopback(raw[src_local, start * size:(start + b - a) * size], events, P)
        recv_requests = []
        base = 0
        for plan in group:
            bufs = []
            for peer, pos, items in plan.recvs:
                tbuf = np.empty((len(items), 2))
                bufs.append((pos, tbuf))
                recv_requests.append(comm.Irecv(tbuf, peer, TAG_TIME))
                for nb, slot, dst_local, boff in items:
                    if slot >= 0:
                        incoming.append(Incoming(peer, ex._scratch_buffer(base + slot, nb), P))
                    elif nb:
                        incoming.append(Incoming(peer, raw[dst_local, boff:boff + nb], P))
            time_bufs.append((base, bufs))
            base += plan.nslots
        exchange(comm, outgoing, incoming, wait, describe)
        wait(recv_requests, describe, -1, [p for plan in group for p, _, _ in plan.recvs], True)
        for plan, (first_out, last_out), (base, bufs) in zip(group, outs, time_bufs):
            first_in, last_in = ex._arrivals(plan, first_out, last_out, bufs)
            ex._data_ops(plan, data, op, base)
            receive_half(agents, plan.step, plan.recv_ix, first_in, last_in, plan.recv_nbytes,
                         plan.recv_final_nbytes)
        wait(requests, describe, -1, [p for plan in group for p, _, _ in plan.sends], False)
    if ex._fault is not None:
        ex._fault.at_step(k + 1, f"{where} (final timing reduction)")
    timing = ex._gather_timing(agents, ex._wire[ex._plan_key(schedule, data.dtype.itemsize)], schedule)
    timing.faults = FaultStats.summary(gather_rows(comm, faults.stats.rows()))
    return timing


def gather_rows(comm: MPI.Comm, rows: np.ndarray) -> np.ndarray:
    """Every rank's per-link statistic rows, on every rank (int64 buffers, no pickle)."""
    counts = np.empty(comm.size, dtype=np.int64)
    comm.Allgather(np.array([rows.size], dtype=np.int64), counts)
    out = np.empty(int(counts.sum()), dtype=np.int64)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    comm.Allgatherv(np.ascontiguousarray(rows).reshape(-1), [out, counts, displs, MPI.INT64_T])
    return out.reshape(-1, 5)

