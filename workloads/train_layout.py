"""Where the ranks of a TP x DP x PP training job sit, and the topology each of its groups runs on.

Megatron-LM's default order, tp-dp-pp: TP is innermost, then DP, then PP, so rank
``t + T (d + D s)`` is TP rank ``t`` of data-parallel replica ``d`` in pipeline stage ``s``. A TP group
(the ``T`` ranks of one stage of one replica) is a block of consecutive nodes, whose AllReduces sit on
the critical path and so get the closest links; a DP group (the ``D`` replicas of one TP rank of one
stage) has stride ``T``; a stage is the block of ``T x D`` nodes ``T D s .. T D (s + 1) - 1``, so the
pipeline's point-to-point transfers go from one block to the next. docs/model.md §22.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nicemu.errors import WorkloadError
from nicemu.nic.profile import Profile
from nicemu.topologies import LinkParams, Torus, switch
from nicemu.workloads.comm_backends import group_topology as block_topology


@dataclass(frozen=True)
class Layout:
    """T x D x P ranks, one per node, numbered tp-dp-pp (TP innermost)."""

    tp: int
    dp: int
    pp: int

    def __post_init__(self) -> None:
        for key in ("tp", "dp", "pp"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WorkloadError(f"--{key} must be a positive integer, got {value!r}")

    @property
    def nodes(self) -> int:
        return self.tp * self.dp * self.pp

    def node(self, t: int, d: int, s: int) -> int:
        """The node of TP rank ``t``, replica ``d``, stage ``s``."""
        return t + self.tp * (d + self.dp * s)

    def tp_group(self, s: int, d: int = 0) -> tuple[int, ...]:
        return tuple(self.node(t, d, s) for t in range(self.tp))

    def dp_group(self, s: int, t: int = 0) -> tuple[int, ...]:
        return tuple(self.node(t, d, s) for d in range(self.dp))

    def stage_pairs(self, s: int) -> list[tuple[int, int]]:
        """Every rank of stage ``s`` with the rank in the same place of stage ``s + 1``."""
        return [(self.node(t, d, s), self.node(t, d, s + 1)) for d in range(self.dp) for t in range(self.tp)]


def hops(topology: Torus, a: int, b: int) -> int:
    """Links between two nodes on the shortest route (1 on a switch)."""
    if topology.switched:
        return 1
    here, there = topology.coords(a), topology.coords(b)
    return int(sum(min((int(y) - int(x)) % k, (int(x) - int(y)) % k) for x, y, k in zip(here, there, topology.shape)))


def group_topology(topology: Torus, nodes: Sequence[int], profile: Profile) -> Torus:
    """The topology a group's collectives run on; the group is ``count`` nodes a fixed stride apart.

    The whole topology for all of it; on a switch, a switch of the group's ports. Consecutive nodes as
    serve's TP groups (workloads/comm_backends.py). A stride that is the product of the trailing
    dimensions of a torus, with a count the product of the dimensions before them: that sub-torus
    (``torus:4x2`` with T = 2 puts every DP group on a ``ring:4`` of dimension 0). Otherwise a ring of the
    group whose every hop has the latency of the links between two neighbours in the group and the
    bandwidth of the last dimension (as an interleaved group on a ring, docs/model.md §21.6; the hop
    that closes the ring is an approximation, the fabric replay routes every message for real)."""
    n = len(nodes)
    if n == topology.nodes:
        return topology
    if topology.switched:
        return switch(n)
    stride = nodes[1] - nodes[0]
    if stride == 1:
        return block_topology(topology, nodes)
    inner = 1
    for k in range(topology.ndim - 1, 0, -1):
        inner *= topology.shape[k]
        if inner == stride:
            outer = 1
            for j in range(k - 1, -1, -1):
                outer *= topology.shape[j]
                if outer == n:
                    return Torus(topology.shape[j:k], dim_links=topology.dim_links[j:k])
                if outer > n:
                    break
            break
        if inner > stride:
            break
    last = topology.link_params(topology.ndim - 1, LinkParams(profile.link.bandwidth_GBps, profile.link.latency_us))
    link = LinkParams(last.bandwidth_GBps, hops(topology, nodes[0], nodes[1]) * last.latency_us)
    return Torus((n,), name=f"ring:{n}", dim_links=(link,))
