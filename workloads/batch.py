"""What one forward pass (one scheduler iteration) processes: prefill chunks and decode steps.

The scheduler produces these, the compute model times them and the traffic
model turns them into collectives, so all three agree on one definition of a
batch. ``context_tokens`` is always the number of tokens already in the
request's KV cache *before* this iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PrefillChunk:
    """``tokens`` prompt tokens of one request, appended after ``context_tokens`` cached ones."""

    request_id: int
    tokens: int
    context_tokens: int = 0
    completes_prompt: bool = True   # the last chunk of the prompt: it samples the first output token


@dataclass(frozen=True)
class Decode:
    """One output token of one request; it attends to ``context_tokens`` cached tokens plus itself."""

    request_id: int
    context_tokens: int


@dataclass(frozen=True)
class Restore:
    """KV that comes back from host memory during this pass: a reused prompt prefix (``--prefix-reuse``),
    whose first chunk starts after ``tokens`` tokens, or the ``tokens`` tokens of a swapped-out request
    (``--preempt swap --kv-restore partial``)."""

    request_id: int
    tokens: int


@dataclass(frozen=True)
class Batch:
    prefills: tuple[PrefillChunk, ...] = field(default_factory=tuple)
    decodes: tuple[Decode, ...] = field(default_factory=tuple)
    restores: tuple[Restore, ...] = field(default_factory=tuple)
    swap_ins: tuple[Restore, ...] = field(default_factory=tuple)   # swapped-out KV back through the pass

    @property
    def restore_tokens(self) -> int:
        """Tokens whose KV the pass brings back from host memory before it can use them."""
        return sum(r.tokens for r in self.restores)

    @property
    def swap_in_tokens(self) -> int:
        """Tokens of swapped-out requests whose KV the pass brings back itself (``--kv-restore partial``)."""
        return sum(r.tokens for r in self.swap_ins)

    @property
    def prefill_tokens(self) -> int:
        return sum(c.tokens for c in self.prefills)

    @property
    def tokens(self) -> int:
        """Rows of every activation tensor in this forward pass: prefill tokens + one per decode."""
        return self.prefill_tokens + len(self.decodes)

    @property
    def sampled_tokens(self) -> int:
        """Tokens whose logits are computed (LM head): decodes and prompts that finish in this pass."""
        return len(self.decodes) + sum(1 for c in self.prefills if c.completes_prompt)

    @property
    def phase(self) -> str:
        """prefill, decode or mixed (chunked prefill piggybacks on decodes)."""
        if self.prefills and self.decodes:
            return "mixed"
        return "prefill" if self.prefills else "decode"

    def __bool__(self) -> bool:
        return bool(self.prefills or self.decodes)


def make_batch(prefills: list[tuple[int, int]] | None = None, decodes: list[int] | None = None) -> Batch:
    """A batch from plain numbers: prefills as (tokens, context_tokens), decodes as context lengths.

    Request ids are positional; every prefill chunk is taken to finish its prompt.
    """
    pre = tuple(PrefillChunk(i, t, c) for i, (t, c) in enumerate(prefills or []))
    dec = tuple(Decode(len(pre) + i, c) for i, c in enumerate(decodes or []))
    return Batch(pre, dec)
