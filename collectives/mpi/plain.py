"""The plain transport: any number of nodes per rank, times and data as separate messages.

For every peer rank and step, the packet-stream times of the transfers between
the two ranks travel as one small float64 message (tag ``STEP_TIME``), and
every chunk as its own message (``STEP_DATA``) on a uint8 view of the node's
row: no copy, no pickle. A chunk that is only placed is received straight into
its destination; one that is reduced lands in a scratch buffer first.
Transfers between two nodes of the same rank never touch MPI: their arrival
times are the sender's, their data is read from the source row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from nicemu.collectives.mpi import tags
from nicemu.collectives.mpi.plans import PlanGroup, RankPlan, Scratch, StepPlan
from nicemu.collectives.mpi.step_loop import Transport
from nicemu.collectives.mpi.watchdog import Watchdog
from nicemu.nic.compute_enhancer import ComputeEnhancer
from nicemu.nic.datadirector import DataDirector
from nicemu.nic.host import HostCpu


def arrivals(plan: StepPlan, first_out: Any, last_out: Any, bufs: list[tuple[np.ndarray, np.ndarray]]
             ) -> tuple[Any, Any]:
    """Arrival times of every transfer a rank receives in ``plan``, in receive order.

    ``bufs``: (receive positions, times received from one peer); local transfers take the
    sender's own times (``first_out``, ``last_out``).
    """
    if plan.single:
        if bufs:
            return float(bufs[0][1][0, 0]), float(bufs[0][1][0, 1])
        return first_out, last_out
    n_in = len(plan.recv_nbytes) if isinstance(plan.recv_nbytes, np.ndarray) else 1
    first_in = np.empty(n_in)
    last_in = np.empty(n_in)
    first_in[plan.local_pos] = np.atleast_1d(first_out)[plan.local_from]
    last_in[plan.local_pos] = np.atleast_1d(last_out)[plan.local_from]
    for pos, tbuf in bufs:
        first_in[pos], last_in[pos] = tbuf[:, 0], tbuf[:, 1]
    if n_in == 1:
        return float(first_in[0]), float(last_in[0])
    return first_in, last_in


def apply_ops(plan: StepPlan, data: np.ndarray, op: str, scratch: Scratch) -> None:
    """Reduce or place every chunk ``plan`` delivers, from a local row or a scratch buffer."""
    step = plan.step
    before = None
    if step.exchange:     # nodes of this rank swap vectors: read every local source before writing
        before = [data[src, (a if plan.src_starts is None else plan.src_starts[i]):][:b - a].copy()
                  if src >= 0 else None for i, (_, a, b, src, _) in enumerate(plan.ops)]
    for i, (dst_local, a, b, src_local, slot) in enumerate(plan.ops):
        if before is not None and src_local >= 0:
            chunk = before[i]
        elif src_local >= 0:
            sa = a if plan.src_starts is None else plan.src_starts[i]
            chunk = data[src_local, sa:sa + b - a]
        else:
            chunk = scratch.buffers[plan.slot_base + slot][:(b - a) * data.dtype.itemsize].view(data.dtype)
        dest = data[dst_local, a:b]
        if not step.reduce:
            DataDirector.place(dest, chunk)
        elif step.engine == "nic":
            ComputeEnhancer.reduce(op, dest, chunk)
        else:
            HostCpu.reduce(op, dest, chunk)


def relayout(group: PlanGroup, data: np.ndarray) -> None:
    """An all-to-all between torus dimensions regroups every local row's blocks before the step."""
    for plan in group.steps:
        if plan.relayout is not None:
            rows = data.reshape(data.shape[0], len(plan.relayout), -1)
            rows[:] = rows[:, plan.relayout]


def send_times(plan: StepPlan, pos: np.ndarray, first_out: Any, last_out: Any) -> np.ndarray:
    """The (first, last) rows a peer receives, for the sends at positions ``pos``."""
    if plan.single:
        return np.array([[first_out, last_out]])
    if np.ndim(first_out) == 0:     # one sending node, but not one receiving node (a tree's leaf)
        return np.array([[first_out, last_out]] * len(pos))
    return np.stack([first_out[pos], last_out[pos]], axis=1)


class PlainTransport(Transport):
    """See the module docstring."""

    name = "plain"

    def __init__(self, comm: MPI.Comm, watchdog: Watchdog, scratch: Scratch, describe: Callable[..., str]) -> None:
        """``describe``: the executor's stall message, ``describe(elapsed, pending, schedule, plans,
        group plans, receiving, owner)``."""
        self.comm, self.watchdog, self.scratch, self.describe = comm, watchdog, scratch, describe
        self.rank_plan: RankPlan | None = None
        self.data = np.empty((0, 0))
        self.raw = np.empty((0, 0), dtype=np.uint8)
        self.op = "sum"
        self.outs: list[tuple[Any, Any]] = []
        self.time_bufs: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.recvs: list[MPI.Request] = []
        self.sends: list[MPI.Request] = []

    def start(self, plan: RankPlan, data: np.ndarray, op: str) -> list[PlanGroup]:
        self.rank_plan, self.data, self.op = plan, data, op
        self.raw = data.view(np.uint8).reshape(data.shape[0], -1)
        return plan.groups

    def open(self, group: PlanGroup) -> None:
        relayout(group, self.data)
        comm, raw, take, chunk = self.comm, self.raw, self.scratch.take, self.receive_chunk
        self.outs = [(None, None)] * len(group.steps)
        self.sends = []
        recvs = self.recvs = []
        time_bufs = self.time_bufs = []
        for plan in group.steps:
            bufs = []
            for peer, pos, items in plan.recvs:
                tbuf = np.empty((len(items), 2))
                bufs.append((pos, tbuf))
                recvs.append(comm.Irecv(tbuf, peer, tags.STEP_TIME))
                for nb, slot, dst_local, boff in items:
                    if slot >= 0:
                        chunk(peer, take(plan.slot_base + slot, nb))
                    elif nb:
                        chunk(peer, raw[dst_local, boff:boff + nb])
            time_bufs.append(bufs)

    def receive_chunk(self, peer: int, buf: np.ndarray) -> None:
        """Receive one chunk from ``peer`` into ``buf`` (uint8)."""
        self.recvs.append(self.comm.Irecv(buf, peer, tags.STEP_DATA))

    def send(self, group: PlanGroup, i: int, first: Any, last: Any) -> None:
        plan = group.steps[i]
        self.outs[i] = (first, last)
        comm, raw, sends, chunk = self.comm, self.raw, self.sends, self.send_chunk
        for peer, pos, items in plan.sends:
            sends.append(comm.Isend(send_times(plan, pos, first, last), peer, tags.STEP_TIME))
            for m, (src_local, boff, nb) in enumerate(items):
                if nb:
                    chunk(peer, int(pos[m]), raw[src_local, boff:boff + nb])

    def send_chunk(self, peer: int, position: int, buf: np.ndarray) -> None:
        """Send one chunk (``buf``, uint8) to ``peer``; ``position``: its transfer among the step's sends."""
        self.sends.append(self.comm.Isend(buf, peer, tags.STEP_DATA))

    def wait_receives(self, group: PlanGroup, began: float) -> None:
        rp = self.rank_plan
        self.watchdog.wait(self.recvs, self.describe, rp.schedule, rp.plans, group.steps, True,
                           group.recv_owner, began=began)

    def deliver(self, group: PlanGroup, i: int) -> tuple[Any, Any]:
        plan = group.steps[i]
        first_out, last_out = self.outs[i]
        times = arrivals(plan, first_out, last_out, self.time_bufs[i])
        apply_ops(plan, self.data, self.op, self.scratch)
        return times

    def wait_sends(self, group: PlanGroup, began: float) -> None:
        rp = self.rank_plan
        self.watchdog.wait(self.sends, self.describe, rp.schedule, rp.plans, group.steps, False,
                           group.send_owner, began=began)
