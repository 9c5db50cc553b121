"""A schedule compiled for one rank: what each of its steps sends, receives and computes.

What a rank does in each step depends only on the schedule, the element count,
the dtype and which nodes the rank hosts, so it is compiled once into a
:class:`RankPlan` (index arrays precomputed, one :class:`StepPlan` per step,
grouped as the step loop runs them) and reused by later calls: a benchmark
repeats the same collective many times. The transports
(collectives/mpi/plain.py, reliable.py, lean_path.py) read these plans; none
of them changes one during a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from nicemu.collectives.schedules.steps import Schedule, Step, step_groups
from nicemu.nic.streams import framed


@dataclass
class StepPlan:
    """One step as seen by one rank, with every index precomputed."""

    step: Step                          # flags only are used; the arrays are dropped
    send_ix: np.ndarray | int           # local index of each sending node (int when just one)
    send_nbytes: np.ndarray | int
    recv_ix: np.ndarray | int           # local index of each receiving node, in receive order
    recv_nbytes: np.ndarray | int
    local_pos: np.ndarray               # receive positions fed by a local send ...
    local_from: np.ndarray              # ... and the send position feeding each
    sends: list[tuple[int, np.ndarray, list[tuple[int, int, int]]]] = field(default_factory=list)
    #: per peer: (peer, send positions, [(src local, byte offset, nbytes)])
    recvs: list[tuple[int, np.ndarray, list[tuple[int, int, int, int]]]] = field(default_factory=list)
    #: per peer: (peer, receive positions, [(nbytes, scratch slot or -1, dst local, byte offset)])
    ops: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    #: data ops in receive order: (dst local, elem start, elem stop, src local or -1, scratch slot)
    nslots: int = 0                     # scratch buffers this step receives into
    slot_base: int = 0                  # its first scratch buffer (the steps of a group share them)
    # all-to-all only (Step.host_count / final_count / hold_count / dst_offset, Schedule.make_relayouts)
    send_host_nbytes: np.ndarray | int | None = None
    recv_final_nbytes: np.ndarray | int | None = None
    recv_hold_nbytes: np.ndarray | int | None = None
    relayout: np.ndarray | None = None  # block permutation of every local row before this step
    src_starts: list[int] | None = None  # per op: the local source's first element, when it differs

    #: the step loop runs both timing halves of every plan (with empty index arrays when the rank's
    #: nodes neither send nor receive): the vectorised agents need no special case
    sending = True
    receiving = True

    @property
    def single(self) -> bool:
        return isinstance(self.send_ix, int) and isinstance(self.recv_ix, int)


@dataclass
class PlanGroup:
    """Steps that run concurrently (one, or two for a bidirectional ring), with the (index in
    group, peer) of every request the plain transport makes for them, for the watchdog's messages."""

    steps: list[StepPlan]
    recv_owner: list[tuple[int, int]]
    send_owner: list[tuple[int, int]]

    @property
    def plans(self) -> list[StepPlan]:
        return self.steps

    @property
    def exchange(self) -> bool:
        """Some node receives into a range it sends: the sends complete before the data ops."""
        return any(plan.step.exchange for plan in self.steps)


@dataclass
class RankPlan:
    """A schedule compiled for one rank, cached by the executor."""

    schedule: Schedule
    plans: list[StepPlan]
    groups: list[PlanGroup]
    wire_bytes: int                     # every rank knows the whole schedule: no communication
    where: str                          # "ring allreduce", for the test hook and messages
    lean_fits: bool = False             # the lean path may run it (collectives/mpi/lean_path.py)
    lean: Any = None                    # its LeanPlan, made on first use
    final_guard: Any = None             # the watchdog's guard of the final reduction, made once
    framed_bytes: int = 0               # wire_bytes with link.header_bytes per packet

    def free(self) -> None:
        """Release the lean plan's persistent requests."""
        if self.lean is not None:
            self.lean.free()
            self.lean = None


class Scratch:
    """Receive buffers for chunks that are reduced rather than placed, grown on demand and reused."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []

    def take(self, slot: int, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of buffer ``slot`` (uint8), grown if needed."""
        buffers = self.buffers
        while len(buffers) <= slot:
            buffers.append(np.empty(0, dtype=np.uint8))
        if buffers[slot].size < nbytes:
            buffers[slot] = np.empty(nbytes, dtype=np.uint8)
        return buffers[slot][:nbytes]


def _one_or_array(values: np.ndarray) -> np.ndarray | int:
    return int(values[0]) if len(values) == 1 else values


def plan_step(step: Step, itemsize: int, rank: int, lo: int, node_rank: np.ndarray) -> StepPlan:
    """``step`` as seen by ``rank``, which hosts nodes ``lo..``; ``node_rank`` maps node to rank."""
    src_rank = node_rank[step.src]
    dst_rank = node_rank[step.dst]
    out_idx = np.flatnonzero(src_rank == rank)
    in_idx = np.flatnonzero(dst_rank == rank)
    nbytes = step.count * itemsize
    boff = step.offset * itemsize
    dst_off = step.offset if step.dst_offset is None else step.dst_offset
    send_pos = {int(t): i for i, t in enumerate(out_idx)}
    recv_pos = {int(t): i for i, t in enumerate(in_idx)}

    sends = []
    remote_out = out_idx[dst_rank[out_idx] != rank]
    for peer in np.unique(dst_rank[remote_out]):
        sel = remote_out[dst_rank[remote_out] == peer]
        items = [(int(step.src[t] - lo), int(boff[t]), int(nbytes[t])) for t in sel]
        sends.append((int(peer), np.array([send_pos[int(t)] for t in sel]), items))

    recvs = []
    slot_of: dict[int, int] = {}
    remote_in = in_idx[src_rank[in_idx] != rank]
    for peer in np.unique(src_rank[remote_in]):
        sel = remote_in[src_rank[remote_in] == peer]
        items = []
        for t in sel:
            if nbytes[t] and step.reduce:
                slot_of[int(t)] = len(slot_of)
                items.append((int(nbytes[t]), slot_of[int(t)], -1, 0))
            elif nbytes[t]:
                # a chunk that is only placed is received straight into its destination
                items.append((int(nbytes[t]), -1, int(step.dst[t] - lo), int(dst_off[t]) * itemsize))
            else:
                items.append((0, -1, -1, 0))
        recvs.append((int(peer), np.array([recv_pos[int(t)] for t in sel]), items))

    local_in = in_idx[src_rank[in_idx] == rank]
    ops = []
    src_starts = []
    for t in in_idx:
        if not nbytes[t]:
            continue
        a = int(dst_off[t])
        b = a + int(step.count[t])
        src_local = int(step.src[t] - lo) if src_rank[t] == rank else -1
        if src_local < 0 and not step.reduce:
            continue   # already received in place
        ops.append((int(step.dst[t] - lo), a, b, src_local, slot_of.get(int(t), -1)))
        src_starts.append(int(step.offset[t]))

    # every flag of the step, none of its per-transfer arrays (the plan holds this rank's part)
    flags = replace(step, src=step.src[:0], dst=step.dst[:0], offset=step.offset[:0], count=step.count[:0],
                    dst_offset=None, host_count=None, final_count=None, hold_count=None,
                    route=None if step.route is None else step.route.take(out_idx))
    host_nb = None if step.host_count is None else _one_or_array(step.host_count[out_idx] * itemsize)
    final_nb = None if step.final_count is None else _one_or_array(step.final_count[in_idx] * itemsize)
    hold_nb = None if step.hold_count is None else _one_or_array(step.hold_count[in_idx] * itemsize)
    return StepPlan(
        step=flags,
        send_ix=_one_or_array(step.src[out_idx] - lo), send_nbytes=_one_or_array(nbytes[out_idx]),
        recv_ix=_one_or_array(step.dst[in_idx] - lo), recv_nbytes=_one_or_array(nbytes[in_idx]),
        local_pos=np.array([recv_pos[int(t)] for t in local_in], dtype=np.int64),
        local_from=np.array([send_pos[int(t)] for t in local_in], dtype=np.int64),
        sends=sends, recvs=recvs, ops=ops, nslots=len(slot_of),
        send_host_nbytes=host_nb, recv_final_nbytes=final_nb, recv_hold_nbytes=hold_nb,
        src_starts=None if step.dst_offset is None else src_starts)


def request_owners(group: list[StepPlan], receiving: bool) -> list[tuple[int, int]]:
    """(index in group, peer) of every request the plain transport makes for ``group``, in order:
    per plan, per peer, the times then the data."""
    owner: list[tuple[int, int]] = []
    for gi, plan in enumerate(group):
        for peer, _, items in (plan.recvs if receiving else plan.sends):
            owner.append((gi, peer))
            if receiving:
                owner += [(gi, peer)] * sum(1 for nb, slot, _, _ in items if slot >= 0 or nb)
            else:
                owner += [(gi, peer)] * sum(1 for _, _, nb in items if nb)
    return owner


def compile_plan(schedule: Schedule, itemsize: int, rank: int, lo: int, node_rank: np.ndarray,
                 packet_bytes: int = 1, header_bytes: float = 0.0) -> RankPlan:
    """Every step of ``schedule`` for ``rank``, grouped as the step loop runs them."""
    plans, wire, framed_wire = [], 0, 0
    for step in schedule.steps():
        plans.append(plan_step(step, itemsize, rank, lo, node_rank))
        if step.local:          # ranks of one node: through host memory, on no link
            continue
        hops = 1 if step.route is None else step.route.total
        wire += int((step.count * hops).sum()) * itemsize
        if header_bytes:
            framed_wire += int((framed(step.count * itemsize, packet_bytes, header_bytes) * hops).sum())
    if schedule.make_relayouts is not None:
        for i, perm in schedule.make_relayouts().items():
            plans[i].relayout = perm
    groups = []
    for group in step_groups(plans):
        base = 0
        for plan in group:
            plan.slot_base = base
            base += plan.nslots
        groups.append(PlanGroup(group, request_owners(group, True), request_owners(group, False)))
    return RankPlan(schedule, plans, groups, wire, f"{schedule.algo} {schedule.collective}",
                    framed_bytes=framed_wire if header_bytes else wire)
