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
  An iteration that swaps KV blocks (``--preempt swap``) starts with a ``KV swap`` event: the batcher
  adds the swap to the iteration before the pass, so the pass is laid out after it. One that restores
  reused prefixes (``--prefix-reuse``) ends with a ``KV restore`` event: the restore overlaps the pass,
  and the event is the time it adds to it (``restore_us``), after the pass's compute and collectives.
* one track per traced request (the first ``--trace-requests`` requests, 200 by default): ``queued``
  (arrival to the start of the iteration that admits it), ``prefill`` (to its first token, over as
  many iterations as its chunks take) and one ``decode`` event per later output token (the iteration
  that produced it).

Iterations are traced from the start until the last traced request finishes (``--trace-requests 0``:
no request tracks, every iteration). Nothing is recorded unless ``--trace`` is given.

A disaggregated run (``--disaggregated P:D``) has one iteration track per instance (tid 1 + instance,
prefill instances first), each traced until the traced requests placed on it are done there and
nesting collectives in its own first ``--trace-iterations`` iterations; a request's track shows
``queued`` and ``prefill`` on its prefill instance, ``KV transfer`` from the end of the prefill to the
landing of its KV cache on the decode instance, then ``queued`` and ``decode`` there.

With ``--replicas R`` every replica is a process of its own (``algo · replica k``, pid ``algo's + k``),
traced as above with the traced requests it serves; a replica that serves none of them traces no
iteration unless ``--trace-requests 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nicemu.workloads.batching import BatchingResult, Iteration
from nicemu.workloads.compute import IterationCompute
from nicemu.workloads.disaggregation import Disaggregated
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


class _Instance:
    """One instance's iteration track: which traced requests still have tokens to come on it."""

    def __init__(self, tid: int, label: str, left: dict[int, int]) -> None:
        self.tid, self.label, self.left = tid, label, left
        self.open = sum(1 for n in left.values() if n > 0)
        self.active = True
        self.iterations = 0


class ServeTracer:
    """Collects one algorithm's trace events while serve times it (hook :meth:`hook` of each instance into
    its IterationTimer, then call :meth:`finish` with the batching result).

    ``placement`` (request id -> (prefill instance, decode instance)) and ``instances`` (P, D) make it
    trace a disaggregated run: one iteration track per instance, each traced until the traced requests
    placed on it are done there (none when none of them is), and the first ``nested_iterations`` of each
    instance with their collectives. ``trace_idle`` False: with no traced request at all (a replica that
    serves none of them, ``--replicas``), no iteration is traced either. ``first_instance``: the run's
    number of the tracer's first instance (replica ``k`` of P:D starts at ``k(P+D)``), for the KV transfer's
    ``source_instance`` and ``target_instance``."""

    def __init__(self, pid: int, algo: str, traced_ids: Sequence[int], outputs: Sequence[int],
                 nested_iterations: int = DEFAULT_TRACE_ITERATIONS,
                 placement: Mapping[int, tuple[int, int]] | None = None, instances: tuple[int, int] = (0, 0),
                 trace_idle: bool = True, first_instance: int = 0) -> None:
        self.pid, self.algo = pid, algo
        self.nested_iterations = nested_iterations
        self.traced = list(traced_ids)
        self.placement = placement
        self.prefill_instances = prefill_instances = instances[0]
        self.first_instance = first_instance      # the run's number of this tracer's instance 0 (--replicas)
        if placement is None:
            track = self._instances = {0: _Instance(ITERATION_TID, "", dict(zip(traced_ids, outputs)))}
            track[0].active = bool(traced_ids) or trace_idle
        else:
            self._instances = {}
            for i in range(prefill_instances + instances[1]):
                side = "prefill" if i < prefill_instances else "decode"
                k = i if i < prefill_instances else i - prefill_instances
                # a prefill instance owes each request its first token, a decode instance the rest
                left = {r: (1 if side == "prefill" else n - 1) for r, n in zip(traced_ids, outputs)
                        if placement[r][0 if side == "prefill" else 1] == k}
                track = self._instances[i] = _Instance(ITERATION_TID + i, f"{side} {k}", left)
                # traced until its own requests are done
                track.active = track.open > 0 or (not traced_ids and trace_idle)
        self.events: list[dict] = []

    @property
    def iterations(self) -> int:
        """Iterations traced, over every instance."""
        return sum(t.iterations for t in self._instances.values())

    def hook(self, instance: int = 0) -> Callable:
        """The IterationHook of one instance (0 for a colocated run)."""
        track = self._instances[instance]

        def on_iteration(it: Iteration, compute: IterationCompute, comm_us: float, records: list[TrafficRecord],
                         record_costs: Callable[[], list[CommCost]], restore_us: float = 0.0) -> None:
            self._iteration(track, it, compute, comm_us, records, record_costs, restore_us)
        return on_iteration

    def _iteration(self, track: _Instance, it: Iteration, compute: IterationCompute, comm_us: float,
                   records: list[TrafficRecord], record_costs: Callable[[], list[CommCost]],
                   restore_us: float) -> None:
        """Record one iteration and, among the instance's first ``nested_iterations``, its collectives:
        the KV swap before the pass, the pass (compute and collectives), then what the KV restore adds."""
        if not track.active:
            return
        track.iterations += 1
        pid, tid = self.pid, track.tid
        start = it.start_us
        swap_us = it.swap_us
        swap_in_us = it.swap_in_us
        end = start + ((compute.total_us + comm_us + restore_us + swap_in_us) + swap_us)   # as the batcher adds it
        batch = it.batch
        args = {"iteration": it.index, "phase": batch.phase, "prefill_tokens": batch.prefill_tokens,
                "decodes": len(batch.decodes), "tokens": batch.tokens, "compute_us": compute.total_us,
                "comm_us": comm_us, "collectives": len(records)}
        if swap_us:
            args["swap_us"] = swap_us
        if restore_us:
            args["restore_us"] = restore_us
        if swap_in_us:
            args["swap_in_us"] = swap_in_us
        if track.label:
            args["instance"] = track.label
        self.events.append(_span(f"iteration · {batch.phase}", pid, tid, start, end, args, "iteration"))
        if track.iterations > self.nested_iterations:
            self._count_tokens(track, it)
            return
        t0 = start + swap_us
        if swap_us:
            self.events.append(_span("KV swap", pid, tid, start, t0, {"swap_us": swap_us}, "kv"))
        if restore_us:     # the restore overlaps the pass; the span is the time it adds after the pass
            self.events.append(_span("KV restore", pid, tid, t0 + (compute.total_us + comm_us), end - swap_in_us, {
                "restore_us": restore_us, "requests": len(batch.restores), "tokens": batch.restore_tokens}, "kv"))
        if swap_in_us:     # swap-ins through the pass (--kv-restore partial): the time they add, last
            self.events.append(_span("KV swap-in", pid, tid, end - swap_in_us, end, {
                "swap_in_us": swap_in_us, "requests": len(batch.swap_ins), "tokens": batch.swap_in_tokens}, "kv"))
        costs = record_costs()
        segments = _compute_segments(compute)
        t = t0 + compute.embedding.time_us
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
        self._count_tokens(track, it)

    def _count_tokens(self, track: _Instance, it: Iteration) -> None:
        """Count the traced requests' tokens; stop the track once the last one has finished on it."""
        if not track.open:
            return
        left = track.left
        for d in it.batch.decodes:
            if d.request_id in left:
                self._done_one(track, d.request_id)
        for c in it.batch.prefills:
            if c.completes_prompt and c.request_id in left:
                self._done_one(track, c.request_id)
        track.active = track.open > 0

    @staticmethod
    def _done_one(track: _Instance, request_id: int) -> None:
        track.left[request_id] -= 1
        if track.left[request_id] == 0:
            track.open -= 1

    def finish(self, result: BatchingResult, disaggregated: Disaggregated | None = None) -> list[dict]:
        """The process's events: metadata, the iterations recorded, and the traced requests' tracks
        (``disaggregated``: the run's per-instance results, placement and KV transfers)."""
        pid = self.pid
        out = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{self.algo}"}},
               {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}]
        for track in self._instances.values():
            label = f"{track.label} iterations" if track.label else "iterations"
            out += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": track.tid,
                     "args": {"name": f"{label} (nested: collectives)"}},
                    {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": track.tid,
                     "args": {"sort_index": track.tid}}]
        first_tid = max(FIRST_REQUEST_TID, ITERATION_TID + len(self._instances))
        wanted = set(self.traced)
        chosen = [r for r in result.requests if r.id in wanted and r.rejected is None]
        if disaggregated is None:
            its = _Iterations(result)
        else:
            self._sides = {side: ([_Iterations(res) for res in results],
                                  [{q.id: q for q in res.requests} for res in results])
                           for side, results in (("prefill", disaggregated.prefill), ("decode", disaggregated.decode))}
        for n, r in enumerate(chosen):
            tid = first_tid + n
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                        "args": {"name": f"request {r.id}"}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
            info = {"request": r.id, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens}
            if disaggregated is None:
                admitted = its.start(r.admitted_iteration)
                out.append(_span("queued", pid, tid, r.arrival_us, admitted, info, "request"))
                out.append(_span("prefill", pid, tid, admitted, r.token_us[0],
                                 {**info, "ttft_us": r.token_us[0] - r.arrival_us}, "request"))
                out += its.decodes(pid, tid, r)
            else:
                out += self._disaggregated_request(disaggregated, pid, tid, r, info)
        return out + self.events

    def _disaggregated_request(self, dis: Disaggregated, pid: int, tid: int, r, info: dict) -> list[dict]:
        """queued and prefill on the prefill instance, the KV transfer, queued and decode on the decode one."""
        i, j = dis.placement[r.id]
        (pre_its, pre_reqs), (dec_its, dec_reqs) = self._sides["prefill"], self._sides["decode"]
        pre_its, dec_its, p, d = pre_its[i], dec_its[j], pre_reqs[i][r.id], dec_reqs[j][r.id]
        admitted = pre_its.start(p.admitted_iteration)
        done, landed = dis.prefill_done_us[r.id], d.arrival_us
        out = [_span("queued", pid, tid, r.arrival_us, admitted, {**info, "instance": f"prefill {i}"}, "request"),
               _span("prefill", pid, tid, admitted, p.token_us[0], {**info, "instance": f"prefill {i}"}, "request"),
               _span("KV transfer", pid, tid, done, landed, {
                   "request": r.id, "bytes": dis.kv_bytes[r.id], "source": f"prefill {i}", "target": f"decode {j}",
                   "source_instance": self.first_instance + i,
                   "target_instance": self.first_instance + self.prefill_instances + j,
                   "kv_transfer_us": dis.kv_us[r.id], "ttft_us": landed - r.arrival_us}, "request")]
        if d.admitted_iteration is not None:          # more than one output token: decoded there
            out.append(_span("queued", pid, tid, landed, dec_its.start(d.admitted_iteration),
                             {**info, "instance": f"decode {j}"}, "request"))
            out += dec_its.decodes(pid, tid, d)
        return out


class _Iterations:
    """One batching run's iteration starts and ends, to find the iteration that produced a token."""

    def __init__(self, result: BatchingResult) -> None:
        self.starts = np.array([it.start_us for it in result.iterations])
        self.ends = np.array([it.start_us + it.duration_us for it in result.iterations])

    def start(self, index: int) -> float:
        return float(self.starts[index])

    def decodes(self, pid: int, tid: int, r) -> list[dict]:
        """One ``decode`` span per output token after the first: the iteration that produced it."""
        idx = np.searchsorted(self.ends, r.token_us[1:])
        return [_span("decode", pid, tid, float(self.starts[i]), r.token_us[k],
                      {"request": r.id, "token": k, "iteration": i}, "request")
                for k, i in enumerate(idx.tolist(), start=1)]


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
