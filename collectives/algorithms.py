"""The registry of collective algorithms."""

from __future__ import annotations

from collections.abc import Callable

from collectives import directreduce, ring
from collectives.schedule import Schedule

Builder = Callable[..., Schedule]   # (collective, topology, count, bidirectional=False)

#: algorithms that compile to a schedule (both executors run them)
SCHEDULED: dict[str, Builder] = {"ring": ring.build, "directreduce": directreduce.build}
#: zero-block-sparse AllReduce on the spot protocol (collectives/omniccl.py)
SPARSE = ["omniccl", "omniccl-cpu", "omnireduce"]
#: every algorithm a user can name; "mpi" is MPI's own collective (wall time only)
ALGORITHMS = [*SCHEDULED, *SPARSE, "mpi"]
ALGORITHM_HELP = {
    "ring": "host-based Ring-AllReduce: every step crosses PCIe twice and the host reduces "
            "(alltoall: store-and-forward through every host)",
    "directreduce": "DirectReduce: in-NIC reduction with packet-level stream aggregation "
                    "(alltoall: the NIC forwards transit blocks cut-through)",
    "omniccl": "OmNICCL: zero-block-sparse AllReduce aggregated on SmartNICs (Rx/Tx spots, DCA)",
    "omniccl-cpu": "the OmNICCL protocol aggregated by the aggregator node's host CPU",
    "omnireduce": "OmniReduce: sparse AllReduce with dedicated CPU aggregators (baseline)",
    "mpi": "MPI's own collective (wall-time reference, no emulated time; alltoall: Alltoallv)",
}
#: alltoall: ``ring`` is the host variant (store-and-forward through every host), ``directreduce``
#: the NIC variant (cut-through in the NIC), ``mpi`` MPI's own Alltoallv (collectives/alltoall.py)
COLLECTIVES = ["allreduce", "reducescatter", "allgather", "alltoall"]
