"""Timing of one step, shared verbatim by both executors.

The sender half runs where the sending node lives and produces the packet
stream's arrival times, which travel with the data to the receiver; the
receiver half runs where the receiving node lives. The model executor calls
both on all nodes at once.
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.schedules.steps import Schedule, Step
from nicemu.errors import CollectiveError
from nicemu.nic.agent import NicAgents
from nicemu.nic.profile import Profile
from nicemu.nic.streams import us_per_byte
from nicemu.nic.telemetry import LinkStats, Telemetry
from nicemu.topologies import LinkParams, Torus


def link_params(topology: Torus, profile: Profile) -> list[tuple[float, float]]:
    """(bandwidth_GBps, latency_us) per dimension: the topology's override or the profile's link.

    On ``switch:N`` a message crosses the switch once, so its latency is the link's plus the switch's.
    """
    default = LinkParams(profile.link.bandwidth_GBps, profile.link.latency_us)
    extra = profile.switch.latency_us if topology.switched else 0.0
    return [(p.bandwidth_GBps, p.latency_us + extra)
            for p in (topology.link_params(d, default) for d in range(topology.ndim))]


def make_agents(topology: Torus, profile: Profile, nodes: int) -> NicAgents:
    return NicAgents(profile, nodes, link_params(topology, profile), shared_port=topology.switched,
                     ranks_per_node=topology.ranks_per_node)


def make_telemetry(topology: Torus, profile: Profile, lo: int = 0, traced: np.ndarray | None = None) -> Telemetry:
    """Telemetry for an agent set whose first node is ``lo`` (``traced``: bool per node, or None)."""
    rates = [us_per_byte(bw) for bw, _ in link_params(topology, profile)]
    return Telemetry(topology.shape, topology.strides, topology.network_ndim, topology.switched, rates,
                     profile.link.header_bytes, lo, traced)


def note_step(step: Step, itemsize: int, traced: np.ndarray | None) -> dict:
    """What the trace says of a step; for ``traced`` nodes, the chunk (element offset, bytes) each sends
    and receives."""
    meta = {"phase": step.phase, "index": step.index, "dim": step.dim, "dir": step.direction,
            "engine": step.engine, "reduce": step.reduce, "routed": step.route is not None, "local": step.local}
    if traced is not None:
        for side, nodes in (("send", step.src), ("recv", step.dst)):
            sel = np.flatnonzero(traced[nodes])
            meta[side] = {int(nodes[i]): (int(step.offset[i]), int(step.count[i]) * itemsize) for i in sel}
    return meta


def step_notes(schedule: Schedule, traced: np.ndarray, itemsize: int) -> list[dict]:
    """``note_step`` of every step of ``schedule``, in order (the trace's step numbers)."""
    return [note_step(step, itemsize, traced) for step in schedule.steps()]


def resource_busy(agents: NicAgents) -> np.ndarray:
    """The agents' resource busy times placed in the whole topology's (resources, nodes) array."""
    tel = agents.telemetry
    busy = np.zeros_like(tel.bytes)
    busy[:, tel.lo:tel.lo + agents.nodes] = agents.resource_busy()
    return busy


def finish_telemetry(tel: Telemetry, emulated_us: float, busy: np.ndarray, notes: list | None = None) -> LinkStats:
    """The call's ``LinkStats`` (``emulated_us``: its span; ``busy``: from :func:`resource_busy`); with
    tracing, the events and the step ``notes``."""
    stats = tel.stats(emulated_us, busy)
    if tel.traced is not None:
        stats.events = {**tel.event_table(), "steps": notes or []}
    return stats


def send_half(agents: NicAgents, step: Step, local_src: np.ndarray, nbytes: np.ndarray,
              host_nbytes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    if step.route is not None:
        if agents.faults is not None:
            raise CollectiveError("link faults are modelled for neighbour steps only; run recursive-doubling, "
                                  "rabenseifner and tree without --faults (stragglers work)")
        return agents.send_routed(local_src, step.route, nbytes, step.from_host)
    first, last = agents.send(local_src, step.dim, step.direction, nbytes, step.from_host,
                              step.cut_through, host_nbytes, step.local, step.engine, step.reduce,
                              step.nic_share, step.reduce and not step.from_host and step.index == 0,
                              step.early_operand)
    if step.local:                  # ranks of one node: no link, so no link faults
        if agents.faults is not None:
            agents.faults.local(local_src)
        return first, last
    if agents.faults is not None:   # --faults: go-back-N delays (collectives/model/link_faults.py)
        first, last = agents.faults.delay(agents, step, local_src, nbytes, first, last)
    return first, last


def receive_half(agents: NicAgents, step: Step, local_dst: np.ndarray, first: np.ndarray,
                 last: np.ndarray, nbytes: np.ndarray, final_nbytes: np.ndarray | None = None,
                 hold_nbytes: np.ndarray | None = None) -> None:
    agents.receive(local_dst, first, last, nbytes, step.engine, step.reduce, step.to_host,
                   step.operand_from_host, final_nbytes, step.local, step.dram_per_byte, step.nic_share,
                   step.early_operand, hold_nbytes)


def part_bytes(counts: np.ndarray | None, itemsize: int) -> np.ndarray | None:
    """Bytes of an optional per-transfer element count (Step.host_count, final_count, hold_count)."""
    return None if counts is None else counts * itemsize
