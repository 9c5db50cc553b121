"""Roofline compute time of one forward pass, operator by operator, on one TP rank.

Every operator is timed as ``max(flops / peak_flops, bytes / hbm_bandwidth)``
with the per-rank share of its work (Williams, Waterman & Patterson,
"Roofline", CACM 2009). Communication is not included: the collectives are
emulated separately and added by :mod:`nicemu.workloads.iteration_time`.

Notation: T tokens in the batch (prefill chunk tokens + one per decode),
h hidden, hd head_dim, H heads, K kv_heads, I intermediate, V vocab, b bytes
per element, tp tensor-parallel degree, Kr = max(1, K / tp) KV heads per rank
(replicated when tp > K), m = 3 matrices for a gated (SwiGLU) MLP, 2 otherwise.
A GEMM ``[T x n] @ [n x k]`` costs ``2 T n k`` FLOPs and moves its weights,
its input and its output once: ``b (n k + T n + T k)`` bytes.

Per layer, per rank:

- ``qkv``: n = h, k = (H hd) / tp + 2 Kr hd (GQA: K and V have only Kr heads).
- ``attention_prefill``, summed over chunks of c new tokens after p cached
  ones: causal (query, key) pairs ``P = c p + c (c + 1) / 2``;
  FLOPs ``4 hd (H / tp) P`` (QK^T and AV); bytes
  ``b (2 Kr hd (p + c) + 2 Kr hd c + 2 (H / tp) hd c)``: the KV cache read
  (cached and new keys/values), the new K, V written, Q read and output written.
- ``attention_decode``, summed over decodes with L cached tokens: the same with
  c = 1, so ``P = L + 1`` and the KV read ``2 Kr hd (L + 1) b`` dominates:
  decode attention is memory-bound.
- ``o_proj``: n = H hd / tp, k = h.
- Dense MLP: ``mlp_up`` n = h, k = (m - 1) I / tp; ``mlp_down`` n = I / tp, k = h.
- MoE MLP: each token goes to top_k experts, so T top_k (token, expert) rows
  exist. With EP = 1 every expert is TP-sharded; with EP = tp each rank holds
  E / ep whole experts and gets T top_k / ep rows (balanced routing). Weights
  are read only for experts that receive a token: with uniform routing
  ``E_hit = E (1 - (1 - top_k / E)^T)`` in expectation (all E once T is large,
  about top_k at T = 1). ``router``: n = h, k = E, replicated on every rank.
- Once per forward: ``embedding`` (read and write T rows, no FLOPs, first
  stage) and ``lm_head`` (n = h, k = V / tp for the S sampled tokens, last stage).

Prefill GEMMs (T in the hundreds) land above the ridge point (compute-bound),
decode GEMMs (T = batch size) below it (memory-bound: the weights dominate).
Norms, rotary embeddings, activations and sampling are left out (< 2% of the
bytes of any preset).
"""

from __future__ import annotations

from dataclasses import dataclass

from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.batch import Batch, make_batch
from nicemu.workloads.models import Model
from nicemu.workloads.parallelism import Parallelism


@dataclass(frozen=True)
class OperatorTime:
    """One operator's per-rank work and its roofline time."""

    name: str
    flops: float
    bytes: float
    time_us: float
    bound: str      # "compute" or "memory"


@dataclass(frozen=True)
class IterationCompute:
    """Compute time of one forward pass on one rank of each stage (no communication)."""

    layer_ops: tuple[OperatorTime, ...]   # one layer (every layer is the same)
    embedding: OperatorTime
    lm_head: OperatorTime
    layers: int

    @property
    def layer_us(self) -> float:
        return sum(op.time_us for op in self.layer_ops)

    @property
    def total_us(self) -> float:
        """All layers plus embedding and LM head, one after the other (the stages of one batch run in turn)."""
        return self.layers * self.layer_us + self.embedding.time_us + self.lm_head.time_us

    def stage_us(self, par: Parallelism) -> list[float]:
        """Compute time per pipeline stage: the embedding on the first, the LM head on the last."""
        stages = [len(r) * self.layer_us for r in par.stage_layers(self.layers)]
        stages[0] += self.embedding.time_us
        stages[-1] += self.lm_head.time_us
        return stages

    def op_us(self, name: str) -> float:
        """Time of one per-layer operator (0 if absent), e.g. ``op_us("attention_decode")``."""
        return sum(op.time_us for op in self.layer_ops if op.name == name)


def roofline(name: str, flops: float, nbytes: float, acc: Accelerator) -> OperatorTime:
    """The slower of doing the math and moving the bytes."""
    compute_us = flops / acc.flops_per_us
    memory_us = nbytes / acc.bytes_per_us
    return OperatorTime(name, float(flops), float(nbytes), max(compute_us, memory_us),
                        "compute" if compute_us >= memory_us else "memory")


def gemm(name: str, rows: float, n: float, k: float, b: int, acc: Accelerator,
         weight_copies: float = 1.0) -> OperatorTime:
    """``[rows x n] @ [n x k]``: 2 rows n k FLOPs; weights (``weight_copies`` copies), input and output moved once."""
    return roofline(name, 2 * rows * n * k, b * (weight_copies * n * k + rows * n + rows * k), acc)


def expected_experts_hit(experts: int, top_k: int, tokens: int) -> float:
    """Experts that receive at least one of ``tokens`` tokens, in expectation, under uniform top-k routing."""
    if tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def attention_ops(model: Model, batch: Batch, par: Parallelism, b: int, acc: Accelerator) -> list[OperatorTime]:
    """Prefill attention (compute-heavy) and decode attention (KV-read-bound), each its own operator."""
    hd = model.head_dim
    hq = model.heads // par.tp
    kvr = par.kv_heads_per_rank(model)
    ops = []
    if batch.prefills:
        flops = nbytes = 0.0
        for ch in batch.prefills:
            c, p = ch.tokens, ch.context_tokens
            pairs = c * p + c * (c + 1) / 2
            flops += 4 * hd * hq * pairs
            nbytes += b * (2 * kvr * hd * (p + c) + 2 * kvr * hd * c + 2 * hq * hd * c)
        ops.append(roofline("attention_prefill", flops, nbytes, acc))
    if batch.decodes:
        flops = nbytes = 0.0
        for d in batch.decodes:
            keys = d.context_tokens + 1
            flops += 4 * hd * hq * keys
            nbytes += b * (2 * kvr * hd * keys + 2 * kvr * hd + 2 * hq * hd)
        ops.append(roofline("attention_decode", flops, nbytes, acc))
    return ops


def mlp_ops(model: Model, tokens: int, par: Parallelism, b: int, acc: Accelerator) -> list[OperatorTime]:
    """Dense MLP GEMMs, or router plus the experts actually hit (MoE)."""
    h, width = model.hidden, model.intermediate
    up_mats = 2 if model.gated_mlp else 1
    if not model.is_moe:
        return [gemm("mlp_up", tokens, h, up_mats * width / par.tp, b, acc),
                gemm("mlp_down", tokens, width / par.tp, h, b, acc)]
    shard = par.tp if par.ep == 1 else 1          # TP-sharded experts, or whole experts under EP
    rows = tokens * model.top_k / par.ep          # (token, expert) rows this rank computes
    hit = expected_experts_hit(model.experts, model.top_k, tokens) / par.ep
    return [gemm("router", tokens, h, model.experts, b, acc),
            gemm("mlp_up", rows, h, up_mats * width / shard, b, acc, weight_copies=hit),
            gemm("mlp_down", rows, width / shard, h, b, acc, weight_copies=hit)]


def iteration_compute(model: Model, acc: Accelerator, batch: Batch, par: Parallelism | None = None,
                      dtype_bytes: int = 2) -> IterationCompute:
    """Roofline time of one forward pass of ``batch`` on one rank (see the module docstring for formulas)."""
    par = par or Parallelism()
    b, h, tokens = dtype_bytes, model.hidden, batch.tokens
    q_cols = model.q_width / par.tp
    kv_cols = 2 * par.kv_heads_per_rank(model) * model.head_dim
    ops: list[OperatorTime] = []
    if tokens:
        ops.append(gemm("qkv", tokens, h, q_cols + kv_cols, b, acc))
        ops.extend(attention_ops(model, batch, par, b, acc))
        ops.append(gemm("o_proj", tokens, q_cols, h, b, acc))
        ops.extend(mlp_ops(model, tokens, par, b, acc))
    embedding = roofline("embedding", 0.0, b * 2 * tokens * h, acc)
    sampled = batch.sampled_tokens
    lm_head = (gemm("lm_head", sampled, h, model.vocab / par.tp, b, acc) if sampled
               else roofline("lm_head", 0.0, 0.0, acc))
    return IterationCompute(tuple(ops), embedding, lm_head, model.layers)


def iteration_compute_us(model: Model, acc: Accelerator, prefills: list[tuple[int, int]],
                         decodes: list[int], par: Parallelism | None = None, dtype_bytes: int = 2) -> float:
    """Total compute microseconds for plain numbers: prefills as (tokens, context), decodes as context lengths."""
    return iteration_compute(model, acc, make_batch(prefills, decodes), par, dtype_bytes).total_us
