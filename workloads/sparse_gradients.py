"""Why an embedding table's gradient is block-sparse in data-parallel training, as data.

In one iteration a data-parallel rank looks up one row of the embedding table per token of its batch, so
the table's gradient on that rank is non-zero exactly in the rows of the tokens it saw and zero in every
other row (PyTorch's ``nn.Embedding(sparse=True)`` returns just those rows). A zero-block sparse AllReduce
(OmNICCL, OmniReduce) cuts the flattened ``vocab x dim`` gradient into blocks of ``block_size`` elements
and sends only the blocks that touch a non-zero row.

Tokens are drawn from a Zipf law over the vocabulary, ``P(row k) ~ 1 / (k + 1)^s``: row ``k`` is the
``(k+1)``-th most frequent token (byte-pair vocabularies number frequent tokens first). ``s = 1`` is Zipf's
law for word frequencies; ``s = 0`` is uniform. Each rank draws its own batch, seeded by (seed, rank):
deterministic, and independent of how ranks are placed on processes. docs/model.md §22.2.
"""

from __future__ import annotations

import numpy as np

from nicemu.errors import WorkloadError

#: Zipf's law for word frequencies: exponent about 1 (Zipf 1949; Piantadosi 2014; docs/model.md §22.2)
ZIPF_EXPONENT = 1.0
#: OmniReduce's default block: 256 elements
BLOCK_SIZE = 256
#: the seed stream of the token draws (apart from every other seeded draw of the project)
_STREAM = 0x7A1F


def token_ids(rank: int, tokens: int, vocab: int, exponent: float = ZIPF_EXPONENT, seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s batch: ``tokens`` token ids drawn from the Zipf law of ``exponent`` over ``vocab`` rows."""
    if vocab < 1 or tokens < 0:
        raise WorkloadError(f"need a vocabulary of at least one row and tokens >= 0, got {vocab} and {tokens}")
    if not (np.isfinite(exponent) and exponent >= 0):
        raise WorkloadError(f"the Zipf exponent must be finite and >= 0, got {exponent}")
    rng = np.random.default_rng([seed, _STREAM, rank])
    if exponent == 0:
        return rng.integers(0, vocab, size=tokens)
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(tokens), side="right"), vocab - 1)


def touched_rows(ids: np.ndarray, vocab: int) -> np.ndarray:
    """(vocab,) bool: the rows whose gradient is non-zero (a row is non-zero iff one of its tokens is in the batch)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise WorkloadError(f"token ids must be in [0, {vocab})")
    rows = np.zeros(vocab, dtype=bool)
    rows[ids] = True
    return rows


def block_mask(rows: np.ndarray, dim: int, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """(blocks,) bool: non-zero blocks of the flattened ``len(rows) x dim`` gradient whose non-zero rows are ``rows``.

    Block ``b`` holds elements ``[b * block_size, (b + 1) * block_size)`` of the row-major table (the last may
    be short); it is non-zero iff a row it overlaps is non-zero."""
    if dim < 1 or block_size < 1:
        raise WorkloadError(f"dim and block size must be >= 1, got {dim} and {block_size}")
    count = len(rows) * dim
    starts = np.arange(0, count, block_size, dtype=np.int64)
    first = starts // dim
    last = (np.minimum(starts + block_size, count) - 1) // dim
    before = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    return before[last + 1] > before[first]


def embedding_masks(nodes: int, tokens: int, vocab: int, dim: int, block_size: int = BLOCK_SIZE,
                    exponent: float = ZIPF_EXPONENT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per rank: (nodes, blocks) block masks and (nodes,) fraction of non-zero rows of the table's gradient."""
    masks, row_density = [], []
    for r in range(nodes):
        rows = touched_rows(token_ids(r, tokens, vocab, exponent, seed), vocab)
        masks.append(block_mask(rows, dim, block_size))
        row_density.append(rows.mean())
    return np.stack(masks), np.array(row_density)


def gradient(rank: int, rows: np.ndarray, dim: int, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Rank ``rank``'s flattened embedding gradient: zero outside ``rows``, non-zero integers in [-4, 4] inside.

    Integers keep every sum exact (in bfloat16 too, up to 64 ranks), so the result can be compared with
    numpy's float64 sum exactly, and the zero blocks of the data are exactly :func:`block_mask`'s."""
    idx = np.flatnonzero(rows)
    out = np.zeros((len(rows), dim), dtype=dtype)
    v = (idx[:, None] * 7 + np.arange(dim)[None, :] * 13 + rank * 5) % 8
    out[idx] = np.where(v < 4, v - 4, v - 3)
    return out.reshape(-1)
