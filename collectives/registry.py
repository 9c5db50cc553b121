"""The algorithm registry: the one list of algorithm names that everything else reads.

Each algorithm declares what it is (its collectives, who does the work, dense
or sparse, the topologies it runs on) and how its schedule is built. The CLI's
``--algo`` choices and help, ``nicemu info``, the benches, serving and the
study scripts all iterate over :data:`REGISTRY`. Adding an algorithm is one
module (its schedule under ``schedules/``) plus one :class:`Algorithm` entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nicemu.collectives.schedules import (
    alltoall,
    chain,
    directreduce,
    directreduce_pipelined,
    host_ring,
    omniccl,
    recursive,
    ring_pipelined,
    scatter_gather,
    tree,
)
from nicemu.collectives.schedules.rooted import ROOTED
from nicemu.collectives.schedules.spot_protocol import SparseConfig
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus

#: every collective the emulator implements
COLLECTIVES = ("allreduce", "reducescatter", "allgather", "alltoall", "broadcast", "reduce")
#: the collectives with a root node (``root=``, ``--root``): broadcast from it, reduce to it
ROOTED_COLLECTIVES = ROOTED
#: topology kinds (the part of a spec before the colon)
TOPOLOGY_KINDS = ("ring", "switch", "torus", "astra")

#: the keyword options of a sparse algorithm (``Emulator.allreduce(..., block_size=256)``, ``sparse_config``)
SPARSE_OPTIONS = ("block_size", "aggregators", "spots", "spot_blocks", "tx_spots")

#: (collective, topology, count, bidirectional); a ``segmented`` algorithm's builder also takes the
#: keyword ``segment_elems`` (elements per pipeline segment, from ``host.segment_KiB`` and the dtype), and
#: the builder of a rooted collective (broadcast, reduce) the keyword ``root`` (a node id)
Builder = Callable[..., Schedule]

#: (profile, itemsize, topology, collective, bidirectional) -> elements per pipeline segment
SegmentRule = Callable[[Profile, int, Torus, str, bool], int]


@dataclass(frozen=True)
class Algorithm:
    """One algorithm a user can name with ``--algo``: a frozen entry of :data:`REGISTRY`.

    Fields: ``name``; ``summary`` (one line for help); ``collectives`` it implements; ``engine`` (``host``,
    ``nic`` or ``mpi``); ``build`` (dense: the schedule builder) or ``sparse`` (the spot-protocol
    configuration) with its ``dense_partner``; the topology kinds it runs on; whether it runs with link
    faults; whether its builder is ``segmented``, and the ``segment_rule`` that sizes its segment when not
    ``host.segment_KiB``. Properties: ``kind``, ``options``, ``emulated``,
    ``scheduled``. Plain data: constructing one raises nothing.
    """

    name: str
    summary: str                       # one line for --help and ``nicemu info``
    collectives: tuple[str, ...]
    engine: str                        # who handles arriving data: "host", "nic", or "mpi" (MPI's own)
    build: Builder | None = None       # dense: compiles a collective into a schedule
    sparse: SparseConfig | None = None  # sparse: the spot-protocol configuration
    dense_partner: str | None = None   # sparse: the dense algorithm on the same hardware (serving's
                                       # per-layer AllReduces and all-to-all run on it)
    topologies: tuple[str, ...] = TOPOLOGY_KINDS
    link_faults: bool = True           # runs with --faults (go-back-N on neighbour links)
    segmented: bool = False            # dense: ``build`` takes ``segment_elems=`` (see Builder)
    segment_rule: SegmentRule | None = None  # segmented: its default segment (None: ``host.segment_KiB``)

    @property
    def kind(self) -> str:
        """``"sparse"`` (the spot protocol) or ``"dense"`` (a schedule, MPI's own, or host-best)."""
        return "sparse" if self.sparse is not None else "dense"

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options a call of this algorithm accepts: the spot options if sparse, else none."""
        return SPARSE_OPTIONS if self.sparse is not None else ()

    @property
    def emulated(self) -> bool:
        """False for MPI's own collective: it has a wall time but no emulated time."""
        return self.engine != "mpi"

    @property
    def scheduled(self) -> bool:
        """Compiles to a fixed schedule that both executors run."""
        return self.build is not None


def _host_ring(collective: str, topology: Torus, count: int, bidirectional: bool = False,
               root: int = 0) -> Schedule:
    if collective == "alltoall":
        return alltoall.build("ring", "host", topology, count)
    if collective in ROOTED:
        return scatter_gather.build("ring", collective, topology, count, root)
    return host_ring.build(collective, topology, count, bidirectional)


def _directreduce(collective: str, topology: Torus, count: int, bidirectional: bool = False,
                  root: int = 0) -> Schedule:
    if collective == "alltoall":
        return alltoall.build("directreduce", "nic", topology, count)
    if collective in ROOTED:
        return scatter_gather.build("directreduce", collective, topology, count, root)
    return directreduce.build(collective, topology, count, bidirectional)


def _rabenseifner(collective: str, topology: Torus, count: int, bidirectional: bool = False,
                  root: int = 0) -> Schedule:
    if collective in ROOTED:
        return scatter_gather.build("rabenseifner", collective, topology, count, root)
    return recursive.build_rabenseifner(collective, topology, count, bidirectional)


def _ring_pipelined(collective: str, topology: Torus, count: int, bidirectional: bool = False, *,
                    segment_elems: int, root: int = 0) -> Schedule:
    if collective in ROOTED:
        return chain.build(collective, topology, count, segment_elems=segment_elems, root=root)
    return ring_pipelined.build(collective, topology, count, bidirectional, segment_elems=segment_elems)


def _directreduce_pipelined(collective: str, topology: Torus, count: int, bidirectional: bool = False, *,
                             segment_elems: int) -> Schedule:
    return directreduce_pipelined.build(collective, topology, count, bidirectional, segment_elems=segment_elems)


#: every algorithm by name: ``REGISTRY["directreduce"]`` is its :class:`Algorithm` entry
REGISTRY: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ring", "host-based Ring-AllReduce: every step crosses PCIe twice and the host reduces "
              "(alltoall: store-and-forward through every host)",
              COLLECTIVES, "host", build=_host_ring),
    Algorithm("ring-pipelined", "host ring with segmented chunks: the host reduces a segment while the next "
              "arrives and forwards it at once, across ring steps (segment: host.segment_KiB; broadcast and "
              "reduce: a segmented chain through the nodes)",
              ("allreduce", "reducescatter", "allgather", *ROOTED), "host", build=_ring_pipelined, segmented=True),
    Algorithm("directreduce", "DirectReduce: in-NIC reduction with packet-level stream aggregation "
              "(alltoall: the NIC forwards transit blocks cut-through; broadcast: scatter, then the NIC "
              "allgather; reduce: the NIC reduce-scatter, then a ring gather to the root)",
              COLLECTIVES, "nic", build=_directreduce),
    Algorithm("directreduce-pipelined", "DirectReduce with segmented chunks: the NIC forwards a segment to the "
              "next ring step as soon as it has reduced it, across ring steps (segment: what one group's "
              "segments fit in nic.memory_KiB, at most host.segment_KiB)",
              ("allreduce", "reducescatter", "allgather"), "nic", build=_directreduce_pipelined, segmented=True,
              segment_rule=directreduce_pipelined.segment_elems),
    Algorithm("recursive-doubling", "MPICH's short-message AllReduce: lg p exchanges of the whole vector "
              "with partners 2^k apart (non-powers of two fold in first); allgather by recursive doubling",
              ("allreduce", "allgather"), "host", build=recursive.build_recursive_doubling, link_faults=False),
    Algorithm("rabenseifner", "MPICH's long-message AllReduce: reduce-scatter by recursive halving, then "
              "allgather by recursive doubling (non-powers of two fold in first); broadcast: binomial scatter "
              "+ recursive-doubling allgather; reduce: recursive halving + binomial gather",
              ("allreduce", "reducescatter", "allgather", *ROOTED), "host", build=_rabenseifner,
              link_faults=False),
    Algorithm("tree", "binomial-tree reduce to node 0, then binomial broadcast (MPICH's rooted short-message "
              "algorithms); the whole vector on every edge; broadcast and reduce: one tree from/to the root",
              ("allreduce", *ROOTED), "host", build=tree.build, link_faults=False),
    Algorithm("host-best", "the fastest host algorithm for this collective, size and topology (timed with the "
              "model, as MPI's tuning tables choose one); records say which in best_host_algo",
              ("allreduce", "reducescatter", "allgather", *ROOTED), "host", link_faults=False),
    Algorithm("omniccl", "OmNICCL: zero-block-sparse AllReduce aggregated on SmartNICs (Rx/Tx spots, DCA)",
              ("allreduce",), "nic", sparse=omniccl.OMNICCL, dense_partner="directreduce"),
    Algorithm("omniccl-cpu", "the OmNICCL protocol aggregated by the aggregator node's host CPU",
              ("allreduce",), "host", sparse=omniccl.OMNICCL_CPU, dense_partner="ring"),
    Algorithm("omnireduce", "OmniReduce: sparse AllReduce with dedicated CPU aggregators (baseline)",
              ("allreduce",), "host", sparse=omniccl.OMNIREDUCE, dense_partner="ring"),
    Algorithm("mpi", "MPI's own collective (wall-time reference, no emulated time; alltoall: Alltoallv; "
              "broadcast, reduce: Bcast, Reduce)",
              COLLECTIVES, "mpi"),
)}

#: names in registry order, for choices and help
ALGORITHMS = tuple(REGISTRY)


def names(*, kind: str | None = None, emulated: bool | None = None, collective: str | None = None,
          link_faults: bool | None = None, scheduled: bool | None = None) -> list[str]:
    """Algorithm names in registry order, filtered: ``names(kind="sparse")``, ``names(emulated=True)``,
    ``names(collective="alltoall")``. A filter no algorithm matches gives an empty list; it raises nothing."""
    return [a.name for a in REGISTRY.values()
            if (kind is None or a.kind == kind) and (emulated is None or a.emulated == emulated)
            and (collective is None or collective in a.collectives)
            and (link_faults is None or a.link_faults == link_faults)
            and (scheduled is None or a.scheduled == scheduled)]


def check_link_faults(name: str, collective: str | None = None) -> None:
    """Refuse --faults for an algorithm (or a rooted collective) whose steps the fault model does not cover."""
    algo = get(name)
    if collective in ROOTED and algo.emulated:
        raise CollectiveError(f"link faults are not modelled for {collective} (its scatter, gather and chain "
                              f"reach partners that are not neighbours); run it without --faults "
                              f"(stragglers work)")
    if algo.emulated and not algo.link_faults:
        raise CollectiveError(f"link faults are modelled on neighbour links only; {name} sends to partners "
                              f"further away: run it without --faults (stragglers work), or use "
                              f"{', '.join(names(link_faults=True, emulated=True, kind='dense'))}")


def get(name: str) -> Algorithm:
    """The registered :class:`Algorithm`; an unknown name raises :class:`CollectiveError` listing the known ones."""
    algo = REGISTRY.get(name)
    if algo is None:
        raise CollectiveError(f"unknown algorithm '{name}'; use one of {', '.join(ALGORITHMS)}")
    return algo


def is_sparse(name: str) -> bool:
    """True for a registered sparse algorithm (omniccl, omniccl-cpu, omnireduce); False otherwise."""
    algo = REGISTRY.get(name)
    return algo is not None and algo.sparse is not None


def sparse_config(name: str, nodes: int, block_size: int | None = None, aggregators: int | None = None,
                  spots: int | None = None, spot_blocks: int | None = None,
                  tx_spots: int | None = None) -> SparseConfig:
    """A sparse algorithm's configuration for ``nodes`` nodes with the user's overrides (None keeps the default).

    ``block_size`` is in elements, ``spot_blocks`` in blocks per Rx spot, ``aggregators``, ``spots`` (per
    aggregator) and ``tx_spots`` (1 or 2) are counts. Raises :class:`CollectiveError` for an unknown or
    dense algorithm, or a value out of range (the message names the limit).
    """
    algo = get(name)
    if algo.sparse is None:
        raise CollectiveError(f"{name} is a dense algorithm; sparse options apply to "
                              f"{', '.join(names(kind='sparse'))}")
    return omniccl.configure(algo.sparse, nodes, block_size=block_size, aggregators=aggregators,
                             spots=spots, spot_blocks=spot_blocks, tx_spots=tx_spots)
