"""``nicemu bench``: an nccl-tests-style sweep over sizes and algorithms.

Under ``mpiexec`` every rank hosts a block of topology nodes and the data
really moves (``--executor mpi``, the default); ``--executor model`` computes
the same emulated times without data, for topologies far larger than the
machine. Emulated times are deterministic; wall times are medians over
``--iters`` after ``--warmup``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from nicemu import argtypes, bench_concurrent, link_report
from nicemu import data as bench_data
from nicemu.collectives import (
    ALGORITHMS,
    COLLECTIVES,
    build_schedule,
    model_sparse,
    model_time,
    segment_elems,
    sparse_config,
)
from nicemu.collectives.api.checks import (
    accepted_dtypes,
    check_algo,
    check_algo_collective,
    check_collective,
    check_dtype_op,
    check_ranks_per_node,
    check_root,
    check_schedule_size,
    check_sparse_call,
    fault_options,
    trace_mask,
)
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import resolve_host_best
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.registry import ROOTED_COLLECTIVES, check_link_faults, get, is_sparse
from nicemu.collectives.schedules.sparse_patterns import check_pattern, pattern_mask
from nicemu.collectives.schedules.steps import final_segments
from nicemu.errors import CollectiveError, UsageError
from nicemu.memory import MODEL_BYTES_PER_NODE, check_fits, check_model_fits, sparse_bytes, spot_window_bytes
from nicemu.nic.ops import ALIASES, DTYPES, OPS
from nicemu.nic.profile import load_profile
from nicemu.nic.stragglers import describe as describe_stragglers
from nicemu.nic.trace import EVENT_BYTES, LARGE_TRACE_EVENTS, count_events, write_trace
from nicemu.progress import Progress
from nicemu.report import (
    CONCURRENT_HEADER,
    CONCURRENT_UNITS,
    FAULT_HEADER,
    FAULT_UNITS,
    HEADER,
    UNITS,
    bus_factor,
    table_row,
    write_csv,
    write_json,
    write_plot,
)
from nicemu.sizes import format_size, parse_sizes
from nicemu.topologies import parse_topology, ring

#: caps of the numeric options (stated in --help): far beyond any real setting, small enough that a
#: typo cannot start a run that never ends or allocates terabytes
MAX_ITERS = 100_000
MAX_BLOCK_SIZE = 1 << 20
MAX_SPOTS = 1 << 16
MAX_SPOT_BLOCKS = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", default="ring,directreduce",
                   help=f"comma list of algorithms: {', '.join(ALGORITHMS)} (default: ring,directreduce)")
    p.add_argument("--collective", default="allreduce", help=f"one of {', '.join(COLLECTIVES)}")
    p.add_argument("--root", type=int, default=0, metavar="N",
                   help="broadcast and reduce: the root node, 0 to nodes-1 (default 0)")
    p.add_argument("--topology", default=None,
                   help="ring:N, torus:AxBxC, torus:K^D or astra:FILE.yml, at most 2**24 nodes; a dense "
                        "algorithm's schedule at most 2**30 transfers, i.e. rings of up to about 23,000 nodes "
                        "(default: ring of the number of ranks, ring:8 when run alone)")
    p.add_argument("--ranks-per-node", type=int, default=1, metavar="P",
                   help="ranks on every topology node, each with its own NIC, sharing the node's host memory; "
                        "the AllReduce then runs intra-node, over the nodes, intra-node (default 1)")
    p.add_argument("--sizes", default="1K:16M",
                   help="bytes per node: 64K, 1K,256K,1G or MIN:MAX[:FACTOR], at most 1T (default 1K:16M)")
    p.add_argument("--dtype", default="float32",
                   help=f"one of {', '.join(DTYPES)}, or nccl-tests' {', '.join(ALIASES)} (default float32)")
    p.add_argument("--op", default="sum", help=f"one of {', '.join(OPS)} (avg: the sum divided by the nodes)")
    p.add_argument("--density", type=float, default=1.0,
                   help="fraction of non-zero blocks per node, 0 <= D <= 1; 0 is an all-zero input (default 1)")
    p.add_argument("--block-size", type=int, default=256,
                   help=f"elements per block, 1 to {MAX_BLOCK_SIZE:,} (2**20; default 256)")
    p.add_argument("--overlap", default="random", choices=["random", "all", "none"],
                   help="whether nodes' non-zero blocks coincide (default random)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the sparse block pattern")
    p.add_argument("--aggregators", type=int, default=None,
                   help="sparse algorithms: aggregator NICs (default: every node aggregates a shard)")
    p.add_argument("--spots", type=int, default=None,
                   help=f"sparse algorithms: Rx spots (slots) per aggregator, at most {MAX_SPOTS:,} "
                        "(omniccl 1, omnireduce 64)")
    p.add_argument("--spot-blocks", type=int, default=None,
                   help=f"sparse algorithms: spot capacity in blocks per worker, at most {MAX_SPOT_BLOCKS:,} "
                        "(omniccl 32, omnireduce 1)")
    p.add_argument("--tx-spots", type=int, default=None, choices=[1, 2],
                   help="sparse algorithms: Tx spots; 1 turns double buffering off (default 2)")
    p.add_argument("--iters", type=int, default=5,
                   help=f"timed iterations per size, 1 to {MAX_ITERS:,} (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help=f"untimed iterations first, 0 to {MAX_ITERS:,} (default 1)")
    p.add_argument("--executor", default="mpi", choices=["mpi", "model"],
                   help="mpi: real data on MPI ranks; model: timing only, any size")
    p.add_argument("--profile", default="directreduce-paper",
                   help="shipped profile name or YAML path (default directreduce-paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile field, e.g. --set nic.packet_bytes=4096 (repeatable)")
    p.add_argument("--json", type=argtypes.output_file, help="write the records as JSON to this file")
    p.add_argument("--csv", type=argtypes.output_file, help="write the records as CSV to this file")
    p.add_argument("--plot", type=argtypes.output_file,
                   help="draw latency and gain vs size to this image file (needs matplotlib)")
    p.add_argument("--faults", default=None, metavar="drop=P,corrupt=Q,seed=S[,link=A->B]",
                   help="per-packet drop and corruption probabilities on every directed link (or only "
                        "the named ones); the NIC retransmits go-back-N (docs/model.md §11)")
    p.add_argument("--straggler", action="append", default=[], metavar="NODE:FACTOR",
                   help="slow that node's host, NIC and PCIe service times by FACTOR (repeatable or a "
                        "comma list; docs/model.md §12)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--link-stats", type=argtypes.output_file, metavar="FILE",
                   help="write bytes, busy time and utilisation of every directed link and of every node's "
                        "PCIe, NIC engine, host and DRAM, per record, as JSON (or CSV for a .csv name); adds "
                        "the per-dimension summary (docs/usage.md, 'Inside a run')")
    p.add_argument("--link-summary", action="store_true",
                   help="the per-dimension link summary in the table and the JSON records, without the file")
    p.add_argument("--trace", type=argtypes.output_file, metavar="FILE",
                   help="write a Chrome trace-event JSON of every record (open it in ui.perfetto.dev): one "
                        "track per link, PCIe direction, NIC engine and host of each traced node")
    p.add_argument("--trace-nodes", default=None, metavar="LIST",
                   help="nodes the trace shows: 0-7,12 or all (default: the first 8)")
    bench_concurrent.add_arguments(p)
    p.add_argument("--plot-links", type=argtypes.output_file, metavar="FILE.png",
                   help="draw link utilisation (torus: heatmaps per dimension over a 2-D slice; ring: bytes "
                        "and busy time per link) per record (needs matplotlib)")


def validate(args: argparse.Namespace, comm):
    """Check every argument before anything runs (the same verdict on every rank); returns
    (algos, dtype, sizes, topology, profile). ``nicemu sweep`` checks each grid point with it."""
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    if not algos:
        raise UsageError("--algo is empty; e.g. --algo ring,directreduce")
    twice = sorted({a for a in algos if algos.count(a) > 1})
    if twice:
        raise UsageError(f"--algo names {', '.join(twice)} more than once; give each algorithm once")
    for a in algos:
        check_algo(a)
    check_collective(args.collective)
    if args.dtype not in DTYPES and args.dtype not in ALIASES:   # the names only: numpy reads ">f4" or "f" too
        raise UsageError(f"unknown --dtype {args.dtype!r}; use one of {accepted_dtypes()}")
    dtype = check_dtype_op(args.dtype, args.op)
    for a in algos:
        if is_sparse(a):
            check_sparse_call(a, args.collective, args.op)
        else:
            check_algo_collective(a, args.collective)
    if args.executor == "model" and any(not get(a).emulated for a in algos):
        raise UsageError("--algo mpi measures MPI's own collective and needs --executor mpi; drop it "
                         "from --algo for the model executor")
    if not 0.0 <= args.density <= 1.0:     # NaN fails too
        raise UsageError(f"--density {args.density} is outside [0, 1]; e.g. --density 0.1")
    for flag, value, low, high in (("--block-size", args.block_size, 1, MAX_BLOCK_SIZE),
                                   ("--spots", args.spots, 1, MAX_SPOTS),
                                   ("--spot-blocks", args.spot_blocks, 1, MAX_SPOT_BLOCKS),
                                   ("--iters", args.iters, 1, MAX_ITERS), ("--warmup", args.warmup, 0, MAX_ITERS)):
        if value is not None and not low <= value <= high:
            raise UsageError(f"{flag} {value} is outside {low}..{high:,}")
    sizes = parse_sizes(args.sizes)
    for s in sizes:
        if s % dtype.itemsize:
            raise UsageError(f"size {s} B is not a multiple of {dtype.name} ({dtype.itemsize} B); "
                             f"use a multiple of {dtype.itemsize}")
    per_node = getattr(args, "ranks_per_node", 1)
    if per_node < 1:
        raise UsageError(f"--ranks-per-node {per_node} must be at least 1")
    topology = (parse_topology(args.topology) if args.topology is not None
                else ring(max(comm.size // per_node, 2) if comm.size > 1 else 8)).with_ranks_per_node(per_node)
    for a in algos:
        check_ranks_per_node(topology, a, args.collective)
    check_root(getattr(args, "root", 0), topology, args.collective)
    profile = load_profile(args.profile, args.overrides)
    check_pattern(topology.nodes, args.density, args.overlap)
    if args.collective == "alltoall":
        for s in sizes:
            if (s // dtype.itemsize) % topology.nodes:
                unit, who = (("node", f"{topology.nodes} nodes of {topology.name}") if topology.ranks_per_node == 1
                             else ("rank", f"{topology.nodes} ranks of {topology.name} x "
                                           f"{topology.ranks_per_node} ranks per node"))
                raise UsageError(
                    f"--collective alltoall needs one equal block per {unit}: "
                    f"size {s} B is {s // dtype.itemsize} {dtype.name} elements, not a multiple of the {who}; "
                    f"use sizes that are multiples of {topology.nodes * dtype.itemsize} B")
    for a in algos:
        if is_sparse(a):
            sparse_config(a, topology.nodes, **sparse_options(args))
        elif get(a).scheduled:
            check_schedule_size(topology, args.collective, a)
    if args.executor == "model":
        _check_model_memory(args, algos, topology, dtype, max(sizes))
    for flag, value in (("--plot", args.plot), ("--plot-links", getattr(args, "plot_links", None))):
        if value:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise UsageError(f"{flag} needs matplotlib: pip install 'nicemu[plot]'") from None
    _check_telemetry(args, algos, topology)
    if args.executor == "mpi" and comm.size > topology.nodes:
        what = (f"{topology.nodes} nodes" if per_node == 1 else
                f"{topology.nodes // per_node} nodes x {per_node} ranks per node")
        raise UsageError(f"{comm.size} ranks for {topology.name} ({what}): run with at "
                         f"most {topology.nodes} ranks, or a larger topology")
    bench_concurrent.validate(args, algos, topology, profile, comm, dtype, sizes)
    return algos, dtype, sizes, topology, profile


def watching(args: argparse.Namespace) -> bool:
    """Whether the run collects telemetry (any of --link-stats, --link-summary, --trace, --plot-links)."""
    return bool(getattr(args, "link_stats", None) or getattr(args, "link_summary", False)
                or getattr(args, "trace", None) or getattr(args, "plot_links", None))


def _check_telemetry(args: argparse.Namespace, algos: list[str], topology) -> None:
    if getattr(args, "trace_nodes", None) is not None and not getattr(args, "trace", None):
        raise UsageError("--trace-nodes chooses what --trace shows; add --trace FILE.json")
    if not watching(args):
        return
    args.trace_mask = None
    if args.trace:
        try:
            args.trace_mask = trace_mask(args.trace_nodes, topology.nodes)
        except CollectiveError as exc:
            raise UsageError(f"--trace-nodes: {exc}") from None
    if "mpi" in algos:
        raise UsageError("--algo mpi has no emulated links to report; drop it from --algo, or drop "
                         "--link-stats/--link-summary/--trace/--plot-links")


def _check_model_memory(args: argparse.Namespace, algos: list[str], topology, dtype: np.dtype,
                        nbytes: int) -> None:
    """The model executor's memory grows with the nodes (dense) or nodes x blocks (sparse): refuse a run
    that would not fit, before any of it starts."""
    where = f"--executor model on {topology.name}"
    for a in algos:
        if is_sparse(a):
            cfg = sparse_config(a, topology.nodes, **sparse_options(args))
            check_model_fits(sparse_bytes(cfg, topology.nodes, nbytes, dtype.itemsize),
                             f"{a} {where} at {format_size(nbytes)} per node ({topology.nodes} nodes' block masks)",
                             "use a larger --block-size, smaller --sizes or fewer nodes")
        else:
            check_model_fits(MODEL_BYTES_PER_NODE * topology.nodes, f"{a} {where} ({topology.nodes} nodes)",
                             "use a topology with fewer nodes")


def sparse_extra_bytes(args: argparse.Namespace, algos: list[str], topology, ranks: int, itemsize: int,
                       nbytes: int) -> float:
    """The MPI executor's memory beyond the data on one rank: the sparse algorithms' masks and spot windows."""
    extra = 0.0
    for a in algos:
        if is_sparse(a):
            cfg = sparse_config(a, topology.nodes, **sparse_options(args))
            extra = max(extra, sparse_bytes(cfg, topology.nodes, nbytes, itemsize)
                        + spot_window_bytes(cfg, topology.nodes, ranks, itemsize))
    return extra


def _reference(args: argparse.Namespace, topology, count: int, dtype: np.dtype
               ) -> tuple[np.ndarray, np.ndarray | float]:
    """(expected result, error bound per element), computed independently of any algorithm: exact for
    integers and for what is only moved, float64 with the format's rounding bound for reductions
    (nicemu/data.py)."""
    if args.collective == "allgather":
        off, cnt = final_segments(topology, count)
        return bench_data.gathered_reference(off, cnt, count, args.density, args.block_size,
                                             args.overlap, args.seed, dtype), 0.0
    if args.collective == "broadcast":
        return bench_data.broadcast_reference(args.root, topology.nodes, count, args.density, args.block_size,
                                              args.overlap, args.seed, dtype), 0.0
    return bench_data.reduced_reference(topology.nodes, count, args.op, args.density,
                                        args.block_size, args.overlap, args.seed, dtype)


def sparse_options(args: argparse.Namespace) -> dict:
    return {"block_size": args.block_size, "aggregators": args.aggregators, "spots": args.spots,
            "spot_blocks": args.spot_blocks, "tx_spots": args.tx_spots}


def sparse_masks(args: argparse.Namespace, nodes: int, count: int, block_size: int, seed: int) -> np.ndarray:
    """(nodes, blocks) non-zero blocks of the bench inputs of ``seed`` (the pattern nicemu/data.py zeroes)."""
    return np.stack([pattern_mask(n, nodes, count, block_size, args.density, args.overlap, seed)
                     for n in range(nodes)])


def _sparse_fields(timing) -> dict:
    if timing is None or timing.upstream_bytes is None:
        return {}
    return {"upstream_bytes": timing.upstream_bytes, "downstream_bytes": timing.downstream_bytes,
            "spots_spilled": timing.spilled}


def data_options(collective: str, seed: int, iters: int) -> argparse.Namespace:
    """What ``_run_mpi`` reads of bench's options, for the commands that reuse it (``jobs``, ``train``): dense
    inputs of ``seed``, ``iters`` calls, no warm-up."""
    return argparse.Namespace(collective=collective, op="sum", density=1.0, block_size=256, overlap="random",
                              seed=seed, warmup=0, iters=iters, root=0, aggregators=None, spots=None,
                              spot_blocks=None, tx_spots=None)


def _run_mpi(emu, args, algo: str, dtype: np.dtype, nbytes: int) -> dict:
    from mpi4py import MPI  # only the MPI executor gets here
    comm = emu.comm
    count = nbytes // dtype.itemsize
    nodes = list(emu.node_range)
    op = "sum" if args.collective in ("allgather", "alltoall", "broadcast") else args.op  # prod: own inputs
    root = getattr(args, "root", 0)
    inputs = bench_data.fill_inputs(np.empty((len(nodes), count), dtype=dtype), nodes, emu.topology.nodes,
                                    args.density, args.block_size, args.overlap, args.seed, op)
    work = np.empty_like(inputs)
    walls = []
    timing = None
    timed = []
    for it in range(args.warmup + args.iters):
        np.copyto(work, inputs)
        comm.Barrier()
        t0 = MPI.Wtime()
        timing = emu.run_inplace(args.collective, work, args.op, algo, sparse_options(args), call=it, root=root)
        t1 = MPI.Wtime()
        if it >= args.warmup:
            walls.append(t1 - t0)
            timed.append(timing)
    local = np.array(walls)
    slowest = np.empty_like(local)
    comm.Allreduce(local, slowest, op=MPI.MAX)
    ref, bound = (None, 0.0) if args.collective == "alltoall" else _reference(args, emu.topology, count, dtype)
    wrong = 0
    if args.collective == "alltoall":
        for row, n in zip(work, nodes):
            expect = bench_data.alltoall_reference(n, emu.topology.nodes, count, args.density,
                                                   args.block_size, args.overlap, args.seed, dtype)
            wrong += bench_data.count_wrong(row, expect)
    elif args.collective == "reducescatter":
        off, cnt = final_segments(emu.topology, count)
        for row, n in zip(work, nodes):
            part = slice(off[n], off[n] + cnt[n])
            wrong += bench_data.count_wrong(row[part], ref[part], bound[part] if np.ndim(bound) else bound)
    elif args.collective == "reduce":       # only the root's row is defined (nccl-tests checks it alone)
        if root in emu.node_range:
            wrong += bench_data.count_wrong(work[root - emu.node_range.start], ref, bound)
    else:
        for row in work:
            wrong += bench_data.count_wrong(row, ref, bound)
    wrong_all = np.zeros(1, dtype=np.int64)
    comm.Allreduce(np.array([wrong], dtype=np.int64), wrong_all, op=MPI.SUM)
    rec = {"wall_us": statistics.median(slowest.tolist()) * 1e6, "wrong": int(wrong_all[0])}
    if timing is not None and timing.telemetry is not None:
        rec[STATS] = timing.telemetry       # the last timed call's
    if timing is not None:
        rec.update(emulated_us=timing.emulated_us, host_busy_us=timing.host_busy_us,
                   nic_busy_us=timing.nic_busy_us, wire_bytes=timing.wire_bytes,
                   framed_bytes=timing.framed_bytes, **_sparse_fields(timing))
        if timing.chosen_algo is not None:
            rec["best_host_algo"] = timing.chosen_algo
        if emu.faults is not None or emu.stragglers:
            rec.update(_fault_fields(timed))
    return rec


def _fault_fields(timed: list) -> dict:
    """Over the timed calls (each draws its own faults): mean emulated time, summed statistics."""
    out = {"emulated_us": statistics.fmean(t.emulated_us for t in timed)}
    if timed[0].faults is None:
        return out
    per_link: dict[str, list[int]] = {}
    for t in timed:
        for row in t.faults["per_link"]:
            acc = per_link.setdefault(row["link"], [0, 0, 0])
            for i, k in enumerate(("drops", "corruptions", "retransmit_bytes")):
                acc[i] += row[k]
    for k in ("drops", "corruptions", "retransmit_bytes"):
        out[k] = sum(t.faults[k] for t in timed)
    out["fault_links"] = [{"link": link, "drops": v[0], "corruptions": v[1], "retransmit_bytes": v[2]}
                          for link, v in sorted(per_link.items(),
                                                key=lambda kv: tuple(map(int, kv[0].split("->"))))]
    return out


def _model_timing(topology, profile, args, algo: str, dtype: np.dtype, count: int, faults=None,
                  call: int = 0, stragglers=None, watch: bool | np.ndarray = False):
    if is_sparse(algo):
        cfg = sparse_config(algo, topology.nodes, **sparse_options(args))
        masks = sparse_masks(args, topology.nodes, count, cfg.block_size, args.seed)
        traced = np.flatnonzero(watch).tolist() if isinstance(watch, np.ndarray) else None
        return model_sparse(cfg, masks, profile, dtype.itemsize, faults, call, stragglers,
                            telemetry=watch is not False, trace_nodes=traced)
    root = getattr(args, "root", 0)
    if algo == HOST_BEST:
        if faults is None and not stragglers and watch is False:
            return model_time(args.collective, HOST_BEST, topology, profile, count, dtype, root=root)
        chosen = resolve_host_best(args.collective, topology, profile, count, dtype.itemsize, root)
        timing = _model_timing(topology, profile, args, chosen, dtype, count, faults, call, stragglers, watch)
        timing.chosen_algo = chosen
        return timing
    schedule = build_schedule(args.collective, algo, topology, count, profile.topology.bidirectional,
                              segment_elems(profile, dtype.itemsize, algo, args.collective, topology), root=root)
    return run_model(schedule, profile, dtype.itemsize, faults, call, stragglers, watch)


def _watch(args: argparse.Namespace) -> bool | np.ndarray:
    """run_model's ``telemetry`` argument for this run."""
    if not watching(args):
        return False
    mask = getattr(args, "trace_mask", None)
    return True if mask is None else mask


def _run_model(topology, profile, args, algo: str, dtype: np.dtype, nbytes: int, faults=None,
               stragglers=None) -> dict:
    count = nbytes // dtype.itemsize
    watch = _watch(args)
    t = _model_timing(topology, profile, args, algo, dtype, count, watch=watch)
    rec = {"emulated_us": t.emulated_us, "host_busy_us": t.host_busy_us, "best_host_algo": t.chosen_algo,
           "framed_bytes": t.framed_bytes,
           "nic_busy_us": t.nic_busy_us, "wire_bytes": t.wire_bytes, **_sparse_fields(t),
           STATS: t.telemetry}
    if faults is not None or stragglers:
        # the same call numbers as the MPI executor's timed calls draw the same faults
        timed = [_model_timing(topology, profile, args, algo, dtype, count, faults, it, stragglers, watch)
                 for it in range(args.warmup, args.warmup + args.iters)]
        rec.update(host_busy_us=timed[-1].host_busy_us, nic_busy_us=timed[-1].nic_busy_us,
                   **_fault_fields(timed))
        rec[STATS] = timed[-1].telemetry
    return rec


#: where _run_model / _run_mpi leave a record's LinkStats until run() takes it out
STATS = "_telemetry"


def write_telemetry(args: argparse.Namespace, watched: list[dict], topology) -> None:
    """--link-stats, --trace and --plot-links files of the records in ``watched`` (rank 0)."""
    if getattr(args, "link_stats", None):
        link_report.write_link_stats(args.link_stats, watched)
        links = sum(w["stats"].nodes * w["stats"].ndim * (1 if w["stats"].switched else 2) for w in watched)
        print(f"# wrote {links:,} link rows of {len(watched)} records to {args.link_stats}")
    if getattr(args, "trace", None):
        calls = [{"label": f"{w['algo']} {w['size']}", **w} for w in watched]
        events = sum(count_events(w["stats"]) for w in watched)
        shown = np.flatnonzero(args.trace_mask)
        cut = topology.nodes - len(shown)
        if events > LARGE_TRACE_EVENTS:
            print(f"# warning: the trace holds {events:,} events (about {events * EVENT_BYTES / 1e6:,.0f} MB); "
                  f"Perfetto opens it, chrome://tracing may not: narrow --trace-nodes or --sizes")
        write_trace(args.trace, calls, meta={"nodes_traced": len(shown), "nodes": topology.nodes})
        what = "all nodes" if not cut else f"{len(shown)} of {topology.nodes} nodes ({cut:,} cut; --trace-nodes)"
        print(f"# wrote a trace of {events:,} events ({what}) to {args.trace}; open it in ui.perfetto.dev")
    if getattr(args, "plot_links", None):
        link_report.plot_links(args.plot_links, watched)
        print(f"# wrote link plot to {args.plot_links}")


def base_record(args: argparse.Namespace, algo: str, topology, ranks: int, dtype: np.dtype, nbytes: int,
                profile) -> dict:
    """One point's record before timing: every bench key, the measured ones still None (shared with sweep)."""
    return {"collective": args.collective, "algo": algo, "topology": topology.name,
            "nodes": topology.nodes // topology.ranks_per_node, "ranks": ranks,
            "ranks_per_node": topology.ranks_per_node, "executor": args.executor,
            "bytes": nbytes, "count": nbytes // dtype.itemsize, "dtype": dtype.name,
            "op": "none" if args.collective in ("alltoall", "broadcast") else args.op,   # nccl-tests' redop
            "root": getattr(args, "root", 0) if args.collective in ROOTED_COLLECTIVES else None,
            "density": args.density, "block_size": args.block_size,
            "overlap": args.overlap,
            "iters": args.iters, "emulated_us": None, "wall_us": None, "algbw_GBps": None,
            "busbw_GBps": None, "host_busy_us": None, "nic_busy_us": None,
            "wire_bytes": None, "wrong": None, "profile": profile.name, "gain_vs_ring": None,
            "gain_vs_best_host": None, "best_host_algo": None, "framed_bytes": None}


def add_best_host(group: list[dict]) -> None:
    """``best_host_algo`` and ``gain_vs_best_host`` (1 - t / t_best) of every record of one size, from the
    run's ``host-best`` record (as ``gain_vs_ring`` comes from its ``ring`` record): run ``--algo host-best``
    to get them. Left out otherwise, so a torus:8^6 bench does not time every host algorithm."""
    best = next((r for r in group if r["algo"] == HOST_BEST and r["emulated_us"]), None)
    if best is None:
        return
    for r in group:
        r["best_host_algo"] = best["best_host_algo"]
        if r["emulated_us"] is not None and r is not best:
            r["gain_vs_best_host"] = 1.0 - r["emulated_us"] / best["emulated_us"]


def add_bandwidth(rec: dict, collective: str, nodes: int) -> None:
    """nccl-tests' algbw and busbw from the emulated time (left None when there is none)."""
    if rec["emulated_us"]:
        rec["algbw_GBps"] = rec["bytes"] / (rec["emulated_us"] * 1e3)
        rec["busbw_GBps"] = rec["algbw_GBps"] * bus_factor(collective, nodes)


def model_record(args: argparse.Namespace, algo: str, topology, profile, dtype: np.dtype, nbytes: int,
                 faults=None, stragglers=None) -> dict:
    """The model executor's full record of one (algorithm, size) point: what bench and sweep both report."""
    rec = base_record(args, algo, topology, 1, dtype, nbytes, profile)
    rec.update(_run_model(topology, profile, args, algo, dtype, nbytes, faults, stragglers))
    add_bandwidth(rec, args.collective, topology.nodes)
    return rec


def run(args: argparse.Namespace, comm) -> int:
    algos, dtype, sizes, topology, profile = validate(args, comm)
    faults, stragglers = fault_options(args.faults, args.straggler, topology)
    if faults is not None and args.collective == "alltoall":
        raise UsageError("--faults is not supported for alltoall yet; drop --faults or use another "
                         "--collective")
    if faults is not None and args.collective in ROOTED_COLLECTIVES:
        for a in algos:
            check_link_faults(a, args.collective)
    rank0 = comm.rank == 0
    emu = None
    if args.executor == "mpi":
        from nicemu.collectives.api.emulator import Emulator
        emu = Emulator(comm, topology, profile, faults=faults, stragglers=stragglers, telemetry=watching(args))
        if getattr(args, "trace_mask", None) is not None:
            emu.executor.set_telemetry(True, args.trace_mask)
        check_fits(comm, emu.local_nodes, max(sizes), dtype.itemsize, "mpi", args.collective,
                   sparse_extra_bytes(args, algos, topology, comm.size, dtype.itemsize, max(sizes)))
    ranks = comm.size if args.executor == "mpi" else 1
    groups = (bench_concurrent.Groups(args, emu, topology, profile)
              if emu is not None and bench_concurrent.active(args) else None)
    if rank0:
        print(f"# nicemu bench: {args.collective} on {topology.describe()}, {ranks} rank(s), "
              f"executor {args.executor}, profile {profile.name}")
        rooted = f", root {args.root}" if args.collective in ROOTED_COLLECTIVES else ""
        print(f"# dtype {dtype.name}, op {args.op}{rooted}, density {args.density:g}, block {args.block_size}, "
              f"iters {args.iters}, warmup {args.warmup}; times in microseconds")
        extra = faults is not None or bool(stragglers)
        if extra:
            print(f"# faults: {faults.describe() if faults else 'none'}; stragglers: "
                  f"{describe_stragglers(stragglers) or 'none'}; emul(us) is the mean over the timed "
                  f"calls, vs clean compares it with the same call without faults or stragglers, "
                  f"drops/corrupt/resent are totals over the timed calls")
        conc = bench_concurrent.active(args)
        if conc:
            print(f"# {args.concurrent} concurrent calls, groups {args.concurrent_groups}: emul(us) is the slowest "
                  f"call sharing the fabric, alone(us) the same call alone (docs/model.md §21.6)")
        print("#")
        print("#" + HEADER[1:] + (FAULT_HEADER if extra else "") + (CONCURRENT_HEADER if conc else ""))
        print("#" + UNITS[1:] + (FAULT_UNITS if extra else "") + (CONCURRENT_UNITS if conc else ""))
    progress = Progress(len(sizes) * len(algos), rank0 and (args.progress or sys.stderr.isatty()))
    records = []
    watched: list[dict] = []
    for nbytes in sizes:
        group = []
        for algo in algos:
            if bench_concurrent.active(args):
                base = base_record(args, algo, topology, ranks, dtype, nbytes, profile)
                base.update(bench_concurrent.model_fields(args, algo, topology, profile, dtype, nbytes)
                            if groups is None else
                            bench_concurrent.mpi_fields(groups, _run_mpi, args, algo, topology, profile, dtype,
                                                        nbytes))
            elif emu is not None:
                base = base_record(args, algo, topology, ranks, dtype, nbytes, profile)
                base.update(_run_mpi(emu, args, algo, dtype, nbytes))
            else:
                base = model_record(args, algo, topology, profile, dtype, nbytes, faults, stragglers)
            if (faults is not None or stragglers) and base["emulated_us"] is not None:
                clean = _model_timing(topology, profile, args, algo, dtype, nbytes // dtype.itemsize)
                base.update(faults=faults.describe() if faults else None,
                            stragglers=describe_stragglers(stragglers) or None,
                            clean_emulated_us=clean.emulated_us,
                            slowdown_vs_clean=base["emulated_us"] / clean.emulated_us)
            add_bandwidth(base, args.collective, base.get("nodes_per_call") or topology.nodes)
            stats = base.pop(STATS, None)
            if stats is not None:
                base["link_summary"] = stats.summary()
                base["resource_summary"] = link_report.resource_summary(stats)
                watched.append({"algo": algo, "bytes": nbytes, "size": format_size(nbytes),
                                "collective": args.collective, "topology": topology.name, "stats": stats})
            group.append(base)
            progress.update(f"{format_size(nbytes)} {algo}")
        ring_t = next((r["emulated_us"] for r in group if r["algo"] == "ring"), None)
        add_best_host(group)
        for r in group:
            if ring_t and r["emulated_us"] is not None and r["algo"] != "ring":
                r["gain_vs_ring"] = 1.0 - r["emulated_us"] / ring_t
            if rank0:
                if progress.enabled and progress.done < progress.total:
                    sys.stderr.write("\r\033[K")
                print(table_row(r), flush=True)
                if r.get("link_summary"):
                    print("\n".join(link_report.summary_lines(r["link_summary"])), flush=True)
        records.extend(group)
    if groups is not None:
        groups.free()
    if emu is not None:
        emu.free()
    if rank0:
        wrong = sum(r["wrong"] or 0 for r in records)
        if args.executor == "mpi":
            print(f"# out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}")
        if args.json:
            write_json(args.json, records)
            print(f"# wrote {len(records)} records to {args.json}")
        if args.csv:
            write_csv(args.csv, records)
            print(f"# wrote {len(records)} records to {args.csv}")
        if args.plot:
            write_plot(args.plot, records, f"{args.collective} on {topology.name}, profile {profile.name}")
            print(f"# wrote plot to {args.plot}")
        write_telemetry(args, watched, topology)
    wrong_total = sum(r["wrong"] or 0 for r in records)
    return 1 if wrong_total else 0
