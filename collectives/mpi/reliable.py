"""Reliable delivery of real data over faulty links: CRC32 per packet and go-back-N.

With ``--faults`` the MPI executor's step loop (collectives/mpi/step_loop.py)
runs on :class:`ReliableTransport` instead of the plain transport. Timing is
exactly the plain transport's (the sender half already holds the go-back-N
delays, collectives/model/link_faults.py); what changes is how a chunk's bytes
travel. Every transfer is an exchange of
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import FaultStats, LinkFaultRun
from nicemu.collectives.mpi import tags
from nicemu.collectives.mpi.plain import PlainTransport
from nicemu.collectives.mpi.plans import PlanGroup, RankPlan, Scratch
from nicemu.collectives.mpi.watchdog import Watchdog, culprit_text
from nicemu.errors import ProtocolError
from nicemu.nic.agent import NicAgents


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
             describe, began: float | None = None) -> None:
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
            sends += [comm.Isend(header, o.peer, tags.RELIABLE_HEADER),
                      comm.Isend(payload, o.peer, tags.RELIABLE_PAYLOAD)]
            by_peer.setdefault(o.peer, []).append(o)
        ack_bufs = []
        for peer, group in by_peer.items():
            buf = np.empty(len(group), dtype=np.int64)
            ack_bufs.append((group, buf))
            ack_recvs.append(comm.Irecv(buf, peer, tags.RELIABLE_ACK))
        headers = []
        for i in ins:
            header = np.empty(1 + i.packets - i.start, dtype=np.int64)
            headers.append(header)
            recvs += [comm.Irecv(header, i.peer, tags.RELIABLE_HEADER),
                      comm.Irecv(i.dest[i.start * i.packet_bytes:], i.peer, tags.RELIABLE_PAYLOAD)]
        wait(recvs, describe, rnd, [i.peer for i in ins], True, began=began)
        acks: dict[int, list[int]] = {}
        for i, header in zip(ins, headers):
            ack = first_bad_packet(i.dest, i.start, header[1:], int(header[0]), i.packet_bytes)
            i.start = ack
            i.done = ack >= i.packets
            acks.setdefault(i.peer, []).append(ack)
        ack_arrays = [np.array(v, dtype=np.int64) for v in acks.values()]
        sends += [comm.Isend(a, peer, tags.RELIABLE_ACK) for peer, a in zip(acks, ack_arrays)]
        wait(ack_recvs + sends, describe, rnd, list(by_peer), False, began=began)
        for group, buf in ack_bufs:
            for o, ack in zip(group, buf.tolist()):
                o.acknowledged(ack)
        rnd += 1


def _events_at(tf, pos: int) -> list[tuple[int, bool]]:
    return [(int(i[pos]), bool(d[pos])) for mask, i, d in tf.events if mask[pos]]


class ReliableTransport(PlainTransport):
    """The plain transport with every chunk moved by :func:`exchange` (times travel as in the plain
    transport: they already hold the go-back-N delays)."""

    name = "reliable"

    def __init__(self, comm: MPI.Comm, watchdog: Watchdog, scratch: Scratch, describe: Callable[..., str],
                 agents: NicAgents, who: str) -> None:
        """``agents``: the rank's, with their link faults installed; ``who``: its nodes and rank, for
        messages."""
        super().__init__(comm, watchdog, scratch, describe)
        self.agents = agents
        self.faults: LinkFaultRun | None = None
        self.who = who
        self.outgoing: list[Outgoing] = []
        self.incoming: list[Incoming] = []

    def start(self, plan: RankPlan, data: np.ndarray, op: str) -> list[PlanGroup]:
        self.faults = self.agents.faults
        if self.faults is None:
            raise ProtocolError("the reliable transport runs only with link faults installed")
        return super().start(plan, data, op)

    def describe_round(self, elapsed: float, pending: list[int], rnd: int, peers: list[int],
                       receiving: bool) -> str:
        what = "data from" if receiving else "the acknowledgements of"
        return (f"{self.rank_plan.where}: {self.who} waited {elapsed:.1f} s in retransmission round {rnd} "
                f"for {what} rank(s) {sorted(set(peers))}; {culprit_text(sorted(set(peers)))}")

    def open(self, group: PlanGroup) -> None:
        self.outgoing, self.incoming = [], []
        super().open(group)

    def receive_chunk(self, peer: int, buf: np.ndarray) -> None:
        self.incoming.append(Incoming(peer, buf, self.faults.packet_bytes))

    def send(self, group: PlanGroup, i: int, first: Any, last: Any) -> None:
        """Times as the plain transport sends them; the chunks become :class:`Outgoing` transfers
        with the fault events the sender half just drew, and a local transfer hit by faults goes
        through :func:`loopback`."""
        tf = self.faults.last[2]
        super().send(group, i, first, last)
        if not tf.any:
            return
        plan = group.steps[i]
        raw, P = self.raw, self.faults.packet_bytes
        send_ix = np.atleast_1d(plan.send_ix)
        size = self.data.dtype.itemsize
        for j, (_, a, b, src_local, _) in enumerate(plan.ops):
            if src_local >= 0:
                p = int(np.flatnonzero(send_ix == src_local)[0])
                events = _events_at(tf, p)
                start = a if plan.src_starts is None else plan.src_starts[j]
                if events:
                    loopback(raw[src_local, start * size:(start + b - a) * size], events, P)

    def send_chunk(self, peer: int, position: int, buf: np.ndarray) -> None:
        self.outgoing.append(Outgoing(peer, buf, _events_at(self.faults.last[2], position),
                                      self.faults.packet_bytes))

    def wait_receives(self, group: PlanGroup, began: float) -> None:
        wait = self.watchdog.wait
        exchange(self.comm, self.outgoing, self.incoming, wait, self.describe_round, began)
        wait(self.recvs, self.describe_round, -1, [p for plan in group.steps for p, _, _ in plan.recvs], True,
             began=began)

    def wait_sends(self, group: PlanGroup, began: float) -> None:
        self.watchdog.wait(self.sends, self.describe_round, -1,
                           [p for plan in group.steps for p, _, _ in plan.sends], False, began=began)

    def finish(self, timing: Timing) -> Timing:
        """Every rank's per-link fault statistics, summed (collective)."""
        timing.faults = FaultStats.summary(gather_rows(self.comm, self.faults.stats.rows()))
        return timing


def gather_rows(comm: MPI.Comm, rows: np.ndarray) -> np.ndarray:
    """Every rank's per-link statistic rows, on every rank (int64 buffers, no pickle)."""
    counts = np.empty(comm.size, dtype=np.int64)
    comm.Allgather(np.array([rows.size], dtype=np.int64), counts)
    out = np.empty(int(counts.sum()), dtype=np.int64)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    comm.Allgatherv(np.ascontiguousarray(rows).reshape(-1), [out, counts, displs, MPI.INT64_T])
    return out.reshape(-1, 5)

