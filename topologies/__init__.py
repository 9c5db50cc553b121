"""Topologies for nicemu: rings, switches and N-D tori, spec parsing and ASTRA-sim network import.

This package knows nothing of MPI or algorithms; it only answers "which node is
where, and which links connect them".
"""

from nicemu.errors import TopologyError

from .astra import load_astra_network
from .placement import node_blocks
from .ring import ring
from .spec import parse_topology, topology_kinds
from .switch import switch
from .torus import LinkParams, Torus

__all__ = [
    "LinkParams",
    "TopologyError",
    "Torus",
    "load_astra_network",
    "node_blocks",
    "parse_topology",
    "ring",
    "switch",
    "topology_kinds",
]
