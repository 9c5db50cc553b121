"""Checks of a call's arguments, shared by the API, the CLI and serving (no MPI)."""

from __future__ import annotations

import numpy as np

from nicemu.collectives.registry import COLLECTIVES, get, names
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec, parse_faults
from nicemu.nic.ops import DTYPES, OPS
from nicemu.nic.stragglers import check_stragglers, parse_stragglers
from nicemu.topologies import Torus


def check_algo(algo: str) -> None:
    get(algo)


def check_collective(collective: str) -> None:
    if collective not in COLLECTIVES:
        raise CollectiveError(
            f"unknown collective '{collective}'; use one of {', '.join(COLLECTIVES)}")


def check_dtype_op(dtype: str | np.dtype, op: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise CollectiveError(f"unsupported dtype '{dt.name}'; use one of {', '.join(DTYPES)}")
    if op not in OPS:
        raise CollectiveError(f"unknown op '{op}'; use one of {', '.join(OPS)}")
    return dt


def check_sparse_call(algo: str, collective: str, op: str) -> None:
    """A sparse algorithm implements AllReduce with sum only."""
    if collective not in get(algo).collectives:
        dense = " or ".join(names(kind="dense", emulated=True, collective=collective))
        raise CollectiveError(f"{algo} implements AllReduce only; use {dense} for {collective}")
    if op != "sum":
        raise CollectiveError(f"{algo} cannot compute '{op}': blocks that are zero are skipped, and "
                              "zero is not the identity of max/min; use --op sum or a dense algorithm")


def fault_options(faults: str | FaultSpec | None, stragglers: str | list | dict | None,
                  topology: Torus) -> tuple[FaultSpec | None, dict[int, float]]:
    """Parse and check ``--faults`` / ``--straggler`` values (strings or already parsed)."""
    spec = parse_faults(faults) if isinstance(faults, str) or faults is None else faults
    slow = stragglers if isinstance(stragglers, dict) else parse_stragglers(stragglers)
    if spec is not None:
        spec.check_nodes(topology.nodes)
    check_stragglers(slow, topology.nodes)
    return (spec if spec is not None and spec.active else None), slow
