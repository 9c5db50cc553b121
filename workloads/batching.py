"""Continuous batching with chunked prefill, in the style of vLLM's scheduler.

Each iteration (one forward pass) is filled under a token budget, in this order:

1. every running request that is decoding adds one token (decodes first, so
   time-per-output-token does not suffer from arriving prompts);
2. requests whose prompt is partly prefilled continue with a chunk of at most
   ``chunk_tokens`` tokens;
3. waiting requests are admitted first-come first-served, each with a first
   chunk (or its first decode, when it arrives with its prompt's KV cache
   from a prefill instance), while budget, ``max_running`` and the optional KV-cache capacity
   allow. A request that does not fit blocks the ones behind it (no skipping).

A request's first output token appears at the end of the iteration that
prefills its last prompt token; each later token at the end of one decode
iteration. The clock advances by the duration the caller's callback returns,
so the same batcher serves any compute and communication model. Given the
same requests and durations, the batches are identical on every run and rank.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nicemu.errors import WorkloadError
from nicemu.workloads.batch import Batch, Decode, PrefillChunk
from nicemu.workloads.requests import Request


@dataclass(frozen=True)
class BatchingConfig:
    token_budget: int = 2048          # tokens per iteration (vLLM max_num_batched_tokens)
    chunk_tokens: int = 512           # prefill tokens per request per iteration
    max_running: int = 256            # requests in the running batch (vLLM max_num_seqs)
    max_kv_tokens: int | None = None  # KV-cache capacity in tokens; a request reserves input + output

    def __post_init__(self) -> None:
        for key in ("token_budget", "chunk_tokens", "max_running"):
            if getattr(self, key) < 1:
                raise WorkloadError(f"batching {key} must be >= 1, got {getattr(self, key)}")
        if self.max_kv_tokens is not None and self.max_kv_tokens < 1:
            raise WorkloadError(f"batching max_kv_tokens must be >= 1, got {self.max_kv_tokens}")


@dataclass
class Iteration:
    """One forward pass as handed to the duration callback."""

    index: int
    start_us: float
    batch: Batch


@dataclass(frozen=True)
class IterationLog:
    """What the result keeps of an iteration (the full batch is only seen by the callback)."""

    index: int
    start_us: float
    duration_us: float
    phase: str
    prefill_tokens: int
    decodes: int

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decodes


@dataclass
class RequestTiming:
    """When each output token of one request appeared (emulated microseconds)."""

    id: int
    arrival_us: float
    input_tokens: int
    output_tokens: int
    token_us: list[float] = field(default_factory=list)
    prefilled: int = 0
    admitted_iteration: int | None = None   # the iteration that prefilled its first prompt chunk

    @property
    def first_token_us(self) -> float | None:
        return self.token_us[0] if self.token_us else None

    @property
    def finish_us(self) -> float | None:
        return self.token_us[-1] if self.done else None

    @property
    def done(self) -> bool:
        return len(self.token_us) >= self.output_tokens


@dataclass
class BatchingResult:
    requests: list[RequestTiming]
    iterations: list[IterationLog]

    @property
    def end_us(self) -> float:
        return self.iterations[-1].start_us + self.iterations[-1].duration_us if self.iterations else 0.0


DurationFn = Callable[[Iteration], float]


class Batcher:
    """Runs requests to completion, one iteration at a time; see the module docstring."""

    def __init__(self, config: BatchingConfig | None = None) -> None:
        self.config = config or BatchingConfig()

    def _check(self, requests: list[Request]) -> None:
        cap = self.config.max_kv_tokens
        for r in requests:
            if r.input_tokens < 1 or r.output_tokens < 1:
                raise WorkloadError(f"request {r.id}: input and output tokens must be >= 1")
            if cap is not None and r.input_tokens + r.output_tokens > cap:
                raise WorkloadError(f"request {r.id} needs {r.input_tokens + r.output_tokens} KV tokens, "
                                    f"more than the KV-cache capacity {cap}")

    def next_batch(self, waiting: deque[RequestTiming], running: list[RequestTiming]) -> Batch:
        """Fill one iteration (moves admitted requests from ``waiting`` to ``running``)."""
        cfg = self.config
        budget = cfg.token_budget
        decodes: list[Decode] = []
        prefills: list[PrefillChunk] = []
        for r in running:
            if r.prefilled == r.input_tokens and budget > 0:
                decodes.append(Decode(r.id, r.input_tokens + len(r.token_us) - 1))
                budget -= 1

        def chunk(r: RequestTiming) -> None:
            nonlocal budget
            n = min(r.input_tokens - r.prefilled, cfg.chunk_tokens, budget)
            prefills.append(PrefillChunk(r.id, n, r.prefilled, r.prefilled + n == r.input_tokens))
            budget -= n

        for r in running:
            if r.prefilled < r.input_tokens and budget > 0:
                chunk(r)
        reserved = sum(r.input_tokens + r.output_tokens for r in running)
        while waiting and budget > 0 and len(running) < cfg.max_running:
            r = waiting[0]
            need = r.input_tokens + r.output_tokens
            if cfg.max_kv_tokens is not None and reserved + need > cfg.max_kv_tokens:
                break
            waiting.popleft()
            running.append(r)
            reserved += need
            if r.prefilled == r.input_tokens:      # arrived with its prompt's KV (disaggregated decode)
                decodes.append(Decode(r.id, r.input_tokens + len(r.token_us) - 1))
                budget -= 1
            else:
                chunk(r)
        return Batch(tuple(prefills), tuple(decodes))

    def run(self, requests: list[Request], iteration_time_us: DurationFn, prefilled: bool = False) -> BatchingResult:
        """Serve every request; ``iteration_time_us(iteration)`` gives each forward pass's duration.

        ``prefilled``: the requests arrive with their prompt's KV cache and their first token (the
        decode instance of a disaggregated deployment): they only decode, from their arrival on."""
        self._check(requests)
        states = {r.id: RequestTiming(r.id, r.arrival_us, r.input_tokens, r.output_tokens) for r in requests}
        if prefilled:
            for st in states.values():
                st.prefilled, st.token_us = st.input_tokens, [st.arrival_us]
        if len(states) != len(requests):
            raise WorkloadError("request ids must be unique")
        pending = deque(sorted((s for s in states.values() if not s.done), key=lambda s: (s.arrival_us, s.id)))
        waiting: deque[RequestTiming] = deque()
        running: list[RequestTiming] = []
        logs: list[IterationLog] = []
        now_us = pending[0].arrival_us if pending else 0.0
        while pending or waiting or running:
            while pending and pending[0].arrival_us <= now_us:
                waiting.append(pending.popleft())
            if not waiting and not running:
                now_us = pending[0].arrival_us
                continue
            batch = self.next_batch(waiting, running)
            if not batch:
                raise WorkloadError(f"batching made no progress at {now_us} us; check BatchingConfig")
            it = Iteration(len(logs), now_us, batch)
            duration_us = float(iteration_time_us(it))
            if not (duration_us >= 0 and math.isfinite(duration_us)):
                raise WorkloadError(f"iteration {it.index}: duration {duration_us} us is not a finite value >= 0")
            now_us += duration_us
            logs.append(IterationLog(it.index, it.start_us, duration_us, batch.phase,
                                     batch.prefill_tokens, len(batch.decodes)))
            for ch in batch.prefills:
                r = states[ch.request_id]
                if r.admitted_iteration is None:
                    r.admitted_iteration = it.index
                r.prefilled += ch.tokens
                if ch.completes_prompt:
                    r.token_us.append(now_us)
            for d in batch.decodes:
                r = states[d.request_id]
                if r.admitted_iteration is None:
                    r.admitted_iteration = it.index
                r.token_us.append(now_us)
            running = [r for r in running if not r.done]
        return BatchingResult([states[r.id] for r in requests], logs)


def run_batching(requests: list[Request], iteration_time_us: DurationFn,
                 config: BatchingConfig | None = None) -> BatchingResult:
    """Shortcut for ``Batcher(config).run(requests, iteration_time_us)``."""
    return Batcher(config).run(requests, iteration_time_us)
