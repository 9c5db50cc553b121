"""The MPI executor: a schedule run with real data across real MPI ranks.

Each rank hosts a contiguous block of topology nodes (all of them when run
without ``mpiexec``). A call compiles the schedule for this rank once
(collectives/mpi/plans.py, cached for later calls), picks a transport and a
clock, and runs the one step loop (collectives/mpi/step_loop.py, whose
docstring says how the transport is chosen):

* :class:`~nicemu.collectives.mpi.plain.PlainTransport`: any number of nodes per rank;
* :class:`~nicemu.collectives.mpi.lean_path.LeanTransport`: one node per rank, small
  chunks packed with their times, persistent requests, timing on Python floats;
* :class:`~nicemu.collectives.mpi.reliable.ReliableTransport`: link faults, CRC32
  and go-back-N.

Every wait goes through a :class:`~nicemu.collectives.mpi.watchdog.Watchdog`: a peer that
stalls or disappears turns into :class:`~nicemu.collectives.mpi.watchdog.CollectiveStalled`
naming the waiting node, the peer and the step, instead of a hang
(:meth:`MpiExecutor.describe_wait` builds that message). The
``NICEMU_TEST_FAIL_*`` test hook (see collectives/mpi/watchdog.py) is checked at
the start of every step group.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.step_timing import (
    finish_telemetry,
    link_params,
    make_agents,
    make_telemetry,
    resource_busy,
    step_notes,
)
from nicemu.collectives.mpi.lean_path import LeanTransport, schedule_fits
from nicemu.collectives.mpi.plain import PlainTransport
from nicemu.collectives.mpi.plans import RankPlan, Scratch, StepPlan, compile_plan
from nicemu.collectives.mpi.reliable import ReliableTransport
from nicemu.collectives.mpi.step_loop import ScalarClock, Transport, VectorClock, reduce_timing, run_steps
from nicemu.collectives.mpi.watchdog import Watchdog, culprit_text, local_fault_hook, nodes_text
from nicemu.collectives.schedules.steps import Schedule
from nicemu.hostinfo import available_cpus
from nicemu.nic.profile import Profile
from nicemu.nic.scalar_agent import ScalarAgent
from nicemu.nic.telemetry import LinkStats
from nicemu.topologies import Torus, node_blocks

PLAN_CACHE = 16
#: pure polling before a wait starts yielding the CPU, when every rank has a CPU (a short message
#: arrives within it; a yield on a loaded machine can cost a whole time slice)
BUSY_POLL_S = 50e-6
PHASE_NAMES = {"rs": "reduce-scatter", "ag": "allgather", "rd": "recursive-doubling exchange",
               "fold": "fold-in (non-power-of-two)", "unfold": "fold-out (non-power-of-two)",
               "reduce": "tree reduce", "bcast": "tree broadcast", "scatter": "scatter to the nodes",
               "gather": "gather to the root", "chain": "pipelined chain"}


def cpu_per_rank(comm: MPI.Comm) -> bool:
    """True when no host runs more ranks of ``comm`` than it has CPUs (collective)."""
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks_here = host.size
    finally:
        host.Free()
    fits = np.array([1 if ranks_here <= available_cpus() else 0], dtype=np.int32)
    every = np.empty(1, dtype=np.int32)
    comm.Allreduce(fits, every, op=MPI.MIN)
    return bool(every[0])


def gather_events(comm: MPI.Comm, events: dict) -> dict:
    """Every rank's trace events on every rank, in rank order (columns of whole numbers and times,
    exact in float64)."""
    names = [k for k in events if k != "steps"]
    mine = np.stack([np.asarray(events[k], dtype=np.float64) for k in names]) if names else np.zeros((0, 0))
    counts = np.empty(comm.size, dtype=np.int64)
    comm.Allgather(np.array([mine.shape[1]], dtype=np.int64), counts)
    whole = np.empty((len(names), int(counts.sum())))
    for row in range(len(names)):
        comm.Allgatherv(np.ascontiguousarray(mine[row]), [whole[row], counts])
    floats = ("start", "end", "bytes")
    return {k: (whole[i] if k in floats else whole[i].astype(np.int64)) for i, k in enumerate(names)}


class MpiExecutor:
    """Runs schedules with real data on the ranks of ``comm`` (see the module docstring)."""

    def __init__(self, comm: MPI.Comm, topology: Torus, profile: Profile,
                 watchdog_s: float | None = None) -> None:
        self.comm = comm
        self.topology = topology
        self.profile = profile
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.bounds = node_blocks(topology.nodes, self.size)
        self.lo, self.hi = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.node_rank = np.searchsorted(self.bounds, np.arange(topology.nodes), side="right") - 1
        #: the timing state of this rank's nodes; the Emulator installs link faults and stragglers on it
        self.agents = make_agents(topology, profile, self.local_nodes)
        self.watchdog = Watchdog(watchdog_s, comm)
        self.fault_hook = local_fault_hook(self.rank)
        self.plans: OrderedDict[tuple, RankPlan] = OrderedDict()
        self._last: tuple = (None, 0, None)      # (schedule, itemsize, its RankPlan): a repeated call
        scratch = Scratch()
        self.vector_clock = VectorClock(self.agents)
        self.scalar_clock = ScalarClock(ScalarAgent(profile, link_params(topology, profile), topology.switched,
                                                    topology.ranks_per_node))
        self.plain = PlainTransport(comm, self.watchdog, scratch, self.describe_wait)
        self.lean = LeanTransport(comm, self.watchdog, scratch, self.describe_wait, self.scalar_clock.scalar)
        self.reliable = ReliableTransport(comm, self.watchdog, scratch, self.describe_wait, self.agents,
                                          f"{nodes_text(range(self.lo, self.hi))} (rank {self.rank})")
        #: the transport of the latest call (for tests and diagnostics)
        self.last_transport: Transport | None = None
        if cpu_per_rank(comm):           # a CPU per rank: poll first, then yield, never sleep
            self.watchdog.busy_s, self.watchdog.spin_s = BUSY_POLL_S, math.inf

    def free(self) -> None:
        """Release the lean plans' persistent requests (before the communicator is freed)."""
        for plan in self.plans.values():
            plan.free()
        self.plans.clear()
        self._last = (None, 0, None)

    @property
    def local_nodes(self) -> int:
        return self.hi - self.lo

    def rank_plan(self, schedule: Schedule, itemsize: int) -> RankPlan:
        """``schedule`` compiled for this rank (cached: the latest :data:`PLAN_CACHE` schedules)."""
        key = (schedule.collective, schedule.algo, schedule.count, itemsize, schedule.bidirectional,
               schedule.segment_elems, schedule.root)
        plan = self.plans.get(key)
        if plan is None:
            plan = compile_plan(schedule, itemsize, self.rank, self.lo, self.node_rank,
                                self.profile.nic.packet_bytes, self.profile.link.header_bytes)
            # the same answer on every rank: it changes what goes on the wire
            plan.lean_fits = (self.topology.nodes == self.size
                              and schedule_fits(schedule, self.topology.nodes, self.size))
            plan.final_guard = self.watchdog.blocking(self.describe_final, schedule)
            self.plans[key] = plan
            while len(self.plans) > PLAN_CACHE:
                _, old = self.plans.popitem(last=False)
                old.free()
        else:
            self.plans.move_to_end(key)
        return plan

    def transport(self, plan: RankPlan) -> tuple[Transport, VectorClock | ScalarClock]:
        """The transport and clock of a call of ``plan`` (decided alike on every rank)."""
        agents = self.agents
        if agents.faults is not None:
            return self.reliable, self.vector_clock
        if plan.lean_fits and not agents.stragglers_anywhere and agents.telemetry is None:
            if plan.lean is None:
                plan.lean = self.lean.compile(plan)
            return self.lean, self.scalar_clock
        return self.plain, self.vector_clock

    def run(self, schedule: Schedule, data: np.ndarray, op: str) -> Timing:
        """Run ``schedule`` in place on ``data`` (local nodes x count)."""
        itemsize = data.dtype.itemsize
        last = self._last
        if last[0] is schedule and last[1] == itemsize:
            plan = last[2]
        else:
            plan = self.rank_plan(schedule, itemsize)
            self._last = (schedule, itemsize, plan)
        transport, clock = self.transport(plan)
        self.last_transport = transport
        tel = self.agents.telemetry
        if tel is not None:
            self.vector_clock.numbers = {id(p): i for i, p in enumerate(plan.plans)}
        run_steps(transport, clock, transport.start(plan, data, op), self.fault_hook, plan.where)
        timing = reduce_timing(self.comm, plan.final_guard, clock, plan.wire_bytes)
        timing.framed_bytes = plan.framed_bytes
        if tel is not None:
            timing.telemetry = self.gather_telemetry(tel, timing.emulated_us, schedule, itemsize)
        return transport.finish(timing)

    # ---- telemetry ------------------------------------------------------------------------------

    def set_telemetry(self, on: bool, traced: np.ndarray | None = None) -> None:
        """Per-link and per-resource statistics on every later call (``traced``: bool per node whose
        stream events are kept too). Collective: every rank sets the same."""
        self.agents.telemetry = (make_telemetry(self.topology, self.profile, self.lo, traced) if on else None)

    def gather_telemetry(self, tel, emulated_us: float, schedule: Schedule, itemsize: int) -> LinkStats:
        """The whole call's statistics on every rank: each rank's arrays hold what its nodes' resources
        served (a link's bytes may come from several ranks' routed transfers), so their sum is the
        call's; every value is a whole byte count or one rank's own, so the sum is exact."""
        comm = self.comm
        busy = resource_busy(self.agents)
        for arr in {id(a): a for a in (tel.link_bytes, tel.link_framed, tel.bytes, busy)}.values():
            comm.Allreduce(MPI.IN_PLACE, arr, op=MPI.SUM)
        stats = finish_telemetry(tel, emulated_us, busy)
        if tel.traced is not None:
            stats.events = gather_events(comm, stats.events)
            stats.events["steps"] = step_notes(schedule, tel.traced, itemsize)
        return stats

    # ---- watchdog messages (built only when a wait times out) -----------------------

    def describe_wait(self, elapsed: float, pending: list[int], schedule: Schedule,
                      plans: list[StepPlan], group: list[StepPlan], receiving: bool,
                      owner: list[tuple[int, int]]) -> str:
        """``ring allreduce: node 3 (rank 1) waited 30.0 s in reduce-scatter step 2 of dim 0 for data
        from node 2 (rank 0); that rank is stalled or gone`` (or, for sends, ``... for node 2 (rank 0)
        to receive its data ...``). ``owner``: (index in group, peer) of every request waited for."""
        stuck: dict[int, set[int]] = {}
        for i in pending:
            gi, peer = owner[i] if i < len(owner) else (0, -1)
            stuck.setdefault(gi, set()).add(peer)
        index_of = {id(p): i for i, p in enumerate(plans)}
        wanted = {index_of[id(group[gi])]: peers for gi, peers in stuck.items()}
        clauses, mine, culprits = [], set(), set()
        for si, step in enumerate(schedule.steps()):
            if si > max(wanted, default=-1):
                break
            if si not in wanted:
                continue
            me = (step.dst if receiving else step.src)
            other = (step.src if receiving else step.dst)
            here = (me >= self.lo) & (me < self.hi)
            parts = []
            for peer in sorted(wanted[si]):
                sel = here & (self.node_rank[other] == peer)
                mine.update(int(n) for n in me[sel])
                culprits.add(peer)
                peer_nodes = nodes_text(other[sel]) if sel.any() else "a node"
                parts.append(f"{peer_nodes} (rank {peer})")
            where = f"{PHASE_NAMES.get(step.phase, step.phase)} step {step.index}"
            if step.route is None:
                where += f" of dim {step.dim}"
            if schedule.bidirectional:
                where += f" (direction {step.direction:+d})"
            peers = " and ".join(parts)
            clauses.append(f"in {where} for data from {peers}" if receiving
                           else f"in {where} for {peers} to receive its data")
        who = nodes_text(sorted(mine)) if mine else nodes_text(range(self.lo, self.hi))
        return (f"{schedule.algo} {schedule.collective}: {who} (rank {self.rank}) waited {elapsed:.1f} s "
                f"{'; and '.join(clauses) or 'in a step'}; {culprit_text(sorted(culprits))}")

    def describe_final(self, elapsed: float, schedule: Schedule) -> str:
        return (f"{schedule.algo} {schedule.collective}: {nodes_text(range(self.lo, self.hi))} "
                f"(rank {self.rank}) waited {elapsed:.1f} s for the other ranks to finish the collective "
                f"(final timing reduction); {culprit_text([])}")
