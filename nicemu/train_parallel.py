"""``nicemu train --tp T --pp P [--micro-batches M]``: Megatron-LM's tensor, pipeline and data parallelism.

Ranks are numbered tp-dp-pp (workloads/train_layout.py). Each stage runs Megatron-LM's 1F1B schedule
over M micro-batches (workloads/train_pipeline.py): a micro-batch's forward and backward are its roofline
compute divided by T plus its TP AllReduces, each timed alone on its TP group; activations and gradients
cross stage boundaries as point-to-point transfers of every TP rank of every replica at once, timed on
the whole topology. During the last micro-batch's backward each stage's gradient buckets (its own layers'
shards) are AllReduced over its DP groups: every DP group of every stage starts its buckets at their
ready times, and all of them share the fabric (collectives/model/concurrent.py). That is the alone
accounting (``*_alone_us``); the reported iteration then puts the TP AllReduces and pipeline transfers on
that fabric too, with the buckets (workloads/train_fabric.py). docs/model.md §22.1.

Under ``--executor mpi`` every distinct TP AllReduce, pipeline transfer and DP bucket AllReduce moves real
data on the sub-communicator of its group and is checked; its emulated time alone must equal the model's.
The reported times come from the model (every rank replays the same shared fabric), so both executors
give the same records.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from nicemu import train
from nicemu.collectives import model_time, p2p_time
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.errors import NicemuError, UsageError
from nicemu.memory import check_fits
from nicemu.nic.profile import Profile
from nicemu.sizes import format_size
from nicemu.topologies import Torus, parse_topology, ring
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.comm_backends import DTYPE, algos_for
from nicemu.workloads.models import Model
from nicemu.workloads.train_fabric import TrainTraffic, shared_iteration
from nicemu.workloads.train_layout import Layout, group_topology
from nicemu.workloads.train_pipeline import ACT_BYTES, StageWork, check_split, one_f_one_b, stage_work

HEADER = (f"{'algo':>22} {'iter(ms)':>10} {'compute':>10} {'bubble':>9} {'TP':>9} {'PP':>9} {'share':>9} "
          f"{'DP':>9} {'alone':>10} {'no share':>10} {'one stream':>10} {'speedup':>8} {'#wrong':>6}")


@dataclass(frozen=True)
class Setup:
    """Everything an iteration's timing depends on but the algorithm."""

    model: Model
    acc: Accelerator
    profile: Profile
    topology: Torus
    layout: Layout
    micro_batches: int
    micro_seqs: int
    seq_len: int
    grad_dtype: np.dtype
    bucket_bytes: int
    work: tuple[StageWork, ...]

    @property
    def act_bytes(self) -> int:
        """One TP AllReduce or pipeline transfer: micro-batch tokens x hidden x 2 bytes."""
        return self.micro_seqs * self.seq_len * self.model.hidden * ACT_BYTES


def check(args: argparse.Namespace, comm) -> tuple[list[str], Setup]:
    """The options of a TP/PP/micro-batch run, each problem one line."""
    algos, dtype = train.check_algos_dtype(args)
    for flag, value in (("--tp", args.tp), ("--pp", args.pp)):
        if not 1 <= value <= 1 << 24:
            raise UsageError(f"{flag} {value} must be a whole number from 1 to {1 << 24:,}")
    tp, pp = args.tp, args.pp
    if args.dp is not None and args.dp < 1:
        raise UsageError(f"--dp {args.dp} must be at least 1")
    if args.topology is not None:
        topo = parse_topology(args.topology)
        if topo.nodes % (tp * pp):
            raise UsageError(f"TP x PP = {tp} x {pp} does not divide {topo.name}'s {topo.nodes} nodes; change "
                             "--tp/--pp or --topology")
        if args.dp is not None and args.dp * tp * pp != topo.nodes:
            raise UsageError(f"TP x DP x PP = {tp} x {args.dp} x {pp} = {tp * args.dp * pp} does not match "
                             f"{topo.name} ({topo.nodes} nodes); give one rank per node")
    else:
        nodes = comm.size if comm.size > 1 else 8
        if args.dp is None and nodes % (tp * pp):
            raise UsageError(f"TP x PP = {tp} x {pp} does not divide {nodes} nodes; give --dp or --topology")
        dp = args.dp if args.dp is not None else nodes // (tp * pp)
        if tp * dp * pp < 2:
            raise UsageError("TP x DP x PP = 1: train needs at least 2 ranks; raise --dp, --tp or --pp")
        topo = ring(tp * dp * pp)
    if topo.ranks_per_node > 1:
        raise UsageError("nicemu train runs one rank per node")
    layout = Layout(tp, topo.nodes // (tp * pp), pp)
    train.check_sizes(args)
    micro = args.micro_batches
    if micro is None:
        if args.global_batch % layout.dp:
            raise UsageError(f"--global-batch {args.global_batch} does not split over {layout.dp} data-parallel "
                             f"replicas; use a multiple of {layout.dp}")
        micro = args.global_batch // layout.dp if pp > 1 else 1
    if not 1 <= micro <= 1 << 20:
        raise UsageError(f"--micro-batches {micro} is outside 1..{1 << 20:,}")
    if args.executor == "mpi" and comm.size > topo.nodes:
        raise UsageError(f"{comm.size} ranks for {topo.name}: run with at most {topo.nodes} ranks")
    model, acc, profile = train.load_setup(args)
    try:
        check_split(model, layout, args.global_batch, micro)
        seqs = args.global_batch // (layout.dp * micro)
        work = tuple(stage_work(model, acc, layout, seqs, args.seq_len))
    except NicemuError as exc:
        raise UsageError(str(exc)) from None
    return algos, Setup(model, acc, profile, topo, layout, micro, seqs, args.seq_len, dtype,
                        int(args.bucket_mb * 2**20), work)


@dataclass
class Parts:
    """What one algorithm's iteration is made of, kept for the MPI executor's check."""

    tp_us: list[float]                        # one TP AllReduce alone, per stage
    to_next_us: list[float]                   # activations' transfer, per boundary
    to_prev_us: list[float]                   # gradients' transfer, per boundary
    buckets: dict[tuple, float]               # (DP group, elements) -> alone time
    p2p_path: str


def _tp_times(algo: str, su: Setup) -> tuple[list[float], set[str]]:
    if su.layout.tp == 1:
        return [0.0] * su.layout.pp, set()
    out, chosen = [], set()
    for s in range(su.layout.pp):
        group = group_topology(su.topology, su.layout.tp_group(s), su.profile)
        t = model_time("allreduce", algo, group, su.profile, su.act_bytes // ACT_BYTES, DTYPE)
        out.append(float(t.emulated_us))
        chosen.add(t.chosen_algo or algo)
    return out, chosen


def _p2p_times(path: str, su: Setup) -> tuple[list[float], list[float]]:
    fwd, bwd = [], []
    for s in range(su.layout.pp - 1):
        pairs = su.layout.stage_pairs(s)
        fwd.append(float(p2p_time(su.topology, su.profile, pairs, su.act_bytes, path).emulated_us))
        bwd.append(float(p2p_time(su.topology, su.profile, [(b, a) for a, b in pairs], su.act_bytes,
                                  path).emulated_us))
    return fwd, bwd


def iteration(algo: str, su: Setup, replay_all: bool = False) -> tuple[dict, Parts]:
    """One iteration under ``algo``: the 1F1B schedule without communication, with the TP AllReduces, with
    the pipeline transfers too, and then the DP buckets on the shared fabric; then all of it on one shared
    fabric (workloads/train_fabric.py; ``replay_all`` as there)."""
    lay, m, itemsize = su.layout, su.micro_batches, su.grad_dtype.itemsize
    tp_us, chosen = _tp_times(algo, su)
    path = algos_for(algo, su.profile.nic.gpudirect)[3].removeprefix("p2p-")
    to_next, to_prev = _p2p_times(path, su)
    zero = [0.0] * (lay.pp - 1)
    fc = [w.forward_compute_us for w in su.work]
    bc = [w.backward_compute_us for w in su.work]
    bare = one_f_one_b(fc, bc, zero, zero, m)
    f_tp = [w.forward_us(t) for w, t in zip(su.work, tp_us)]
    b_tp = [w.backward_us(t) for w, t in zip(su.work, tp_us)]
    with_tp = one_f_one_b(f_tp, b_tp, zero, zero, m)
    pipe = one_f_one_b(f_tp, b_tp, to_next, to_prev, m)
    calls, groups, cache, owner, stage_of = [], [], {}, [], []
    stage_buckets = [w.buckets(t, itemsize, su.bucket_bytes) for w, t in zip(su.work, tp_us)]
    if lay.dp > 1:
        for s, buckets in enumerate(stage_buckets):
            start = float(pipe.b_start[s, m - 1])
            for t in range(lay.tp):
                nodes = lay.dp_group(s, t)
                topo = group_topology(su.topology, nodes, su.profile)
                for b in buckets:
                    key = (topo, b.elems)
                    if key not in cache:
                        cache[key] = call_schedule("allreduce", algo, topo, su.profile, b.elems, itemsize)
                    sched, ran = cache[key]
                    calls.append(Call(sched, np.array(nodes, dtype=np.int64), itemsize, start_us=start + b.ready_us))
                    groups.append(nodes)
                    owner.append((nodes, b.elems))
                    stage_of.append(s)
                    chosen.add(ran)
    shared = run_concurrent(calls, su.topology, su.profile)
    end = pipe.end_us
    it = max([end] + [c.start_us + r.emulated_us for c, r in zip(calls, shared)])
    free = max([end] + [c.start_us + r.alone_us for c, r in zip(calls, shared)])
    serial: dict[tuple, float] = {}
    per_group: dict[tuple, float] = {}
    for c, r, g in zip(calls, shared, groups):
        serial[g] = max(serial.get(g, 0.0), c.start_us) + r.alone_us
        per_group[g] = per_group.get(g, 0.0) + r.alone_us
    compute = max(m * (f + b) for f, b in zip(fc, bc))
    alone_it, alone_end, slowest = it, end, max((r.slowdown_vs_alone for r in shared), default=1.0)
    fabric = {"fabric_rounds": 0, "fabric_calls": 0, "fabric_replayed_calls": 0, "fabric_flows": 0,
              "fabric_slowed_flows": 0}
    if lay.tp > 1 or lay.pp > 1:
        tp_scheds = [call_schedule("allreduce", algo, group_topology(su.topology, lay.tp_group(s), su.profile),
                                   su.profile, su.act_bytes // ACT_BYTES, DTYPE.itemsize)[0] if lay.tp > 1 else None
                     for s in range(lay.pp)]
        traffic = TrainTraffic(tp_scheds, DTYPE.itemsize, tp_us, su.act_bytes, path, to_next, to_prev, calls,
                               stage_of, [r.alone_us for r in shared])
        sh = shared_iteration(su.topology, su.profile, lay, su.work, pipe, traffic, replay_all)
        it, end, slowest = sh.iteration_us, sh.pipeline_us, sh.bucket_slowdown
        fabric = {"fabric_rounds": sh.rounds, "fabric_calls": sh.calls, "fabric_replayed_calls": sh.replayed_calls,
                  "fabric_flows": sh.flows, "fabric_slowed_flows": sh.slowed_flows}
    rec = {"algo": algo, "iteration_us": it, "compute_us": compute, "exposed_us": it - compute,
           "iteration_no_sharing_us": free, "iteration_one_stream_us": max([alone_end, *serial.values()]),
           "buckets": sum(len(b) for b in stage_buckets) if lay.dp > 1 else 0,
           "chosen": sorted(chosen) if algo == HOST_BEST else None,
           "comm_us": max(per_group.values(), default=0.0),
           "slowest_bucket_slowdown": slowest,
           "pipeline_us": end, "bubble_us": bare.end_us - compute, "bubble_fraction": 1 - compute / bare.end_us,
           "tp_exposed_us": with_tp.end_us - bare.end_us, "pp_exposed_us": alone_end - with_tp.end_us,
           "fabric_exposed_us": end - alone_end, "dp_exposed_us": it - end,
           "iteration_alone_us": alone_it, "exposed_alone_us": alone_it - compute, "pipeline_alone_us": alone_end,
           "dp_exposed_alone_us": alone_it - alone_end, **fabric, "tp_allreduce_us": tp_us,
           "tp_allreduces": [m * (w.tp_forward + w.tp_backward) for w in su.work],
           "p2p_forward_us": to_next, "p2p_backward_us": to_prev,
           "stage_compute_us": [m * (f + b) for f, b in zip(fc, bc)],
           "grad_bytes": max(sum(t.elems for t in w.tensors) for w in su.work) * itemsize}
    parts = Parts(tp_us, to_next, to_prev, {k: r.alone_us for k, r in zip(owner, shared)}, path)
    return rec, parts


def _real_data(algos: list[str], parts: dict[str, Parts], su: Setup, comm) -> dict[str, int]:
    """Every distinct TP AllReduce, pipeline transfer and DP bucket AllReduce once with real data; elements
    wrong per algorithm. Stops with an internal error if an emulated time alone differs from the model's."""
    from mpi4py import MPI

    from nicemu.bench import _run_mpi, data_options
    from nicemu.workloads.comm_mpi import MpiComm
    from nicemu.workloads.traffic import TrafficRecord

    class TrainComm(MpiComm):
        """Serve's real-data backend with train's group topologies (strided DP groups)."""

        def group(self, nodes: tuple[int, ...]) -> Torus:
            topo = self._groups.get(nodes)
            if topo is None:
                topo = self._groups[nodes] = group_topology(self.topology, nodes, self.profile)
            return topo

    lay, itemsize = su.layout, su.grad_dtype.itemsize
    biggest = max(max(elems for _, elems in parts[a].buckets) for a in algos) * itemsize
    check_fits(comm, -(-su.topology.nodes // comm.size), max(biggest, su.act_bytes), itemsize, "mpi", fix=train.TOO_BIG,
               what=f"the largest gradient bucket ({format_size(biggest)})")
    mc = TrainComm(comm, su.topology, su.profile, su.model, 0)
    wrong, off = {}, []
    try:
        for algo in algos:
            mc.reset_stats()
            p, bad = parts[algo], 0
            if lay.tp > 1:
                for s in range(lay.pp):
                    for d in range(lay.dp):
                        rec = TrafficRecord(0, "train", -1, "allreduce", su.act_bytes, algo, "attn_out",
                                            lay.tp_group(s, d))
                        c = mc.run_record(rec)
                        if c is not None and c.emulated_us != p.tp_us[s]:
                            off.append(f"{algo} TP AllReduce of stage {s}: {c.emulated_us} vs {p.tp_us[s]} us")
            for s in range(lay.pp - 1):
                pairs = lay.stage_pairs(s)
                for nodes, want in (([a for a, _ in pairs] + [b for _, b in pairs], p.to_next_us[s]),
                                    ([b for _, b in pairs] + [a for a, _ in pairs], p.to_prev_us[s])):
                    rec = TrafficRecord(0, "train", -1, "p2p", su.act_bytes, "p2p-" + p.p2p_path, "activations",
                                        tuple(nodes))
                    c = mc.run_record(rec)
                    if c.emulated_us != want:
                        off.append(f"{algo} transfer at stage boundary {s}: {c.emulated_us} vs {want} us")
            for (nodes, elems), alone in sorted(p.buckets.items()):
                emu = mc.emulator(nodes)
                if emu is None:
                    continue
                r = _run_mpi(emu, data_options("allreduce", 1, 1), algo, su.grad_dtype, elems * itemsize)
                if emu.comm.rank == 0:
                    bad += r["wrong"]
                if r["emulated_us"] != alone:
                    off.append(f"{algo} bucket of {elems} elements on nodes {list(nodes)}: "
                               f"{r['emulated_us']} vs {alone} us")
            _, _, tp_p2p_bad = mc.totals()
            total = np.zeros(1, dtype=np.int64)
            comm.Allreduce(np.array([bad], dtype=np.int64), total, op=MPI.SUM)
            wrong[algo] = int(total[0]) + tp_p2p_bad
    finally:
        mc.free()
    flags = np.zeros(1, dtype=np.int64)
    comm.Allreduce(np.array([len(off)], dtype=np.int64), flags, op=MPI.MAX)
    if flags[0]:
        raise RuntimeError("the MPI executor's time alone differs from the model's: "
                           + ("; ".join(off[:3]) if off else "on another rank"))
    return wrong


def run(args: argparse.Namespace, comm) -> int:
    algos, su = check(args, comm)
    lay = su.layout
    timed = [iteration(a, su) for a in algos]
    records = [r for r, _ in timed]
    wrong = _real_data(algos, {r["algo"]: p for r, p in timed}, su, comm) if args.executor == "mpi" else {}
    ring_it = next((r["iteration_us"] for r in records if r["algo"] == "ring"), None)
    for r in records:
        r.update(model=su.model.name, accelerator=su.acc.name, dp=lay.dp, topology=su.topology.name,
                 profile=su.profile.name, global_batch=args.global_batch, seq_len=args.seq_len,
                 grad_dtype=su.grad_dtype.name, bucket_mb=args.bucket_mb, executor=args.executor,
                 speedup_vs_ring=None if ring_it is None else ring_it / r["iteration_us"],
                 wrong=wrong.get(r["algo"]), tp=lay.tp, pp=lay.pp, micro_batches=su.micro_batches,
                 micro_batch_seqs=su.micro_seqs, tp_allreduce_bytes=su.act_bytes if lay.tp > 1 else 0,
                 p2p_bytes=su.act_bytes if lay.pp > 1 else 0)
    if comm.rank == 0:
        _print(args, su, records, wrong)
    return 1 if any(wrong.values()) else 0


def _print(args, su: Setup, records: list[dict], wrong: dict[str, int]) -> None:
    lay = su.layout
    print(f"# nicemu train: {su.model.name} on {su.acc.name}, TP {lay.tp} x DP {lay.dp} x PP {lay.pp} (ranks "
          f"tp-dp-pp, TP innermost) over {su.topology.describe()}, profile {su.profile.name}, executor "
          f"{args.executor}")
    print(f"# {args.global_batch} sequences of {args.seq_len} tokens per iteration: {su.micro_batches} "
          f"micro-batches of {su.micro_seqs} per replica (1F1B); TP AllReduces and pipeline transfers of "
          f"{su.act_bytes:,} B; {records[0]['grad_bytes'] / 2**30:.2f} GiB of {su.grad_dtype.name} gradients "
          f"on the busiest stage's ranks")
    print("# iter: the 1F1B schedule and every stage's last bucket done, TP AllReduces, pipeline transfers and DP "
          "buckets sharing one fabric; compute: the busiest stage's; bubble, TP, PP: what each adds to the critical "
          "path timed alone; share: what sharing the fabric adds to the schedule's end; DP: the buckets' tail; "
          "alone: iter with TP and PP alone (buckets sharing among themselves); no share, one stream: that with "
          "the buckets alone, in one stream per group (ms)")
    print("#" + HEADER[1:])
    for r in records:
        name, sp, bad = train.row_labels(r)
        ms = [r[k] / 1e3 for k in ("iteration_us", "compute_us", "bubble_us", "tp_exposed_us", "pp_exposed_us",
                                   "fabric_exposed_us", "dp_exposed_us", "iteration_alone_us",
                                   "iteration_no_sharing_us", "iteration_one_stream_us")]
        print(f"{name:>22} {ms[0]:10.2f} {ms[1]:10.2f} {ms[2]:9.2f} {ms[3]:9.2f} {ms[4]:9.2f} {ms[5]:9.2f} "
              f"{ms[6]:9.2f} {ms[7]:10.2f} {ms[8]:10.2f} {ms[9]:10.2f} {sp:>8} {bad:>6}")
    for r in records:
        grow = r["iteration_us"] / r["iteration_alone_us"] - 1
        print(f"# {r['algo']}: sharing the fabric adds {(r['iteration_us'] - r['iteration_alone_us']) / 1e3:.2f} ms "
              f"({100 * grow:.2f}%) to the iteration timed with TP and PP alone; {r['fabric_replayed_calls']:,} of "
              f"{r['fabric_calls']:,} calls replayed as {r['fabric_flows']:,} flows ({r['fabric_slowed_flows']:,} "
              f"slowed) in {r['fabric_rounds']} round{'' if r['fabric_rounds'] == 1 else 's'}")
    train.finish_report(args, records, wrong)
