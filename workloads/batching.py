"""Continuous batching with chunked prefill, in the style of vLLM's scheduler.

Each iteration (one forward pass) is filled under a token budget, in this order:

1. every running request that is decoding adds one token (decodes first, so
   time-per-output-token does not suffer from arriving prompts);
2. requests whose prompt is partly prefilled continue with a chunk of at most
   ``chunk_tokens`` tokens;
3. waiting requests are admitted first-come first-served, each with a first
   chunk (or its first decode, when it arrives with its prompt's KV cache
   from a prefill instance), while budget, ``max_running`` and the optional
   paged KV cache allow. A request that does not fit blocks the ones behind it
   (no skipping).

With a KV cache (``BatchingConfig.kv``), blocks follow vLLM v0's block manager
(:mod:`nicemu.workloads.kv_memory`): admission takes the blocks of the whole
prompt and leaves the 1% watermark free; a decode that crosses a block boundary
takes one more block, and when none is free the newest running request is
preempted (its KV dropped and recomputed later, or swapped to host memory over
PCIe, whose time is added to the iteration) and goes back to the front of the
queue. A request that could never fit is rejected up front, with its reason.
With ``swap_in="partial"`` a swapped request's KV does not come back before the
pass: the pass that readmits it lists it in ``Batch.swap_ins`` and the duration
callback charges bringing it back through the pass (workloads/kv_restore.py).

A request with a reused prefix (``Request.cached_tokens``, KV waiting in host
memory) starts its first chunk after the prefix; the pass that admits it lists
the prefix in ``Batch.restores``, and the duration callback charges bringing
it back (workloads/kv_restore.py). A preempted request that recomputes
prefills everything again.

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
from nicemu.workloads.batch import Batch, Decode, PrefillChunk, Restore
from nicemu.workloads.kv_memory import PREEMPT_MODES, BlockPool, KvPlan, blocks_for, rejection
from nicemu.workloads.requests import Request

SWAP_IN_MODES = ("load", "partial")     # how swapped-out KV comes back (BatchingConfig.swap_in)


@dataclass(frozen=True)
class BatchingConfig:
    token_budget: int = 2048          # tokens per iteration (vLLM max_num_batched_tokens)
    chunk_tokens: int = 512           # prefill tokens per request per iteration
    max_running: int = 256            # requests in the running batch (vLLM max_num_seqs)
    kv: KvPlan | None = None          # paged KV cache; None: memory never limits a batch
    preempt: str = "recompute"        # recompute | swap, when the KV cache runs out
    swap_in: str = "load"             # load: swapped blocks come back before the pass (vLLM); partial: the
                                      # pass brings them back itself (Batch.swap_ins, workloads/kv_restore.py)

    def __post_init__(self) -> None:
        for key in ("token_budget", "chunk_tokens", "max_running"):
            if getattr(self, key) < 1:
                raise WorkloadError(f"batching {key} must be >= 1, got {getattr(self, key)}")
        if self.preempt not in PREEMPT_MODES:
            raise WorkloadError(f"--preempt {self.preempt}: use one of {', '.join(PREEMPT_MODES)}")
        if self.swap_in not in SWAP_IN_MODES:
            raise WorkloadError(f"swap-in {self.swap_in}: use one of {', '.join(SWAP_IN_MODES)}")


@dataclass
class Iteration:
    """One forward pass as handed to the duration callback."""

    index: int
    start_us: float
    batch: Batch
    swap_us: float = 0.0     # KV blocks swapped over PCIe before the pass (the batcher adds it to the duration)
    swap_in_us: float = 0.0  # what bringing Batch.swap_ins back adds to the pass (set by the duration callback,
                             # part of the duration it returns; the batcher logs it as swap time)


@dataclass(frozen=True)
class IterationLog:
    """What the result keeps of an iteration (the full batch is only seen by the callback)."""

    index: int
    start_us: float
    duration_us: float
    phase: str
    prefill_tokens: int
    decodes: int
    kv_blocks_used: int = 0      # blocks held on the accelerators during the pass
    preempted: int = 0           # requests preempted when the pass was formed
    swapped_blocks: int = 0      # blocks moved over PCIe (out and in) before the pass
    swap_us: float = 0.0         # their PCIe time, part of duration_us

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
    recompute_tokens: int = 0     # output tokens dropped at a preemption, prefilled again with the prompt
    preemptions: int = 0
    queue_us: float = 0.0         # time spent waiting: before admission and after each preemption
    waiting_since_us: float = 0.0
    rejected: str | None = None   # why it can never be served (then it has no tokens)
    cached_tokens: int = 0        # prompt prefix restored from host memory at admission (--prefix-reuse)

    @property
    def prefill_tokens(self) -> int:
        """Tokens the current (re-)prefill covers: the prompt, plus the outputs of a recompute."""
        return self.input_tokens + self.recompute_tokens

    @property
    def seq_tokens(self) -> int:
        """Prompt plus generated tokens (vLLM's sequence length)."""
        return self.input_tokens + len(self.token_us)

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
    kv: KvPlan | None = None

    @property
    def end_us(self) -> float:
        return self.iterations[-1].start_us + self.iterations[-1].duration_us if self.iterations else 0.0


DurationFn = Callable[[Iteration], float]


class Batcher:
    """Runs requests to completion, one iteration at a time; see the module docstring."""

    def __init__(self, config: BatchingConfig | None = None) -> None:
        self.config = config or BatchingConfig()
        self.pool = BlockPool(self.config.kv) if self.config.kv is not None else None
        self.now_us = 0.0
        self._preempted = self._swap_out = self._swap_in = self._swap_in_partial = 0    # this iteration's
        self._swap_ins: list[Restore] = []                       # ... and its swap-ins through the pass

    def _check(self, requests: list[Request]) -> None:
        for r in requests:
            if r.input_tokens < 1 or r.output_tokens < 1:
                raise WorkloadError(f"request {r.id}: input and output tokens must be >= 1")
            if not 0 <= r.cached_tokens < r.input_tokens:
                raise WorkloadError(f"request {r.id}: a reused prefix of {r.cached_tokens} tokens must be shorter "
                                    f"than its {r.input_tokens}-token prompt")

    def _preempt(self, r: RequestTiming, waiting: deque[RequestTiming]) -> None:
        """Take ``r`` off the accelerators: swap its blocks out, or drop them and recompute later."""
        assert self.pool is not None
        if self.config.preempt == "swap":
            self._swap_out += self.pool.swap_out(r.id)
        else:
            self.pool.release(r.id)
            r.recompute_tokens = len(r.token_us)
            r.prefilled = 0
        r.preemptions += 1
        r.waiting_since_us = self.now_us
        self._preempted += 1
        waiting.appendleft(r)

    def _grow(self, i: int, running: list[RequestTiming], waiting: deque[RequestTiming]) -> bool:
        """Blocks for ``running[i]``'s next decode, preempting the newest running requests until they
        are free; False if ``running[i]`` had to go itself (it is the newest left)."""
        if self.pool is None:
            return True
        r = running[i]
        while not self.pool.grow(r.id, r.seq_tokens):
            victim = running.pop()
            self._preempt(victim, waiting)
            if victim is r:
                return False
        return True

    def _admit(self, r: RequestTiming) -> bool:
        """Blocks for a waiting request, keeping the watermark free: its swapped blocks back, or blocks for
        every token it has (its prompt; plus its outputs when recomputed, or its first token when it
        arrived from a prefill instance)."""
        pool = self.pool
        if pool is not None:
            if r.id in pool.swapped:
                if not pool.can_admit(max(pool.swapped[r.id], blocks_for(r.seq_tokens, pool.plan.block_tokens))):
                    return False
                blocks = pool.swap_in(r.id)
                if self.config.swap_in == "partial":   # its KV (prefilled and decoded tokens) through the pass
                    self._swap_ins.append(Restore(r.id, r.prefilled + max(0, len(r.token_us) - 1)))
                    self._swap_in_partial += blocks
                else:
                    self._swap_in += blocks
                pool.grow(r.id, r.seq_tokens)
            else:
                if not pool.can_admit(pool.need(r.id, r.seq_tokens)):
                    return False
                pool.grow(r.id, r.seq_tokens)
        r.queue_us += self.now_us - r.waiting_since_us
        return True

    def next_batch(self, waiting: deque[RequestTiming], running: list[RequestTiming]) -> Batch:
        """Fill one iteration (moves admitted requests from ``waiting`` to ``running``, preempted ones back)."""
        cfg = self.config
        budget = cfg.token_budget
        decodes: list[Decode] = []
        prefills: list[PrefillChunk] = []
        restores: list[Restore] = []
        i = 0
        while i < len(running):
            r = running[i]
            if r.prefilled == r.prefill_tokens and budget > 0:
                if not self._grow(i, running, waiting):
                    break
                decodes.append(Decode(r.id, r.seq_tokens - 1))
                budget -= 1
            i += 1

        def chunk(r: RequestTiming) -> None:
            nonlocal budget
            n = min(r.prefill_tokens - r.prefilled, cfg.chunk_tokens, budget)
            prefills.append(PrefillChunk(r.id, n, r.prefilled, r.prefilled + n == r.prefill_tokens))
            budget -= n

        for r in running:
            if r.prefilled < r.prefill_tokens and budget > 0:
                chunk(r)
        while waiting and budget > 0 and len(running) < cfg.max_running:
            r = waiting[0]
            if not self._admit(r):
                break
            waiting.popleft()
            running.append(r)
            if r.cached_tokens and r.admitted_iteration is None and r.prefilled == 0 and not r.recompute_tokens:
                r.prefilled = r.cached_tokens          # its prefix's KV comes back from host memory
                restores.append(Restore(r.id, r.cached_tokens))
            if r.prefilled < r.prefill_tokens:
                chunk(r)
            else:       # swapped in, or arrived with its prompt's KV (disaggregated decode): it decodes
                decodes.append(Decode(r.id, r.seq_tokens - 1))
                budget -= 1
        return Batch(tuple(prefills), tuple(decodes), tuple(restores), tuple(self._swap_ins))

    def run(self, requests: list[Request], iteration_time_us: DurationFn, prefilled: bool = False) -> BatchingResult:
        """Serve every request; ``iteration_time_us(iteration)`` gives each forward pass's duration.

        ``prefilled``: the requests arrive with their prompt's KV cache and their first token (the
        decode instance of a disaggregated deployment): they only decode, from their arrival on."""
        self._check(requests)
        states = {r.id: RequestTiming(r.id, r.arrival_us, r.input_tokens, r.output_tokens,
                                      waiting_since_us=r.arrival_us, cached_tokens=r.cached_tokens)
                  for r in requests}
        if prefilled:
            for st in states.values():
                st.prefilled, st.token_us = st.input_tokens, [st.arrival_us]
        if len(states) != len(requests):
            raise WorkloadError("request ids must be unique")
        plan = self.config.kv
        self.pool = BlockPool(plan) if plan is not None else None
        if plan is not None:
            for r in states.values():
                r.rejected = rejection(plan, r.input_tokens, r.output_tokens)
        served = [s for s in states.values() if s.rejected is None and not s.done]
        pending = deque(sorted(served, key=lambda s: (s.arrival_us, s.id)))
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
            self.now_us = now_us
            self._preempted = self._swap_out = self._swap_in = self._swap_in_partial = 0
            self._swap_ins = []
            batch = self.next_batch(waiting, running)
            if not batch:
                raise WorkloadError(f"batching made no progress at {now_us} us; check BatchingConfig")
            swap_us = plan.swap_us(self._swap_out) + plan.swap_us(self._swap_in) if plan is not None else 0.0
            it = Iteration(len(logs), now_us, batch, swap_us)
            duration_us = float(iteration_time_us(it))
            if not (duration_us >= 0 and math.isfinite(duration_us)):
                raise WorkloadError(f"iteration {it.index}: duration {duration_us} us is not a finite value >= 0")
            duration_us += swap_us
            now_us += duration_us
            logs.append(IterationLog(it.index, it.start_us, duration_us, batch.phase,
                                     batch.prefill_tokens, len(batch.decodes),
                                     self.pool.used if self.pool is not None else 0, self._preempted,
                                     self._swap_out + self._swap_in + self._swap_in_partial,
                                     swap_us + it.swap_in_us))
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
            if self.pool is not None:
                for r in running:
                    if r.done:
                        self.pool.release(r.id)
            running[:] = [r for r in running if not r.done]
        return BatchingResult([states[r.id] for r in requests], logs, plan)


def run_batching(requests: list[Request], iteration_time_us: DurationFn,
                 config: BatchingConfig | None = None) -> BatchingResult:
    """Shortcut for ``Batcher(config).run(requests, iteration_time_us)``."""
    return Batcher(config).run(requests, iteration_time_us)
