"""Disaggregated prefill and decode (``--disaggregated P:D``): P prefill instances, D decode instances.

A request is prefilled on one prefill instance, whose forward passes produce its first token; its KV
cache then moves to one decode instance over the network, and the decode instance generates the
rest. This is how DistServe and Splitwise deploy: prefill and decode no longer share a batch, so
long prompts stop stretching the decode steps, at the price of moving every prompt's KV cache.

Placement is round-robin in arrival order on both sides (request ``k`` of the run goes to prefill
instance ``k mod P`` and decode instance ``k mod D``): a global scheduler with equal instances and no
load information, stated rather than tuned. Each instance batches on its own (workloads/batching.py)
with the records of its own nodes.

Timing, per request: the prefill instance finishes its prompt at ``t_p`` (the end of the pass that
prefills its last prompt token); the KV transfer starts then, off the prefill instance's critical path
(the instance goes on with its next pass), and lands at ``t_p + t_kv``. The first token reaches the
user with the KV cache, so TTFT = ``t_p + t_kv - arrival``; the decode instance takes the request in
from that moment. ``t_kv`` is the emulated time of the transfer records of
:func:`~nicemu.workloads.traffic.kv_transfer_records` (every rank's shard to the rank in the same
position, all at once), the slowest of them when PP gives two shard sizes. Transfers of different
requests do not slow each other (each call starts on an idle fabric, docs/model.md §8).

Both executors run the same sequence of calls on every rank (prefill instances one after another,
then every transfer, then the decode instances), so the MPI executor moves the KV bytes for real and
the metrics equal the model executor's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nicemu.workloads.batching import Batcher, BatchingConfig, BatchingResult, IterationLog, RequestTiming
from nicemu.workloads.iteration_time import CommCost, IterationCost
from nicemu.workloads.kv_memory import rejection
from nicemu.workloads.requests import Request
from nicemu.workloads.traffic import TrafficRecord

#: times the KV records of one request: (records) -> one cost per record
KvTimeFn = Callable[[list[TrafficRecord]], list[CommCost]]


@dataclass
class Disaggregated:
    """A disaggregated run: every request's merged timing, and what each side did."""

    result: BatchingResult                 # per request: arrival, tokens (first one at KV landing)
    costs: list[IterationCost]             # every instance's iterations, prefill instances first
    prefill: list[BatchingResult]
    decode: list[BatchingResult]
    prefill_done_us: dict[int, float] = field(default_factory=dict)   # request id -> end of its prefill
    kv_us: dict[int, float] = field(default_factory=dict)             # request id -> its KV transfer
    kv_bytes: dict[int, int] = field(default_factory=dict)            # request id -> bytes moved (all shards)
    placement: dict[int, tuple[int, int]] = field(default_factory=dict)   # request id -> (prefill, decode)

    def split_ms(self) -> dict[str, float]:
        """Where a mean request's time went, in ms: queued and served on the prefill side, the KV
        transfer, queued and served on the decode side (they add up to the mean end-to-end latency)."""
        parts = dict.fromkeys(("prefill queue", "prefill", "KV transfer", "decode queue", "decode"), 0.0)
        for side, res_list in (("prefill", self.prefill), ("decode", self.decode)):
            for res in res_list:
                for r in res.requests:
                    if r.admitted_iteration is None:        # one output token: nothing to decode
                        continue
                    s = res.iterations[r.admitted_iteration].start_us
                    parts[f"{side} queue"] += s - r.arrival_us
                    parts[side] += r.token_us[0 if side == "prefill" else -1] - s
        parts["KV transfer"] = sum(self.kv_us.values())
        n = len(self.kv_us) or 1                             # the requests served
        return {k: v / n / 1e3 for k, v in parts.items()}


def place(requests: Sequence[Request], prefill: int, decode: int) -> dict[int, tuple[int, int]]:
    """Request id -> (prefill instance, decode instance): round-robin in arrival order."""
    order = sorted(requests, key=lambda r: (r.arrival_us, r.id))
    return {r.id: (k % prefill, k % decode) for k, r in enumerate(order)}


def serve_disaggregated(requests: Sequence[Request], prefill: int, decode: int,
                        timer_for: Callable[[int], Callable],
                        kv_records: Callable[[int, int, int], list[TrafficRecord]], kv_time: KvTimeFn,
                        config: BatchingConfig | None = None,
                        kv_extra: dict[int, float] | None = None) -> Disaggregated:
    """Serve ``requests`` on ``prefill`` + ``decode`` instances (see the module docstring).

    ``timer_for(instance)`` gives the duration callback of one instance (an ``IterationTimer`` on its
    nodes; instances ``0 .. prefill-1`` prefill, the rest decode); ``kv_records(prompt, source, target)``
    the transfer records of one request; ``kv_time(records)`` their costs. ``kv_extra``: time added to a
    request's transfer before the decode instance takes it in, by request id (``serve --fabric shared``
    re-forming its batches, workloads/serve_fabric.py); ``kv_us`` stays the transfer's own time.
    """
    plan = config.kv if config is not None else None
    rejected = {r.id: why for r in requests
                if plan is not None and (why := rejection(plan, r.input_tokens, r.output_tokens)) is not None}
    everyone, requests = requests, [r for r in requests if r.id not in rejected]   # the rejected never run
    where = place(requests, prefill, decode)
    timers = {}
    pre_results: list[BatchingResult] = []
    for i in range(prefill):
        mine = [Request(r.id, r.arrival_us, r.input_tokens, 1, r.cached_tokens) for r in requests
                if where[r.id][0] == i]
        timers[i] = timer_for(i)
        pre_results.append(Batcher(config).run(mine, timers[i]))
    done_us = {r.id: r.token_us[0] for res in pre_results for r in res.requests}
    kv_us: dict[int, float] = {}
    kv_bytes: dict[int, int] = {}
    memo: dict[tuple[int, int, int], tuple[float, int]] = {}
    for r in sorted(requests, key=lambda r: (done_us[r.id], r.id)):
        src, dst = where[r.id][0], prefill + where[r.id][1]
        k = (r.input_tokens, src, dst)
        if k not in memo:
            recs = kv_records(r.input_tokens, src, dst)
            costs = kv_time(recs)
            memo[k] = (max(c.emulated_us for c in costs), sum(rec.bytes * (len(rec.nodes) // 2) for rec in recs))
        kv_us[r.id], kv_bytes[r.id] = memo[k]
    dec_results: list[BatchingResult] = []
    for j in range(decode):
        mine = [Request(r.id, done_us[r.id] + kv_us[r.id] + (kv_extra or {}).get(r.id, 0.0), r.input_tokens,
                        r.output_tokens) for r in requests if where[r.id][1] == j]
        timers[prefill + j] = timer_for(prefill + j)
        dec_results.append(Batcher(config).run(mine, timers[prefill + j], prefilled=True))
    decoded = {r.id: r for res in dec_results for r in res.requests}
    prefilled = {r.id: r for res in pre_results for r in res.requests}
    merged = []
    for r in everyone:
        if r.id in rejected:
            merged.append(RequestTiming(r.id, r.arrival_us, r.input_tokens, r.output_tokens, rejected=rejected[r.id]))
            continue
        d, p = decoded[r.id], prefilled[r.id]
        merged.append(RequestTiming(r.id, r.arrival_us, r.input_tokens, r.output_tokens, list(d.token_us),
                                    r.input_tokens, None, preemptions=p.preemptions + d.preemptions,
                                    queue_us=p.queue_us + d.queue_us))
    logs: list[IterationLog] = [it for res in pre_results + dec_results for it in res.iterations]
    costs = [c for i in sorted(timers) for c in timers[i].costs]
    return Disaggregated(BatchingResult(merged, logs, plan), costs, pre_results, dec_results, done_us, kv_us, kv_bytes,
                         where)
