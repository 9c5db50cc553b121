"""Model-only timing: schedules and emulated times without data, and without MPI.

    from nicemu.collectives import model_time
    t = model_time("allreduce", "directreduce", topology, profile, count)
    t.emulated_us, t.host_busy_us, t.wire_bytes
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.api.checks import check_collective, check_sparse_call, fault_options
from nicemu.collectives.model.executor import Timing, run_model
from nicemu.collectives.registry import get
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus


def build_schedule(collective: str, algo: str, topology: Torus, count: int,
                   bidirectional: bool = False) -> Schedule:
    check_collective(collective)
    entry = get(algo)
    if entry.sparse is not None:
        check_sparse_call(algo, collective, "sum")
    if entry.build is None:
        raise CollectiveError(f"algorithm '{algo}' has no fixed schedule: "
                              + ("its rounds depend on the data (time it with model_sparse)"
                                 if entry.sparse is not None else "it is MPI's own collective"))
    return entry.build(collective, topology, count, bidirectional)


def model_time(collective: str, algo: str, topology: Torus, profile: Profile, count: int,
               dtype: str | np.dtype = "float32", faults: str | FaultSpec | None = None,
               call: int = 0, stragglers: str | list | dict | None = None) -> Timing:
    """Emulated timing without data (the model executor); ``call`` numbers the fault draws."""
    dt = np.dtype(dtype)
    schedule = build_schedule(collective, algo, topology, count, profile.topology.bidirectional)
    spec, slow = fault_options(faults, stragglers, topology)
    return run_model(schedule, profile, dt.itemsize, spec, call, slow)


