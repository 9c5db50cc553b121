"""``nicemu schedule``: print an algorithm's chunk-level program."""

from __future__ import annotations

import argparse

from nicemu.collectives import build_schedule, names
from nicemu.collectives.api.checks import MAX_COUNT
from nicemu.errors import UsageError
from nicemu.topologies import parse_topology


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", default="directreduce",
                   help=f"one of {', '.join(names(kind='dense', emulated=True))} "
                        "(the algorithms with a fixed schedule)")
    p.add_argument("--collective", default="allreduce",
                   help="allreduce, reducescatter, allgather, alltoall (count: a multiple of the nodes), "
                        "broadcast or reduce")
    p.add_argument("--root", type=int, default=0, help="broadcast and reduce: the root node (default 0)")
    p.add_argument("--topology", default="ring:4")
    p.add_argument("--ranks-per-node", type=int, default=1, metavar="P",
                   help="ranks on every node: the hierarchical program (intra-node phases around the algorithm "
                        "on the node topology), ranks numbered node-major (default 1)")
    p.add_argument("--count", type=int, default=8, help="elements per node, 1 to 2**40 (default 8)")
    p.add_argument("--limit", type=int, default=8, help="transfers shown per step, >= 0 (default 8)")
    p.add_argument("--bidirectional", action="store_true",
                   help="split every chunk over both directions of each ring")
    p.add_argument("--segment-elems", type=int, default=None,
                   help="ring-pipelined, directreduce-pipelined: elements per pipeline segment, >= 1 (default: "
                        "host.segment_KiB of the profiles, 1 MiB, in float32 elements)")


def run(args: argparse.Namespace, comm) -> int:
    if not 1 <= args.count <= MAX_COUNT:
        raise UsageError(f"--count {args.count} is outside 1..2**40 elements per node")
    if args.limit < 0:
        raise UsageError(f"--limit {args.limit} must be >= 0 (0 shows only the step headers)")
    if args.segment_elems is not None and not 1 <= args.segment_elems <= MAX_COUNT:
        raise UsageError(f"--segment-elems {args.segment_elems} is outside 1..2**40 elements")
    if args.ranks_per_node < 1:
        raise UsageError(f"--ranks-per-node {args.ranks_per_node} must be >= 1")
    topology = parse_topology(args.topology).with_ranks_per_node(args.ranks_per_node)
    sched = build_schedule(args.collective, args.algo, topology, args.count,
                           args.bidirectional, args.segment_elems, root=args.root)
    if comm.rank == 0:
        print(sched.describe(args.limit))
    return 0
