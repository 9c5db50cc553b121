"""Host-based Ring-AllReduce, the baseline.

Every step goes through host memory: the NIC DMA-reads the chunk to send, the
receiving NIC DMA-writes the incoming chunk into host memory, and the host is
notified and reduces it (reduce-scatter) or just takes note of it (allgather)
before the next step can start. Two PCIe crossings and one host pass per step.
"""

from __future__ import annotations

from nicemu.collectives.schedules.dimension_rings import dimension_ring_steps
from nicemu.collectives.schedules.steps import Schedule, final_segments
from nicemu.topologies import Torus


def host_policy(phase: str, index: int, ring_size: int, first_ring: bool, last_ring: bool,
                follows_rs: bool) -> dict:
    return {"engine": "host", "reduce": phase == "rs", "from_host": True, "to_host": True}


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False) -> Schedule:
    off, cnt = final_segments(topology, count)
    return Schedule(collective, "ring", topology, count,
                    lambda: dimension_ring_steps(topology, count, collective, host_policy, bidirectional),
                    off, cnt, bidirectional)
