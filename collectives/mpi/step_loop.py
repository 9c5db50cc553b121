"""The one loop that runs a schedule over MPI, and the interface of the transports it drives.

For every step group the loop

1. fires the ``NICEMU_TEST_FAIL_*`` hook (collectives/mpi/watchdog.py), if armed;
2. lets the transport *open* the group: post its receives (before any send, so
   an eager message finds its receive posted) and anything else due before the
   sends (an all-to-all's block relayout);
3. runs the sender half of the timing of every step, in order, and hands each
   step's packet-stream times to the transport, which sends the step's chunks
   with them (in a group every sender sees the state from before it);
4. has the transport wait for the group's receives;
5. has the transport apply each step's data ops (reduce or place what arrived)
   and return the arrival times, and runs the step's receiver half;
6. has the transport wait for the group's sends (before step 5 in an
   ``exchange`` group, whose data ops overwrite what its sends read).

After the last group, the slowest node's completion and the busiest host and
NIC come from one ``Allreduce`` (:func:`reduce_timing`), and the transport may
add to the result (:meth:`Transport.finish`). Both timing halves are the model
executor's, so the emulated times equal it exactly.

The timing runs on a *clock*: :class:`VectorClock` (NicAgents, any number of
nodes per rank, faults and stragglers) or :class:`ScalarClock` (ScalarAgent on
Python floats, one node per rank; bit-identical, several times cheaper per step).

How a call picks its transport (``MpiExecutor.run``, the same answer on every
rank, because it changes what goes on the wire):

* link faults on (``Emulator(faults=...)``): :class:`~nicemu.collectives.mpi.reliable.ReliableTransport`,
  CRC32 per packet and go-back-N retransmission, on the vector clock;
* else, one node per rank on every rank, no stragglers, and a schedule of plain
  steps (no all-to-all): :class:`~nicemu.collectives.mpi.lean_path.LeanTransport`,
  small chunks packed with their times, persistent requests, on the scalar clock;
* else :class:`~nicemu.collectives.mpi.plain.PlainTransport`: times and data as
  separate messages, reduced chunks through scratch buffers, on the vector clock.

A transport keeps the state of the group in flight between its calls; it is
used by one call at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.step_timing import receive_half, send_half
from nicemu.collectives.mpi.plans import RankPlan, StepPlan
from nicemu.collectives.mpi.watchdog import FaultHook
from nicemu.nic.agent import NicAgents
from nicemu.nic.scalar_agent import ScalarAgent


class Transport:
    """How the chunks of one call travel. A group is whatever :meth:`start` returns a sequence of;
    it has ``steps``, each with ``sending`` and ``receiving`` flags for the step loop."""

    name = "transport"

    def start(self, plan: RankPlan, data: np.ndarray, op: str) -> Sequence[Any]:
        """Bind a call (``data``: local nodes x count, changed in place); its groups, in order."""
        raise NotImplementedError

    def open(self, group: Any) -> None:
        """Post the group's receives, and do what must precede its sends."""
        raise NotImplementedError

    def send(self, group: Any, i: int, first: Any, last: Any) -> None:
        """Send step ``i``'s chunks with their packet-stream times (``first``, ``last``)."""
        raise NotImplementedError

    def wait_receives(self, group: Any, began: float) -> None:
        """Complete the group's receives through the watchdog (``began``: the group's start)."""
        raise NotImplementedError

    def deliver(self, group: Any, i: int) -> tuple[Any, Any]:
        """Apply step ``i``'s data ops; the arrival times of what it received."""
        raise NotImplementedError

    def wait_sends(self, group: Any, began: float) -> None:
        """Complete the group's sends through the watchdog."""
        raise NotImplementedError

    def finish(self, timing: Timing) -> Timing:
        """After the final reduction (collective): add what the transport measured."""
        return timing


class VectorClock:
    """The timing halves on NicAgents, for the rank's nodes at once (steps are :class:`StepPlan`)."""

    def __init__(self, agents: NicAgents) -> None:
        self.agents = agents
        self.local = np.zeros(4)
        self.glob = np.zeros(4)
        #: with telemetry on: the schedule's number of each plan (``id(plan)``), for the trace's events
        self.numbers: dict[int, int] = {}

    def reset(self) -> None:
        self.agents.reset()

    def send(self, plan: StepPlan) -> tuple[Any, Any]:
        tel = self.agents.telemetry
        if tel is not None:
            tel.step, tel.side = self.numbers.get(id(plan), -1), 0
        return send_half(self.agents, plan.step, plan.send_ix, plan.send_nbytes, plan.send_host_nbytes)

    def receive(self, plan: StepPlan, first: Any, last: Any) -> None:
        tel = self.agents.telemetry
        if tel is not None:
            tel.step, tel.side = self.numbers.get(id(plan), -1), 1
        receive_half(self.agents, plan.step, plan.recv_ix, first, last, plan.recv_nbytes,
                     plan.recv_final_nbytes, plan.recv_hold_nbytes)

    def local_stats(self) -> np.ndarray:
        """[latest node completion, busiest host, busiest NIC, most NIC read-back bytes] of this rank."""
        agents = self.agents
        stats = agents.stats()
        local = self.local
        local[0], local[1], local[2], local[3] = (agents.clock.max(initial=0.0), stats["host_busy_us"].max(initial=0.0),
                                                  stats["nic_busy_us"].max(initial=0.0),
                                                  stats["nic_spill_bytes"].max(initial=0.0))
        return local

    def node_done(self) -> np.ndarray:
        return self.agents.clock.copy()


class ScalarClock:
    """The timing halves on a ScalarAgent (one node; steps carry ``send_costs`` and ``recv_costs``)."""

    def __init__(self, scalar: ScalarAgent) -> None:
        self.scalar = scalar
        self.local = np.zeros(4)
        self.glob = np.zeros(4)

    def reset(self) -> None:
        self.scalar.reset()

    def send(self, step: Any) -> tuple[float, float]:
        return self.scalar.send(step.send_costs)

    def receive(self, step: Any, first: float, last: float) -> None:
        self.scalar.receive(step.recv_costs, first, last)

    def local_stats(self) -> np.ndarray:
        s, local = self.scalar, self.local
        local[0], local[1], local[2], local[3] = s.clock, s.host_busy, s.compute_busy, s.spill_bytes
        return local

    def node_done(self) -> np.ndarray:
        return np.array([self.scalar.clock])


def run_steps(transport: Transport, clock: VectorClock | ScalarClock, groups: Sequence[Any],
              hook: FaultHook | None, where: str) -> None:
    """Run every group of a call (see the module docstring); the clock holds the timing after it."""
    clock.reset()
    send, receive = clock.send, clock.receive
    open_group, post, deliver = transport.open, transport.send, transport.deliver
    wait_receives, wait_sends = transport.wait_receives, transport.wait_sends
    wall = time.time
    k = -1
    for k, g in enumerate(groups):
        if hook is not None:
            hook.at_step(k, where)
        # a stall is reported by the rank that waits longest; counting this group's waits from
        # before its sends makes that rank the one next to the culprit (a rank downstream can
        # only begin its step after this one sent), however the ranks are scheduled
        began = wall()
        open_group(g)
        steps = g.steps
        for i, s in enumerate(steps):
            if s.sending:
                first, last = send(s)
                post(g, i, first, last)
        wait_receives(g, began)
        exchange = getattr(g, "exchange", False)
        if exchange:          # the data ops overwrite what the sends read (recursive doubling)
            wait_sends(g, began)
        for i, s in enumerate(steps):
            if s.receiving:
                first, last = deliver(g, i)
                receive(s, first, last)
        if not exchange:
            wait_sends(g, began)
    if hook is not None:
        hook.at_step(k + 1, f"{where} (final timing reduction)")


def reduce_timing(comm: MPI.Comm, guard: Any, clock: VectorClock | ScalarClock, wire_bytes: int) -> Timing:
    """Slowest node's completion and busiest host/NIC over all ranks, in one Allreduce.

    MPI's blocking Allreduce, guarded by the watchdog's thread (``guard``): an Iallreduce polled
    from Python cost 5-10% of a small call with 4 ranks on 2 cores, and every rank that gets here
    has already sent all it had to (a peer that stalls earlier is caught by the step waits).
    """
    local, glob = clock.local_stats(), clock.glob
    with guard:
        comm.Allreduce(local, glob, op=MPI.MAX)
    return Timing(float(glob[0]), clock.node_done(), float(glob[1]), float(glob[2]), wire_bytes,
                  nic_spill_bytes=int(glob[3]))
