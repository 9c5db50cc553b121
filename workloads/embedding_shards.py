"""Why the embedding AllReduce is block-sparse, as data: per-rank row and block masks and inputs.

With a vocabulary-parallel embedding (Megatron ``VocabParallelEmbedding``,
vLLM ``VocabParallelEmbedding``) TP rank ``r`` stores vocabulary rows
``[r * S, (r + 1) * S)`` with ``S = ceil(vocab / tp)``. For each token it
writes the embedding row if it owns the token id and zeros otherwise; an
AllReduce (sum) then gives every rank every row. So on each rank about
``1 / tp`` of the ``tokens x hidden`` rows are non-zero, and a zero-block
sparse AllReduce (OmNICCL, OmniReduce) only needs to move those.

Token ids are not part of a trace, so they are drawn uniformly from the
vocabulary, seeded by (seed, iteration): deterministic, and each rank owns
each row with probability ``S / vocab`` (about 1 / tp).
"""

from __future__ import annotations

import numpy as np

from nicemu.errors import WorkloadError


def vocab_shard_size(vocab: int, tp: int) -> int:
    """Vocabulary rows per TP rank (the last shard may be shorter)."""
    return -(-vocab // tp)


def token_ids(iteration: int, tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Synthetic token ids of one forward pass, uniform over the vocabulary."""
    return np.random.default_rng([seed, iteration]).integers(0, vocab, size=tokens)


def batch_token_ids(tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Synthetic token ids of a forward pass of ``tokens`` tokens: one seeded draw per batch size.

    ``nicemu serve`` uses these instead of :func:`token_ids` so that the sparse
    embedding AllReduce's timing, like the dense collectives', depends only on
    the batch size and can be memoised (the block pattern of a pass is still a
    uniform random draw: each row is owned by one rank, each with probability
    about 1 / tp).
    """
    return np.random.default_rng([seed, 0x5EED, tokens]).integers(0, vocab, size=tokens)


ROW_PATTERNS = 257   # distinct embedding rows of the synthetic table (a prime, so neighbouring ids differ)


def embedding_rows(ids: np.ndarray, hidden: int, dtype: str | np.dtype = "bfloat16") -> np.ndarray:
    """(tokens, hidden) embedding output after the AllReduce: row ``t`` is row ``t mod 257`` of a fixed table.

    Entries are non-zero integers in [-4, 4], so sums stay exact in bfloat16 and
    the zero blocks of each rank's input are exactly the rows it does not own.
    """
    v = (np.arange(ROW_PATTERNS)[:, None] * 7 + np.arange(hidden)[None, :] * 13) % 8
    table = np.where(v < 4, v - 4, v - 3).astype(dtype)
    return table[np.asarray(ids, dtype=np.int64) % ROW_PATTERNS]


def row_owner(ids: np.ndarray, vocab: int, tp: int) -> np.ndarray:
    """TP rank whose vocabulary shard holds each token id."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise WorkloadError(f"token ids must be in [0, {vocab})")
    return ids // vocab_shard_size(vocab, tp)


def embedding_row_mask(ids: np.ndarray, vocab: int, tp: int) -> np.ndarray:
    """(tp, tokens) bool: which rows of the embedding output each rank contributes (exactly one rank per row)."""
    return row_owner(ids, vocab, tp)[None, :] == np.arange(tp)[:, None]


def embedding_block_mask(ids: np.ndarray, vocab: int, tp: int, hidden: int, block_size: int) -> np.ndarray:
    """(tp, blocks) bool: non-zero blocks of each rank's flattened ``tokens x hidden`` input.

    Blocks are ``block_size`` consecutive elements of the row-major tensor, the
    layout the sparse algorithms cut (the last block may be short). A block is
    non-zero if any row it touches is owned by the rank.
    """
    rows = embedding_row_mask(ids, vocab, tp)
    count = rows.shape[1] * hidden
    starts = np.arange(0, count, block_size)
    first_row = starts // hidden
    last_row = np.minimum(starts + block_size, count) - 1
    last_row = last_row // hidden
    owned_before = np.concatenate([np.zeros((tp, 1), dtype=np.int64), np.cumsum(rows, axis=1)], axis=1)
    return (owned_before[:, last_row + 1] - owned_before[:, first_row]) > 0


def embedding_density(ids: np.ndarray, vocab: int, tp: int) -> np.ndarray:
    """Fraction of non-zero rows per rank (about 1 / tp each; they sum to 1)."""
    rows = embedding_row_mask(ids, vocab, tp)
    return rows.mean(axis=1) if rows.shape[1] else np.zeros(tp)


def embedding_input(rank: int, ids: np.ndarray, vocab: int, tp: int, hidden: int,
                    dtype: str | np.dtype = "float32", seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s flattened embedding output before the AllReduce: owned rows non-zero, others zero.

    Owned rows hold values in [1, 2) (never zero, so the block masks above
    describe the data exactly); the sum over ranks has every row non-zero.
    """
    if not 0 <= rank < tp:
        raise WorkloadError(f"rank {rank} outside TP group of {tp}")
    rows = embedding_row_mask(ids, vocab, tp)[rank]
    out = np.zeros((len(rows), hidden), dtype=dtype)
    rng = np.random.default_rng([seed, rank, len(rows)])
    out[rows] = 1.0 + rng.random((int(rows.sum()), hidden))
    return out.reshape(-1)
