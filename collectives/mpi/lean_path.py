"""The MPI executor's lean path: one topology node per rank, as in ``mpiexec -n N`` on ``ring:N``.

The plain transport (collectives/mpi/plain.py) handles any number of nodes per
rank with index arrays and one-element numpy timing. With exactly one node per
rank, every step sends at most one chunk to one peer and receives at most one,
so most of that machinery is overhead on a small message. :class:`LeanTransport`
runs in the same step loop (collectives/mpi/step_loop.py), with the same
schedule, watchdog and emulated times, and trims:

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
* **Timing on Python floats** (the step loop's ``ScalarClock`` on
  nic/scalar_agent.py, bit-identical to NicAgents), with every per-step product
  computed once per plan.

Whether a call takes this path is decided identically on every rank (from the
topology, the communicator size and the schedule), because it changes what
goes on the wire. Link faults and stragglers keep the vectorised clock and
another transport.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nicemu.collectives.mpi import tags
from nicemu.collectives.mpi.plans import RankPlan, Scratch, StepPlan
from nicemu.collectives.mpi.step_loop import Transport
from nicemu.collectives.mpi.watchdog import Watchdog
from nicemu.collectives.schedules.steps import Schedule, step_groups
from nicemu.nic.ops import OPS
from nicemu.nic.scalar_agent import ScalarAgent, StepCosts

#: largest chunk sent in one message together with its times (bytes); above it, two messages
PACK_MAX_BYTES = 16 * 1024
HEADER_BYTES = 16
_TIMES = struct.Struct("=2d")    # the packed header: first_us, last_us (native float64)


def _plain_step(step) -> bool:
    """Same range at both ends, whole chunks to and from the host, no cut-through (not all-to-all)."""
    return (getattr(step, "dst_offset", None) is None and getattr(step, "host_count", None) is None
            and getattr(step, "final_count", None) is None and not getattr(step, "cut_through", False)
            and getattr(step, "route", None) is None and not getattr(step, "exchange", False)
            and not getattr(step, "local", False)
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
    sending: bool = False          # for the step loop: this node sends in this step ...
    receiving: bool = False        # ... and receives

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
                        ls.send_req = comm.Send_init(ls.send_buf, peer, tags.STEP_PACKED)
                if plan.recvs:
                    (peer, _, [(nb, _, _, boff)]), = plan.recvs
                    ls.recv_peer, ls.recv_nb, ls.recv_boff = peer, nb, boff
                    ls.packed_recv = nb <= PACK_MAX_BYTES
                    if ls.packed_recv:
                        ls.recv_buf = np.empty(HEADER_BYTES + nb, dtype=np.uint8)
                        ls.recv_payload = ls.recv_buf[HEADER_BYTES:]
                        ls.recv_payload_bytes = memoryview(ls.recv_payload)
                        ls.recv_req = comm.Recv_init(ls.recv_buf, peer, tags.STEP_PACKED)
                    elif nb and plan.step.reduce:
                        ls.scratch_slot, slot = slot, slot + 1
                if plan.ops:        # a reduction (chunks that are only placed have no op)
                    (_, a, b, _, _), = plan.ops
                    ls.elem_a, ls.elem_b = a, b
                ls.reduce = plan.step.reduce
                ls.sending, ls.receiving = ls.send_peer >= 0, ls.recv_peer >= 0
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
    chunk per node); :meth:`LeanTransport.compile` treats a violation as an internal error.
    """
    for plan in plans:
        if len(plan.local_pos) or len(plan.sends) > 1 or len(plan.recvs) > 1:
            return False
        if any(len(items) != 1 for _, _, items in plan.sends + plan.recvs) or len(plan.ops) > 1:
            return False
        if not isinstance(plan.send_nbytes, int) and len(plan.sends):
            return False
    return True


class LeanTransport(Transport):
    """The lean path's messages (see the module docstring); steps are :class:`LeanStep`."""

    name = "lean"

    def __init__(self, comm: MPI.Comm, watchdog: Watchdog, scratch: Scratch, describe: Callable[..., str],
                 scalar: ScalarAgent) -> None:
        """``describe``: the executor's stall message (as for the plain transport); ``scalar``: the
        agent whose step costs the plans precompute."""
        self.comm, self.watchdog, self.scratch, self.describe = comm, watchdog, scratch, describe
        self.scalar = scalar
        self.rank_plan: RankPlan | None = None
        self.raw = memoryview(b"")
        self.row = np.empty(0)
        self.dtype = np.dtype(np.float32)
        self.ufunc = OPS["sum"]
        self.recvs: list = []
        self.recv_owner: list = []
        self.sends: list = []
        self.send_owner: list = []

    def compile(self, plan: RankPlan) -> LeanPlan:
        """``plan``'s lean compilation (persistent requests included); the executor caches it."""
        if not lean_plan_ok(plan.plans):
            raise RuntimeError(f"{plan.where}: a step sends or receives more than one chunk per node "
                               "(schedule invariant broken)")
        return LeanPlan(self.comm, plan.plans, self.scalar)

    def start(self, plan: RankPlan, data: np.ndarray, op: str) -> list[LeanGroup]:
        """``data``: shape (1, count), C-contiguous."""
        self.rank_plan = plan
        self.raw = memoryview(data.view(np.uint8).reshape(-1))   # bytes of the node's row (any dtype)
        self.row = data[0]
        self.dtype = data.dtype
        self.ufunc = OPS[op]
        return plan.lean.groups

    def open(self, g: LeanGroup) -> None:
        if g.packed:          # the requests are fixed: restart them
            self.recvs, self.recv_owner, self.sends, self.send_owner = g.recvs, g.recv_owner, g.sends, g.send_owner
            for req in g.recvs:
                req.Start()
            return
        # a chunk above PACK_MAX_BYTES: times and data as separate messages (the data straight
        # from and into the user's array, or a scratch buffer for a reduction)
        comm, raw = self.comm, self.raw
        recvs, recv_owner = self.recvs, self.recv_owner = [], []
        self.sends, self.send_owner = [], []
        for gi, ls in enumerate(g.steps):
            peer = ls.recv_peer
            if peer < 0:
                continue
            if ls.packed_recv:
                ls.recv_req.Start()
                recvs.append(ls.recv_req)
                recv_owner.append((gi, peer))
                continue
            recvs.append(comm.Irecv(ls.time_in, peer, tags.STEP_TIME))
            if ls.scratch_slot >= 0:
                buf = self.scratch.take(ls.scratch_slot, ls.recv_nb)
            else:
                buf = raw[ls.recv_boff:ls.recv_boff + ls.recv_nb]
            recvs.append(comm.Irecv(buf, peer, tags.STEP_DATA))
            recv_owner += [(gi, peer), (gi, peer)]

    def send(self, g: LeanGroup, i: int, first: float, last: float) -> None:
        ls = g.steps[i]
        if ls.packed_send:
            _TIMES.pack_into(ls.send_buf, 0, first, last)
            if ls.send_nb:
                ls.send_payload[:] = self.raw[ls.send_boff:ls.send_boff + ls.send_nb]
            ls.send_req.Start()
            if not g.packed:
                self.sends.append(ls.send_req)
                self.send_owner.append((i, ls.send_peer))
            return
        peer = ls.send_peer
        ls.time_out[0], ls.time_out[1] = first, last
        self.sends += [self.comm.Isend(ls.time_out, peer, tags.STEP_TIME),
                       self.comm.Isend(self.raw[ls.send_boff:ls.send_boff + ls.send_nb], peer, tags.STEP_DATA)]
        self.send_owner += [(i, peer), (i, peer)]

    def wait_receives(self, g: LeanGroup, began: float) -> None:
        rp = self.rank_plan
        self.watchdog.wait(self.recvs, self.describe, rp.schedule, rp.plans, g.plans, True, self.recv_owner,
                           began=began)

    def deliver(self, g: LeanGroup, i: int) -> tuple[float, float]:
        ls = g.steps[i]
        nb = ls.recv_nb
        if ls.packed_recv:
            first, last = _TIMES.unpack_from(ls.recv_buf, 0)
            if nb and ls.reduce:
                chunk = ls.typed.get(self.dtype)
                if chunk is None:
                    chunk = ls.typed[self.dtype] = ls.recv_payload.view(self.dtype)
                dest = self.row[ls.elem_a:ls.elem_b]
                self.ufunc(dest, chunk, out=dest)
            elif nb:
                self.raw[ls.recv_boff:ls.recv_boff + nb] = ls.recv_payload_bytes
            return first, last
        if ls.scratch_slot >= 0:
            dest = self.row[ls.elem_a:ls.elem_b]
            self.ufunc(dest, self.scratch.buffers[ls.scratch_slot][:nb].view(self.dtype), out=dest)
        first, last = ls.time_in.tolist()
        return first, last

    def wait_sends(self, g: LeanGroup, began: float) -> None:
        rp = self.rank_plan
        self.watchdog.wait(self.sends, self.describe, rp.schedule, rp.plans, g.plans, False, self.send_owner,
                           began=began)
