"""The MPI executor: a schedule run with real data across real MPI ranks.

Each rank hosts a contiguous block of topology nodes (all of them when run
without ``mpiexec``). For every step it computes the sender half of the timing
for the transfers its nodes send, ships each chunk with ``Isend`` on a uint8
view of the node's buffer (no copy, no pickle) together with the packet
stream's arrival times (one small float64 message per peer rank and step),
and then reduces or places what arrives and runs the receiver half. Transfers
between two nodes of the same rank never touch MPI.

What a rank does in each step depends only on the schedule, the element count
and the dtype, so it is compiled once into a :class:`RankPlan` and reused by
later calls (a benchmark repeats the same collective many times). With exactly
one node per rank on every rank, and no link faults or stragglers, a call takes
the lean path instead (collectives/mpi/lean_path.py): times packed into the message
of a small chunk, persistent requests, and the timing on Python floats
(nic/scalar_agent.py), with the same emulated times.

Every wait goes through a :class:`~nicemu.collectives.mpi.watchdog.Watchdog`: a peer that
stalls or disappears turns into :class:`~nicemu.collectives.mpi.watchdog.CollectiveStalled`
naming the waiting node, the peer and the step, instead of a hang. The
``NICEMU_TEST_FAIL_*`` test hook (see collectives/mpi/watchdog.py) is checked at the
start of every step group.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.step_timing import link_params, make_agents, receive_half, send_half
from nicemu.collectives.mpi.lean_path import LeanPlan, cpu_per_rank, lean_plan_ok, run_lean, schedule_fits
from nicemu.collectives.mpi.watchdog import Watchdog, culprit_text, local_fault_hook, nodes_text
from nicemu.collectives.schedules.steps import Schedule, Step, step_groups
from nicemu.nic.compute_enhancer import ComputeEnhancer
from nicemu.nic.datadirector import DataDirector
from nicemu.nic.host import HostCpu
from nicemu.nic.profile import Profile
from nicemu.nic.scalar_agent import ScalarAgent
from nicemu.topologies import Torus, node_blocks

TAG_TIME = 11
TAG_DATA = 12
PLAN_CACHE = 16
#: pure polling before a wait starts yielding the CPU, when every rank has a CPU (a short message
#: arrives within it; a yield on a loaded machine can cost a whole time slice)
BUSY_POLL_S = 50e-6
PHASE_NAMES = {"rs": "reduce-scatter", "ag": "allgather"}


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
    # all-to-all only (Step.host_count / final_count / dst_offset, Schedule.make_relayouts)
    send_host_nbytes: np.ndarray | int | None = None
    recv_final_nbytes: np.ndarray | int | None = None
    relayout: np.ndarray | None = None  # block permutation of every local row before this step
    src_starts: list[int] | None = None  # per op: the local source's first element, when it differs

    @property
    def single(self) -> bool:
        return isinstance(self.send_ix, int) and isinstance(self.recv_ix, int)


def _one_or_array(values: np.ndarray) -> np.ndarray | int:
    return int(values[0]) if len(values) == 1 else values


class MpiExecutor:
    def __init__(self, comm: MPI.Comm, topology: Torus, profile: Profile,
                 watchdog_s: float | None = None) -> None:
        self.comm = comm
        self.topology = topology
        self.profile = profile
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.bounds = node_blocks(topology.nodes, self.size)
        self.lo, self.hi = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.node_rank = np.searchsorted(self.bounds, np.arange(topology.nodes), side="right") - 1
        self._scratch: list[np.ndarray] = []
        self._plans: OrderedDict[tuple, list[StepPlan]] = OrderedDict()
        self._wire: dict[tuple, int] = {}
        self._agents = make_agents(topology, profile, self.local_nodes)
        self.watchdog = Watchdog(watchdog_s, comm)
        self._fault = local_fault_hook(self.rank)
        # the lean path (collectives/mpi/lean_path.py): one node per rank
        self._scalar = ScalarAgent(profile, link_params(topology, profile))
        self._lean: OrderedDict[tuple, LeanPlan | None] = OrderedDict()
        self._last_lean: tuple = (None, 0, None, 0)   # (schedule, itemsize, lean plan, wire bytes)
        self._final_local = np.zeros(3)
        self._final_global = np.zeros(3)
        if cpu_per_rank(comm):           # a CPU per rank: poll first, then yield, never sleep
            self.watchdog.busy_s, self.watchdog.spin_s = BUSY_POLL_S, math.inf

    def free(self) -> None:
        """Release the lean path's persistent requests (before the communicator is freed)."""
        for lean in self._lean.values():
            if lean is not None:
                lean.free()
        self._lean.clear()
        self._last_lean = (None, 0, None, 0)

    @property
    def local_nodes(self) -> int:
        return self.hi - self.lo

    def _scratch_buffer(self, slot: int, nbytes: int) -> np.ndarray:
        while len(self._scratch) <= slot:
            self._scratch.append(np.empty(0, dtype=np.uint8))
        if self._scratch[slot].size < nbytes:
            self._scratch[slot] = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[slot][:nbytes]

    # ---- compiling a schedule into per-rank plans ---------------------------------

    @staticmethod
    def _plan_key(schedule: Schedule, itemsize: int) -> tuple:
        return (schedule.collective, schedule.algo, schedule.count, itemsize, schedule.bidirectional)

    def _plan(self, schedule: Schedule, itemsize: int) -> list[StepPlan]:
        key = self._plan_key(schedule, itemsize)
        plans = self._plans.get(key)
        if plans is None:
            plans, wire = [], 0
            for step in schedule.steps():
                plans.append(self._plan_step(step, itemsize))
                wire += int(step.count.sum()) * itemsize
            if schedule.make_relayouts is not None:
                for i, perm in schedule.make_relayouts().items():
                    plans[i].relayout = perm
            self._plans[key] = plans
            self._wire[key] = wire
            while len(self._plans) > PLAN_CACHE:
                old, _ = self._plans.popitem(last=False)
                self._wire.pop(old, None)
        else:
            self._plans.move_to_end(key)
        return plans

    def _plan_step(self, step: Step, itemsize: int) -> StepPlan:
        rank, lo = self.rank, self.lo
        src_rank = self.node_rank[step.src]
        dst_rank = self.node_rank[step.dst]
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

        flags = Step(step.phase, step.dim, step.direction, step.index, step.src[:0], step.dst[:0],
                     step.offset[:0], step.count[:0], step.engine, step.reduce, step.from_host,
                     step.to_host, step.operand_from_host, step.group, cut_through=step.cut_through)
        host_nb = None if step.host_count is None else _one_or_array(step.host_count[out_idx] * itemsize)
        final_nb = None if step.final_count is None else _one_or_array(step.final_count[in_idx] * itemsize)
        return StepPlan(
            step=flags,
            send_ix=_one_or_array(step.src[out_idx] - lo), send_nbytes=_one_or_array(nbytes[out_idx]),
            recv_ix=_one_or_array(step.dst[in_idx] - lo), recv_nbytes=_one_or_array(nbytes[in_idx]),
            local_pos=np.array([recv_pos[int(t)] for t in local_in], dtype=np.int64),
            local_from=np.array([send_pos[int(t)] for t in local_in], dtype=np.int64),
            sends=sends, recvs=recvs, ops=ops, nslots=len(slot_of),
            send_host_nbytes=host_nb, recv_final_nbytes=final_nb,
            src_starts=None if step.dst_offset is None else src_starts)

    # ---- running ------------------------------------------------------------------

    def _lean_plan(self, schedule: Schedule, plans: list[StepPlan], key: tuple) -> LeanPlan | None:
        """The lean-path compilation of ``plans``, or None when the call must take the general path.

        Decided the same way on every rank (it changes what goes on the wire).
        """
        if key in self._lean:
            self._lean.move_to_end(key)
            return self._lean[key]
        lean = None
        if schedule_fits(schedule, self.topology.nodes, self.size):
            if not lean_plan_ok(plans):
                raise RuntimeError(f"{schedule.algo} {schedule.collective}: a step sends or receives more "
                                   "than one chunk per node (schedule invariant broken)")
            lean = LeanPlan(self.comm, plans, self._scalar)
        self._lean[key] = lean
        while len(self._lean) > PLAN_CACHE:
            _, old = self._lean.popitem(last=False)
            if old is not None:
                old.free()
        return lean

    def run(self, schedule: Schedule, data: np.ndarray, op: str) -> Timing:
        """Run ``schedule`` in place on ``data`` (local nodes x count)."""
        if self._agents.faults is not None:   # --faults: data moves by go-back-N (collectives/mpi/reliable.py)
            from nicemu.collectives.mpi.reliable import run_reliable
            return run_reliable(self, schedule, data, op)
        if (self.topology.nodes == self.size and not schedule.width
                and not self._agents.stragglers_anywhere):   # one node per rank: the lean path
            last = self._last_lean
            if last[0] is schedule and last[1] == data.dtype.itemsize:
                lean, wire = last[2], last[3]
            else:
                key = self._plan_key(schedule, data.dtype.itemsize)
                lean = self._lean_plan(schedule, self._plan(schedule, data.dtype.itemsize), key)
                wire = self._wire[key]
                self._last_lean = (schedule, data.dtype.itemsize, lean, wire)
            if lean is not None:
                return run_lean(self, lean, schedule, data, op, wire)
        raw = data.view(np.uint8).reshape(data.shape[0], -1)
        agents = self._agents
        agents.reset()
        comm = self.comm
        wait = self.watchdog.wait
        fault = self._fault
        plans = self._plan(schedule, data.dtype.itemsize)
        k = -1
        for k, group in enumerate(step_groups(plans)):
            if fault is not None:
                fault.at_step(k, f"{schedule.algo} {schedule.collective}")
            # sender halves first: in a group every sender sees the state from before it
            requests = []
            outs = []
            for plan in group:
                if plan.relayout is not None:   # all-to-all between torus dimensions
                    rows = data.reshape(data.shape[0], len(plan.relayout), -1)
                    rows[:] = rows[:, plan.relayout]
                first_out, last_out = send_half(agents, plan.step, plan.send_ix, plan.send_nbytes,
                                                plan.send_host_nbytes)
                outs.append((first_out, last_out))
                for peer, pos, items in plan.sends:
                    if plan.single:
                        times = np.array([[first_out, last_out]])
                    else:
                        times = np.stack([first_out[pos], last_out[pos]], axis=1)
                    requests.append(comm.Isend(times, peer, TAG_TIME))
                    for src_local, boff, nb in items:
                        if nb:
                            requests.append(comm.Isend(raw[src_local, boff:boff + nb], peer, TAG_DATA))

            recv_requests = []
            time_bufs = []
            base = 0
            for plan in group:
                bufs = []
                for peer, pos, items in plan.recvs:
                    tbuf = np.empty((len(items), 2))
                    bufs.append((pos, tbuf))
                    recv_requests.append(comm.Irecv(tbuf, peer, TAG_TIME))
                    for nb, slot, dst_local, boff in items:
                        if slot >= 0:
                            recv_requests.append(
                                comm.Irecv(self._scratch_buffer(base + slot, nb), peer, TAG_DATA))
                        elif nb:
                            recv_requests.append(comm.Irecv(raw[dst_local, boff:boff + nb], peer, TAG_DATA))
                time_bufs.append((base, bufs))
                base += plan.nslots
            wait(recv_requests, self._describe_wait, schedule, plans, group, True)

            for plan, (first_out, last_out), (base, bufs) in zip(group, outs, time_bufs):
                first_in, last_in = self._arrivals(plan, first_out, last_out, bufs)
                self._data_ops(plan, data, op, base)
                receive_half(agents, plan.step, plan.recv_ix, first_in, last_in, plan.recv_nbytes,
                             plan.recv_final_nbytes)
            wait(requests, self._describe_wait, schedule, plans, group, False)
        if fault is not None:
            fault.at_step(k + 1, f"{schedule.algo} {schedule.collective} (final timing reduction)")
        return self._gather_timing(agents, self._wire[self._plan_key(schedule, data.dtype.itemsize)],
                                   schedule)

    @staticmethod
    def _arrivals(plan: StepPlan, first_out, last_out, bufs):
        """Arrival times of every transfer a rank receives, in receive order."""
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

    def _data_ops(self, plan: StepPlan, data: np.ndarray, op: str, base: int) -> None:
        step = plan.step
        for i, (dst_local, a, b, src_local, slot) in enumerate(plan.ops):
            if src_local >= 0:
                sa = a if plan.src_starts is None else plan.src_starts[i]
                chunk = data[src_local, sa:sa + b - a]
            else:
                chunk = self._scratch[base + slot][:(b - a) * data.dtype.itemsize].view(data.dtype)
            dest = data[dst_local, a:b]
            if not step.reduce:
                DataDirector.place(dest, chunk)
            elif step.engine == "nic":
                ComputeEnhancer.reduce(op, dest, chunk)
            else:
                HostCpu.reduce(op, dest, chunk)

    def _gather_timing(self, agents, wire_bytes: int, schedule: Schedule) -> Timing:
        """Slowest node's completion and busiest host/NIC, in one Allreduce.

        Bytes on the wire need no communication: every rank knows the whole schedule.
        """
        stats = agents.stats()
        local = np.array([agents.clock.max(), stats["host_busy_us"].max(),
                          stats["nic_busy_us"].max()])
        glob = np.empty(3)
        # MPI's blocking Allreduce, guarded by the watchdog's thread: an Iallreduce polled from Python
        # cost 5-10% of a small call with 4 ranks on 2 cores, and every rank that gets here has
        # already sent all it had to (a peer that stalls earlier is caught by the step waits)
        with self.watchdog.blocking(self._describe_final, schedule):
            self.comm.Allreduce(local, glob, op=MPI.MAX)
        return Timing(float(glob[0]), agents.clock.copy(), float(glob[1]), float(glob[2]), wire_bytes)

    # ---- watchdog messages (built only when a wait times out) -----------------------

    def _describe_wait(self, elapsed: float, pending: list[int], schedule: Schedule,
                       plans: list[StepPlan], group: list[StepPlan], receiving: bool,
                       owner: list[tuple[int, int]] | None = None) -> str:
        """``ring allreduce: node 3 (rank 1) waited 30.0 s in reduce-scatter step 2 of dim 0 for data
        from node 2 (rank 0); that rank is stalled or gone`` (or, for sends, ``... for node 2 (rank 0)
        to receive its data ...``)."""
        if owner is None:      # the lean path passes (index in group, peer) of its requests itself
            owner = self._request_owners(group, receiving)
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
            where = f"{PHASE_NAMES.get(step.phase, step.phase)} step {step.index} of dim {step.dim}"
            if schedule.bidirectional:
                where += f" (direction {step.direction:+d})"
            peers = " and ".join(parts)
            clauses.append(f"in {where} for data from {peers}" if receiving
                           else f"in {where} for {peers} to receive its data")
        who = nodes_text(sorted(mine)) if mine else nodes_text(range(self.lo, self.hi))
        return (f"{schedule.algo} {schedule.collective}: {who} (rank {self.rank}) waited {elapsed:.1f} s "
                f"{'; and '.join(clauses) or 'in a step'}; {culprit_text(sorted(culprits))}")

    @staticmethod
    def _request_owners(group: list[StepPlan], receiving: bool) -> list[tuple[int, int]]:
        """(index in group, peer) of every request ``run`` made, in order: per plan, per peer, the
        times then the data."""
        owner: list[tuple[int, int]] = []
        for gi, plan in enumerate(group):
            for peer, _, items in (plan.recvs if receiving else plan.sends):
                owner.append((gi, peer))
                if receiving:
                    owner += [(gi, peer)] * sum(1 for nb, slot, _, _ in items if slot >= 0 or nb)
                else:
                    owner += [(gi, peer)] * sum(1 for _, _, nb in items if nb)
        return owner

    def _describe_final(self, elapsed: float, schedule: Schedule) -> str:
        return (f"{schedule.algo} {schedule.collective}: {nodes_text(range(self.lo, self.hi))} "
                f"(rank {self.rank}) waited {elapsed:.1f} s for the other ranks to finish the collective "
                f"(final timing reduction); {culprit_text([])}")
