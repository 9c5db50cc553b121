"""``nicemu train``: data-parallel training iterations, gradient buckets overlapping backward and each other.

Each data-parallel rank computes forward and backward on its share of the global batch (roofline,
workloads/training.py). Gradient buckets (PyTorch DDP's: 1 MiB first, then ``--bucket-mb``) are
AllReduced as backward produces them, in reverse layer order. Their AllReduces start at their ready
times and share the fabric with each other (collectives/model/concurrent.py, docs/model.md §21.6 and
§22). An iteration ends when backward and the last bucket are done; the exposed communication is what
sticks out past the compute. Under ``--executor mpi`` every bucket is really reduced (synthetic
gradients) and checked against numpy; the times come from the same model, computed once by rank 0 while the
other ranks wait (nicemu/rank0.py). ``--tp``, ``--pp`` and
``--micro-batches`` above 1 run Megatron-LM's tensor and pipeline parallelism (nicemu/train_parallel.py).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from nicemu import argtypes, train_sparse
from nicemu.collectives.api.checks import check_algo, check_dtype_op
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.collectives.registry import get, is_sparse
from nicemu.errors import NicemuError, UsageError
from nicemu.memory import check_fits
from nicemu.nic.ops import is_integer
from nicemu.nic.profile import load_profile
from nicemu.rank0 import on_rank0
from nicemu.sizes import format_size
from nicemu.topologies import parse_topology, ring
from nicemu.workloads import embedding_models
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.embedding_models import EmbeddingModel
from nicemu.workloads.models import load_model
from nicemu.workloads.training import BUCKET_BYTES, plan

#: what to change when the buckets do not fit with real data
TOO_BIG = ("use --executor model for timing only, more hosts under mpiexec, or a smaller model (the embedding and "
           "LM head are buckets of their own whatever --bucket-mb)")
HEADER = (f"{'algo':>22} {'iter(ms)':>10} {'compute':>10} {'exposed':>10} {'no share':>10} {'one stream':>10} "
          f"{'speedup':>8} {'#wrong':>6}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama3-8b",
                   help="a transformer preset or config.json path, or an embedding model (NCF, LSTM-GBW, DeepLight; "
                        "nicemu info)")
    p.add_argument("--accelerator", default="H100-SXM", help="A100-80G or H100-SXM (roofline compute)")
    p.add_argument("--dp", type=int, default=None,
                   help="data-parallel ranks (default: the topology's nodes over TP x PP)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (Megatron-LM's, innermost)")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages (Megatron-LM's 1F1B schedule)")
    p.add_argument("--micro-batches", type=int, default=None, metavar="M",
                   help="micro-batches per iteration and replica (default: one sequence each with --pp > 1, "
                        "else 1)")
    p.add_argument("--global-batch", type=int, default=None, metavar="N",
                   help="sequences per iteration, all ranks (default 64); samples for an embedding model (default "
                        "its source's batch per worker x DP)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per sequence (default 2048; fixed by an embedding model)")
    p.add_argument("--bucket-mb", type=float, default=BUCKET_BYTES / 2**20,
                   help="gradient bucket cap in MiB (PyTorch DDP's bucket_cap_mb, default 25)")
    p.add_argument("--grad-dtype", default="float32", help="gradient type reduced (float32 or bfloat16)")
    p.add_argument("--algo", default="ring,host-best,directreduce", help="comma list of dense algorithms")
    p.add_argument("--topology", default=None, help="default: ring of --dp nodes")
    p.add_argument("--profile", default="400g-gen5", help="a shipped profile or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--executor", default="model", choices=["model", "mpi"],
                   help="model (default) or mpi: every bucket really reduced and checked (mpiexec)")
    p.add_argument("--json", type=argtypes.output_file, help="write one record per algorithm")
    train_sparse.add_arguments(p)


def check_algos_dtype(args) -> tuple[list[str], np.dtype]:
    """The ``--algo`` list (dense, each once) and the gradients' type (floating point)."""
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    if not algos:
        raise UsageError("--algo is empty; e.g. --algo ring,directreduce")
    for a in algos:
        check_algo(a)
        if is_sparse(a) or not get(a).emulated:
            raise UsageError(f"--algo {a}: train reduces dense gradients; use dense algorithms such as ring, "
                             "host-best, directreduce")
    if len(set(algos)) != len(algos):
        raise UsageError("--algo names an algorithm twice; give each once")
    dtype = check_dtype_op(args.grad_dtype, "sum")
    if is_integer(dtype):
        raise UsageError(f"--grad-dtype {args.grad_dtype}: gradients are floating point; use float32 or bfloat16")
    return algos, dtype


def check_sizes(args, max_batch: int = 1 << 24) -> None:
    """``--global-batch``, ``--seq-len`` and ``--bucket-mb`` within their ranges."""
    for flag, value, low, high in (("--global-batch", args.global_batch, 1, max_batch),
                                   ("--seq-len", args.seq_len, 1, 1 << 24)):
        if not low <= value <= high:
            raise UsageError(f"{flag} {value} is outside {low}..{high:,}")
    if not 1 / 1024 <= args.bucket_mb <= 1 << 20:
        raise UsageError(f"--bucket-mb {args.bucket_mb:g} is outside 1/1024..1,048,576")


def defaults(args) -> EmbeddingModel | None:
    """Fill --global-batch and --seq-len for a transformer; an embedding model (returned) refuses what it
    fixes itself, and its batch follows once DP is known."""
    emb = embedding_models.find(args.model)
    if emb is None:
        args.global_batch = 64 if args.global_batch is None else args.global_batch
        args.seq_len = 2048 if args.seq_len is None else args.seq_len
        return None
    if args.seq_len is not None:
        raise UsageError(f"--seq-len: {emb.name}'s samples are {emb.sample}s; drop --seq-len")
    if args.tp != 1 or args.pp != 1 or args.micro_batches not in (None, 1):
        raise UsageError(f"--tp/--pp/--micro-batches: {emb.name} trains with data parallelism only; drop them")
    args.seq_len = emb.seq_len
    return emb


def load_setup(args, embedding_model: EmbeddingModel | None = None):
    """(model, accelerator, profile) of the options, each error one line; ``embedding_model``: the one
    ``--model`` names, found already by :func:`defaults`."""
    try:
        model = embedding_model or load_model(args.model)
        acc = load_accelerator(args.accelerator)
    except NicemuError as exc:
        raise UsageError(str(exc)) from None
    return model, acc, load_profile(args.profile, args.overrides)


def _check(args, comm, emb: EmbeddingModel | None = None):
    algos, dtype = check_algos_dtype(args)
    if args.topology is not None:
        topo = parse_topology(args.topology)
    else:
        dp = args.dp if args.dp is not None else (comm.size if comm.size > 1 else 8)
        if dp < 2:
            raise UsageError(f"--dp {dp}: data parallelism needs at least 2 ranks")
        topo = ring(dp)
    if topo.ranks_per_node > 1:
        raise UsageError("nicemu train runs one rank per node")
    if args.dp is not None and args.dp != topo.nodes:
        raise UsageError(f"--dp {args.dp} does not match {topo.name} ({topo.nodes} nodes); give one of them")
    if emb is not None and args.global_batch is None:
        args.global_batch = emb.batch * topo.nodes
    check_sizes(args, 1 << 24 if emb is None else 1 << 40)
    if args.global_batch % topo.nodes:
        raise UsageError(f"--global-batch {args.global_batch} does not split over {topo.nodes} data-parallel "
                         f"ranks; use a multiple of {topo.nodes}")
    if args.executor == "mpi" and comm.size > topo.nodes:
        raise UsageError(f"{comm.size} ranks for {topo.name}: run with at most {topo.nodes} ranks")
    model, acc, profile = load_setup(args, emb)
    train_sparse.check(args, model)
    return algos, dtype, topo, model, acc, profile


def _bucket_calls(algo: str, buckets, topo, profile, itemsize: int) -> tuple[list[Call], list[str]]:
    calls, ran, cache = [], [], {}
    nodes = np.arange(topo.nodes)
    for b in buckets:
        if b.elems not in cache:
            cache[b.elems] = call_schedule("allreduce", algo, topo, profile, b.elems, itemsize)
        sched, name = cache[b.elems]
        calls.append(Call(sched, nodes, itemsize, start_us=b.ready_us))
        ran.append(name)
    return calls, ran


def iteration(algo: str, tp, topo, profile, itemsize: int, emb=None) -> dict:
    """One iteration under ``algo``: sharing the fabric, without sharing, and with one stream (serial);
    ``emb``: the sparse embedding call (train_sparse.py), which shares the fabric with the buckets."""
    calls, ran = _bucket_calls(algo, tp.buckets, topo, profile, itemsize)
    shared = run_concurrent(calls, topo, profile)     # each bucket's alone time comes with it
    ends = [c.start_us + t.emulated_us for c, t in zip(calls, shared)]
    free = [c.start_us + t.alone_us for c, t in zip(calls, shared)]
    serial = 0.0
    for c, t in zip(calls, shared):
        serial = max(serial, c.start_us) + t.alone_us
    it = max(tp.compute_us, *ends)
    rec = {"algo": algo, "iteration_us": it, "compute_us": tp.compute_us, "exposed_us": it - tp.compute_us,
           "iteration_no_sharing_us": max(tp.compute_us, *free), "iteration_one_stream_us": max(tp.compute_us, serial),
           "buckets": len(calls), "chosen": sorted(set(ran)) if algo == HOST_BEST else None,
           "comm_us": sum(t.alone_us for t in shared),
           "slowest_bucket_slowdown": max(t.slowdown_vs_alone for t in shared)}
    if emb is not None:
        train_sparse.share(rec, calls, shared, emb, topo, profile)
    return rec


def _real_data(algos, tp, topo, profile, dtype, comm, emb=None) -> dict[str, int]:
    """Every bucket of every algorithm really reduced once; elements wrong per algorithm (``embedding``: the
    sparse embedding call's)."""
    from nicemu.bench import _run_mpi, data_options
    from nicemu.collectives.api.emulator import Emulator
    wrong = {}
    with Emulator(comm, topo, profile) as emu:
        biggest = max(b.elems for b in tp.buckets) * dtype.itemsize
        check_fits(comm, emu.local_nodes, biggest, dtype.itemsize, "mpi", fix=TOO_BIG,
                   what=f"the largest gradient bucket ({format_size(biggest)})")
        if emb is not None:
            train_sparse.check_memory(comm, emu.local_nodes, emb)
        for algo in algos:
            bad = 0
            for b in tp.buckets:
                opts = data_options("allreduce", b.index, 1)
                bad += _run_mpi(emu, opts, algo, dtype, b.elems * dtype.itemsize)["wrong"]
            wrong[algo] = bad
        if emb is not None:
            wrong["embedding"] = train_sparse.real_embedding(emu, emb, dtype, tp.tokens_per_rank)
    return wrong


def run(args: argparse.Namespace, comm) -> int:
    embedding_model = defaults(args)
    if args.tp != 1 or args.pp != 1 or args.micro_batches not in (None, 1):
        train_sparse.data_parallel_only(args)
        from nicemu.train_parallel import run as run_parallel
        return run_parallel(args, comm)
    algos, dtype, topo, model, acc, profile = _check(args, comm, embedding_model)
    sequences = args.global_batch // topo.nodes
    leave_out = train_sparse.exclude(args.sparse_embedding, model)
    if embedding_model is not None:
        tp = embedding_models.plan(model, acc, sequences, dtype.itemsize, int(args.bucket_mb * 2**20),
                                   exclude=leave_out)
    else:
        tp = plan(model, acc, sequences, args.seq_len, dtype.itemsize, int(args.bucket_mb * 2**20), exclude=leave_out)
    emb = None if args.sparse_embedding is None else train_sparse.embedding_call(
        args.sparse_embedding, model, topo, profile, dtype.itemsize, tp.tokens_per_rank, tp.compute_us,
        args.block_size, args.token_zipf)
    wrong = _real_data(algos, tp, topo, profile, dtype, comm, emb) if args.executor == "mpi" else {}
    def report() -> None:
        """The iterations on the fabric model (the same for both executors), printed and written."""
        records = [iteration(a, tp, topo, profile, dtype.itemsize, emb) for a in algos]
        for r in records if emb is not None else ():
            r["embedding_wrong"] = wrong.get("embedding")
        ring_it = next((r["iteration_us"] for r in records if r["algo"] == "ring"), None)
        for r in records:
            r.update(model=model.name, accelerator=acc.name, dp=topo.nodes, topology=topo.name, profile=profile.name,
                     global_batch=args.global_batch, seq_len=args.seq_len, grad_dtype=dtype.name,
                     grad_bytes=tp.grad_elems * dtype.itemsize, bucket_mb=args.bucket_mb, executor=args.executor,
                     speedup_vs_ring=None if ring_it is None else ring_it / r["iteration_us"],
                     wrong=wrong.get(r["algo"]), tp=1, pp=1, micro_batches=1, micro_batch_seqs=sequences,
                     pipeline_us=r["compute_us"], bubble_us=0.0, bubble_fraction=0.0, tp_exposed_us=0.0,
                     pp_exposed_us=0.0, dp_exposed_us=r["exposed_us"])
        print(f"# nicemu train: {model.name} on {acc.name}, DP {topo.nodes} over {topo.describe()}, profile "
              f"{profile.name}, executor {args.executor}")
        unit = (f"samples (a sample: one {embedding_model.sample})" if embedding_model is not None else
                f"sequences of {args.seq_len} tokens")
        nbytes = tp.grad_elems * dtype.itemsize
        size = f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"
        def span(us: float) -> str:
            return f"{us / 1e3:.1f} ms" if us >= 1e3 else f"{us:.2f} us"
        print(f"# {args.global_batch:,} {unit} per iteration ({sequences:,} per rank); {size} of {dtype.name} "
              f"gradients in {len(tp.buckets)} bucket{'s' if len(tp.buckets) != 1 else ''}; forward "
              f"{span(tp.forward_us)}, backward {span(tp.backward_us)}")
        if emb is not None:
            print(train_sparse.describe(emb))
        print("# iter: backward and the last bucket done, buckets sharing the fabric; exposed: iter - compute; "
              "no share: the same without contention; one stream: buckets one after another (ms)")
        print("#" + HEADER[1:])
        for r in records:
            name, sp, bad = row_labels(r)
            print(f"{name:>22} {r['iteration_us'] / 1e3:10.2f} {r['compute_us'] / 1e3:10.2f} "
                  f"{r['exposed_us'] / 1e3:10.2f} {r['iteration_no_sharing_us'] / 1e3:10.2f} "
                  f"{r['iteration_one_stream_us'] / 1e3:10.2f} {sp:>8} {bad:>6}")
        for r in records if emb is not None else ():
            print(train_sparse.footer(r))
        finish_report(args, records, wrong)
    on_rank0(comm, report, "the training model")
    return 1 if any(wrong.values()) else 0


def row_labels(r: dict) -> tuple[str, str, str]:
    """A record's table labels: the algorithm (with what host-best chose), its speedup, its wrong count."""
    name = r["algo"] + (f"={'+'.join(r['chosen'])}" if r["chosen"] else "")
    sp = "-" if r["speedup_vs_ring"] is None else f"{r['speedup_vs_ring']:.3f}x"
    return name, sp, "-" if r["wrong"] is None else str(r["wrong"])


def finish_report(args: argparse.Namespace, records: list[dict], wrong: dict[str, int]) -> None:
    """After the table (rank 0): the real-data verdict and the JSON file."""
    if args.executor == "mpi":
        total = sum(wrong.values())
        print(f"# out of bounds values : {total} {'OK' if total == 0 else 'FAILED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
            f.write("\n")
        print(f"# wrote {len(records)} records to {args.json}")
