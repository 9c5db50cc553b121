"""``host-best``: the fastest host algorithm for a collective, size and topology, as MPI's tuning picks one.

MPI libraries choose an AllReduce algorithm per message size and communicator
size from tuning tables (MPICH: recursive doubling for short messages,
Rabenseifner for long ones; NCCL: rings or trees). nicemu can do better than a
table: it times every host algorithm that implements the collective with the
model executor, on the same topology, profile and size, and takes the fastest
(ties go to the earlier one in the registry). The choice is deterministic, so
every rank makes the same one without talking; the MPI executor then runs the
chosen algorithm with real data. ``Timing.chosen_algo`` says which it was.
"""

from __future__ import annotations

import functools

from nicemu.collectives.model.executor import Timing, run_model
from nicemu.collectives.registry import REGISTRY, names
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus

NAME = "host-best"


def candidates(collective: str) -> list[str]:
    """The host algorithms ``host-best`` chooses from for ``collective`` (registry order)."""
    return [a for a in names(kind="dense", emulated=True, collective=collective)
            if REGISTRY[a].engine == "host" and REGISTRY[a].build is not None]


@functools.lru_cache(maxsize=32)
def best_host(collective: str, topology: Torus, profile: Profile, count: int, itemsize: int,
              root: int = 0) -> tuple[str, Timing]:
    """(name, fault-free model timing) of the fastest host algorithm for this call (``root``: broadcast and
    reduce)."""
    from nicemu.collectives.api.model import build_schedule  # api.model imports this module
    best: tuple[str, Timing] | None = None
    for algo in candidates(collective):
        schedule = build_schedule(collective, algo, topology, count, profile.topology.bidirectional,
                                  profile.host.segment_elems(itemsize), root=root)
        timing = run_model(schedule, profile, itemsize)
        if best is None or timing.emulated_us < best[1].emulated_us:
            best = (algo, timing)
    if best is None:
        raise CollectiveError(f"no host algorithm implements {collective}")
    return best
