"""How much KV cache fits on the accelerators, in paged blocks, and who holds which blocks.

Every accelerator of an instance stores its shard of the weights; of what is left of
``utilization x HBM`` (vLLM's ``gpu_memory_utilization``), the KV cache takes blocks of
``block_tokens`` tokens. One block spans every shard: a TP rank holds its KV heads of the block's
tokens for the layers of its pipeline stage. The instance has as many blocks as its tightest
accelerator allows (vLLM takes the minimum over its workers). No activation reserve is set aside
(vLLM measures one with a profiling pass), so the block count is an upper bound.

:class:`BlockPool` keeps the block accounting of vLLM v0's block manager: a request's blocks are
allocated for its whole prompt at admission, one more whenever its sequence crosses a block
boundary, and admission keeps a watermark of free blocks (docs/model.md §15.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.models import Model
from nicemu.workloads.parallelism import Parallelism

PREEMPT_MODES = ("recompute", "swap")
DEFAULT_UTILIZATION = 0.9      # vLLM's gpu_memory_utilization default
DEFAULT_BLOCK_TOKENS = 16      # vLLM's block_size default
WATERMARK = 0.01               # vLLM v0's watermark: fraction of blocks kept free at admission
MAX_BLOCK_TOKENS = 1 << 16


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks that hold ``tokens`` tokens."""
    return -(-tokens // block_tokens)


def stage_weight_bytes(model: Model, par: Parallelism, dtype_bytes: int = 2) -> list[int]:
    """Weight bytes one accelerator of each pipeline stage stores (its TP/EP shard).

    Q and O projections and dense MLPs split over TP; K and V split over TP down to one KV head per
    rank (replicated beyond); experts split over TP (EP 1) or are whole on their EP rank; the router is
    replicated; the vocabulary-parallel embedding sits on the first stage and the LM head on the last
    (one copy when tied and PP is 1).
    """
    h, hd = model.hidden, model.head_dim
    attention = 2 * h * model.q_width // par.tp + 2 * h * par.kv_heads_per_rank(model) * hd
    if model.is_moe:
        experts = model.experts * model.expert_params // par.tp if par.ep == 1 else \
            model.experts // par.ep * model.expert_params
    else:
        experts = model.expert_params // par.tp
    layer = attention + experts + model.router_params
    vocab_shard = model.embedding_params // par.tp
    out = []
    stages = par.stage_layers(model.layers)
    for s, layers in enumerate(stages):
        params = len(layers) * layer
        if s == 0:
            params += vocab_shard
        if s == len(stages) - 1 and not (model.tied_embeddings and par.pp == 1):
            params += vocab_shard
        out.append(params * dtype_bytes)
    return out


def stage_kv_bytes_per_token(model: Model, par: Parallelism, dtype_bytes: int = 2) -> list[int]:
    """KV bytes one token takes on one accelerator of each stage: layers x 2 (K, V) x KV heads per rank
    x head_dim x dtype bytes (GQA: KV heads, not attention heads)."""
    per_layer = 2 * par.kv_heads_per_rank(model) * model.head_dim * dtype_bytes
    return [len(layers) * per_layer for layers in par.stage_layers(model.layers)]


@dataclass(frozen=True)
class KvPlan:
    """The KV cache of one instance: blocks, and what a block costs in bytes and in PCIe time."""

    blocks: int
    block_tokens: int
    memory_bytes: float          # HBM of one accelerator
    utilization: float
    weight_bytes: int            # the largest stage's shard of the weights
    block_bytes: int             # one block on the tightest accelerator
    instance_block_bytes: int    # one block summed over every accelerator of the instance
    swap_latency_us: float = 0.0
    swap_us_per_block: float = 0.0   # PCIe time of one block on the accelerator that moves the most

    @property
    def capacity_tokens(self) -> int:
        return self.blocks * self.block_tokens

    @property
    def watermark_blocks(self) -> int:
        """Blocks admission leaves free (vLLM v0: ``int(0.01 x blocks)``)."""
        return int(WATERMARK * self.blocks)

    @property
    def admissible_blocks(self) -> int:
        """The most blocks one request can ever be admitted with."""
        return self.blocks - self.watermark_blocks

    def swap_us(self, blocks: int) -> float:
        """One PCIe transfer of ``blocks`` blocks (each accelerator moves its shard over its own link)."""
        return self.swap_latency_us + blocks * self.swap_us_per_block if blocks else 0.0


def plan_kv(model: Model, acc: Accelerator, par: Parallelism, utilization: float = DEFAULT_UTILIZATION,
            block_tokens: int = DEFAULT_BLOCK_TOKENS, dtype_bytes: int = 2, pcie_GBps: float = math.inf,
            pcie_latency_us: float = 0.0) -> KvPlan:
    """The paged KV cache that fits beside the weights; one-line errors when nothing fits."""
    if not 0 < utilization <= 1:
        raise WorkloadError(f"--gpu-memory-utilization {utilization:g} must be in (0, 1], e.g. 0.9")
    if not 1 <= block_tokens <= MAX_BLOCK_TOKENS:
        raise WorkloadError(f"--kv-block-tokens {block_tokens} must be in 1..{MAX_BLOCK_TOKENS:,}, e.g. 16")
    memory = acc.memory_GB * 1e9
    weights = stage_weight_bytes(model, par, dtype_bytes)
    per_token = stage_kv_bytes_per_token(model, par, dtype_bytes)
    usable = utilization * memory
    where = f"{model.name} at TP {par.tp} PP {par.pp} on {acc.name}"
    if max(weights) >= usable:
        raise WorkloadError(f"{where}: the weights take {max(weights) / 1e9:.2f} GB per accelerator, not less than "
                            f"{utilization:g} x {acc.memory_GB:g} GB = {usable / 1e9:.2f} GB; raise --tp or --pp "
                            f"(or --gpu-memory-utilization)")
    blocks = min(int((usable - w) // (block_tokens * t)) for w, t in zip(weights, per_token))
    if blocks < 1:
        raise WorkloadError(f"{where}: no KV block of {block_tokens} tokens fits beside the weights in "
                            f"{usable / 1e9:.2f} GB; raise --gpu-memory-utilization or lower --kv-block-tokens")
    block_bytes = block_tokens * max(per_token)
    return KvPlan(blocks, block_tokens, memory, utilization, max(weights), block_bytes,
                  block_tokens * sum(per_token) * par.tp, pcie_latency_us,
                  block_bytes / (pcie_GBps * 1e3))


class BlockPool:
    """Free blocks and each request's blocks on the accelerators (and, swapped out, on the host)."""

    def __init__(self, plan: KvPlan) -> None:
        self.plan = plan
        self.free = plan.blocks
        self.held: dict[int, int] = {}          # request id -> blocks on the accelerators
        self.swapped: dict[int, int] = {}       # request id -> blocks in host memory

    def need(self, rid: int, tokens: int) -> int:
        """More blocks request ``rid`` needs to hold ``tokens`` tokens."""
        return max(0, blocks_for(tokens, self.plan.block_tokens) - self.held.get(rid, 0))

    def can_admit(self, blocks: int) -> bool:
        """vLLM v0's admission rule: the watermark stays free after the allocation."""
        return self.free - blocks >= self.plan.watermark_blocks

    def grow(self, rid: int, tokens: int) -> bool:
        """Give ``rid`` the blocks for ``tokens`` tokens if they are free (no watermark: a running sequence)."""
        n = self.need(rid, tokens)
        if n > self.free:
            return False
        self.free -= n
        self.held[rid] = self.held.get(rid, 0) + n
        return True

    def release(self, rid: int) -> int:
        """Drop ``rid``'s blocks on the accelerators; returns how many."""
        n = self.held.pop(rid, 0)
        self.free += n
        return n

    def swap_out(self, rid: int) -> int:
        n = self.release(rid)
        self.swapped[rid] = n
        return n

    def swap_in(self, rid: int) -> int:
        """Bring ``rid``'s blocks back (the caller checked :meth:`can_admit`); returns how many moved."""
        n = self.swapped.pop(rid)
        self.free -= n
        self.held[rid] = n
        return n

    @property
    def used(self) -> int:
        return self.plan.blocks - self.free


def rejection(plan: KvPlan, input_tokens: int, output_tokens: int) -> str | None:
    """Why a request can never be served by this cache, or None.

    Its prompt must be admissible (vLLM v0 ignores a prompt that needs more than the blocks minus the
    watermark) and so must its longest sequence, prompt plus every output token but the last, whose
    KV the last decode step holds: a preempted request is re-admitted with that many tokens.
    """
    limit = plan.admissible_blocks
    prompt = blocks_for(input_tokens, plan.block_tokens)
    if prompt > limit:
        return (f"prompt of {input_tokens} tokens needs {prompt} KV blocks, more than the {limit} "
                f"admissible ({plan.blocks} blocks, {plan.watermark_blocks} kept free)")
    longest = input_tokens + output_tokens - 1
    need = blocks_for(longest, plan.block_tokens)
    if need > limit:
        return (f"{input_tokens} + {output_tokens - 1} tokens need {need} KV blocks, more than the {limit} "
                f"admissible ({plan.blocks} blocks, {plan.watermark_blocks} kept free)")
    return None
