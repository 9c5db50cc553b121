"""The model executor: a schedule's timing only, vectorised over all nodes.

It moves no data, so it runs any topology the memory of a few arrays per node
allows (262,144 nodes in seconds) and is the reference the MPI executor must
match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.link_faults import FaultStats, install
from nicemu.collectives.model.step_timing import (
    finish_telemetry,
    make_agents,
    make_telemetry,
    note_step,
    part_bytes,
    receive_half,
    resource_busy,
    send_half,
)
from nicemu.collectives.schedules.steps import Schedule, step_groups
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import Profile
from nicemu.nic.telemetry import LinkStats


@dataclass
class Timing:
    """Emulated outcome of one collective call, from either executor (plain data; raises nothing).

    ``emulated_us`` is the slowest node's completion and ``node_done_us`` each node's, in emulated
    microseconds; ``host_busy_us`` and ``nic_busy_us`` the busiest host CPU and NIC reduction engine;
    ``wire_bytes`` the payload bytes over all links, ``framed_bytes`` those plus ``link.header_bytes`` per
    packet. Sparse algorithms add ``upstream_bytes``, ``downstream_bytes`` and ``spilled`` (the
    spots did not fit in NIC memory); ``faults`` holds drops, corruptions, retransmit_bytes and per_link;
    ``chosen_algo`` is the host algorithm ``host-best`` ran; ``nic_spill_bytes`` (dense) the most bytes
    one node's NIC read back from host memory because they did not fit in ``nic.memory_KiB``.
    """

    emulated_us: float            # completion of the slowest node
    node_done_us: np.ndarray      # completion per node (the executor's own nodes)
    host_busy_us: float           # busiest node's host time spent on the collective
    nic_busy_us: float            # busiest node's NIC reduction time
    wire_bytes: int               # bytes that crossed links, all nodes together
    upstream_bytes: int | None = None     # sparse algorithms: worker -> aggregator
    downstream_bytes: int | None = None   # sparse algorithms: aggregator -> worker
    spilled: bool | None = None           # sparse algorithms: spots did not fit in NIC memory
    faults: dict | None = None            # --faults: drops, corruptions, retransmit_bytes, per_link
    chosen_algo: str | None = None        # host-best: the algorithm it ran
    framed_bytes: int | None = None       # wire_bytes plus link.header_bytes per packet
    nic_spill_bytes: int | None = None    # dense: most bytes one NIC read back because they did not fit
    telemetry: LinkStats | None = None    # per link and resource, and the trace (nic/telemetry.py)


def run_model(schedule: Schedule, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
              call: int = 0, stragglers: dict[int, float] | None = None,
              telemetry: bool | np.ndarray = False) -> Timing:
    """Emulated timing of ``schedule``; ``faults`` and ``stragglers`` as in collectives/model/link_faults.py.

    ``telemetry``: True adds per-link and per-resource statistics (``Timing.telemetry``); a bool array
    over the nodes also records the stream events of the nodes it marks (the trace)."""
    topo = schedule.topology
    agents = make_agents(topo, profile, topo.nodes)
    if faults is not None or stragglers:
        install(agents, profile, topo, 0, faults, stragglers)
        if agents.faults is not None:
            agents.faults.begin(call)
    tel = None
    if telemetry is not False:
        tel = agents.telemetry = make_telemetry(topo, profile, 0, None if telemetry is True else telemetry)
    number = 0
    notes: list[dict] = []
    for group in step_groups(schedule.steps()):
        if tel is not None and tel.traced is not None:
            notes.extend(note_step(step, itemsize, tel.traced) for step in group)
        arrivals = []
        for k, step in enumerate(group):
            if tel is not None:
                tel.step, tel.side = number + k, 0
            arrivals.append(send_half(agents, step, step.src, step.count * itemsize,
                                      part_bytes(step.host_count, itemsize)))
        for k, (step, (first, last)) in enumerate(zip(group, arrivals)):
            if tel is not None:
                tel.step, tel.side = number + k, 1
            receive_half(agents, step, step.dst, first, last, step.count * itemsize,
                         part_bytes(step.final_count, itemsize), part_bytes(step.hold_count, itemsize))
        number += len(group)
    stats = agents.stats()
    fault_stats = (None if agents.faults is None
                   else FaultStats.summary(agents.faults.stats.rows()))
    links = agents.links
    return Timing(float(np.max(agents.clock)), agents.clock.copy(),
                  float(np.max(stats["host_busy_us"])), float(np.max(stats["nic_busy_us"])),
                  links.bytes_sent, faults=fault_stats,
                  framed_bytes=links.framed_sent if links.header_bytes else links.bytes_sent,
                  nic_spill_bytes=int(np.max(stats["nic_spill_bytes"], initial=0.0)),
                  telemetry=None if tel is None else finish_telemetry(tel, float(np.max(agents.clock)),
                                                                      resource_busy(agents), notes))
