"""Serving metrics from a finished serving run: TTFT, TPOT, end-to-end latency, throughput.

Definitions (as in vLLM's ``benchmark_serving``), per request:

- TTFT = first token time - arrival;
- TPOT = (last token time - first token time) / (output tokens - 1), the mean
  gap between output tokens after the first; undefined for 1-token outputs,
  which are left out of TPOT statistics;
- ITL = every gap between consecutive output tokens;
- end-to-end latency = last token time - arrival.

Throughput divides by the makespan, from the first arrival to the last token.
Percentiles use numpy's default (linear interpolation), so results are
deterministic. Times are emulated microseconds inside, milliseconds out.
"""

from __future__ import annotations

import numpy as np

from nicemu.errors import WorkloadError
from nicemu.workloads.batching import BatchingResult, RequestTiming
from nicemu.workloads.iteration_time import IterationCost
from nicemu.workloads.traffic import COMM_KINDS


def ttft_us(r: RequestTiming) -> float:
    return r.token_us[0] - r.arrival_us


def tpot_us(r: RequestTiming) -> float | None:
    """Mean time per output token after the first; None for a single-token output."""
    if len(r.token_us) < 2:
        return None
    return (r.token_us[-1] - r.token_us[0]) / (len(r.token_us) - 1)


def itl_us(r: RequestTiming) -> list[float]:
    """Inter-token latencies."""
    return np.diff(r.token_us).tolist()


def e2e_us(r: RequestTiming) -> float:
    return r.token_us[-1] - r.arrival_us


def stats(values: list[float] | np.ndarray) -> dict[str, float | None]:
    """mean, p50 and p99 (None when there are no values)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def _finished(result: BatchingResult) -> list[RequestTiming]:
    """The served requests (rejected ones left out); every one must have finished."""
    if not result.requests:
        raise WorkloadError("no requests to summarise")
    unfinished = [r.id for r in result.requests if not r.done and r.rejected is None]
    if unfinished:
        raise WorkloadError(f"{len(unfinished)} request(s) did not finish (first: {unfinished[0]})")
    return [r for r in result.requests if r.rejected is None]


def kv_summary(result: BatchingResult) -> dict:
    """KV-cache keys of a record: blocks and capacity, use (peak, and mean weighted by iteration time),
    preemptions, blocks and bytes swapped (out and in, every accelerator's shard), rejected requests and
    queue-time percentiles (ms, waiting before admission and after each preemption)."""
    plan, its = result.kv, result.iterations
    served = [r for r in result.requests if r.rejected is None]
    queue = np.array([r.queue_us for r in served], dtype=float) / 1e3
    out: dict = {"rejected": sum(r.rejected is not None for r in result.requests),
                 "preemptions": sum(r.preemptions for r in result.requests)}
    for q in (50, 90, 99):
        out[f"queue_ms_p{q}"] = float(np.percentile(queue, q)) if queue.size else None
    out["queue_ms_mean"] = float(queue.mean()) if queue.size else None
    swapped = sum(log.swapped_blocks for log in its)
    total_us = sum(log.duration_us for log in its)
    out.update(kv_blocks=plan.blocks if plan else None, kv_block_tokens=plan.block_tokens if plan else None,
               kv_capacity_tokens=plan.capacity_tokens if plan else None,
               kv_peak_fraction=max((log.kv_blocks_used for log in its), default=0) / plan.blocks if plan else None,
               kv_mean_fraction=(sum(log.kv_blocks_used * log.duration_us for log in its) / total_us / plan.blocks
                                 if plan and total_us > 0 else None),
               swapped_blocks=swapped, swapped_bytes=swapped * plan.instance_block_bytes if plan else 0,
               swap_ms=sum(log.swap_us for log in its) / 1e3)
    return out


def summarize(result: BatchingResult, costs: list[IterationCost] | None = None, one_timeline: bool = True) -> dict:
    """One record of serving metrics (ms, tokens/s); with ``costs`` also the communication share.

    Keys: requests, ttft_ms_{mean,p50,p99}, tpot_ms_*, itl_ms_*, e2e_ms_*,
    throughput_tok_s (output tokens/s), total_tok_s (input + output),
    requests_s, duration_s, iterations, and with ``costs``: comm_share (of
    the summed iteration time), host_comm_ms (host CPU time spent in
    communication, 0 on the NIC paths) and e2e_split_ms (:func:`time_split`;
    None unless ``costs`` are the result's iterations, as the batcher made them, on ``one_timeline``:
    False for the merged results of several instances, whose iterations overlap in time).
    """
    reqs = _finished(result)
    out: dict = {"requests": len(reqs)}
    if not reqs:
        return out | {"throughput_tok_s": None, "total_tok_s": None, "requests_s": None, "duration_s": 0.0,
                      "iterations": len(result.iterations)} | {
            f"{n}_ms_{k}": None for n in ("ttft", "tpot", "itl", "e2e") for k in ("mean", "p50", "p99")} | (
            {"comm_share": 0.0, "host_comm_ms": 0.0, "e2e_split_ms": None} if costs is not None else {})
    series = {
        "ttft": [ttft_us(r) for r in reqs],
        "tpot": [t for r in reqs if (t := tpot_us(r)) is not None],
        "itl": [g for r in reqs for g in itl_us(r)],
        "e2e": [e2e_us(r) for r in reqs],
    }
    for name, values in series.items():
        for key, value in stats(values).items():
            out[f"{name}_ms_{key}"] = None if value is None else value / 1e3
    start_us = min(r.arrival_us for r in reqs)
    end_us = max(r.token_us[-1] for r in reqs)
    duration_s = (end_us - start_us) / 1e6
    out_tokens = sum(r.output_tokens for r in reqs)
    in_tokens = sum(r.input_tokens for r in reqs)

    def rate(n: int) -> float | None:
        return n / duration_s if duration_s > 0 else None

    out.update(throughput_tok_s=rate(out_tokens), total_tok_s=rate(in_tokens + out_tokens),
               requests_s=rate(len(reqs)), duration_s=duration_s, iterations=len(result.iterations))
    if costs is not None:
        total = sum(c.total_us for c in costs)
        out["comm_share"] = sum(c.comm_us for c in costs) / total if total > 0 else 0.0
        out["host_comm_ms"] = sum(c.host_comm_us for c in costs) / 1e3
        timed = (one_timeline and len(costs) == len(result.iterations)
                 and all(r.admitted_iteration is not None for r in reqs))
        out["e2e_split_ms"] = time_split(result, costs) if timed else None
    return out


def time_split(result: BatchingResult, costs: list[IterationCost]) -> dict[str, float]:
    """Where a mean request's end-to-end time went, in ms: ``queue`` (arrival to the start of the iteration
    that admits it), ``compute``, and communication per kind (:data:`COMM_KINDS`), summed over the
    iterations from admission to its last token, and ``kv_swap`` (PCIe time of swapped KV blocks) when
    there is any. Iterations follow each other back to back while a request is in the system, so the
    parts add up to the mean end-to-end latency; time a preempted request waits again is counted in
    the parts of the iterations it waits through."""
    reqs = _finished(result)
    its = result.iterations
    kinds = list(dict.fromkeys(COMM_KINDS[w] for c in costs for w in c.comm_by_what))
    kinds.sort(key=list(dict.fromkeys(COMM_KINDS.values())).index)
    if any(log.swap_us for log in its):
        kinds.append("kv_swap")      # PCIe time of swapped KV blocks: in the iterations, not in the costs
    col = {k: i + 1 for i, k in enumerate(kinds)}
    parts = np.zeros((len(its) + 1, len(kinds) + 1))
    if "kv_swap" in col:
        parts[1:, col["kv_swap"]] = [log.swap_us for log in its]
    for c in costs:
        row = parts[c.index + 1]
        row[0] = c.compute_us
        for what, us in c.comm_by_what.items():
            row[col[COMM_KINDS[what]]] += us
    prefix = np.cumsum(parts, axis=0)
    starts = np.array([it.start_us for it in its])
    ends = np.array([it.start_us + it.duration_us for it in its])
    first = np.array([r.admitted_iteration for r in reqs])
    last = np.searchsorted(ends, [r.token_us[-1] for r in reqs])
    spent = (prefix[last + 1] - prefix[first]).mean(axis=0)
    queue = float(np.mean(starts[first] - np.array([r.arrival_us for r in reqs])))
    return {"queue": queue / 1e3, "compute": float(spent[0]) / 1e3,
            **{k: float(spent[col[k]]) / 1e3 for k in kinds}}


def request_rows(result: BatchingResult) -> list[dict]:
    """One row per request for ``--csv``: id, arrival_ms, tokens, ttft_ms, tpot_ms, e2e_ms, queue_ms,
    preemptions, and ``rejected`` (empty, or why the request could never be served; its times are then
    empty too)."""
    _finished(result)
    rows = []
    for r in result.requests:
        served = r.rejected is None
        tpot = tpot_us(r) if served else None
        rows.append({"id": r.id, "arrival_ms": r.arrival_us / 1e3, "input_tokens": r.input_tokens,
                     "output_tokens": r.output_tokens, "ttft_ms": ttft_us(r) / 1e3 if served else None,
                     "tpot_ms": None if tpot is None else tpot / 1e3, "e2e_ms": e2e_us(r) / 1e3 if served else None,
                     "queue_ms": r.queue_us / 1e3 if served else None, "preemptions": r.preemptions,
                     "rejected": r.rejected or ""})
    return rows


def slo_metrics(result: BatchingResult, ttft_ms: float | None, tpot_ms: float | None) -> dict:
    """Service-level objectives, as DistServe and Splitwise report them: ``slo_attainment`` is the share of
    requests whose TTFT and TPOT both meet their objective (a one-token output has no TPOT and meets that
    one), ``goodput_req_s`` those requests per second of the run's makespan. Empty without objectives."""
    if ttft_ms is None and tpot_ms is None:
        return {}
    reqs = _finished(result)
    ok = 0
    for r in reqs:
        tpot = tpot_us(r)
        ok += ((ttft_ms is None or ttft_us(r) <= ttft_ms * 1e3)
               and (tpot_ms is None or tpot is None or tpot <= tpot_ms * 1e3))
    span_s = (max(r.token_us[-1] for r in reqs) - min(r.arrival_us for r in reqs)) / 1e6
    return {"slo_ttft_ms": ttft_ms, "slo_tpot_ms": tpot_ms, "slo_attainment": ok / len(reqs),
            "goodput_req_s": ok / span_s if span_s > 0 else None}
