"""``nicemu serve --trace FILE.json``: a Chrome trace (Perfetto) of a serving run, one process per algorithm.

Timestamps are emulated microseconds from the run's time 0, so the algorithms' processes line up side
by side. In each process:

* track ``iterations``: one complete event per engine iteration (a forward pass: its phase, tokens,
  compute and communication time) and, for the first ``--trace-iterations`` iterations (500 by
  default; a large model issues 2 per layer per iteration), nested inside it on the same track, one event
  per collective or transfer the iteration issued (``TP allreduce · ring``, with bytes, emulated_us
  and wire_bytes).
  The model charges ``compute + sum(collectives)`` with nothing overlapped; the nested events are laid
  out in the order the forward pass issues them, each after the compute that precedes it (the embedding
  lookup before the embedding AllReduce, a layer's attention before ``attn_out``, its MLP before
  ``mlp_out``, the MoE router before ``dispatch`` and the experts before ``combine``; the LM head last).
  The gaps between them are compute.
* one track per traced request (the first ``--trace-requests`` requests, 200 by default): ``queued``
  (arrival to the start of the iteration that admits it), ``prefill`` (to its first token, over as
  many iterations as its chunks take) and one ``decode`` event per later output token (the iteration
  that produced it).

Iterations are traced from the start until the last traced request finishes (``--trace-requests 0``:
no request tracks, every iteration). Nothing is recorded unless ``--trace`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nicemu.workloads.batching import BatchingResult, Iteration
from nicemu.workloads.compute import IterationCompute
from nicemu.workloads.iteration_time import CommCost
from nicemu.workloads.traffic import COMM_KINDS, TrafficRecord

DEFAULT_TRACE_REQUESTS = 200
DEFAULT_TRACE_ITERATIONS = 500
ITERATION_TID = 1
FIRST_REQUEST_TID = 10
#: the operators of a layer that run before its attn_out AllReduce, and before the MoE dispatch
ATTENTION_OPS = {"qkv", "attention_prefill", "attention_decode", "o_proj"}
ROUTER_OPS = {"router"}


def _us(x: float) -> float:
    """Microseconds to the nanosecond: shorter files, and rounding keeps the order of times."""
    return round(x, 3)


def _span(name: str, pid: int, tid: int, start: float, end: float, args: dict, cat: str) -> dict:
    ts = _us(start)
    return {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts,
            "dur": max(round(_us(end) - ts, 3), 0.0), "args": args}


def _compute_segments(compute: IterationCompute) -> tuple[float, float, float]:
    """(attention, router, rest) microseconds of one layer, in the order the layer runs them."""
    attn = sum(op.time_us for op in compute.layer_ops if op.name in ATTENTION_OPS)
    router = sum(op.time_us for op in compute.layer_ops if op.name in ROUTER_OPS)
    return attn, router, compute.layer_us - attn - router


class ServeTracer:
    """Collects one algorithm's trace events while serve times it (hook :meth:`iteration` into the
    IterationTimer, then call :meth:`finish` with the batching result)."""

    def __init__(self, pid: int, algo: str, traced_ids: Sequence[int], outputs: Sequence[int],
                 nested_iterations: int = DEFAULT_TRACE_ITERATIONS) -> None:
        self.pid, self.algo = pid, algo
        self.nested_iterations = nested_iterations
        self.traced = list(traced_ids)
        self._left = {i: n for i, n in zip(traced_ids, outputs)}   # output tokens still to come
        self._open = sum(1 for n in self._left.values() if n > 0)
        self.active = True
        self.events: list[dict] = []
        self.iterations = 0

    def iteration(self, it: Iteration, compute: IterationCompute, comm_us: float, records: list[TrafficRecord],
                  record_costs: Callable[[], list[CommCost]]) -> None:
        """Record one iteration and, among the first ``nested_iterations``, its collectives (an IterationHook)."""
        if not self.active:
            return
        self.iterations += 1
        pid, tid = self.pid, ITERATION_TID
        start = it.start_us
        end = start + (compute.total_us + comm_us)     # as the batcher adds it: the same float
        batch = it.batch
        self.events.append(_span(f"iteration · {batch.phase}", pid, tid, start, end, {
            "iteration": it.index, "phase": batch.phase, "prefill_tokens": batch.prefill_tokens,
            "decodes": len(batch.decodes), "tokens": batch.tokens, "compute_us": compute.total_us,
            "comm_us": comm_us, "collectives": len(records)}, "iteration"))
        if self.iterations > self.nested_iterations:
            self._count_tokens(it)
            return
        costs = record_costs()
        segments = _compute_segments(compute)
        t = start + compute.embedding.time_us
        charged = 0                # layer segments on the clock: layer l's are 3l (attention), 3l+1, 3l+2
        for rec, cost in zip(records, costs):
            if rec.what == "attn_out":
                due = 3 * rec.layer + 1
            elif rec.what == "dispatch":
                due = 3 * rec.layer + 2
            elif rec.layer >= 0:                 # mlp_out, combine, activations: after the whole layer
                due = 3 * rec.layer + 3
            elif rec.what == "kv_cache":         # issued once the layers are done
                due = 3 * compute.layers
            else:                                # the embedding AllReduce: right after the lookup
                due = 0
            while charged < due:
                t += segments[charged % 3]
                charged += 1
            kind = COMM_KINDS.get(rec.what, rec.collective)
            s, t = t, min(t + cost.emulated_us, end)
            self.events.append(_span(f"{kind} · {rec.algo}", pid, tid, s, t, {
                "what": rec.what, "layer": rec.layer, "bytes": rec.bytes, "emulated_us": cost.emulated_us,
                "wire_bytes": cost.wire_bytes}, "collective"))
        self._count_tokens(it)

    def _count_tokens(self, it: Iteration) -> None:
        """Count the traced requests' tokens; stop once the last one has finished."""
        if not self._open:
            return
        left = self._left
        for d in it.batch.decodes:
            if d.request_id in left:
                self._done_one(d.request_id)
        for c in it.batch.prefills:
            if c.completes_prompt and c.request_id in left:
                self._done_one(c.request_id)
        self.active = self._open > 0

    def _done_one(self, request_id: int) -> None:
        self._left[request_id] -= 1
        if self._left[request_id] == 0:
            self._open -= 1

    def finish(self, result: BatchingResult) -> list[dict]:
        """The process's events: metadata, the iterations recorded, and the traced requests' tracks."""
        pid = self.pid
        out = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{self.algo}"}},
               {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}},
               {"ph": "M", "name": "thread_name", "pid": pid, "tid": ITERATION_TID,
                "args": {"name": "iterations (nested: collectives)"}},
               {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": ITERATION_TID,
                "args": {"sort_index": ITERATION_TID}}]
        its = result.iterations
        starts = np.array([it.start_us for it in its])
        ends = np.array([it.start_us + it.duration_us for it in its])
        wanted = set(self.traced)
        for n, r in enumerate(r for r in result.requests if r.id in wanted and r.rejected is None):
            tid = FIRST_REQUEST_TID + n
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                        "args": {"name": f"request {r.id}"}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
            admitted = float(starts[r.admitted_iteration])
            info = {"request": r.id, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens}
            out.append(_span("queued", pid, tid, r.arrival_us, admitted, info, "request"))
            out.append(_span("prefill", pid, tid, admitted, r.token_us[0],
                             {**info, "ttft_us": r.token_us[0] - r.arrival_us}, "request"))
            idx = np.searchsorted(ends, r.token_us[1:])
            for k, i in enumerate(idx.tolist(), start=1):
                out.append(_span("decode", pid, tid, float(starts[i]), r.token_us[k],
                                 {"request": r.id, "token": k, "iteration": i}, "request"))
        return out + self.events


def trace_ids(requests: Sequence, limit: int) -> tuple[list[int], list[int]]:
    """Ids and output lengths of the first ``limit`` requests (in arrival order)."""
    chosen = sorted(requests, key=lambda r: (r.arrival_us, r.id))[:limit]
    return [r.id for r in chosen], [r.output_tokens for r in chosen]


def is_arrivals_csv(path: str) -> bool:
    """A file name that ends in .csv, or a file whose first line is an Azure-format header."""
    if path.lower().endswith(".csv"):
        return True
    try:
        with open(path, errors="replace") as f:
            head = f.readline(4096)
    except OSError:
        return False
    return "ContextTokens" in head or head.upper().startswith("TIMESTAMP")
