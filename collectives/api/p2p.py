"""Point-to-point transfers with real data, with the same specs as the rest of the API (needs MPI)."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from nicemu.collectives.api.checks import as_profile, as_topology
from nicemu.collectives.api.model import _pairs
from nicemu.collectives.model.executor import Timing
from nicemu.collectives.mpi import p2p
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus, node_blocks


def run_p2p(comm: MPI.Comm, node_rank: np.ndarray | None, topology: Torus | str, profile: Profile | str,
            pairs: list[tuple[int, int]], buffers: dict[int, np.ndarray], path: str) -> Timing:
    """Point-to-point transfers with real data; the emulated time equals ``p2p_time``'s exactly.

    Args:
        comm: the communicator whose ranks host the nodes.
        node_rank: the rank hosting each node (``emu.executor.node_rank``); None: contiguous blocks, as
            the ``Emulator`` places them.
        topology, profile: specs or objects, as for ``model_time``.
        pairs: (source node, destination node) per transfer, the same on every rank.
        buffers: ``{node: array}`` for this rank's nodes: the payload at a source, overwritten at a
            destination; every buffer has the same number of bytes.
        path: ``"host"`` or ``"nic"``.

    Collective over ``comm``. Returns a ``Timing`` in microseconds. Raises :class:`CollectiveError` for
    bad pairs, buffers of different sizes or an unknown path.
    """
    topology, profile = as_topology(topology), as_profile(profile)
    if node_rank is None:
        bounds = node_blocks(topology.nodes, comm.size)
        node_rank = np.repeat(np.arange(comm.size), np.diff(bounds))
    node_rank = np.asarray(node_rank)
    if node_rank.shape != (topology.nodes,):
        raise CollectiveError(f"node_rank must give the rank of each of the {topology.nodes} nodes, got shape "
                              f"{node_rank.shape}")
    bad = [n for n, b in buffers.items() if not isinstance(b, np.ndarray) or not b.flags.c_contiguous]
    if bad:
        raise CollectiveError(f"p2p buffer of node {bad[0]} must be a C-contiguous numpy array "
                              f"(np.ascontiguousarray)")
    return p2p.run_p2p(comm, node_rank, topology, profile, _pairs(pairs), buffers, path)
