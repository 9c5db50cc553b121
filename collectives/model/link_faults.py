"""Link faults and stragglers wired into a schedule's timing (both executors).

:class:`LinkFaultRun` sits on a :class:`~nicemu.nic.agent.NicAgents` (``agents.faults``)
and is consulted by the sender half of every step (collectives/model/step_timing.py):
it draws the step's fault events (nic/faults.py), adds the go-back-N delay to
the packet stream and to the link's busy-until, counts drops, corruptions and
resent bytes per directed link, and keeps the events of the step for the MPI
executor's real-data protocol (collectives/mpi/reliable.py). Without ``--faults``
the attribute is None and nothing here runs, so fault-free times are untouched.
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.schedules.steps import Step
from nicemu.nic.agent import NicAgents
from nicemu.nic.faults import FaultSpec, TransferFaults, transfer_faults
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import node_factors
from nicemu.topologies import Torus

STAT_KEYS = ("drops", "corruptions", "retransmit_bytes")


class FaultStats:
    """Drops, corruptions and resent bytes per directed link (src, dst)."""

    def __init__(self) -> None:
        self.per_link: dict[tuple[int, int], np.ndarray] = {}

    def add(self, src: np.ndarray, dst: np.ndarray, tf: TransferFaults) -> None:
        hit = np.flatnonzero(tf.drops + tf.corruptions)
        for t in hit.tolist():
            key = (int(src[t]), int(dst[t]))
            row = self.per_link.setdefault(key, np.zeros(3, dtype=np.int64))
            row += (tf.drops[t], tf.corruptions[t], tf.retransmit_bytes[t])

    def rows(self) -> np.ndarray:
        """(links, 5) int64: src, dst, drops, corruptions, retransmit_bytes (sorted by link)."""
        keys = sorted(self.per_link)
        out = np.zeros((len(keys), 5), dtype=np.int64)
        for i, k in enumerate(keys):
            out[i, :2] = k
            out[i, 2:] = self.per_link[k]
        return out

    @staticmethod
    def summary(rows: np.ndarray) -> dict:
        """Totals and the per-link breakdown as plain JSON values (``rows`` as from :meth:`rows`)."""
        order = np.lexsort((rows[:, 1], rows[:, 0])) if len(rows) else np.zeros(0, dtype=np.int64)
        rows = rows[order]
        out = {k: int(rows[:, 2 + i].sum()) for i, k in enumerate(STAT_KEYS)}
        out["per_link"] = [{"link": f"{r[0]}->{r[1]}", "drops": int(r[2]), "corruptions": int(r[3]),
                            "retransmit_bytes": int(r[4])} for r in rows]
        return out


class LinkFaultRun:
    """Fault injection state of one executor's nodes (global ids ``lo`` .. ``lo + nodes - 1``)."""

    def __init__(self, spec: FaultSpec, profile: Profile, topology: Torus, lo: int = 0) -> None:
        self.spec = spec
        self.rto_us = profile.nic.retransmit_timeout_us
        self.packet_bytes = profile.nic.packet_bytes
        self.topology = topology
        self.lo = lo
        self.call = 0
        self.step = 0       # position of the next step in the schedule (one sender half per step)
        self.stats = FaultStats()
        #: events of the last sender half: (send positions' global src, dst, TransferFaults)
        self.last: tuple[np.ndarray, np.ndarray, TransferFaults] | None = None

    def begin(self, call: int) -> None:
        """Start collective call number ``call`` (the draws depend on it); clears the statistics."""
        self.call = call
        self.step = 0
        self.stats = FaultStats()
        self.last = None

    def local(self, local_src) -> None:
        """A step between ranks of one node (``--ranks-per-node``): no link, so no faults and no draw."""
        src = np.atleast_1d(np.asarray(local_src, dtype=np.int64)) + self.lo
        none = np.zeros(len(src))
        self.last = (src, src, TransferFaults(none.astype(np.int64), none.astype(np.int64), none.astype(np.int64),
                                              none, none))

    def delay(self, agents: NicAgents, step: Step, local_src, nbytes, first, last):
        """Add the go-back-N cost of this step's faults to the streams leaving ``local_src``."""
        src = np.atleast_1d(np.asarray(local_src, dtype=np.int64)) + self.lo
        dst = np.atleast_1d(self.topology.neighbor(src, step.dim, step.direction))
        dim = step.dim
        tf = transfer_faults(self.spec, self.rto_us, self.packet_bytes, agents.links.us_per_B[dim],
                             agents.links.latency_us[dim], self.call, self.step, src, dst, nbytes,
                             agents.links.header_bytes)
        self.step += 1
        self.last = (src, dst, tf)
        if not tf.any:
            return first, last
        self.stats.add(src, dst, tf)
        d = 0 if step.direction > 0 else 1
        if isinstance(first, np.ndarray):
            agents.links.free[local_src, dim, d] = agents.links.free[local_src, dim, d] + tf.delay_us
            return first + tf.delay_first_us, last + tf.delay_us
        agents.links.free[local_src, dim, d] += float(tf.delay_us[0])
        return first + float(tf.delay_first_us[0]), last + float(tf.delay_us[0])


def install(agents: NicAgents, profile: Profile, topology: Torus, lo: int,
            faults: FaultSpec | None, stragglers: dict[int, float] | None) -> None:
    """Give the agents of nodes lo.. their faults and straggler slowdowns (no-op when off)."""
    agents.faults = LinkFaultRun(faults, profile, topology, lo) if faults and faults.active else None
    agents.stragglers_anywhere = bool(stragglers)
    factors = node_factors(stragglers or {}, lo, lo + agents.nodes)
    if factors is not None:
        agents.slow_down(factors)
