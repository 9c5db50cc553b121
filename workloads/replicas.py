"""Data-parallel replicas (``--replicas R``): R colocated copies of one model instance share the requests.

Request ``k`` in arrival order goes to replica ``k mod R`` (round-robin, no load information, as for the
disaggregated instances of workloads/disaggregation.py), and each replica batches on its own nodes. This
is the colocated deployment that uses as many accelerators as a disaggregated one, so the two can be
compared per accelerator at the same load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nicemu.workloads.batching import Batcher, BatchingConfig, BatchingResult
from nicemu.workloads.disaggregation import place as place_instances
from nicemu.workloads.iteration_time import IterationCost
from nicemu.workloads.metrics import time_split
from nicemu.workloads.requests import Request


def place(requests: Sequence[Request], replicas: int) -> dict[int, int]:
    """Request id -> replica: round-robin in arrival order, as disaggregated instances are placed."""
    return {rid: i for rid, (i, _) in place_instances(requests, replicas, 1).items()}


def serve_replicas(requests: Sequence[Request], replicas: int, timer_for: Callable[[int], Callable],
                   config: BatchingConfig | None = None
                   ) -> tuple[BatchingResult, list[IterationCost], dict[str, float] | None]:
    """Serve ``requests`` on ``replicas`` instances; ``timer_for(i)`` is replica ``i``'s duration callback (with
    a ``costs`` list). Returns every request's timing (in ``requests`` order) with every replica's iterations,
    their costs, and the split of a mean request's time (each replica's :func:`time_split`, weighted by its
    requests)."""
    config = config or BatchingConfig()
    where = place(requests, replicas)
    parts = []
    for i in range(replicas):
        mine = [r for r in requests if where[r.id] == i]
        timer = timer_for(i)
        parts.append((Batcher(config).run(mine, timer), timer.costs))
    by_id = {r.id: r for res, _ in parts for r in res.requests}
    merged = BatchingResult([by_id[r.id] for r in requests], [it for res, _ in parts for it in res.iterations],
                            config.kv)
    costs = [c for _, cs in parts for c in cs]
    split: dict[str, float] = {}
    served = 0
    for res, cs in parts:
        n = sum(1 for r in res.requests if r.rejected is None)
        if not n:
            continue
        for k, v in time_split(res, cs).items():
            split[k] = split.get(k, 0.0) + v * n
        served += n
    return merged, costs, ({k: v / served for k, v in split.items()} if served else None)
