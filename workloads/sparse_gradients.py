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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nicemu.errors import WorkloadError

#: Zipf's law for word frequencies: exponent about 1 (Zipf 1949; Piantadosi 2014; docs/model.md §22.2)
ZIPF_EXPONENT = 1.0
#: OmniReduce's default block: 256 elements
BLOCK_SIZE = 256
#: the seed stream of the token draws (apart from every other seeded draw of the project)
_STREAM = 0x7A1F


def token_ids(rank: int, tokens: int, vocab: int, exponent: float = ZIPF_EXPONENT, seed: int = 0,
              stream: int = 0) -> np.ndarray:
    """Rank ``rank``'s batch: ``tokens`` token ids drawn from the Zipf law of ``exponent`` over ``vocab`` rows
    (``stream``: one independent draw per id source of a model, 0 for the first)."""
    if vocab < 1 or tokens < 0:
        raise WorkloadError(f"need a vocabulary of at least one row and tokens >= 0, got {vocab} and {tokens}")
    if not (np.isfinite(exponent) and exponent >= 0):
        raise WorkloadError(f"the Zipf exponent must be finite and >= 0, got {exponent}")
    rng = np.random.default_rng([seed, _STREAM, rank] + ([stream] if stream else []))
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
    return tables_mask([rows], (Table("table", len(rows), dim),), block_size)


@dataclass(frozen=True)
class Table:
    """An embedding table: its gradient is non-zero exactly in the rows its lookups hit."""

    name: str
    rows: int
    dim: int
    lookups: int = 1              # rows looked up per sample (a sequence's tokens)
    zipf: float = ZIPF_EXPONENT   # popularity law of the looked-up ids (0: uniform)
    key: str = ""                 # tables with the same key are looked up with the same ids ("": its name)
    sampled: int = 0              # distinct rows added per step by a log-uniform sampler (sampled softmax)
    output: bool = False          # read by the last operator, so its gradient is ready first in backward

    def __post_init__(self) -> None:
        for what in ("rows", "dim", "lookups"):
            if getattr(self, what) < 1:
                raise WorkloadError(f"table {self.name}: {what} must be >= 1, got {getattr(self, what)}")
        if not 0 <= self.sampled <= self.rows:
            raise WorkloadError(f"table {self.name}: sampled rows must be in 0..{self.rows}, got {self.sampled}")

    @property
    def elems(self) -> int:
        return self.rows * self.dim


@lru_cache(maxsize=8)
def log_uniform_rows(count: int, rows: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct ids of ``rows``, each draw ``round(exp(u ln rows)) - 1`` for ``u`` uniform in [0, 1)
    (P(k) = ln((k+1.5)/(k+0.5)) / ln rows for k >= 1), repeated until ``count`` are distinct.

    This is sampled softmax's candidate sampler. It is seeded alike on every data-parallel worker, so every
    rank gets the same ids: drawn once per process (cached, read-only) for every rank and table."""
    rng = np.random.default_rng([seed, _STREAM, 0x5A3])
    seen = np.zeros(rows, dtype=bool)
    got = 0
    while got < count:
        ids = np.rint(np.exp(rng.random(2 * (count - got) + 16) * np.log(rows))).astype(np.int64) - 1
        ids = np.minimum(ids, rows - 1)
        new, first = np.unique(ids, return_index=True)
        new = new[np.argsort(first)]              # in the order they were drawn
        new = new[~seen[new]][:count - got]
        seen[new] = True
        got += len(new)
    out = np.flatnonzero(seen)
    out.setflags(write=False)
    return out


def table_rows(rank: int, samples: int, tables: tuple[Table, ...], seed: int = 0,
               exponent: float | None = None) -> list[np.ndarray]:
    """Rank ``rank``'s touched rows of every table for a batch of ``samples`` samples; ``exponent`` replaces
    every table's Zipf exponent. Tables sharing a key share their ids; each key is its own draw stream."""
    ids: dict[str, tuple[int, np.ndarray]] = {}
    out = []
    for t in tables:
        key = t.key or t.name
        if key not in ids:
            law = t.zipf if exponent is None else exponent
            ids[key] = (t.rows, token_ids(rank, samples * t.lookups, t.rows, law, seed, stream=len(ids)))
        rows, drawn = ids[key]
        if rows != t.rows:
            raise WorkloadError(f"table {t.name}: {t.rows:,} rows but key {key} has {rows:,}")
        touched = touched_rows(drawn, t.rows)
        if t.sampled:
            touched[log_uniform_rows(t.sampled, t.rows, seed)] = True
        out.append(touched)
    return out


def tables_mask(rows: list[np.ndarray], tables: tuple[Table, ...], block_size: int = BLOCK_SIZE) -> np.ndarray:
    """(blocks,) bool over the tables' gradients laid end to end (row-major, no padding): a block is non-zero
    iff it overlaps a touched row of some table."""
    if block_size < 1:
        raise WorkloadError(f"the block size must be >= 1, got {block_size}")
    count = sum(t.elems for t in tables)
    nblocks = -(-count // block_size)
    starts, stops, offset = [], [], 0
    for t, r in zip(tables, rows):
        if len(r) != t.rows:
            raise WorkloadError(f"table {t.name}: {len(r)} row flags for {t.rows} rows")
        idx = np.flatnonzero(r)
        starts.append((offset + idx * t.dim) // block_size)
        stops.append((offset + (idx + 1) * t.dim - 1) // block_size + 1)
        offset += t.elems
    first, after = np.concatenate(starts or [[]]).astype(np.int64), np.concatenate(stops or [[]]).astype(np.int64)
    diff = np.bincount(first, minlength=nblocks + 1) - np.bincount(after, minlength=nblocks + 1)
    return np.cumsum(diff[:nblocks]) > 0


def tables_masks(nodes: int, samples: int, tables: tuple[Table, ...], block_size: int = BLOCK_SIZE, seed: int = 0,
                 exponent: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per rank: (nodes, blocks) block masks of the tables laid end to end, and (nodes,) fraction of their rows
    touched."""
    total = sum(t.rows for t in tables)
    masks, row_density = [], []
    for r in range(nodes):
        rows = table_rows(r, samples, tables, seed, exponent)
        masks.append(tables_mask(rows, tables, block_size))
        row_density.append(sum(int(x.sum()) for x in rows) / total)
    return np.stack(masks), np.array(row_density)


def tables_gradient(rank: int, rows: list[np.ndarray], tables: tuple[Table, ...],
                    dtype: str | np.dtype = "float32") -> np.ndarray:
    """Rank ``rank``'s gradients of the tables laid end to end (each as :func:`gradient`)."""
    return np.concatenate([gradient(rank, r, t.dim, dtype) for t, r in zip(tables, rows)])


def embedding_masks(nodes: int, tokens: int, vocab: int, dim: int, block_size: int = BLOCK_SIZE,
                    exponent: float = ZIPF_EXPONENT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per rank: (nodes, blocks) block masks and (nodes,) fraction of non-zero rows of one table's gradient."""
    return tables_masks(nodes, tokens, (Table("table", vocab, dim, zipf=exponent),), block_size, seed)


def gradient(rank: int, rows: np.ndarray, dim: int, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Rank ``rank``'s flattened embedding gradient: zero outside ``rows``, non-zero integers in [-4, 4] inside.

    Integers keep every sum exact (in bfloat16 too, up to 64 ranks), so the result can be compared with
    numpy's float64 sum exactly, and the zero blocks of the data are exactly :func:`block_mask`'s."""
    idx = np.flatnonzero(rows)
    out = np.zeros((len(rows), dim), dtype=dtype)
    v = (idx[:, None] * 7 + np.arange(dim)[None, :] * 13 + rank * 5) % 8
    out[idx] = np.where(v < 4, v - 4, v - 3)
    return out.reshape(-1)


def distinct_expected(probs: np.ndarray, draws: int) -> float:
    """Expected distinct ids in ``draws`` independent draws from ``probs``: sum_k 1 - (1 - p_k)^draws."""
    return float(np.sum(-np.expm1(draws * np.log1p(-np.asarray(probs, dtype=np.float64)))))


def fit_zipf(counts: np.ndarray, draws: int, low: float = 0.0, high: float = 4.0) -> float:
    """The Zipf exponent over ``len(counts)`` rows whose ``draws`` draws touch as many distinct rows, in
    expectation, as draws from the measured ``counts`` do (bisection; the count falls as the exponent grows).

    One exponent cannot follow a real vocabulary over every batch size (its tail is steeper than its
    head), so it is fitted at the batch that matters: the rows one rank's batch touches."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or np.any(counts < 0) or counts.sum() <= 0 or draws < 1:
        raise WorkloadError("need a vector of at least two non-negative counts, not all zero, and draws >= 1")
    want = distinct_expected(np.sort(counts)[::-1] / counts.sum(), draws)
    ranks = np.arange(1, len(counts) + 1, dtype=np.float64)
    for _ in range(60):
        s = (low + high) / 2
        law = ranks ** -s
        low, high = (s, high) if distinct_expected(law / law.sum(), draws) > want else (low, s)
    return (low + high) / 2
