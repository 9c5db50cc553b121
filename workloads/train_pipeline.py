"""One training iteration under tensor and pipeline parallelism: each stage's work and the 1F1B schedule.

A stage of ``P`` holds ``layers / P`` consecutive layers (the first the embedding, the last the final norm
and LM head), each rank a ``1/T`` shard of their matrices (Megatron-LM's column and row parallel GEMMs).
A micro-batch's forward on one rank costs the roofline of workloads/compute.py with TP ``T`` plus, on the
critical path, 2 TP AllReduces per layer (after the attention output and the MLP down projection) and
one after the vocabulary-parallel embedding on the first stage; its backward costs twice the compute
plus the 2 conjugate AllReduces per layer (of the input gradients entering the attention and the MLP)
and one of the LM head's input gradient on the last stage. Each AllReduce moves micro-batch tokens x
hidden x 2 bytes (bfloat16 activations).

:func:`one_f_one_b` runs Megatron-LM's non-interleaved 1F1B schedule over ``M`` micro-batches and
returns every forward and backward's start and end, so the bubble and the critical path come out of the
schedule. docs/model.md §22.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.batch import make_batch
from nicemu.workloads.compute import gemm, iteration_compute
from nicemu.workloads.models import Model
from nicemu.workloads.parallelism import Parallelism
from nicemu.workloads.train_layout import Layout
from nicemu.workloads.training import (
    BACKWARD_FACTOR,
    BUCKET_BYTES,
    FIRST_BUCKET_BYTES,
    Bucket,
    Tensor,
    make_buckets,
    tensors,
)

#: bytes per activation element (TP AllReduces, pipeline transfers): bfloat16, as mixed-precision training keeps them
ACT_BYTES = 2
_SHARDED = ("embed_tokens", "lm_head", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StageWork:
    """One micro-batch's work on one rank of a stage (compute only; the TP AllReduces are counted)."""

    stage: int
    last: bool                # the last stage (final norm and LM head)
    layers: range
    layer_forward_us: float
    embedding_us: float       # forward, first stage only (else 0)
    lm_head_us: float         # forward, last stage only (else 0)
    tp_forward: int           # TP AllReduces in one micro-batch's forward
    tp_backward: int
    tensors: tuple[Tensor, ...]   # this rank's parameter shards, registration order
    layer_attention_us: float = 0.0   # of ``layer_forward_us``: QKV, attention, output projection (the rest is
    #                                   the MLP block); where the layer's first TP AllReduce sits

    @property
    def forward_compute_us(self) -> float:
        return len(self.layers) * self.layer_forward_us + self.embedding_us + self.lm_head_us

    @property
    def backward_compute_us(self) -> float:
        return BACKWARD_FACTOR * self.forward_compute_us

    def forward_us(self, tp_us: float) -> float:
        """A micro-batch's forward with each TP AllReduce taking ``tp_us``."""
        return self.forward_compute_us + self.tp_forward * tp_us

    def backward_us(self, tp_us: float) -> float:
        return self.backward_compute_us + self.tp_backward * tp_us

    def buckets(self, tp_us: float, itemsize: int, bucket_bytes: int = BUCKET_BYTES,
                first_bucket_bytes: int = FIRST_BUCKET_BYTES) -> list[Bucket]:
        """DDP's buckets of this rank's gradients, ``ready_us`` counted from the start of the last
        micro-batch's backward: the LM head first (last stage), then the layers from the last, each with
        its 2 AllReduces, then the embedding when the backward ends."""
        ar = tp_us if self.tp_backward else 0.0
        head = BACKWARD_FACTOR * self.lm_head_us + ar if self.last else 0.0
        per_layer = BACKWARD_FACTOR * self.layer_forward_us + 2 * ar
        end = self.backward_us(tp_us)
        last = self.layers[-1]

        def ready(layer: int) -> float:
            if layer < 0:
                return head
            if layer > last:            # the embedding
                return end
            return head + per_layer * (last - layer + 1)
        return make_buckets(list(self.tensors), ready, itemsize, bucket_bytes, first_bucket_bytes)

    def tp_offsets(self, kind: str, tp_us: float) -> list[float]:
        """When each TP AllReduce of a forward (``kind`` "F") or backward ("B") starts, µs after the
        operation starts, in issue order: forward the embedding's after the lookup, per layer ``attn_out``
        after the attention block and ``mlp_out`` after the MLP; backward the LM head's input gradient
        first (last stage), then per layer from the last the MLP's input gradient and the attention's."""
        if not (self.tp_forward if kind == "F" else self.tp_backward):
            return []
        attn, mlp = self.layer_attention_us, self.layer_forward_us - self.layer_attention_us
        k = 1.0 if kind == "F" else BACKWARD_FACTOR
        out, t = [], 0.0
        if kind == "F" and self.stage == 0:
            t += self.embedding_us
            out.append(t)
            t += tp_us
        if kind == "B" and self.last:
            t += k * self.lm_head_us
            out.append(t)
            t += tp_us
        for first, second in [(attn, mlp) if kind == "F" else (mlp, attn)] * len(self.layers):
            for part in (first, second):
                t += k * part
                out.append(t)
                t += tp_us
        return out


def shard_elems(t: Tensor, model: Model, tp: int) -> int:
    """A tensor's elements on one TP rank: vocabulary, Q/O, MLP (and experts) split ``tp`` ways; K and V
    by KV heads (replicated once TP exceeds them); norms and the router whole."""
    base = t.name.rsplit(".", 1)[-1]
    if base in ("k_proj", "v_proj"):
        return model.hidden * Parallelism(tp=tp).kv_heads_per_rank(model) * model.head_dim
    if base in _SHARDED:
        return t.elems // tp
    return t.elems


def stage_tensors(model: Model, layout: Layout, stage: int) -> tuple[Tensor, ...]:
    """The parameter shards one rank of ``stage`` holds. With tied embeddings and several stages the last
    one keeps its own copy of the embedding as the LM head (Megatron-LM does)."""
    layers = Parallelism(tp=layout.tp, pp=layout.pp).stage_layers(model.layers)[stage]
    first, last = stage == 0, stage == layout.pp - 1
    out = []
    for t in tensors(model):
        if t.layer in layers or (t.layer == model.layers and first) or (t.layer < 0 and last):
            out.append(Tensor(t.name, shard_elems(t, model, layout.tp), t.layer))
    if last and layout.pp > 1 and model.tied_embeddings:
        out.append(Tensor("lm_head", model.vocab * model.hidden // layout.tp, -1))
    return tuple(out)


def check_split(model: Model, layout: Layout, global_batch: int, micro_batches: int) -> None:
    """Refuse what Megatron-LM refuses: layers not divisible by P, heads by T, the batch by D x M."""
    Parallelism(tp=layout.tp).check_model(model)
    if model.layers % layout.pp:
        raise WorkloadError(f"{model.name}: {model.layers} layers do not split into {layout.pp} equal pipeline "
                            f"stages; use a --pp that divides {model.layers}")
    if micro_batches < 1 or global_batch % (layout.dp * micro_batches):
        raise WorkloadError(f"--global-batch {global_batch} does not split into --dp {layout.dp} x "
                            f"--micro-batches {micro_batches} micro-batches; use a multiple of "
                            f"{layout.dp * max(micro_batches, 1)}")


def stage_work(model: Model, acc: Accelerator, layout: Layout, micro_seqs: int, seq_len: int) -> list[StageWork]:
    """Every stage's work on one micro-batch of ``micro_seqs`` sequences of ``seq_len`` tokens."""
    if micro_seqs < 1 or seq_len < 1:
        raise WorkloadError(f"a micro-batch needs at least one sequence of one token, got {micro_seqs} x {seq_len}")
    par = Parallelism(tp=layout.tp, pp=layout.pp)
    tokens = micro_seqs * seq_len
    fwd = iteration_compute(model, acc, make_batch([(seq_len, seq_len)] * micro_seqs), par)
    head = gemm("lm_head", tokens, model.hidden, model.vocab / layout.tp, 2, acc).time_us
    tp = layout.tp > 1
    attention = fwd.layer_us - fwd.op_us("mlp_up") - fwd.op_us("mlp_down") - fwd.op_us("router")
    out = []
    for s, layers in enumerate(par.stage_layers(model.layers)):
        first, last = s == 0, s == layout.pp - 1
        out.append(StageWork(s, last, layers, fwd.layer_us, fwd.embedding.time_us if first else 0.0,
                             head if last else 0.0, (2 * len(layers) + first) * tp, (2 * len(layers) + last) * tp,
                             stage_tensors(model, layout, s), attention))
    return out


@dataclass(frozen=True)
class PipelineTimes:
    """Start and end of every forward and backward, ``[stage, micro-batch]`` (µs from the iteration's start)."""

    f_start: np.ndarray
    f_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray

    @property
    def end_us(self) -> float:
        return float(self.b_end.max())


def op_order(stage: int, stages: int, micro: int) -> list[tuple[str, int]]:
    """A stage's operations in Megatron-LM's 1F1B order: ``P - s - 1`` warm-up forwards, then one forward
    and one backward in turn, then the remaining backwards."""
    warm = min(stages - stage - 1, micro)
    ops = [("F", m) for m in range(warm)]
    for i in range(micro - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", m) for m in range(micro - warm, micro)]


def one_f_one_b(forward_us: list[float], backward_us: list[float], to_next_us: list[float],
                to_prev_us: list[float], micro: int) -> PipelineTimes:
    """The 1F1B schedule of ``micro`` micro-batches over ``len(forward_us)`` stages.

    A stage runs its operations in :func:`op_order`, each when the previous one has ended and its input
    has arrived: forward ``m`` of stage ``s`` when forward ``m`` of stage ``s - 1`` has ended plus
    ``to_next_us[s - 1]`` (the activations' transfer); backward ``m`` when backward ``m`` of stage ``s + 1``
    has ended plus ``to_prev_us[s]`` (the gradients'). A sender does not wait for its transfer."""
    p = len(forward_us)
    if micro < 1 or p < 1 or len(backward_us) != p or len(to_next_us) != p - 1 or len(to_prev_us) != p - 1:
        raise WorkloadError(f"1F1B needs one forward and backward time per stage and one transfer time per "
                            f"boundary, and at least one micro-batch; got {p} stages, {micro} micro-batches")
    nan = np.full((p, micro), np.nan)
    fs, fe, bs, be = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    orders = [op_order(s, p, micro) for s in range(p)]
    pos = [0] * p
    free = [0.0] * p
    left = 2 * p * micro
    while left:
        moved = False
        for s in range(p):
            while pos[s] < len(orders[s]):
                kind, m = orders[s][pos[s]]
                if kind == "F":
                    ready = 0.0 if s == 0 else fe[s - 1, m] + to_next_us[s - 1]
                else:
                    ready = fe[s, m] if s == p - 1 else be[s + 1, m] + to_prev_us[s]
                if np.isnan(ready):
                    break
                start = max(free[s], ready)
                end = start + (forward_us[s] if kind == "F" else backward_us[s])
                (fs if kind == "F" else bs)[s, m] = start
                (fe if kind == "F" else be)[s, m] = end
                free[s] = end
                pos[s] += 1
                left -= 1
                moved = True
        if not moved:
            raise RuntimeError("1F1B schedule deadlocked")      # op_order never lets it: an internal error
    return PipelineTimes(fs, fe, bs, be)
