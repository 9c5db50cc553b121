"""One data-parallel training iteration: compute per layer, and gradient buckets with the time each is ready.

Every data-parallel rank runs the forward and backward passes of its share of the global batch, then the
gradients are averaged with AllReduce. As PyTorch DDP does it, parameters are grouped into *buckets*
in reverse registration order (roughly reverse layer order): the first bucket holds at most 1 MiB, the
others at most ``bucket_bytes`` (25 MiB by default, DDP's ``bucket_cap_mb``); a tensor larger than the cap
is a bucket of its own. A bucket's AllReduce can start once backward has produced all its gradients.

Compute is the roofline of workloads/compute.py: the forward pass of ``sequences`` sequences of ``seq_len``
tokens is a prefill of those tokens, with the LM head over every token (training computes the loss on
all of them); the backward pass costs twice the forward, layer by layer (two GEMMs per forward GEMM: the
input gradient and the weight gradient). docs/model.md §22.
"""

from __future__ import annotations

from dataclasses import dataclass

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.batch import make_batch
from nicemu.workloads.compute import gemm, iteration_compute
from nicemu.workloads.models import Model

#: PyTorch DDP's defaults: bucket_cap_mb=25, and a first bucket of 1 MiB so communication starts early
BUCKET_BYTES = 25 << 20
FIRST_BUCKET_BYTES = 1 << 20
#: backward FLOPs over forward FLOPs (input and weight gradients)
BACKWARD_FACTOR = 2.0
#: the name of the embedding table's tensor
EMBEDDING = "embed_tokens"


@dataclass(frozen=True)
class Tensor:
    name: str
    elems: int
    layer: int        # -1: the LM head and final norm (gradients first), layers: the embedding (last)


@dataclass(frozen=True)
class Bucket:
    index: int
    elems: int
    ready_us: float   # when backward has produced all its gradients (from the iteration's start)
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class TrainPlan:
    forward_us: float
    backward_us: float
    layer_forward_us: float
    lm_head_us: float
    buckets: tuple[Bucket, ...]
    tokens_per_rank: int

    @property
    def compute_us(self) -> float:
        return self.forward_us + self.backward_us

    @property
    def grad_elems(self) -> int:
        return sum(b.elems for b in self.buckets)


def tensors(model: Model) -> list[Tensor]:
    """The model's parameter tensors in registration order (embedding, layers, final norm, LM head)."""
    h, i = model.hidden, model.intermediate
    out = [Tensor(EMBEDDING, model.vocab * h, model.layers)]
    mlp = ["gate_proj", "up_proj", "down_proj"] if model.gated_mlp else ["up_proj", "down_proj"]
    experts = model.experts if model.is_moe else 1
    for layer in range(model.layers):
        def t(name: str, elems: int, layer: int = layer) -> Tensor:
            return Tensor(f"layers.{layer}.{name}", int(elems), layer)
        out += [t("input_norm", h), t("q_proj", h * model.q_width), t("k_proj", h * model.kv_width),
                t("v_proj", h * model.kv_width), t("o_proj", model.q_width * h), t("post_norm", h)]
        if model.is_moe:
            out.append(t("router", h * model.experts))
        for e in range(experts):
            prefix = f"experts.{e}." if model.is_moe else ""
            out += [t(prefix + name, h * i) for name in mlp]
    out.append(Tensor("norm", h, -1))
    if not model.tied_embeddings:
        out.append(Tensor("lm_head", model.vocab * h, -1))
    return out


def plan(model: Model, acc: Accelerator, sequences: int, seq_len: int, itemsize: int,
         bucket_bytes: int = BUCKET_BYTES, first_bucket_bytes: int = FIRST_BUCKET_BYTES,
         exclude: tuple[str, ...] = ()) -> TrainPlan:
    """Compute times and gradient buckets of one iteration on one data-parallel rank; the tensors named in
    ``exclude`` stay out of the buckets (a sparse embedding, reduced on its own)."""
    if sequences < 1 or seq_len < 1:
        raise WorkloadError(f"a rank needs at least one sequence of at least one token, got {sequences} x {seq_len}")
    if bucket_bytes < itemsize:
        raise WorkloadError(f"the bucket size must hold at least one element, got {bucket_bytes} B")
    tokens = sequences * seq_len
    fwd = iteration_compute(model, acc, make_batch([(seq_len, seq_len)] * sequences))
    lm_head = gemm("lm_head", tokens, model.hidden, model.vocab, 2, acc).time_us
    layer_f = fwd.layer_us
    forward = model.layers * layer_f + fwd.embedding.time_us + lm_head
    backward = BACKWARD_FACTOR * forward

    def ready(layer: int) -> float:
        """Backward runs the LM head first, then the layers from the last to the first, then the embedding."""
        head = BACKWARD_FACTOR * lm_head
        if layer < 0:
            return forward + head
        return forward + head + BACKWARD_FACTOR * layer_f * (model.layers - min(layer, model.layers - 1))

    kept = [t for t in tensors(model) if t.name not in exclude]
    buckets = make_buckets(kept, ready, itemsize, bucket_bytes, first_bucket_bytes)
    # the embedding's gradient is ready when backward ends
    last = buckets[-1]
    if EMBEDDING in last.tensors:
        buckets[-1] = Bucket(last.index, last.elems, max(last.ready_us, forward + backward), last.tensors)
    return TrainPlan(forward, backward, layer_f, lm_head, tuple(buckets), tokens)


def make_buckets(registered: list[Tensor], ready, itemsize: int, bucket_bytes: int = BUCKET_BYTES,
                 first_bucket_bytes: int = FIRST_BUCKET_BYTES) -> list[Bucket]:
    """DDP's buckets over ``registered`` (registration order), taken in reverse; ``ready(layer)`` gives when
    backward has produced a tensor of that layer. A bucket is ready with its last tensor."""
    buckets: list[Bucket] = []
    cur: list[Tensor] = []
    size = 0
    cap = first_bucket_bytes

    def close() -> None:
        nonlocal cur, size, cap
        if cur:
            buckets.append(Bucket(len(buckets), sum(t.elems for t in cur), max(ready(t.layer) for t in cur),
                                  tuple(t.name for t in cur)))
            cur, size, cap = [], 0, bucket_bytes
    for t in reversed(registered):
        nbytes = t.elems * itemsize
        if cur and size + nbytes > cap:
            close()
        cur.append(t)
        size += nbytes
        if size >= cap:
            close()
    close()
    return buckets
