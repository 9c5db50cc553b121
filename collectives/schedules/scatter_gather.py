"""Broadcast as a scatter and an allgather, Reduce as a reduce-scatter and a gather (long messages).

Van de Geijn's broadcast (MPICH's long-message ``MPI_Bcast``) first scatters
the root's vector, one segment per node, down a binomial tree, then
allgathers the segments; the reduce that mirrors it runs a reduce-scatter,
then gathers the reduced segments at the root. Each algorithm family brings
its own halves (collectives/schedules/rooted.py has the scatter and gathers):

* ``ring`` (host): binomial scatter + ring allgather (dimension by dimension
  on a torus); ring reduce-scatter + ring gather (neighbour steps: the reduced
  segments travel along the rings to the root). Under the α-β-γ model on
  ``switch:p`` the broadcast takes ``(⌈lg p⌉ + p - 1)α + 2((p-1)/p)nβ`` for a
  power of two, the reduce ``2(p-1)α + 2((p-1)/p)nβ + ((p-1)/p)nγ``.
* ``rabenseifner`` (host): binomial scatter + recursive-doubling allgather
  (MPICH's medium-message broadcast); recursive-halving reduce-scatter +
  binomial gather (MPICH's long-message ``MPI_Reduce``). Non-powers of two
  fold in and out as in collectives/schedules/recursive.py.
* ``directreduce`` (NIC): the binomial scatter DMA-reads at every sender and
  DMA-writes at every receiver with the NIC engine, then DirectReduce's
  allgather (the NIC forwards final data from its buffer); the reduce is
  DirectReduce's reduce-scatter (in-NIC stream aggregation) followed by the
  ring gather with the flags of DirectReduce's allgather steps. No new flags.

All are written for root 0 and moved to the real root by ``rooted.at_root``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

from nicemu.collectives.schedules.dimension_rings import dimension_ring_steps
from nicemu.collectives.schedules.directreduce import nic_policy
from nicemu.collectives.schedules.host_ring import host_policy
from nicemu.collectives.schedules.recursive import rabenseifner_steps
from nicemu.collectives.schedules.rooted import at_root, binomial_gather, binomial_scatter, ring_gather
from nicemu.collectives.schedules.steps import Schedule, Step, final_segments
from nicemu.topologies import Torus

#: flags of a routed scatter or gather step: the host path, and the NIC path of DirectReduce's allgather
HOST_PLACE = {"engine": "host", "reduce": False, "from_host": True, "to_host": True}
NIC_PLACE = {"engine": "nic", "reduce": False, "from_host": True, "to_host": True}

FAMILIES = ("ring", "rabenseifner", "directreduce")


def rooted_steps(family: str, collective: str, topology: Torus, count: int) -> Iterator[Step]:
    """The root-0 steps of ``collective`` (broadcast or reduce) in ``family``."""
    if family == "rabenseifner":
        if collective == "broadcast":
            return chain(binomial_scatter(topology, count, HOST_PLACE),
                         rabenseifner_steps(topology, count, "allgather"))
        return chain(rabenseifner_steps(topology, count, "reducescatter"),
                     binomial_gather(topology, count, HOST_PLACE))
    policy, place = (host_policy, HOST_PLACE) if family == "ring" else (nic_policy, NIC_PLACE)
    if collective == "broadcast":
        return chain(binomial_scatter(topology, count, place),
                     dimension_ring_steps(topology, count, "allgather", policy))
    return chain(dimension_ring_steps(topology, count, "reducescatter", policy),
                 ring_gather(topology, count, policy))


def build(family: str, collective: str, topology: Torus, count: int, root: int = 0) -> Schedule:
    """``family``'s broadcast or reduce of ``count`` elements from/to ``root`` (see the module docstring)."""
    off, cnt = final_segments(topology, count)
    name = family
    return Schedule(collective, name, topology, count,
                    lambda: at_root(rooted_steps(family, collective, topology, count), topology, root),
                    off, cnt, root=root)
