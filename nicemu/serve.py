"""``nicemu serve``: replay LLM-serving traffic and report TTFT, TPOT and throughput per algorithm.

Requests (synthetic arrivals or an Azure-format trace) are served by
continuous batching with chunked prefill. Every iteration takes its roofline
compute time plus the emulated time of every collective and transfer it
issues: two AllReduces per layer on each stage's TP group, the block-sparse
embedding AllReduce, pipeline activations and MoE all-to-alls. Under
``--executor mpi`` (the default) these run with real data on the ranks hosting
each group (see workloads/comm_backends.py for exactly what moves); under
``--executor model`` the same traffic is timed without data. Both give the
same metrics for the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback

import numpy as np

from nicemu import argtypes
from nicemu.collectives.api.checks import check_algo
from nicemu.collectives.model.chains import Chains
from nicemu.collectives.registry import get, is_sparse, names
from nicemu.errors import CollectiveError, UsageError
from nicemu.hostinfo import available_cpus, fork_writer
from nicemu.nic.profile import load_profile
from nicemu.nic.trace import EVENT_BYTES, LARGE_TRACE_EVENTS, write_trace
from nicemu.progress import Progress
from nicemu.serve_report import HEADER, UNITS, check_plot, table_row, write_cdf_plot, write_json, write_request_csv
from nicemu.serve_trace import DEFAULT_TRACE_ITERATIONS, DEFAULT_TRACE_REQUESTS, ServeTracer, is_arrivals_csv, trace_ids
from nicemu.topologies import Torus, parse_topology, ring
from nicemu.workloads import (
    BatchingConfig,
    IterationTimer,
    Parallelism,
    TrafficCsv,
    load_accelerator,
    load_model,
    load_trace,
    request_rows,
    run_batching,
    summarize,
    synthetic_requests,
)
from nicemu.workloads.comm_backends import DTYPE, CommStats, ModelComm, algos_for, has_alltoall
from nicemu.workloads.disaggregation import place, serve_disaggregated
from nicemu.workloads.kv_memory import DEFAULT_BLOCK_TOKENS, DEFAULT_UTILIZATION, PREEMPT_MODES, plan_kv, rejection
from nicemu.workloads.kv_restore import METHODS as RESTORE_METHODS
from nicemu.workloads.metrics import kv_summary, slo_metrics, stats
from nicemu.workloads.replicas import place as place_replicas
from nicemu.workloads.replicas import serve_replicas, serve_replicas_disaggregated
from nicemu.workloads.requests import MAX_CV, MAX_REQUESTS, MAX_TOKENS, MIN_CV, MIN_RATE
from nicemu.workloads.serve_fabric import (
    DEFAULT_REFORM_ROUNDS,
    REFORM_TOL_US,
    Extras,
    Lengthened,
    Reformed,
    reform,
    run_on_shared_fabric,
)
from nicemu.workloads.traffic import TrafficRecord, kv_transfer_records

DEFAULT_ALGOS = "ring,host-best,directreduce,omniccl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama3-70b",
                   help="preset (llama2-7b, llama3-8b, llama3-70b, llama3.1-405b, opt-6.7b, opt-13b, opt-30b, "
                        "mixtral-8x7b) or the path of a HuggingFace config.json (default llama3-70b)")
    p.add_argument("--tp", type=int, default=8, help="tensor-parallel degree (default 8)")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages (default 1)")
    p.add_argument("--ep", type=int, default=1, help="expert parallelism: 1 or equal to --tp (MoE models)")
    p.add_argument("--disaggregated", metavar="P:D", default=None,
                   help="P prefill and D decode instances of TP x PP ranks each (DistServe-style): a request is "
                        "prefilled on one, its KV cache moves over the network, the other decodes it; TTFT "
                        "includes the transfer (default: one colocated instance)")
    p.add_argument("--replicas", type=int, default=1, metavar="R",
                   help="R data-parallel copies of the TP x PP instance (with --disaggregated P:D, of the whole "
                        "P:D deployment), requests shared round-robin (default 1); the topology holds R x TP x PP "
                        "ranks (R x (P+D) x TP x PP)")
    p.add_argument("--slo-ttft", type=float, default=None, metavar="MS",
                   help="TTFT objective in ms: report the share of requests meeting every objective given "
                        "(slo_attainment) and their rate (goodput_req_s)")
    p.add_argument("--slo-tpot", type=float, default=None, metavar="MS", help="TPOT objective in ms (as --slo-ttft)")
    p.add_argument("--accelerator", default="H100-SXM", help="H100-SXM or A100-80G (default H100-SXM)")
    p.add_argument("--rate", type=float, default=1.0,
                   help=f"mean arrival rate, requests/s, at least {MIN_RATE:g} (default 1; inf: all at 0)")
    p.add_argument("--cv", type=float, default=1.0,
                   help=f"coefficient of variation of the gaps, {MIN_CV:g} to {MAX_CV:g}: 1 Poisson, otherwise "
                        "Gamma (default 1)")
    p.add_argument("--input-len", default="lognormal:1155:0.8:8192",
                   help=f"prompt tokens: N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX], at most {MAX_TOKENS:,} "
                        "(2**24) per request (default lognormal:1155:0.8:8192, Azure conversation-like)")
    p.add_argument("--output-len", default="lognormal:211:0.8:2048",
                   help="output tokens, same forms and cap (default lognormal:211:0.8:2048)")
    p.add_argument("--arrivals", metavar="FILE.csv",
                   help="replay an Azure-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens) "
                        "instead of synthetic arrivals")
    p.add_argument("--requests", type=int, default=100,
                   help=f"number of synthetic requests, at most {MAX_REQUESTS:,} (with --arrivals: the first N "
                        "rows; default 100)")
    p.add_argument("--token-budget", type=int, default=2048, help="tokens per iteration (default 2048)")
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk per request and iteration (default 512)")
    p.add_argument("--max-running", type=int, default=256, help="requests in the running batch (default 256)")
    p.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_UTILIZATION, metavar="F",
                   help=f"fraction of each accelerator's HBM for weights and KV cache, in (0, 1]; the KV cache "
                        f"gets what the weights leave (default {DEFAULT_UTILIZATION:g}, as vLLM)")
    p.add_argument("--kv-block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS, metavar="N",
                   help=f"tokens per paged KV-cache block (default {DEFAULT_BLOCK_TOKENS})")
    p.add_argument("--preempt", default="recompute", choices=PREEMPT_MODES,
                   help="when decoding runs out of KV blocks, the newest running request is preempted: "
                        "recompute (drop its KV, prefill it again later) or swap (its blocks go to host memory "
                        "over PCIe and come back; the time is counted) (default recompute)")
    p.add_argument("--prefix-reuse", type=float, default=0.0, metavar="F",
                   help="the first F of every prompt (0 <= F < 1) is a prefix whose KV cache waits in host memory, "
                        "as for a returning conversation; --kv-restore says how it comes back (default 0)")
    p.add_argument("--kv-restore", default="load", choices=RESTORE_METHODS,
                   help="how a reused prefix's KV comes back: load it over PCIe (shared with the NIC's DMA), "
                        "recompute it (prefill it again), or partial: send the first l tokens' activations and "
                        "recompute their K and V while the rest loads; with --preempt swap, partial also brings "
                        "swapped-out KV back that way, through the pass (default load)")
    p.add_argument("--algo", default=DEFAULT_ALGOS,
                   help=f"comma list of {', '.join(names(emulated=True))} "
                        f"(default {DEFAULT_ALGOS}); a sparse one runs the embedding AllReduce, "
                        f"the per-layer AllReduces use its dense partner")
    p.add_argument("--topology", default=None,
                   help="the nodes' topology (default ring:TP*PP/P; times P+D instances when disaggregated)")
    p.add_argument("--ranks-per-node", type=int, default=1, metavar="P",
                   help="accelerators (ranks) per node, each with its own NIC; TP groups are numbered innermost, "
                        "so a group of at most P ranks stays in one node (NVLink with intra_node.nvlink in the "
                        "profile, else host memory) and a larger one runs the hierarchical AllReduce (default 1)")
    p.add_argument("--profile", default="directreduce-paper",
                   help="shipped profile name or YAML path (default directreduce-paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile field (repeatable)")
    p.add_argument("--seed", type=argtypes.seed, default=0,
                   help="seed of arrivals, lengths and token ids (default 0)")
    p.add_argument("--executor", default="mpi", choices=["mpi", "model"],
                   help="mpi: collectives with real data on MPI ranks; model: timing only")
    p.add_argument("--real-data", default="first", choices=["first", "all"],
                   help="mpi executor: run the first occurrence of each distinct collective with real data "
                        "and reuse its (deterministic) time, or run every call with data (default first)")
    p.add_argument("--json", type=argtypes.output_file, help="write one record per algorithm as JSON")
    p.add_argument("--csv", type=argtypes.output_file, help="write one row per (algorithm, request) as CSV")
    p.add_argument("--plot", type=argtypes.output_file,
                   help="draw TTFT and TPOT CDFs per algorithm to this PNG (needs matplotlib)")
    p.add_argument("--traffic", type=argtypes.output_file,
                   help="write every collective and transfer issued as CSV "
                        "(iteration, phase, layer, collective, bytes, algo)")
    p.add_argument("--trace", type=argtypes.output_file, metavar="FILE.json",
                   help="write a Chrome trace-event JSON (open it in ui.perfetto.dev): per algorithm, every "
                        "iteration with its collectives (and KV swap / restore) nested in it, and the traced "
                        "requests' queued, prefill and decode spans (--disaggregated: a track per instance and "
                        "the KV transfer; --replicas: a process per replica); emulated microseconds")
    p.add_argument("--trace-requests", type=int, default=DEFAULT_TRACE_REQUESTS, metavar="N",
                   help=f"--trace: the first N requests get a track, and iterations are traced until they "
                        f"finish (default {DEFAULT_TRACE_REQUESTS}; 0: no request tracks, every iteration)")
    p.add_argument("--trace-iterations", type=int, default=DEFAULT_TRACE_ITERATIONS, metavar="N",
                   help=f"--trace: the first N iterations of each algorithm show their collectives nested in "
                        f"them, later ones are one span each (default {DEFAULT_TRACE_ITERATIONS})")
    p.add_argument("--fabric", default="alone", choices=["alone", "shared"],
                   help="alone (default): every call on an idle fabric, passes summed; shared: the instances and "
                        "KV transfers share links and PCIe (docs/model.md §21.7)")
    p.add_argument("--fabric-rounds", type=int, default=None, metavar="N",
                   help=f"--fabric shared: re-form the batches under sharing up to N times, until no pass moves by "
                        f"more than {REFORM_TOL_US:g} us (default {DEFAULT_REFORM_ROUNDS}; 0: keep the idle-fabric "
                        "batches and only move their times, the first-order result)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--jobs", type=int, default=None,
                   help="model executor without mpiexec: processes that time the algorithms side by side "
                        "(default: the CPUs available, at most one per algorithm; 1: one after another)")
    # --faults / --straggler (as in bench) belong here once bench has them; they would go to the backends.


def _validate(args: argparse.Namespace, comm):
    if args.trace is not None and is_arrivals_csv(args.trace):
        raise UsageError(f"--trace now writes a Chrome trace (JSON); replay an Azure CSV with --arrivals "
                         f"{args.trace}")
    for flag, value in (("--trace-requests", args.trace_requests), ("--trace-iterations", args.trace_iterations)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    if not algos:
        raise UsageError(f"--algo is empty; e.g. --algo {DEFAULT_ALGOS}")
    twice = sorted({a for a in algos if algos.count(a) > 1})
    if twice:
        raise UsageError(f"--algo names {', '.join(twice)} more than once; give each algorithm once")
    for a in algos:
        check_algo(a)
        if not get(a).emulated:
            raise UsageError(f"--algo {a} has no emulated time, so it cannot time a serving run; drop it")
    prefill, decode = _instances(args.disaggregated)
    for flag, value in (("--slo-ttft", args.slo_ttft), ("--slo-tpot", args.slo_tpot)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be a time in ms > 0, got {value:g}")
    model = load_model(args.model)
    par = Parallelism(args.tp, args.pp, args.ep, prefill, decode, args.replicas)
    par.check_model(model)
    if model.is_moe and par.ep > 1 and not has_alltoall():
        raise UsageError(f"{model.name} with --ep {par.ep} needs the alltoall collective, which this build "
                         f"lacks; use --ep 1 (experts sharded by TP)")
    per_node = _check_ranks_per_node(args, par, algos)
    if args.fabric == "shared":
        if per_node > 1:
            raise UsageError("--fabric shared runs with one rank per node; drop --ranks-per-node or use "
                             "--fabric alone")
        if args.trace:
            raise UsageError("--trace draws the idle-fabric timeline; drop --trace or use --fabric alone")
        if args.fabric_rounds is None:
            args.fabric_rounds = DEFAULT_REFORM_ROUNDS
        elif args.fabric_rounds < 0:
            raise UsageError(f"--fabric-rounds must be >= 0 (0: the first-order result), got {args.fabric_rounds}")
    elif args.fabric_rounds is not None:
        raise UsageError("--fabric-rounds re-forms batches on the shared fabric; add --fabric shared or drop it")
    if args.topology is not None:
        topology = parse_topology(args.topology).with_ranks_per_node(per_node)
    elif par.nodes == 1:
        raise UsageError("--tp 1 --pp 1 is a single node: nothing to communicate; use --tp 2 or more")
    elif per_node > 1 and par.nodes == per_node:
        topology = Torus.single_node(per_node)
    else:
        topology = ring(par.nodes // per_node).with_ranks_per_node(per_node)
    par.check_nodes(topology.nodes)
    profile = load_profile(args.profile, args.overrides)
    _check_transfers_in_node(par, per_node, profile)
    acc = load_accelerator(args.accelerator)
    if args.requests < 1:
        raise UsageError(f"--requests must be >= 1, got {args.requests}")
    kv = plan_kv(model, acc, par, args.gpu_memory_utilization, args.kv_block_tokens, DTYPE.itemsize,
                 profile.pcie.bandwidth_GBps, profile.pcie.latency_us)
    sched = BatchingConfig(args.token_budget, args.chunk, args.max_running, kv, args.preempt,
                           "partial" if args.kv_restore == "partial" else "load")
    if args.arrivals is not None:
        if not args.arrivals.strip():
            raise UsageError("--arrivals is empty; give the path of an Azure-format CSV")
        requests = load_trace(args.arrivals, limit=args.requests)
    else:
        requests = synthetic_requests(args.requests, args.rate, args.input_len, args.output_len, args.cv, args.seed)
    requests = _with_prefixes(args, par, requests)
    if args.plot:
        check_plot()
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.executor == "mpi" and comm.size > topology.nodes:
        raise UsageError(f"{comm.size} ranks for {topology.name} ({topology.nodes} nodes): run with at most "
                         f"{topology.nodes} ranks")
    return algos, model, par, topology, profile, acc, sched, requests


def _with_prefixes(args: argparse.Namespace, par: Parallelism, requests: list) -> list:
    """``--prefix-reuse F``: every prompt's first ``floor(F * input)`` tokens (at most input - 1) are a
    prefix held in host memory. Under ``--kv-restore recompute`` they are simply prefilled again."""
    f = args.prefix_reuse
    if not 0.0 <= f < 1.0:
        raise UsageError(f"--prefix-reuse {f:g}: give the reused share of each prompt, 0 <= F < 1")
    if f == 0.0 or args.kv_restore == "recompute":
        return requests
    return [dataclasses.replace(r, cached_tokens=min(int(f * r.input_tokens), r.input_tokens - 1))
            for r in requests]


def _instances(text: str | None) -> tuple[int, int]:
    """``--disaggregated P:D`` as (P, D); (0, 0) without it."""
    if text is None:
        return 0, 0
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise UsageError(f"--disaggregated {text!r}: give P:D, prefill and decode instances, each at least 1 "
                         "(e.g. 1:1 or 2:1)")
    return int(parts[0]), int(parts[1])


def _check_transfers_in_node(par: Parallelism, p: int, profile) -> None:
    """Pipeline activations or KV caches handed over between ranks of one node go GPU to GPU over NVLink
    (docs/model.md §14); through host memory that hand-over is not modelled, so it is refused."""
    if p == 1 or profile.intra_node.nvlink:
        return
    if par.disaggregated and par.instance_nodes % p:
        raise UsageError(f"--disaggregated: an instance of TP x PP = {par.instance_nodes} ranks does not fill whole "
                         f"nodes of {p} ranks, so a KV cache would move inside a node, which is modelled over "
                         f"NVLink only; --set intra_node.nvlink=true, or a TP that is a multiple of {p}")
    if par.pp > 1 and par.tp % p:
        raise UsageError(f"--pp {par.pp} with TP {par.tp} inside nodes of {p} ranks hands activations from stage to "
                         "stage inside a node, which is modelled over NVLink only; --set intra_node.nvlink=true, "
                         f"a TP that is a multiple of {p}, or --pp 1")


def _check_ranks_per_node(args: argparse.Namespace, par: Parallelism, algos: list[str]) -> int:
    """``--ranks-per-node P``: TP groups of whole nodes or inside one node; what P > 1 does not run yet."""
    p = args.ranks_per_node
    if p < 1:
        raise UsageError(f"--ranks-per-node {p} must be at least 1")
    if p == 1:
        return 1
    if par.tp % p and p % par.tp:
        raise UsageError(f"a TP group of {par.tp} ranks does not divide into nodes of {p} ranks; use a --tp that "
                         f"divides {p} or is a multiple of it")
    if par.nodes % p:
        raise UsageError(f"TP x PP = {par.nodes} ranks do not fill whole nodes of {p} ranks; change --tp, --pp "
                         "or --ranks-per-node")
    sparse = [a for a in algos if is_sparse(a)]
    if sparse:
        if args.algo == DEFAULT_ALGOS:         # the default list: the dense algorithms of it
            algos[:] = [a for a in algos if not is_sparse(a)]
        else:
            raise UsageError(f"{', '.join(sparse)} runs with one rank per node (its aggregation is per node); "
                             f"drop it from --algo, or use --ranks-per-node 1")
    return p


def _gains(records: list[dict]) -> None:
    ring_rec = next((r for r in records if r["algo"] == "ring"), None)
    for r in records:
        for key, metric in (("ttft_gain_vs_ring", "ttft_ms_mean"), ("tpot_gain_vs_ring", "tpot_ms_mean")):
            base = ring_rec[metric] if ring_rec else None
            r[key] = (1.0 - r[metric] / base) if (base and r["algo"] != "ring" and r[metric] is not None) else None


def run(args: argparse.Namespace, comm) -> int:
    algos, model, par, topology, profile, acc, sched, requests = _validate(args, comm)
    setup = (model, par, topology, profile, acc, sched, requests)
    rank0 = comm.rank == 0
    ranks = comm.size if args.executor == "mpi" else 1
    source = args.arrivals or f"{args.requests} synthetic requests at {args.rate:g}/s (cv {args.cv:g})"
    if rank0:
        print(f"# nicemu serve: {model.name} on {acc.name}, TP {par.tp} PP {par.pp} EP {par.ep}, "
              f"{topology.describe()}, profile {profile.name}, executor {args.executor}, {ranks} rank(s)")
        print(f"# {len(requests)} requests ({source}); token budget {sched.token_budget}, chunk "
              f"{sched.chunk_tokens}, seed {args.seed}; activations {DTYPE.itemsize} B/element")
        kv = sched.kv
        print(f"# KV cache: {kv.blocks:,} blocks of {kv.block_tokens} tokens ({kv.capacity_tokens:,} tokens, "
              f"{kv.block_bytes / 1e3:g} kB per block per accelerator) beside {kv.weight_bytes / 1e9:.2f} GB of "
              f"weights, {kv.utilization:g} of {kv.memory_bytes / 1e9:g} GB; preempt by {sched.preempt}")
        print("#")
        print("#" + HEADER[1:])
        print("#" + UNITS[1:])
    # --executor model: the algorithms are independent. Under mpiexec each rank times a share of them
    # and rank 0 collects the records; alone, --jobs forked processes share them out the same way. With
    # --traffic one process times them all, to keep the file in issue order.
    fan_out = args.executor == "model" and comm.size > 1
    jobs = 1
    if not fan_out:
        mine = algos
        if args.executor == "model" and not args.traffic:
            jobs = max(1, min(args.jobs or available_cpus(), len(algos)))
    elif args.traffic:
        mine = algos if rank0 else []
    else:
        mine = _shares(algos, comm.size)[comm.rank]
    shares = _shares(mine, jobs)
    # one trace process per algorithm and replica
    args.trace_pids = {a: i * par.replicas + 1 for i, a in enumerate(algos)}
    children = [_fork_share(share, lambda share: _time_algos(args, share, comm, Progress(0, False),
                                                             None, None, ranks, *setup))
                for share in shares[1:] if share]
    mine = shares[0]
    out_tokens = sum(r.output_tokens for r in requests)
    progress = Progress(len(mine) * out_tokens, rank0 and (args.progress or sys.stderr.isatty()))
    backend_mpi = None
    if args.executor == "mpi":
        from nicemu.workloads.comm_mpi import MpiComm
        backend_mpi = MpiComm(comm, topology, profile, model, args.seed, args.real_data)
    traffic = TrafficCsv(args.traffic) if (args.traffic and rank0) else None
    try:
        records, rows, wrong_total, events = _time_algos(args, mine, comm, progress, backend_mpi, traffic, ranks,
                                                         *setup)
    finally:
        if traffic is not None:
            traffic.close()
        if backend_mpi is not None:
            backend_mpi.free()
    if children:
        records, rows, events = _join_shares(algos, records, rows, events, children)
    if fan_out:
        records, rows, events = _collect(comm, algos, records, rows, events)
    _gains(records)
    if rank0:
        if progress.enabled:
            progress.finish()
        for r in records:
            print(table_row(r), flush=True)
        if args.executor == "mpi":
            checked = sum(r["checked_elements"] for r in records)
            print(f"# real data: {sum(r['real_data_calls'] for r in records)} calls ({args.real_data} "
                  f"occurrence of each distinct collective), {checked} elements checked, {wrong_total} wrong "
                  f"{'OK' if wrong_total == 0 else 'FAILED'}")
        _print_memory(records, rows)
        _print_fabric(records)
        sparse = [r for r in records if is_sparse(r["embedding_algo"])]
        for r in sparse:
            dense = next((d for d in records if d["algo"] == r["layer_algo"]), None)
            if dense and dense["embedding_wire_bytes"]:
                print(f"# embedding AllReduce with {r['algo']}: {r['embedding_wire_bytes'] / 1e6:.1f} MB on the "
                      f"wire vs {dense['embedding_wire_bytes'] / 1e6:.1f} MB with {dense['algo']} "
                      f"({r['embedding_wire_bytes'] / dense['embedding_wire_bytes']:.2f}x)")
        if args.json:
            write_json(args.json, records)
            print(f"# wrote {len(records)} records to {args.json}")
        if args.csv:
            write_request_csv(args.csv, rows)
            print(f"# wrote {len(rows)} request rows to {args.csv}")
        if args.traffic:
            print(f"# wrote the traffic of every iteration to {args.traffic}")
        if args.plot:
            write_cdf_plot(args.plot, rows, records, f"{model.name}, TP {par.tp} PP {par.pp} on {topology.name}, "
                                                     f"{len(requests)} requests, profile {profile.name}")
            print(f"# wrote TTFT/TPOT CDFs and where a mean request's time went to {args.plot}")
        if args.trace:
            _write_trace(args, events, records, len(requests))
    return 1 if wrong_total else 0


def _time_algos(args: argparse.Namespace, algos: list[str], comm, progress: Progress,
                backend_mpi, traffic: TrafficCsv | None, ranks: int, model, par, topology,
                profile, acc, sched, requests) -> tuple[list[dict], list[dict], int, list[dict]]:
    """Serve the requests once per algorithm: a record per algorithm, the per-request rows, wrong elements
    and the --trace events (rank 0 of the MPI executor traces; under the model executor, every worker)."""
    records: list[dict] = []
    rows: list[dict] = []
    wrong_total = 0
    events: list[dict] = []
    tracing = bool(args.trace) and (args.executor == "model" or comm.rank == 0)
    servable = [r for r in requests if rejection(sched.kv, r.input_tokens, r.output_tokens) is None]
    traced = trace_ids(servable, args.trace_requests) if tracing else ([], [])
    restoring = args.kv_restore if any(r.cached_tokens for r in requests) else None
    swap_in = sched.swap_in if sched.preempt == "swap" else "load"
    per_replica = par.instances // par.replicas          # instances of one replica
    for algo in algos:
        layer_algo, emb_algo, a2a_algo, p2p_label = algos_for(algo, profile.nic.gpudirect)
        if backend_mpi is not None:
            backend_mpi.reset_stats()
            backend = backend_mpi
        else:
            backend = ModelComm(topology, profile, model, args.seed)
        tracers = _tracers(args, algo, par, requests, servable, traced) if tracing else None

        restore_log: dict[int, float] = {}
        passes: dict[int, list] = {}
        # --fabric shared: the traffic of the last round's batches goes to --traffic (they may re-form)
        rows_out = _TrafficRows() if (traffic is not None and args.fabric == "shared") else traffic

        def make_timer(instance: int, log: dict, out_passes: dict, out_traffic, hook=None,
                       _algo=algo, _backend=backend) -> IterationTimer:
            labels = algos_for(_algo, profile.nic.gpudirect)
            timer = IterationTimer(model, acc, par, _backend, labels[0], labels[1], labels[2],
                                   dtype_bytes=DTYPE.itemsize, p2p_algo=labels[3],
                                   on_traffic=out_traffic.write if out_traffic is not None else None,
                                   on_iteration=hook, instance=instance,
                                   restore=restoring, pcie_GBps=profile.pcie.bandwidth_GBps,
                                   restore_log=log, swap_in=swap_in)
            if args.fabric == "shared":
                timer.passes = out_passes.setdefault(instance, [])
            return timer

        def timer_for(instance: int, _algo=algo, _tracers=tracers, _log=restore_log, _passes=passes,
                      _out=rows_out):
            hook = (_tracers[instance // per_replica].hook(instance % per_replica) if _tracers is not None
                    else None)
            return _Step(make_timer(instance, _log, _passes, _out, hook), progress, _algo)

        def serve_once(timers, out_traffic, kv_extra=None, _backend=backend, _p2p=p2p_label):
            """One batching run of every instance: (result, costs, split, each replica's run, dis)."""
            parts: list = []         # each replica's own run, for --trace
            split = dis = None
            if par.disaggregated:
                dis, parts = _serve_disaggregated(requests, par, model, sched, _backend, timers, _p2p, out_traffic,
                                                  kv_extra)
                result, costs, split = dis.result, dis.costs, dis.split_ms()
            elif par.replicas > 1:
                result, costs, split = serve_replicas(requests, par.replicas, timers, sched, parts)
            else:
                step = timers(0)
                result = run_batching(requests, step, sched)
                costs = step.costs
            return result, costs, split, parts, dis

        def serve_round(extras: Extras | None, _timer_for=timer_for, _passes=passes, _log=restore_log,
                        _rows=rows_out, _serve=serve_once, _make=make_timer, _backend=backend):
            """One batching run: round 0 with the run's own timers; a re-formed round with every pass and KV
            transfer lengthened by ``extras``, with its own passes, restore log and --traffic rows."""
            if extras is None:
                return (*_serve(_timer_for, _rows), _passes, _log, _rows)
            log: dict[int, float] = {}
            got: dict[int, list] = {}
            buf = _TrafficRows() if traffic is not None else None

            def timers(instance: int):
                return Lengthened(_make(instance, log, got, buf), instance, extras)

            _backend.stats = _fresh_stats(_backend.stats)
            return (*_serve(timers, buf, extras.kv), got, log, buf)

        chains = Chains(topology, profile) if args.fabric == "shared" else None   # its calls alone, kept

        def share(run, extras: Extras | None, _chains=chains, _p2p=p2p_label):
            res, _, _, parts, dis, got, _, _ = run
            return _share_fabric(args, topology, profile, model, par, res, got, parts, dis, _p2p, extras, _chains)

        t0 = time.monotonic()
        if args.fabric == "shared":
            runs = reform(serve_round, share, args.fabric_rounds)
            alone_result, alone_costs, split = runs.first_run[:3]
            _, costs, _, parts, dis, _, restore_log, rows_out = runs.last_run
            result, shared, kv_shared = runs.last
            if traffic is not None:
                traffic.write(rows_out.rows)
        else:
            result, costs, split, parts, dis = serve_once(timer_for, rows_out)
        wall_s = time.monotonic() - t0
        rec = {"algo": algo, **summarize(result, costs, par.instances == 1), **kv_summary(result)}
        rec["fabric"] = args.fabric
        if args.fabric == "shared":
            rec.update(_shared_keys(alone_result, alone_costs, par, shared))
            rec.update(_reform_keys(args.fabric_rounds, runs, par))
        rec["preempt_mode"] = sched.preempt
        if sched.preempt == "swap":
            rec["swap_in"] = swap_in
        if split is not None:
            rec["e2e_split_ms"] = split
        rec.update(slo_metrics(result, args.slo_ttft, args.slo_tpot))
        if args.prefix_reuse:
            rec.update(prefix_reuse=args.prefix_reuse, kv_restore=args.kv_restore,
                       restored_tokens=sum(r.cached_tokens for r in requests),
                       restore_ms=sum(c.restore_us for c in costs) / 1e3,
                       restore_alone_ms=sum(c.restore_alone_us for c in costs) / 1e3,
                       pcie_kv_ms=sum(c.pcie_kv_us for c in costs) / 1e3,
                       pcie_nic_ms=sum(c.pcie_nic_us for c in costs) / 1e3 if restoring else None)
        st = backend.stats
        rec.update(layer_algo=layer_algo, embedding_algo=emb_algo, p2p_path=p2p_label.removeprefix("p2p-"),
                   model=model.name, tp=par.tp, pp=par.pp, ep=par.ep, replicas=par.replicas, topology=topology.name,
                   nodes=topology.nodes // topology.ranks_per_node, ranks_per_node=topology.ranks_per_node,
                   accelerator=acc.name, profile=profile.name,
                   executor=args.executor, ranks=ranks, seed=args.seed,
                   compute_ms=sum(c.compute_us for c in costs) / 1e3,
                   comm_ms=sum(c.comm_us for c in costs) / 1e3,
                   collectives=sum(c.collectives for c in costs),
                   embedding_wire_bytes=st.embedding_wire_bytes, embedding_comm_ms=st.embedding_us / 1e3,
                   layer_wire_bytes=st.layer_wire_bytes, p2p_ms=st.p2p_us / 1e3, wall_s=wall_s)
        if backend_mpi is not None:
            runs, checked, wrong = backend_mpi.totals()
            rec.update(real_data=args.real_data, real_data_calls=runs, checked_elements=checked, wrong=wrong)
            wrong_total += wrong
        else:
            rec.update(real_data=None, real_data_calls=0, checked_elements=0, wrong=None)
        if tracers is not None:
            if par.replicas == 1:
                parts = [dis if par.disaggregated else result]
            for tracer, part in zip(tracers, parts):
                events += (tracer.finish(part.result, part) if par.disaggregated else tracer.finish(part))
            rec["traced_iterations"] = sum(t.iterations for t in tracers)
        if par.disaggregated:
            kv_of = kv_shared if args.fabric == "shared" else dis.kv_us
            kv = [kv_of[r.id] for r in result.requests if r.id in kv_of]
            rec.update(disaggregated=f"{par.prefill_instances}:{par.decode_instances}",
                       kv_transfers=len(kv), kv_transfer_bytes=sum(dis.kv_bytes.values()),
                       **{f"kv_transfer_ms_{k}": None if v is None else v / 1e3 for k, v in stats(kv).items()})
            extra = {r.id: {"prefill_instance": dis.placement[r.id][0], "decode_instance": dis.placement[r.id][1],
                            "kv_transfer_ms": kv_of[r.id] / 1e3} for r in result.requests if r.id in kv_of}
        records.append(rec)
        none = {"prefill_instance": None, "decode_instance": None, "kv_transfer_ms": None}   # rejected
        cached = {r.id: r.cached_tokens for r in requests}
        for row in request_rows(result):
            more = extra.get(row["id"], none) if par.disaggregated else {}
            if args.prefix_reuse:
                more = {**more, "restored_tokens": cached[row["id"]],
                        "restore_ms": restore_log.get(row["id"], 0.0) / 1e3}
            rows.append({"algo": algo, **row, **more})
    return records, rows, wrong_total, events


def _share_fabric(args, topology, profile, model, par: Parallelism, result, passes, parts, dis, p2p_label: str,
                  extras: Extras | None, chains: Chains):
    """The run moved onto the shared fabric (workloads/serve_fabric.py): (result, delays, KV times shared).
    ``extras``: what a re-formed round lengthened its passes and KV transfers by (None for round 0)."""
    def kv_records(prompt: int, source: int, target: int):
        return kv_transfer_records(prompt, model, par, source, target, p2p_label, DTYPE.itemsize)

    # a sparse call's messages from the blocks the model times it with
    sparse = ModelComm(topology, profile, model, args.seed).sparse_flows
    try:
        return run_on_shared_fabric(topology, profile, result, passes, parts if par.replicas > 1 else None, dis,
                                    (par.prefill_instances, par.decode_instances), kv_records, extras, chains,
                                    sparse)
    except CollectiveError as exc:
        raise UsageError(f"--fabric shared: {exc}") from None


class _TrafficRows:
    """--traffic rows held until the batches are final (--fabric shared may re-form them)."""

    def __init__(self) -> None:
        self.rows: list[TrafficRecord] = []

    def write(self, records: list[TrafficRecord]) -> None:
        self.rows.extend(records)


def _fresh_stats(old: CommStats) -> CommStats:
    """Totals for a re-formed round: the run's call totals start again (they are the last round's), the
    real-data checks keep counting (every call run with data was checked)."""
    return CommStats(real_runs=old.real_runs, checked_elements=old.checked_elements, wrong=old.wrong)


def _reform_keys(max_rounds: int, runs: Reformed, par: Parallelism) -> dict:
    """How the batches re-formed under sharing, and the first-order (round 0) metrics beside the final ones."""
    base = summarize(runs.first[0], None, par.instances == 1)
    return {"fabric_reform_max_rounds": max_rounds, "fabric_reform_rounds": runs.rounds,
            "fabric_reform_residual_us": runs.last[1].residual_us, "fabric_reform_converged": runs.converged,
            **{f"{k}_first_order": base[k] for k in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean")}}


def _shared_keys(alone, costs, par: Parallelism, shared) -> dict:
    """What sharing the fabric changed: the idle-fabric run's main metrics beside the shared ones, and the
    replay's size."""
    base = summarize(alone, costs, par.instances == 1)
    out = {f"{k}_alone": base[k] for k in ("ttft_ms_mean", "ttft_ms_p99", "tpot_ms_mean", "tpot_ms_p99",
                                           "e2e_ms_mean", "duration_s", "throughput_tok_s")}
    delays = np.concatenate(shared.end_delay) if shared.end_delay else np.zeros(0)
    out.update(fabric_rounds=shared.rounds, fabric_replayed_calls=shared.replayed_calls, fabric_flows=shared.flows,
               fabric_slowed_flows=shared.slowed_flows, fabric_slowed_passes=shared.slowed_passes,
               fabric_max_delay_ms=float(delays.max()) / 1e3 if len(delays) else 0.0)
    return out


def _print_fabric(records: list[dict]) -> None:
    """With --fabric shared: what sharing changed against the calls summed on an idle fabric."""
    def pct(new, old):
        return "-" if not old or new is None else f"{100 * (new / old - 1):+.2f}%"
    for r in records:
        if r.get("fabric") != "shared":
            continue
        ttft, alone = r["ttft_ms_mean"], r["ttft_ms_mean_alone"]
        print(f"# shared fabric, {r['algo']}: mean TTFT {ttft:.3f} ms against {alone:.3f} with every call on an "
              f"idle fabric ({pct(ttft, alone)}), mean TPOT {pct(r['tpot_ms_mean'], r['tpot_ms_mean_alone'])}, "
              f"mean E2E {pct(r['e2e_ms_mean'], r['e2e_ms_mean_alone'])}; "
              f"{r['fabric_slowed_passes']} passes slowed, by at most {r['fabric_max_delay_ms']:.3f} ms "
              f"({r['fabric_replayed_calls']:,} calls replayed as {r['fabric_flows']:,} flows)")
        rounds, residual = r["fabric_reform_rounds"], r["fabric_reform_residual_us"]
        if not r["fabric_reform_max_rounds"]:
            print(f"# shared fabric, {r['algo']}: first order, the idle fabric's batches kept (--fabric-rounds 0); "
                  f"their passes move by up to {residual:.3f} us")
        elif r["fabric_reform_converged"] and not rounds:
            print(f"# shared fabric, {r['algo']}: the idle fabric's batches stand: sharing moves no pass by more "
                  f"than {residual:.2g} us, nothing to re-form")
        elif r["fabric_reform_converged"]:
            print(f"# shared fabric, {r['algo']}: batches re-formed in {rounds} round{'s' * (rounds != 1)} "
                  f"(residual {residual:.2g} us); first order: mean TTFT {_ms(r['ttft_ms_mean_first_order'])} ms")
        else:
            print(f"# shared fabric, {r['algo']}: NOT converged: after {rounds} re-formed rounds passes still move "
                  f"by up to {residual:.3f} us; raise --fabric-rounds (first order: mean TTFT "
                  f"{_ms(r['ttft_ms_mean_first_order'])} ms)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_memory(records: list[dict], rows: list[dict]) -> None:
    """Say what the KV cache did: rejected requests (with the first reason), preemptions and swaps."""
    rejected = [row for row in rows if row["rejected"] and row["algo"] == records[0]["algo"]]
    if rejected:
        print(f"# {len(rejected)} request(s) rejected, never fitting the KV cache (first: request "
              f"{rejected[0]['id']}: {rejected[0]['rejected']}); see the per-request CSV")
    for r in records:
        if r["preemptions"]:
            how = ("swapped (back through the passes, --kv-restore partial), adding"
                   if r.get("swap_in") == "partial" else "swapped over PCIe in")
            swapped = (f", {r['swapped_blocks']:,} blocks ({r['swapped_bytes'] / 1e9:.2f} GB) {how} "
                       f"{r['swap_ms']:.1f} ms" if r["swapped_blocks"] else "")
            print(f"# {r['algo']}: {r['preemptions']} preemption(s) by {r['preempt_mode']}{swapped}; KV cache "
                  f"{100 * r['kv_peak_fraction']:.1f}% full at peak, {100 * r['kv_mean_fraction']:.1f}% on average")


class _Step:
    """An instance's duration callback: its ``IterationTimer``, and the progress bar advanced per pass."""

    def __init__(self, timer: IterationTimer, progress: Progress, label: str) -> None:
        self.timer, self.progress, self.label = timer, progress, label

    @property
    def costs(self):
        return self.timer.costs

    def __call__(self, it) -> float:
        duration = self.timer(it)
        self.progress.advance(it.batch.sampled_tokens, f"{self.label} iteration {it.index}")
        return duration


def _serve_disaggregated(requests, par: Parallelism, model, sched, backend, timer_for, p2p_label: str,
                         traffic, kv_extra: dict[int, float] | None = None):
    """``--disaggregated P:D`` (workloads/disaggregation.py): the KV transfers are timed (and under the MPI
    executor moved) by the same backend as every collective, and listed in --traffic one row per request."""
    def kv_records(prompt: int, source: int, target: int):
        return kv_transfer_records(prompt, model, par, source, target, p2p_label, DTYPE.itemsize)

    def kv_time(recs):
        backend.iteration_cost(-1, recs)
        return backend.last_costs(recs)

    if par.replicas > 1:
        dis, parts = serve_replicas_disaggregated(requests, par.replicas, par.prefill_instances, par.decode_instances,
                                                  timer_for, kv_records, kv_time, sched, kv_extra)
    else:
        dis = serve_disaggregated(requests, par.prefill_instances, par.decode_instances, timer_for, kv_records,
                                  kv_time, sched, kv_extra)
        parts = [dis]
    if traffic is not None:
        traffic.write([TrafficRecord(-1, "prefill", -1, "kv_transfer", dis.kv_bytes[r.id], p2p_label, "kv_cache")
                       for r in sorted((r for r in requests if r.id in dis.kv_bytes),     # not the rejected
                                       key=lambda r: (dis.prefill_done_us[r.id], r.id))])
    return dis, parts


def _tracers(args: argparse.Namespace, algo: str, par: Parallelism, requests: list, servable: list,
             traced: tuple[list[int], list[int]]) -> list[ServeTracer]:
    """One ServeTracer per replica (--trace): replica ``k`` of an algorithm is its own trace process (pid
    ``trace_pids[algo] + k``), with the traced requests it serves and its own instances."""
    instances = (par.prefill_instances, par.decode_instances)
    if par.replicas == 1:
        placement = place(servable, *instances) if par.disaggregated else None
        return [ServeTracer(args.trace_pids[algo], algo, *traced, args.trace_iterations, placement, instances)]
    where = place_replicas(requests, par.replicas)
    out = []
    for k in range(par.replicas):
        mine = [(rid, n) for rid, n in zip(*traced) if where[rid] == k]
        ids, outputs = [rid for rid, _ in mine], [n for _, n in mine]
        placement = (place([r for r in servable if where[r.id] == k], *instances) if par.disaggregated
                     else None)
        out.append(ServeTracer(args.trace_pids[algo] + k, f"{algo} · replica {k}", ids, outputs,
                               args.trace_iterations, placement, instances, trace_idle=not args.trace_requests,
                               first_instance=k * (par.instances // par.replicas)))
    return out


def _shares(algos: list[str], workers: int) -> list[list[str]]:
    """Split the algorithms over workers, the costliest first, each to the least-loaded worker (worker 0
    gets the costliest, so the progress bar it shows lasts the whole run). A sparse algorithm, which
    times the spot protocol for every distinct embedding size, and ``host-best``, which times every host
    algorithm, weigh 2. Measured CPU seconds of the Llama-3-70B TP 8 run with 2,000 requests, one
    algorithm each (``--jobs 1``, start-up of about 2 s included): ring 6.5, host-best 10.7,
    directreduce 7.4, omniccl 12.6 (docs/model.md §10.8)."""
    def weight(algo: str) -> int:
        return 2 if is_sparse(algo) or algo == "host-best" else 1

    load = [0] * workers
    out: list[list[str]] = [[] for _ in range(workers)]
    for algo in sorted(algos, key=weight, reverse=True):
        w = load.index(min(load))
        out[w].append(algo)
        load[w] += weight(algo)
    return [sorted(share, key=algos.index) for share in out]


def _fork_share(share: list[str], work) -> tuple[int, int]:
    """Time ``share`` in a forked child (model executor only: the child never calls MPI).

    The child writes ``{"records": ..., "rows": ...}`` (or ``{"error": traceback}``) as JSON to a pipe
    and leaves with ``os._exit``, so MPI's exit handlers run in the parent only.
    """
    def write(out) -> None:
        try:
            records, rows, _, events = work(share)
            payload = {"records": records, "rows": rows, "trace": events}
        except BaseException:
            payload = {"error": traceback.format_exc(limit=-4)}
        out.write(json.dumps(payload))

    return fork_writer(write)


def _join_shares(algos: list[str], records: list[dict], rows: list[dict], events: list[dict],
                 children: list[tuple[int, int]]) -> tuple[list[dict], list[dict], list[dict]]:
    """The forked children's records, rows and trace events merged with this process's, in ``algos`` order."""
    records, rows, events = list(records), list(rows), list(events)
    errors = []
    for pid, read_fd in children:
        with os.fdopen(read_fd, "rb") as f:
            text = f.read()
        os.waitpid(pid, 0)
        part = json.loads(text.decode()) if text else {"error": "the worker process died without a result"}
        if "error" in part:
            errors.append(part["error"])
            continue
        records += part["records"]
        rows += part["rows"]
        events += part["trace"]
    if errors:
        raise RuntimeError("a --jobs worker process failed:\n" + errors[0])
    return (*_in_algo_order(algos, records, rows), _by_pid(events))


def _in_algo_order(algos: list[str], records: list[dict], rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Records and request rows from several workers, sorted into ``--algo`` order (the sort is stable,
    so each algorithm's rows keep their order)."""
    order = {a: i for i, a in enumerate(algos)}
    return sorted(records, key=lambda r: order[r["algo"]]), sorted(rows, key=lambda r: order[r["algo"]])


def _by_pid(events: list[dict]) -> list[dict]:
    """Trace events of several workers, one algorithm's process after another (the sort is stable)."""
    return sorted(events, key=lambda e: e["pid"])


def _write_trace(args: argparse.Namespace, events: list[dict], records: list[dict], requests: int) -> None:
    """Write --trace and say what it holds; warn when it is too large to open comfortably."""
    count = write_trace(args.trace, [], extra=events,
                        meta={"command": "nicemu serve", "trace_requests": args.trace_requests})
    traced = min(args.trace_requests, requests)
    its = ", ".join(f"{r['algo']} {r['traced_iterations']:,} of {r['iterations']:,}" for r in records)
    nested = f"the first {args.trace_iterations:,} with their collectives (--trace-iterations)"
    cut = (f"the first {traced} of {requests} requests (--trace-requests)" if args.trace_requests
           else "no request tracks (--trace-requests 0)")
    algos = f"{len(records)} algorithm{'s' if len(records) != 1 else ''}"
    print(f"# wrote a trace of {count:,} events to {args.trace}: {algos}, {cut}; "
          f"iterations traced: {its}, {nested}; open it in ui.perfetto.dev")
    if count > LARGE_TRACE_EVENTS:
        print(f"# warning: {count:,} events (about {count * EVENT_BYTES / 1e6:,.0f} MB) open slowly; Perfetto "
              f"opens it, chrome://tracing may not: lower --trace-requests, --requests or --algo")


def _idle_wait(requests: list) -> None:
    """Wait without spinning: ranks that wait here share the CPUs with ranks still computing."""
    from mpi4py import MPI  # only ranks of an MPI job get here
    while not MPI.Request.Testall(requests):
        time.sleep(0.005)


def _collect(comm, algos: list[str], records: list[dict], rows: list[dict], events: list[dict]
             ) -> tuple[list[dict], list[dict], list[dict]]:
    """Bring every rank's records, request rows and trace events to rank 0, in ``algos`` order (JSON bytes,
    no pickle)."""
    from nicemu.collectives.mpi.tags import SERVE_RESULTS as TAG_RESULTS  # MPI is up: ranks of a job
    if comm.rank == 0:
        got_records, got_rows, got_events = list(records), list(rows), list(events)
        for peer in range(1, comm.size):
            size = np.empty(1, dtype=np.int64)
            _idle_wait([comm.Irecv(size, peer, TAG_RESULTS)])
            buf = np.empty(int(size[0]), dtype=np.uint8)
            _idle_wait([comm.Irecv(buf, peer, TAG_RESULTS)])
            part = json.loads(buf.tobytes().decode())
            got_records += part["records"]
            got_rows += part["rows"]
            got_events += part["trace"]
        got_records, got_rows = _in_algo_order(algos, got_records, got_rows)
        got_events = _by_pid(got_events)
    else:
        payload = np.frombuffer(json.dumps({"records": records, "rows": rows, "trace": events}).encode(),
                                dtype=np.uint8)
        size = np.array([payload.size], dtype=np.int64)
        _idle_wait([comm.Isend(size, 0, TAG_RESULTS), comm.Isend(payload, 0, TAG_RESULTS)])
        got_records, got_rows, got_events = records, rows, events
    _idle_wait([comm.Ibarrier()])
    return got_records, got_rows, got_events
