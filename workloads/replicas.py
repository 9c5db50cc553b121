"""Data-parallel replicas (``--replicas R``): R colocated copies of one model instance share the requests.

Request ``k`` in arrival order goes to replica ``k mod R`` (round-robin, no load information, as for the
disaggregated instances of workloads/disaggregation.py), and each replica batches on its own nodes. This
is the colocated deployment that uses as many accelerators as a disaggregated one, so the two can be
compared per accelerator at the same load.

With ``--disaggregated P:D`` a replica is a whole P:D deployment (P prefill and D decode instances on
nodes of its own, replica ``k`` owning instances ``k(P+D) .. (k+1)(P+D) - 1``, prefill first): requests
are spread over the replicas as above, and each replica places its share on its own instances and moves
their KV caches between its own nodes exactly as a lone disaggregated deployment does
(:func:`serve_replicas_disaggregated`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nicemu.workloads.batching import Batcher, BatchingConfig, BatchingResult
from nicemu.workloads.disaggregation import Disaggregated, KvTimeFn, serve_disaggregated
from nicemu.workloads.disaggregation import place as place_instances
from nicemu.workloads.iteration_time import IterationCost
from nicemu.workloads.metrics import time_split
from nicemu.workloads.requests import Request
from nicemu.workloads.traffic import TrafficRecord


def place(requests: Sequence[Request], replicas: int) -> dict[int, int]:
    """Request id -> replica: round-robin in arrival order, as disaggregated instances are placed."""
    return {rid: i for rid, (i, _) in place_instances(requests, replicas, 1).items()}


def serve_replicas(requests: Sequence[Request], replicas: int, timer_for: Callable[[int], Callable],
                   config: BatchingConfig | None = None, results: list[BatchingResult] | None = None
                   ) -> tuple[BatchingResult, list[IterationCost], dict[str, float] | None]:
    """Serve ``requests`` on ``replicas`` instances; ``timer_for(i)`` is replica ``i``'s duration callback (with
    a ``costs`` list). Returns every request's timing (in ``requests`` order) with every replica's iterations,
    their costs, and the split of a mean request's time (each replica's :func:`time_split`, weighted by its
    requests). ``results``, if given, receives each replica's own result (for --trace)."""
    config = config or BatchingConfig()
    where = place(requests, replicas)
    parts = []
    for i in range(replicas):
        mine = [r for r in requests if where[r.id] == i]
        timer = timer_for(i)
        parts.append((Batcher(config).run(mine, timer), timer.costs))
    if results is not None:
        results.extend(res for res, _ in parts)
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


def serve_replicas_disaggregated(requests: Sequence[Request], replicas: int, prefill: int, decode: int,
                                 timer_for: Callable[[int], Callable],
                                 kv_records: Callable[[int, int, int], list[TrafficRecord]], kv_time: KvTimeFn,
                                 config: BatchingConfig | None = None, kv_extra: dict[int, float] | None = None
                                 ) -> tuple[Disaggregated, list[Disaggregated]]:
    """``replicas`` copies of a ``prefill``:``decode`` deployment (see the module docstring). ``timer_for`` and
    ``kv_records`` take instance numbers of the whole run (replica ``k``'s instance ``i`` is ``k(P+D) + i``).
    Every rank makes the same calls in the same order (replica after replica, each as
    :func:`~nicemu.workloads.disaggregation.serve_disaggregated` does, ``kv_extra`` passed on), so the MPI
    executor agrees with the model executor. Returns the run merged (prefill and decode results replica after
    replica, placement as indices into them: replica ``k``'s prefill instance ``i`` is ``kP + i``, its decode
    instance ``j`` is ``kD + j``) and each replica's own run."""
    where = place(requests, replicas)
    per = prefill + decode
    parts = []
    for k in range(replicas):
        mine = [r for r in requests if where[r.id] == k]
        parts.append(serve_disaggregated(
            mine, prefill, decode, lambda i, base=k * per: timer_for(base + i),
            lambda prompt, src, dst, base=k * per: kv_records(prompt, base + src, base + dst), kv_time, config,
            kv_extra))
    by_id = {r.id: r for part in parts for r in part.result.requests}
    merged = BatchingResult([by_id[r.id] for r in requests],
                            [it for part in parts for it in part.result.iterations], parts[0].result.kv)
    out = Disaggregated(merged, [c for part in parts for c in part.costs],
                        [res for part in parts for res in part.prefill], [res for part in parts for res in part.decode])
    for k, part in enumerate(parts):
        out.prefill_done_us.update(part.prefill_done_us)
        out.kv_us.update(part.kv_us)
        out.kv_bytes.update(part.kv_bytes)
        out.placement.update({rid: (k * prefill + i, k * decode + j) for rid, (i, j) in part.placement.items()})
    return out, parts
