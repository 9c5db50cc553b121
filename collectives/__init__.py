"""Collective algorithms in four layers, plus the registry that names them.

* ``schedules/``: what moves where (plain-data steps; no timing, no MPI);
* ``model/``: how long it takes (the model executor, sparse timing; no MPI);
* ``mpi/``: how real data moves over MPI (the step loop and its transports);
* ``api/``: the public API, re-exported here.

``Emulator`` and ``Result`` need MPI and are imported on first use, so
``from nicemu.collectives import model_time`` works without ``mpi4py.MPI``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nicemu.collectives.api.checks import check_algo, check_collective, check_dtype_op
from nicemu.collectives.api.model import (
    build_schedule,
    model_sparse,
    model_time,
    p2p_time,
    plan_sparse,
    segment_elems,
    time_sparse_plan,
)
from nicemu.collectives.model.executor import Timing
from nicemu.collectives.registry import ALGORITHMS, COLLECTIVES, REGISTRY, Algorithm, names, sparse_config
from nicemu.collectives.schedules.spot_protocol import PackedMasks
from nicemu.errors import CollectiveError

if TYPE_CHECKING:
    from nicemu.collectives.api.emulator import Emulator, Result
    from nicemu.collectives.api.p2p import run_p2p

__all__ = ["ALGORITHMS", "COLLECTIVES", "REGISTRY", "Algorithm", "CollectiveError", "Emulator", "PackedMasks",
           "Result", "Timing", "build_schedule", "check_algo", "check_collective", "check_dtype_op", "model_sparse",
           "model_time", "names", "p2p_time", "plan_sparse", "run_p2p", "segment_elems", "sparse_config",
           "time_sparse_plan"]


def __getattr__(name: str):
    if name in ("Emulator", "Result"):
        from nicemu.collectives.api import emulator
        return getattr(emulator, name)
    if name == "run_p2p":
        from nicemu.collectives.api import p2p
        return p2p.run_p2p
    raise AttributeError(f"module 'nicemu.collectives' has no attribute '{name}'")
