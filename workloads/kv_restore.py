"""Bringing a KV cache back from host memory: load it, recompute it, or recompute part of it from activations.

When a sequence's KV cache lives in host memory (swapped out, offloaded, or kept for a returning
conversation), the accelerator needs it again before it can decode. Three ways:

- ``load``: every layer's K and V cross PCIe;
- ``recompute``: the tokens run through the whole model again (a prefill), nothing crosses PCIe;
- ``partial`` (I/O-aware partial recomputation): the layer inputs (activations) of the first ``l``
  tokens cross PCIe instead of their K and V, which are half as large for a multi-head model, and the
  accelerator recomputes ``K = X W_K`` and ``V = X W_V`` from them while the K and V of the other
  ``s - l`` tokens stream over PCIe behind them. ``l`` balances the two; it is chosen by trying
  every value, which is exact for the model below.

The restore overlaps the decode step that needs it, layer by layer, the way offloading runtimes
prefetch: PCIe carries layer after layer (the activations first, then the rest of the KV); the
accelerator recomputes a layer's K and V once its activations have landed, and runs that layer of the
decode step once the rest of its KV has landed. Recomputation therefore competes with the decode step
for the accelerator, and the best ``l`` depends on the sequence length and the batch, not only on
the PCIe rate (docs/model.md §15.2 has the recurrence and its closed forms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.batch import make_batch
from nicemu.workloads.compute import iteration_compute
from nicemu.workloads.models import Model

METHODS = ("load", "recompute", "partial")


@dataclass(frozen=True)
class Restore:
    """The cost of bringing back the KV cache of ``batch`` sequences of ``tokens`` tokens each."""

    method: str
    tokens: int            # s: tokens per sequence whose KV is restored
    batch: int
    split: int             # l: tokens per sequence recomputed from activations (partial); s for recompute
    pcie_bytes: float      # bytes over PCIe, all layers (pipeline stages: summed over the stages' links)
    pcie_us: float         # PCIe busy time, all layers (likewise summed)
    compute_us: float      # accelerator busy time, all layers
    time_us: float         # until the last layer's K and V are on the accelerator
    step_us: float         # the decode step that needs them, from its start to its last token
    splits: tuple[int, ...] = ()   # pipeline stages: each stage's l (restore_in_pass with stage_layers)


def activation_bytes_per_token(model: Model, dtype_bytes: int = 2) -> int:
    """One layer's input for one token: the hidden vector."""
    return model.hidden * dtype_bytes


def kv_bytes_per_token_layer(model: Model, dtype_bytes: int = 2) -> int:
    """One layer's K and V for one token (GQA: KV heads, not attention heads)."""
    return 2 * model.kv_width * dtype_bytes


def recompute_kv_us(model: Model, acc: Accelerator, rows: np.ndarray | int, dtype_bytes: int = 2,
                    kv_width: int | None = None) -> np.ndarray:
    """One layer's K and V projections for ``rows`` tokens (batch x l), roofline-timed as one GEMM
    ``[rows x hidden] @ [hidden x 2 kv_width]``; 0 for no rows. ``kv_width``: one TP rank's share
    (default the whole model's)."""
    w = model.kv_width if kv_width is None else kv_width
    rows = np.asarray(rows, dtype=np.float64)
    flops = 2.0 * rows * model.hidden * 2 * w
    nbytes = dtype_bytes * (model.hidden * 2 * w + rows * model.hidden + rows * 2 * w)
    t = np.maximum(flops / acc.flops_per_us, nbytes / acc.bytes_per_us)
    return np.where(rows > 0, t, 0.0)


def pipeline_us(layers: int, pcie_act_us: np.ndarray, pcie_kv_us: np.ndarray, gpu_us: np.ndarray,
                decode_us: float = 0.0, start_us: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The layer pipeline of one decode step, for every candidate split at once.

    PCIe carries layer i's activations (``pcie_act_us``) then the rest of its KV (``pcie_kv_us``),
    back to back, layer after layer. The accelerator, free from ``start_us`` on, recomputes layer i's
    K and V (``gpu_us``) once that layer's activations have landed, then runs layer i of the decode
    step (``decode_us``) once the rest of its KV has landed too. Returns when the last layer's KV is
    complete on the accelerator (the restore) and when the last layer's decode is done."""
    per_layer = pcie_act_us + pcie_kv_us
    gpu = np.full(np.shape(per_layer), float(start_us))
    recomputed = np.zeros_like(gpu)
    for i in range(layers):
        landed = i * per_layer + pcie_act_us
        recomputed = np.where(gpu_us > 0, np.maximum(gpu, landed) + gpu_us, recomputed)
        gpu = np.where(gpu_us > 0, recomputed, gpu)
        if decode_us:
            gpu = np.maximum(gpu, (i + 1) * per_layer) + decode_us
    return np.maximum(layers * per_layer, recomputed), gpu


def decode_compute(model: Model, acc: Accelerator, tokens: int, batch: int, dtype_bytes: int = 2):
    """One decode step of ``batch`` sequences with ``tokens`` tokens of context each (roofline)."""
    return iteration_compute(model, acc, make_batch([], [tokens] * batch), None, dtype_bytes)


def restore(method: str, model: Model, acc: Accelerator, tokens: int, batch: int, pcie_GBps: float,
            dtype_bytes: int = 2, split: int | None = None) -> Restore:
    """The cost of one restore and of the decode step waiting for it; ``split`` fixes ``l`` for
    ``partial`` (default: the one with the shortest decode step)."""
    if method not in METHODS:
        raise WorkloadError(f"unknown KV restore method '{method}'; use one of {', '.join(METHODS)}")
    if tokens < 0 or batch < 1:
        raise WorkloadError(f"a KV restore needs tokens >= 0 and batch >= 1, got {tokens} and {batch}")
    if not pcie_GBps > 0:
        raise WorkloadError(f"PCIe bandwidth must be > 0 GB/s, got {pcie_GBps}")
    per_us = pcie_GBps * 1e3                               # bytes per microsecond
    step = decode_compute(model, acc, tokens, batch, dtype_bytes)
    if method == "recompute":
        # the embedding and every layer of a prefill of the s tokens; no LM head (no token is sampled)
        it = iteration_compute(model, acc, make_batch([(tokens, 0)] * batch, []), None, dtype_bytes) if tokens else None
        t = it.layers * it.layer_us + it.embedding.time_us if it else 0.0
        return Restore(method, tokens, batch, tokens, 0.0, 0.0, t, t, t + step.total_us)
    if method == "load":
        split = 0
    if split is None:
        cand = np.arange(tokens + 1, dtype=np.float64)
    else:
        if not 0 <= split <= tokens:
            raise WorkloadError(f"split {split} is outside 0..{tokens} tokens")
        cand = np.array([float(split)])
    return _best_split(method, model, acc, tokens, batch, cand, per_us, model.kv_width, step.layer_us,
                       step.embedding.time_us, step.lm_head.time_us, 0.0, dtype_bytes)


def _best_split(method: str, model: Model, acc: Accelerator, tokens: int, batch: int, cand: np.ndarray,
                per_us: float, kv_width: int, layer_us: float, start_us: float, end_us: float, busy_us: float,
                dtype_bytes: int, layers: int | None = None) -> Restore:
    """Every candidate split ``l`` of ``cand`` through :func:`pipeline_us` (``layers`` layers, default the
    model's, of ``layer_us``, the accelerator free from ``start_us``, ``end_us`` after the last layer, ``busy_us``
    of other PCIe traffic spread over the layers); the one with the shortest step, the smallest on ties."""
    L = model.layers if layers is None else layers
    act, kv = activation_bytes_per_token(model, dtype_bytes), 2 * kv_width * dtype_bytes
    act_us = batch * cand * act / per_us
    kv_us = batch * (tokens - cand) * kv / per_us + busy_us / L
    gpu = recompute_kv_us(model, acc, batch * cand, dtype_bytes, kv_width)
    done, layers_done = pipeline_us(L, act_us, kv_us, gpu, layer_us, start_us)
    latency = layers_done + end_us
    best = int(np.argmin(latency))
    l_best = int(cand[best])
    pcie_bytes = L * batch * (l_best * act + (tokens - l_best) * kv)
    return Restore(method, tokens, batch, l_best, float(pcie_bytes), float(pcie_bytes / per_us),
                   float(L * gpu[best]), float(done[best]), float(latency[best]))


def restore_in_pass(method: str, model: Model, acc: Accelerator, tokens: int, pass_us: float, pcie_GBps: float,
                    kv_width: int | None = None, pcie_busy_us: float | Sequence[float] = 0.0, dtype_bytes: int = 2,
                    stage_layers: Sequence[int] | None = None) -> Restore:
    """A serving pass of ``pass_us`` that first needs ``tokens`` tokens' KV back from host memory
    (``--prefix-reuse``, or a swap-in under ``--kv-restore partial``), on accelerators holding ``kv_width``
    of each layer's K and V columns (the TP share; every rank restores its shard over its own PCIe at the
    same time).

    The pass runs layer by layer (``pass_us / layers`` each) as :func:`pipeline_us` lays out, a layer
    waiting for its KV; ``pcie_busy_us`` is what the pass's collectives keep the same PCIe direction
    busy (NIC DMA reads from host memory), spread over the layers, so a host-ring AllReduce slows the
    restore more than DirectReduce does. ``step_us`` is the pass with the restore; ``load`` is
    ``partial`` with ``l = 0``, and ``partial`` takes the best ``l``.

    ``stage_layers`` (pipeline parallelism: the layers of each stage, summing to the model's) makes every
    stage restore its own layers over its own PCIe, all starting with the pass, while stage ``s`` computes
    from the moment stage ``s - 1`` has finished its last layer; ``pcie_busy_us`` is then one value per
    stage, and each stage takes its own best ``l`` (greedy per stage is optimal: a stage's end only grows
    with its start). ``split`` is stage 0's, ``splits`` every stage's."""
    if method not in ("load", "partial"):
        raise WorkloadError(f"a restore inside a pass is load or partial, not '{method}'")
    stages = [model.layers] if stage_layers is None else [int(n) for n in stage_layers]
    busy = [float(pcie_busy_us)] if np.ndim(pcie_busy_us) == 0 else [float(b) for b in pcie_busy_us]
    if sum(stages) != model.layers or min(stages) < 1 or len(busy) != len(stages):
        raise WorkloadError(f"a restore over pipeline stages needs each stage's layers (>= 1, summing to "
                            f"{model.layers}) and one PCIe busy time per stage, got {stages} and {busy}")
    if tokens < 0 or pass_us < 0 or min(busy) < 0:
        raise WorkloadError(f"a restore needs tokens, pass time and PCIe busy time >= 0, got {tokens}, {pass_us}, "
                            f"{min(busy)}")
    if not pcie_GBps > 0:
        raise WorkloadError(f"PCIe bandwidth must be > 0 GB/s, got {pcie_GBps}")
    w = model.kv_width if kv_width is None else kv_width
    cand = np.arange(tokens + 1, dtype=np.float64) if method == "partial" else np.zeros(1)
    layer_us = pass_us / model.layers
    start = 0.0
    parts = []
    for n, b in zip(stages, busy):
        part = _best_split(method, model, acc, tokens, 1, cand, pcie_GBps * 1e3, w, layer_us, start, 0.0, b,
                           dtype_bytes, layers=n)
        parts.append(part)
        start = part.step_us
    if len(parts) == 1:
        return parts[0]
    return Restore(method, tokens, 1, parts[0].split, sum(p.pcie_bytes for p in parts), sum(p.pcie_us for p in parts),
                   sum(p.compute_us for p in parts), max(p.time_us for p in parts), parts[-1].step_us,
                   tuple(p.split for p in parts))
