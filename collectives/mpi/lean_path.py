"""The MPI executor's lean path: one topology node per rank, as in ``mpiexec -n N`` on ``ring:N``.

The general path (collectives/mpi/executor.py) handles any number of nodes per
rank with index arrays and one-element numpy timing. With exactly one node per
rank, every step sends at most one chunk to one peer and receives at most one,
so most of that machinery is overhead on a small message. This path keeps the
same schedule, the same watchdog and the same emulated times, and trims:

* **One message per transfer for small chunks.** A chunk of at most
  :data:`PACK_MAX_BYTES` travels in one message together with its 16-byte
  packet-stream times (``[first_us, last_us]`` as float64, then the payload),
  instead of a separate timing message: one message latency instead of two.
  Larger chunks keep the timing message separate and move the data straight
  from and into the user's array (packing them would cost a copy each way).
  The receiver reduces straight out of the packed buffer.
* **Persistent requests.** The packed buffers belong to the plan, so their
  requests are made once (``Send_init``/``Recv_init``) and restarted with
  ``Prequest.Start`` on every call.
* **Receives are posted before sends**, so an eager message finds its receive
  already posted instead of being copied through MPI's unexpected queue.
* **Timing on Python floats** (nic/scalar_agent.py, bit-identical to
  NicAgents), with every per-step product computed once per plan.

Whether a call takes this path is decided identically on every rank (from the
topology, the communicator size and the schedule), because it changes what
goes on the wire. Link faults and stragglers keep the general path.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.schedules.steps import Schedule, step_groups
from nicemu.hostinfo import available_cpus
from nicemu.nic.ops import OPS
from nicemu.nic.scalar_agent import ScalarAgent, StepCosts

if TYPE_CHECKING:
    from nicemu.collectives.mpi.executor import MpiExecutor, StepPlan

#: largest chunk sent in one message together with its times (bytes); above it, two messages
PACK_MAX_BYTES = 16 * 1024
HEADER_BYTES = 16
TAG_PACKED = 13
TAG_TIME = 11     # same tags as the general path
TAG_DATA = 12
_TIMES = struct.Struct("=2d")    # the packed header: first_us, last_us (native float64)


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


def _plain_step(step) -> bool:
    """Same range at both ends, whole chunks to and from the host, no cut-through (not all-to-all)."""
    return (getattr(step, "dst_offset", None) is None and getattr(step, "host_count", None) is None
            and getattr(step, "final_count", None) is None and not getattr(step, "cut_through", False)
            and not np.any(step.src == step.dst))


def schedule_fits(schedule: Schedule, nodes: int, ranks: int) -> bool:
    """One node per rank, plain steps, no node sending to itself: the same answer on every rank."""
    if nodes != ranks or getattr(schedule, "width", 0) or getattr(schedule, "make_relayouts", None):
        return False
    return all(_plain_step(step) for step in schedule.steps())


@dataclass
class LeanStep:
    """One step of this rank's node, with its buffers and requests made once."""

    plan: StepPlan
    send_costs: StepCosts
    recv_costs: StepCosts
    send_peer: int = -1
    send_boff: int = 0
    send_nb: int = 0
    recv_peer: int = -1
    recv_nb: int = 0
    recv_boff: int = 0
    elem_a: int = 0
    elem_b: int = 0
    scratch_slot: int = -1         # unpacked reduce: scratch buffer of the executor
    reduce: bool = False
    packed_send: bool = False
    packed_recv: bool = False
    send_buf: np.ndarray | None = None
    recv_buf: np.ndarray | None = None
    send_payload: memoryview | None = None      # send_buf after the header
    recv_payload: np.ndarray | None = None
    recv_payload_bytes: memoryview | None = None
    typed: dict = field(default_factory=dict)    # dtype -> recv_payload viewed as that dtype
    send_req: MPI.Prequest | None = None
    recv_req: MPI.Prequest | None = None
    time_in: np.ndarray = field(default_factory=lambda: np.empty(2))    # unpacked times received
    time_out: np.ndarray = field(default_factory=lambda: np.empty(2))   # unpacked times sent

    def free(self) -> None:
        for req in (self.send_req, self.recv_req):
            if req is not None and req != MPI.REQUEST_NULL:
                req.Free()
        self.send_req = self.recv_req = None


@dataclass
class LeanGroup:
    """Steps that run concurrently (one, or two for a bidirectional ring)."""

    steps: list[LeanStep]
    plans: list[StepPlan]             # for the watchdog's messages
    packed: bool                      # every message of the group is packed: the requests are fixed
    recvs: list = field(default_factory=list)            # packed: the persistent receive requests ...
    recv_owner: list = field(default_factory=list)       # ... and (index in group, peer) of each
    sends: list = field(default_factory=list)
    send_owner: list = field(default_factory=list)


class LeanPlan:
    """A schedule compiled for the lean path on one rank (cached by the executor like its plans)."""

    def __init__(self, comm: MPI.Comm, plans: list[StepPlan], scalar: ScalarAgent) -> None:
        self.plans = plans
        self.groups: list[LeanGroup] = []
        self.final_guard = None
        for group in step_groups(plans):
            steps, slot = [], 0
            for plan in group:
                ls = LeanStep(plan, scalar.costs(plan.step, _nbytes(plan.send_nbytes)),
                              scalar.costs(plan.step, _nbytes(plan.recv_nbytes)))
                if plan.sends:
                    (peer, _, [(_, boff, nb)]), = plan.sends
                    ls.send_peer, ls.send_boff, ls.send_nb = peer, boff, nb
                    ls.packed_send = nb <= PACK_MAX_BYTES
                    if ls.packed_send:
                        ls.send_buf = np.empty(HEADER_BYTES + nb, dtype=np.uint8)
                        ls.send_payload = memoryview(ls.send_buf)[HEADER_BYTES:]
                        ls.send_req = comm.Send_init(ls.send_buf, peer, TAG_PACKED)
                if plan.recvs:
                    (peer, _, [(nb, _, _, boff)]), = plan.recvs
                    ls.recv_peer, ls.recv_nb, ls.recv_boff = peer, nb, boff
                    ls.packed_recv = nb <= PACK_MAX_BYTES
                    if ls.packed_recv:
                        ls.recv_buf = np.empty(HEADER_BYTES + nb, dtype=np.uint8)
                        ls.recv_payload = ls.recv_buf[HEADER_BYTES:]
                        ls.recv_payload_bytes = memoryview(ls.recv_payload)
                        ls.recv_req = comm.Recv_init(ls.recv_buf, peer, TAG_PACKED)
                    elif nb and plan.step.reduce:
                        ls.scratch_slot, slot = slot, slot + 1
                if plan.ops:        # a reduction (chunks that are only placed have no op)
                    (_, a, b, _, _), = plan.ops
                    ls.elem_a, ls.elem_b = a, b
                ls.reduce = plan.step.reduce
                steps.append(ls)
            packed = all((ls.send_peer < 0 or ls.packed_send) and (ls.recv_peer < 0 or ls.packed_recv)
                         for ls in steps)
            lg = LeanGroup(steps, list(group), packed)
            if packed:
                for gi, ls in enumerate(steps):
                    if ls.recv_peer >= 0:
                        lg.recvs.append(ls.recv_req)
                        lg.recv_owner.append((gi, ls.recv_peer))
                    if ls.send_peer >= 0:
                        lg.sends.append(ls.send_req)
                        lg.send_owner.append((gi, ls.send_peer))
            self.groups.append(lg)

    def free(self) -> None:
        for group in self.groups:
            for ls in group.steps:
                ls.free()


def _nbytes(value) -> int:
    return int(value) if not isinstance(value, np.ndarray) else 0


def lean_plan_ok(plans: list[StepPlan]) -> bool:
    """Every step of this rank: at most one send and one receive, one transfer each, nothing local.

    Holds whenever :func:`schedule_fits` does (a schedule's steps send and receive at most one
    chunk per node); the executor treats a violation as an internal error.
    """
    for plan in plans:
        if len(plan.local_pos) or len(plan.sends) > 1 or len(plan.recvs) > 1:
            return False
        if any(len(items) != 1 for _, _, items in plan.sends + plan.recvs) or len(plan.ops) > 1:
            return False
        if not isinstance(plan.send_nbytes, int) and len(plan.sends):
            return False
    return True


def run_lean(ex: MpiExecutor, lean: LeanPlan, schedule: Schedule, data: np.ndarray, op: str,
             wire_bytes: int) -> Timing:
    """Run ``schedule`` in place on ``data`` (shape (1, count)) on the lean path.

    The executor sends only calls without stragglers or link faults here, so the
    node's timing is the :class:`ScalarAgent`'s.
    """
    raw = memoryview(data).cast("B")       # bytes of the node's row (C-contiguous)
    row = data[0]
    dtype = data.dtype
    wait = ex.watchdog.wait
    describe = ex._describe_wait
    fault = ex._fault
    ufunc = OPS[op]
    scalar = ex._scalar
    scalar.reset()
    send, receive = scalar.send, scalar.receive
    pack, unpack = _TIMES.pack_into, _TIMES.unpack_from
    wall = time.time
    k = -1
    for k, g in enumerate(lean.groups):
        if fault is not None:
            fault.at_step(k, f"{schedule.algo} {schedule.collective}")
        # a stall is reported by the rank that waits longest; counting this step's waits from
        # before its sends makes that rank the one next to the culprit (a rank downstream can
        # only begin its step after this one sent), however the ranks are scheduled
        began = wall()
        if g.packed:
            recvs, recv_owner, sends, send_owner = g.recvs, g.recv_owner, g.sends, g.send_owner
            for req in recvs:              # receives first: an eager message finds its receive posted
                req.Start()
            # sender halves first: in a group every sender sees the state from before it
            for ls in g.steps:
                if ls.send_peer >= 0:
                    first, last = send(ls.send_costs)
                    pack(ls.send_buf, 0, first, last)
                    if ls.send_nb:
                        ls.send_payload[:] = raw[ls.send_boff:ls.send_boff + ls.send_nb]
                    ls.send_req.Start()
        else:
            recvs, recv_owner, sends, send_owner = _post_unpacked(ex, g, raw, send)
        wait(recvs, describe, schedule, lean.plans, g.plans, True, recv_owner, began=began)

        for ls in g.steps:
            if ls.recv_peer < 0:
                continue
            nb = ls.recv_nb
            if ls.packed_recv:
                first, last = unpack(ls.recv_buf, 0)
                if nb and ls.reduce:
                    chunk = ls.typed.get(dtype)
                    if chunk is None:
                        chunk = ls.typed[dtype] = ls.recv_payload.view(dtype)
                    dest = row[ls.elem_a:ls.elem_b]
                    ufunc(dest, chunk, out=dest)
                elif nb:
                    raw[ls.recv_boff:ls.recv_boff + nb] = ls.recv_payload_bytes
            else:
                first, last = ls.time_in.tolist()
                if ls.scratch_slot >= 0:
                    dest = row[ls.elem_a:ls.elem_b]
                    ufunc(dest, ex._scratch[ls.scratch_slot][:nb].view(dtype), out=dest)
            receive(ls.recv_costs, first, last)
        wait(sends, describe, schedule, lean.plans, g.plans, False, send_owner, began=began)
    if fault is not None:
        fault.at_step(k + 1, f"{schedule.algo} {schedule.collective} (final timing reduction)")
    local = ex._final_local
    local[0], local[1], local[2] = scalar.clock, scalar.host_busy, scalar.compute_busy
    glob = ex._final_global
    if lean.final_guard is None:       # the watchdog's guard of the final Allreduce, made once
        lean.final_guard = ex.watchdog.blocking(ex._describe_final, schedule)
    with lean.final_guard:
        ex.comm.Allreduce(local, glob, op=MPI.MAX)
    return Timing(float(glob[0]), np.array([scalar.clock]), float(glob[1]), float(glob[2]), wire_bytes)


def _post_unpacked(ex: MpiExecutor, g: LeanGroup, raw: memoryview, send) -> tuple[list, list, list, list]:
    """Post a group with a chunk above PACK_MAX_BYTES: times and data as separate messages (the
    data straight from and into the user's array, or a scratch buffer for a reduction)."""
    comm = ex.comm
    times = [send(ls.send_costs) if ls.send_peer >= 0 else None for ls in g.steps]
    recvs, recv_owner, sends, send_owner = [], [], [], []
    for gi, ls in enumerate(g.steps):
        peer = ls.recv_peer
        if peer < 0:
            continue
        if ls.packed_recv:
            ls.recv_req.Start()
            recvs.append(ls.recv_req)
            recv_owner.append((gi, peer))
            continue
        recvs.append(comm.Irecv(ls.time_in, peer, TAG_TIME))
        recv_owner.append((gi, peer))
        if ls.scratch_slot >= 0:
            buf = ex._scratch_buffer(ls.scratch_slot, ls.recv_nb)
        else:
            buf = raw[ls.recv_boff:ls.recv_boff + ls.recv_nb]
        recvs.append(comm.Irecv(buf, peer, TAG_DATA))
        recv_owner.append((gi, peer))
    for gi, (ls, t) in enumerate(zip(g.steps, times)):
        if t is None:
            continue
        peer = ls.send_peer
        send_owner.append((gi, peer))
        if ls.packed_send:
            _TIMES.pack_into(ls.send_buf, 0, *t)
            if ls.send_nb:
                ls.send_payload[:] = raw[ls.send_boff:ls.send_boff + ls.send_nb]
            ls.send_req.Start()
            sends.append(ls.send_req)
            continue
        ls.time_out[0], ls.time_out[1] = t
        sends.append(comm.Isend(ls.time_out, peer, TAG_TIME))
        sends.append(comm.Isend(raw[ls.send_boff:ls.send_boff + ls.send_nb], peer, TAG_DATA))
        send_owner.append((gi, peer))
    return recvs, recv_owner, sends, send_owner
