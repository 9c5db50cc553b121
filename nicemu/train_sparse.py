"""``nicemu train --sparse-embedding ALGO``: the embedding table's gradient reduced as its own sparse AllReduce.

As PyTorch does with a sparse embedding kept out of DDP's buckets, the table's gradient leaves the dense
buckets and is reduced once backward has ended, with a zero-block sparse algorithm (omniccl, omniccl-cpu,
omnireduce). With an embedding model (workloads/embedding_models.py) every table leaves the buckets and the
tables are reduced end to end in one call. Its block mask on every rank follows from the rows its batch
looks up (workloads/sparse_gradients.py), so its density is an output. The sparse model times it alone for those
masks and hands over its messages as flows (collectives/model/sparse_flows.py), so it shares the fabric
with the dense buckets still in flight, both ways (docs/model.md §22.2). Under ``--executor mpi`` the
gradient really moves with its mask on every rank, is checked against numpy's float64 sum, and its time
alone must equal the model's.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from nicemu.collectives.model.concurrent import Call, ConcurrentTiming
from nicemu.collectives.model.sparse_flows import SparseCall, SparseFlows, run_shared, sparse_call_flows
from nicemu.collectives.registry import REGISTRY, is_sparse, names, sparse_config
from nicemu.errors import NicemuError, UsageError
from nicemu.memory import USABLE_SHARE, GiB, available_bytes, sparse_bytes, spot_window_bytes
from nicemu.workloads import sparse_gradients as sg
from nicemu.workloads.embedding_models import EmbeddingModel
from nicemu.workloads.sparse_gradients import Table
from nicemu.workloads.training import EMBEDDING

#: largest --block-size (as bench)
MAX_BLOCK_SIZE = 1 << 20
#: elements compared with the reference at a time (bounds the float64 copy)
CHECK_CHUNK = 1 << 22


def add_arguments(p: argparse.ArgumentParser) -> None:
    sparse = ", ".join(names(kind="sparse"))
    p.add_argument("--sparse-embedding", metavar="ALGO", default=None,
                   help=f"reduce the embedding table's gradient on its own with a sparse algorithm ({sparse}); "
                        "default off: it sits in a dense bucket")
    p.add_argument("--block-size", type=int, default=sg.BLOCK_SIZE,
                   help="elements per block of the sparse embedding AllReduce (default 256, OmniReduce's)")
    p.add_argument("--token-zipf", type=float, default=None, metavar="S",
                   help="Zipf exponent of the ids that pick the embedding rows (default 1, Zipf's law, for "
                        "transformers; each table's own for embedding models; 0: uniform)")


def check(args: argparse.Namespace, model) -> str | None:
    """The sparse algorithm (or None), refused with a one-line error where it cannot run."""
    algo = args.sparse_embedding
    if algo is None:
        return None
    if not is_sparse(algo):
        sparse = ", ".join(names(kind="sparse"))
        what = "a dense algorithm" if algo in REGISTRY else "not an algorithm"
        raise UsageError(f"--sparse-embedding {algo}: {what}; use a sparse one ({sparse})")
    if not 1 <= args.block_size <= MAX_BLOCK_SIZE:
        raise UsageError(f"--block-size {args.block_size} is outside 1..{MAX_BLOCK_SIZE:,}")
    if args.token_zipf is not None and not (np.isfinite(args.token_zipf) and 0 <= args.token_zipf <= 10):
        raise UsageError(f"--token-zipf {args.token_zipf} is outside 0..10; e.g. 1 (Zipf's law) or 0 (uniform)")
    if isinstance(model, EmbeddingModel):
        return algo
    if model.vocab < 1:
        raise UsageError(f"--sparse-embedding: {model.name} has no embedding table; drop --sparse-embedding")
    if model.tied_embeddings:
        raise UsageError(f"--sparse-embedding: {model.name} ties its embedding to the LM head, whose gradient is "
                         "dense; drop --sparse-embedding or use a model with an untied head")
    return algo


def data_parallel_only(args: argparse.Namespace) -> None:
    """Refuse --sparse-embedding with tensor or pipeline parallelism (not modelled)."""
    if args.sparse_embedding is not None:
        raise UsageError("--sparse-embedding runs with data parallelism only for now: drop it, or use --tp 1 "
                         "--pp 1 --micro-batches 1")


@dataclass(frozen=True)
class EmbeddingCall:
    """The embedding gradient's sparse AllReduce: masks, and its time alone from when backward ends."""

    algo: str
    start_us: float
    alone_us: float
    elems: int
    itemsize: int
    block_size: int
    masks: np.ndarray             # (nodes, blocks)
    row_density: np.ndarray       # per rank: fraction of the table's rows touched
    wire_bytes: int
    flows: SparseFlows            # its messages alone, for the shared replay
    tables: tuple[Table, ...] = ()
    exponent: float | None = None  # replaces every table's Zipf exponent (None: each table's own)
    own: dict = field(default_factory=dict, compare=False)  # its replay alone, done once for all algorithms

    @property
    def density(self) -> float:
        """Mean over ranks of the fraction of non-zero blocks."""
        return float(self.masks.mean())

    @property
    def union_density(self) -> float:
        """Fraction of blocks non-zero on some rank (the result's non-zero blocks)."""
        return float(self.masks.any(axis=0).mean())


def tables(model) -> tuple[Table, ...]:
    """The tables a sparse algorithm reduces: an embedding model's, or a transformer's embedding (Zipf's law)."""
    if isinstance(model, EmbeddingModel):
        return model.tables
    return (Table(EMBEDDING, model.vocab, model.hidden, zipf=sg.ZIPF_EXPONENT),)


def embedding_call(algo: str, model, topo, profile, itemsize: int, samples: int, start_us: float,
                   block_size: int, exponent: float | None, seed: int = 0) -> EmbeddingCall:
    """Masks from every rank's batch of ``samples``, the sparse model's time for them and its messages (the
    same time)."""
    tabs = tables(model)
    masks, rows = sg.tables_masks(topo.nodes, samples, tabs, block_size, seed, exponent)
    cfg = sparse_config(algo, topo.nodes, block_size=block_size)
    f = sparse_call_flows(cfg, masks, profile, itemsize)
    t = f.timing
    return EmbeddingCall(algo, start_us, t.emulated_us, sum(x.elems for x in tabs), itemsize, block_size, masks,
                         rows, t.wire_bytes, f, tabs, exponent)


def share(rec: dict, calls: list[Call], dense: list[ConcurrentTiming], emb: EmbeddingCall, topo, profile) -> None:
    """Put the embedding call on the fabric beside the dense ``calls`` (``dense``: their timings without it, as
    ``rec`` has them) and update one algorithm's record. The call starts when backward ends; on one stream it
    follows the last dense bucket at its alone time. ``iteration_embedding_alone_us`` keeps the accounting
    with the call alone (the buckets sharing only among themselves)."""
    shared, (e,) = run_shared(calls, [SparseCall(emb.flows, np.arange(topo.nodes), emb.start_us)], topo, profile,
                              emb.own)
    end = emb.start_us + e.emulated_us
    bucket_end = [c.start_us + t.emulated_us for c, t in zip(calls, shared)]
    overlap = any(c.start_us < end and b > emb.start_us for c, b in zip(calls, bucket_end))
    rec["iteration_embedding_alone_us"] = max(rec["iteration_us"], emb.start_us + emb.alone_us)
    rec["iteration_us"] = max(rec["compute_us"], end, *bucket_end)
    rec["exposed_us"] = rec["iteration_us"] - rec["compute_us"]
    rec["iteration_no_sharing_us"] = max(rec["iteration_no_sharing_us"], emb.start_us + emb.alone_us)
    rec["iteration_one_stream_us"] = rec["iteration_one_stream_us"] + emb.alone_us
    rec["slowest_bucket_slowdown"] = max(t.slowdown_vs_alone for t in shared)
    rec["slowest_bucket_slowdown_embedding_alone"] = max(t.slowdown_vs_alone for t in dense)
    rec.update(sparse_embedding=emb.algo, embedding_us=e.emulated_us, embedding_alone_us=emb.alone_us,
               embedding_slowdown_vs_alone=e.slowdown_vs_alone, embedding_slowed_flows=e.slowed_flows,
               embedding_flows=len(emb.flows.flows.src), embedding_start_us=emb.start_us,
               embedding_bytes=emb.elems * emb.itemsize, embedding_density=emb.density,
               embedding_union_density=emb.union_density,
               embedding_row_density=float(emb.row_density.mean()), embedding_block_size=emb.block_size,
               embedding_wire_bytes=emb.wire_bytes, embedding_contends=overlap)


def real_embedding(emu, emb: EmbeddingCall, dtype: np.dtype, samples: int, seed: int = 0) -> int:
    """Reduce the embedding gradient with real data on every rank; elements wrong against numpy's float64 sum.

    The MPI executor's time, from the masks of the data itself, must equal the model's for the derived masks."""
    from mpi4py import MPI  # only the MPI executor gets here
    ref = np.zeros(emb.elems, dtype=np.float64)
    work = np.zeros((emu.local_nodes, emb.elems), dtype=dtype)
    local = list(emu.node_range)
    for r in range(emu.topology.nodes):
        g = sg.tables_gradient(r, sg.table_rows(r, samples, emb.tables, seed, emb.exponent), emb.tables, dtype)
        ref += g.astype(np.float64)
        if r in local:
            work[local.index(r)] = g
    timing = emu.run_inplace("allreduce", work, "sum", emb.algo, {"block_size": emb.block_size})
    if (timing.emulated_us, timing.wire_bytes) != (emb.alone_us, emb.wire_bytes):
        raise NicemuError(f"internal error: the MPI executor timed the sparse embedding AllReduce at "
                          f"{timing.emulated_us} us and {timing.wire_bytes} wire bytes, the model at "
                          f"{emb.alone_us} us and {emb.wire_bytes}; please report it")
    wrong = 0
    for row in work:
        for lo in range(0, len(row), CHECK_CHUNK):
            part = slice(lo, lo + CHECK_CHUNK)
            wrong += int(np.count_nonzero(row[part].astype(np.float64) != ref[part]))
    total = np.zeros(1, dtype=np.int64)
    emu.comm.Allreduce(np.array([wrong], dtype=np.int64), total, op=MPI.SUM)
    return int(total[0])


def check_memory(comm, local_nodes: int, emb: EmbeddingCall) -> None:
    """Collective: every rank refuses alike when some host cannot hold its nodes' gradients, one rank's gradient
    while it is built, the float64 reference, and the sparse run's masks and spot windows (as bench counts them)."""
    from mpi4py import MPI  # only the MPI executor gets here
    cfg = sparse_config(emb.algo, len(emb.masks), block_size=emb.block_size)
    nbytes = emb.elems * emb.itemsize
    need = np.array([(local_nodes + 1) * nbytes + 8.0 * emb.elems + 9.0 * CHECK_CHUNK
                     + sparse_bytes(cfg, len(emb.masks), nbytes, emb.itemsize)
                     + spot_window_bytes(cfg, len(emb.masks), comm.size, emb.itemsize)])
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    total = np.empty(1)
    host.Allreduce(need, total, op=MPI.SUM)
    host.Free()
    every = np.empty((comm.size, 2))
    comm.Allgather(np.array([total[0], available_bytes()]), every)
    worst = int(np.argmax(every[:, 0] / every[:, 1]))
    if every[worst, 0] > USABLE_SHARE * every[worst, 1]:
        raise UsageError(f"--sparse-embedding under --executor mpi: the embedding gradients ({emb.elems:,} elements "
                         f"per node) need about {every[worst, 0] / GiB:.1f} GiB on the host of rank {worst} but "
                         f"{every[worst, 1] / GiB:.1f} GiB is available; use --executor model, or a smaller model")


def describe(emb: EmbeddingCall) -> str:
    """The header line of the embedding call."""
    shape = (f"{emb.tables[0].rows:,} x {emb.tables[0].dim} rows" if len(emb.tables) == 1 else
             f"{len(emb.tables)} tables, {sum(t.rows for t in emb.tables):,} rows")
    return (f"# embedding gradient ({shape}, {emb.elems * emb.itemsize / 2**20:.1f} MiB) "
            f"out of the buckets, reduced with {emb.algo} when backward ends: {emb.density:.2%} of its "
            f"{emb.block_size}-element blocks non-zero per rank ({emb.union_density:.2%} on some rank, rows "
            f"{emb.row_density.mean():.2%}), {emb.alone_us / 1e3:.3f} ms alone; it shares the fabric with the "
            f"buckets still in flight (iter includes it)")


def footer(rec: dict) -> str:
    """The line after the table for one algorithm: the embedding call sharing the fabric, and alone."""
    return (f"# embedding with {rec['algo']}: {rec['embedding_us'] / 1e3:.3f} ms sharing the fabric "
            f"({rec['embedding_alone_us'] / 1e3:.3f} alone), iter {rec['iteration_us'] / 1e3:.2f} ms "
            f"({rec['iteration_embedding_alone_us'] / 1e3:.2f} with the call alone)")


def exclude(algo: str | None, model) -> tuple[str, ...]:
    """The tensors the dense buckets leave out."""
    return tuple(t.name for t in tables(model)) if algo else ()
