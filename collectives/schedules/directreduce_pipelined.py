"""Pipelined DirectReduce (``directreduce-pipelined``): DirectReduce with segmented chunks.

The data path is DirectReduce's (collectives/schedules/directreduce.py): the
DataDirector steers arriving packets to the ComputeEnhancer, which reduces
them against the local operand the GateKeeper fetched from host memory; the
host never takes part, and only final data is DMA-written to host memory,
once. The difference is the one ``ring-pipelined`` makes for the host ring:
every chunk is cut into ``S`` segments, and a segment travels on to the next
ring step as soon as the NIC has reduced it, without waiting for the rest of
its chunk. The wavefront of segment transfers, and where the pipeline stops
(between torus dimensions), are ``ring-pipelined``'s; both use
:func:`~nicemu.collectives.schedules.ring_pipelined.pipelined_steps` and
differ only in the per-step policy.

Two things change with segments on the NIC:

* **Operand prefetch** (``Step.early_operand``). In the first ring the local
  operand of every segment has been in host memory since the call began, so
  the GateKeeper fetches the operands of a whole group back to back when the
  node begins the group, instead of one after each earlier segment of the
  group is reduced.
* **NIC memory.** The NIC holds the segments of one group, not whole chunks:
  each of a group's transfers may hold ``1 / (2 x transfers in the group)`` of
  ``nic.memory_KiB`` (its operand and its result). The default segment is
  the largest that fits that share in the fullest group, in whole packets,
  and at most ``host.segment_KiB`` (:func:`segment_bytes`; docs/model.md §4.6).
"""

from __future__ import annotations

from nicemu.collectives.schedules.dimension_rings import PHASES
from nicemu.collectives.schedules.directreduce import nic_policy
from nicemu.collectives.schedules.ring_pipelined import pipelined_schedule
from nicemu.collectives.schedules.steps import Schedule
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus

ALGO = "directreduce-pipelined"


def pipelined_nic_policy(phase: str, index: int, ring_size: int, first_ring: bool, last_ring: bool,
                         follows_rs: bool) -> dict:
    """DirectReduce's step policy; a reduction whose operand is host input prefetches it early."""
    flags = nic_policy(phase, index, ring_size, first_ring, last_ring, follows_rs)
    if flags["reduce"] and flags["operand_from_host"]:
        flags["early_operand"] = True
    return flags


def in_flight(topology: Torus, collective: str, bidirectional: bool = False) -> int:
    """Most transfers a node has in one group: the longest pipelined run's ring steps, times the directions.

    The last dimension's reduce-scatter and allgather form one run of ``2(k-1)`` steps (allreduce); every
    other ring runs ``k-1``. A group holds at most one segment of each step of its run (fewer while the
    pipeline fills and drains).
    """
    if topology.ranks_per_node > 1 and not topology.single:
        topology = topology.node_topology    # the rails run the node topology (--ranks-per-node)
    phases = PHASES[collective]
    longest = max((k - 1 for k in topology.shape), default=0)
    if "rs" in phases and "ag" in phases and topology.ndim:
        longest = max(longest, 2 * (topology.shape[-1] - 1))
    return max(1, longest) * (2 if bidirectional else 1)


def segment_bytes(profile: Profile, topology: Torus, collective: str, bidirectional: bool = False) -> int:
    """Default segment: the largest whole number of packets whose operand and result, for every transfer of
    the fullest group, fit in ``nic.memory_KiB``; at least one packet, at most ``host.segment_KiB``."""
    packet = int(profile.nic.packet_bytes)
    fits = int(profile.nic.memory_KiB * 1024) // (2 * in_flight(topology, collective, bidirectional))
    return min(int(profile.host.segment_KiB * 1024), max(packet, fits // packet * packet))


def segment_elems(profile: Profile, itemsize: int, topology: Torus, collective: str,
                  bidirectional: bool = False) -> int:
    """:func:`segment_bytes` in elements of ``itemsize`` bytes (at least 1)."""
    return max(1, segment_bytes(profile, topology, collective, bidirectional) // itemsize)


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False, *,
          segment_elems: int) -> Schedule:
    """Pipelined DirectReduce with segments of ``segment_elems`` elements (at least 1)."""
    return pipelined_schedule(ALGO, collective, topology, count, bidirectional, segment_elems, pipelined_nic_policy)
