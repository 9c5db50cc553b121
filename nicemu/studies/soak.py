"""Soak test: back-to-back small AllReduces over every algorithm, watching for leaks (needs MPI).

    mpiexec -n 4 python scripts/soak.py --calls 10000 --comm-probe

One Emulator runs ``calls`` AllReduces in a row, cycling through the
algorithms of the registry. The
calls come in cycles of ``cycle`` calls. Each call of a cycle has its own
count (24 different ones from 1 to 4,099 elements, more than the executor's
plan cache holds, so plans are evicted and rebuilt), dtype (int32, int64,
float32), op (sum, max, min; sum for the sparse algorithms) and, for the sparse
algorithms, density; the spot capacity changes at mid-cycle, so the RMA windows
are freed and allocated again twice per cycle. Every cycle repeats the same
sequence of calls (with fresh input values), so the emulator's caches are in the
same state at the end of every cycle: resources measured at the end of the
warm-up cycles and at the end of the run must be equal unless something leaks.
Inputs are small integers, so every result is exact in every dtype: it must
equal numpy's int64 reduction of all nodes' inputs, element for element.

What is measured, per rank (the report shows the worst rank):

* resident memory (``VmRSS`` in /proc/self/status) after the warm-up cycles
  and at the end; the growth must stay below ``max_growth`` percent;
* RMA windows, requests and persistent requests that Python still holds with a
  live MPI handle (a census of ``MPI.Win`` / ``MPI.Request`` / ``MPI.Prequest``
  objects through the garbage collector, which tracks them): their numbers must
  not grow during the run, no non-persistent request may be live between calls
  (nothing left in flight), and after ``Emulator.free()`` none may remain;
* MPICH's shared-memory segments (``/dev/shm/mpich_shar*`` mappings in
  /proc/self/maps; every window allocated with ``Win.Allocate`` maps two): they
  see windows the library still holds even if Python lost the object, and must
  be back to the starting number after ``free()``;
* unmatched messages: after the run, ``Iprobe(ANY_SOURCE, ANY_TAG)`` on the
  emulator's communicator must find nothing (a send nobody received);
* with ``comm_probe``, communicators: MPICH has a fixed number of context ids,
  so the script counts how many more communicators ``Dup`` can create (until
  it fails) before the Emulator exists and after it is freed; a leaked
  communicator would lower that number. It costs ~2,000 ``Dup`` calls per probe.

``faults`` (``drop=P,corrupt=Q,seed=S``) injects link faults into every call, so the
retransmission protocol's extra messages and requests are soaked too (results
must still be exact).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

from nicemu.collectives import ALGORITHMS, Emulator, names
from nicemu.errors import UsageError
from nicemu.nic.faults import parse_faults
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

PROG = "soak"
#: 24 small counts (more than the executor's plan cache of 16 keeps), some below the node count
COUNTS = (1, 2, 3, 5, 7, 8, 13, 16, 31, 64, 100, 127, 128, 255, 256, 257, 500, 512, 1000, 1023, 1024,
          2048, 4095, 4099)
DTYPES = ("int32", "int64", "float32")
DENSITIES = (0.0, 0.05, 0.3, 1.0)
BLOCK_SIZE = 16
SPOT_BLOCKS = (8, 32)          # first and second half of every cycle: the windows are reallocated
UFUNC = {"sum": np.add, "max": np.maximum, "min": np.minimum}
HELD = ("windows", "requests", "persistent", "shm_mappings")
SPARSE_ALGOS = tuple(names(kind="sparse"))


@dataclass
class SoakOptions:
    """A checked soak run (see :func:`make_options`)."""

    calls: int                  # a whole number of cycles
    cycle: int
    warmup: int                 # calls before the reference measurement (whole cycles)
    algos: list[str]
    topology: str
    profile: str
    faults: str | None
    max_growth: float
    comm_probe: bool
    json: str | None = None


def make_options(comm_size: int, calls: int = 10_000, cycle: int = 100, warmup_cycles: int | None = None,
                 algos: str = ",".join(ALGORITHMS), topology: str | None = None,
                 profile: str = "directreduce-paper", faults: str | None = None, max_growth: float = 5.0,
                 comm_probe: bool = False, json_path: str | None = None) -> SoakOptions:
    """Check the options (as typed on the command line); UsageError, TopologyError, ... on a bad one."""
    if cycle < 1:
        raise UsageError(f"--cycle {cycle} must be at least 1")
    cycles = -(-calls // cycle)
    if cycles < 2:
        raise UsageError(f"--calls {calls} must be at least two cycles of --cycle {cycle} calls "
                         "(the first warms up)")
    algo_list = [a.strip() for a in algos.split(",") if a.strip()]
    for a in algo_list:
        if a not in ALGORITHMS:
            raise UsageError(f"unknown algorithm '{a}' in --algos; use some of {', '.join(ALGORITHMS)}")
    if not algo_list:
        raise UsageError("--algos is empty; e.g. --algos ring,omniccl")
    if warmup_cycles is None:
        warmup_cycles = min(5, max(1, cycles // 10))
    if not 1 <= warmup_cycles < cycles:
        raise UsageError(f"--warmup-cycles {warmup_cycles} must be at least 1 and below the {cycles} cycles")
    if not max_growth > 0:
        raise UsageError(f"--max-growth {max_growth} must be a positive percentage")
    topology = topology or f"ring:{max(comm_size, 2)}"
    nodes = parse_topology(topology).nodes
    load_profile(profile)
    if faults:
        parse_faults(faults).check_nodes(nodes)
        no_faults = [a for a in algo_list if a not in names(link_faults=True) and a != "mpi"]
        if no_faults and algos == ",".join(ALGORITHMS):    # the default list: keep what faults cover
            algo_list = [a for a in algo_list if a not in no_faults]
        elif no_faults:
            raise UsageError(f"--faults covers neighbour links only; drop {', '.join(no_faults)} from --algos")
    if comm_size > nodes:
        raise UsageError(f"{comm_size} ranks for {topology} ({nodes} nodes): use a larger --topology")
    return SoakOptions(cycles * cycle, cycle, warmup_cycles * cycle, algo_list, topology, profile, faults,
                       max_growth, comm_probe, json_path)


# --------------------------------------------------------------------------- what is held

def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def shm_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("/dev/shm/mpich_shar" in line for line in f)


def live_handles() -> dict[str, int]:
    """MPI objects Python holds with a live handle: windows, requests, persistent requests."""
    gc.collect()
    held = Counter(windows=0, requests=0, persistent=0)
    for obj in gc.get_objects():
        if isinstance(obj, MPI.Win) and obj != MPI.WIN_NULL:
            held["windows"] += 1
        elif isinstance(obj, MPI.Request) and obj != MPI.REQUEST_NULL:
            held["persistent" if isinstance(obj, MPI.Prequest) else "requests"] += 1
    return dict(held)


def census() -> dict[str, int]:
    return {"rss_KiB": rss_kib(), "shm_mappings": shm_mappings(), **live_handles()}


def comm_headroom(comm: MPI.Comm, limit: int = 65536) -> int:
    """How many more communicators ``Dup`` can create before MPI runs out of context ids."""
    made: list[MPI.Comm] = []
    try:
        while len(made) < limit:
            made.append(comm.Dup())
    except MPI.Exception:
        pass
    for c in made:
        c.Free()
    return len(made)


def pending_messages(comm: MPI.Comm) -> bool:
    comm.Barrier()
    return bool(comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG))


# --------------------------------------------------------------------------- the calls

def draw_call(i: int, algos: list[str], cycle: int) -> tuple[str, int, str, str, float, int]:
    """(algo, count, dtype, op, density, seed) of call ``i``: the same on every rank; all but the
    seed of the input values repeat every ``cycle`` calls."""
    slot = i % cycle
    algo = algos[slot % len(algos)]
    rng = np.random.default_rng([slot, 20261130])
    count = int(rng.choice(COUNTS))
    dtype = str(rng.choice(DTYPES))
    op = "sum" if algo in SPARSE_ALGOS else str(rng.choice(list(UFUNC)))
    density = float(rng.choice(DENSITIES)) if algo in SPARSE_ALGOS else 1.0
    return algo, count, dtype, op, density, i


def inputs(nodes: int, count: int, dtype: str, density: float, seed: int) -> np.ndarray:
    """Every node's input: integers in [-8, 8]; zero blocks with probability 1 - density."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 9, size=(nodes, count))
    if density < 1.0:
        nblocks = -(-count // BLOCK_SIZE)
        keep = rng.random((nodes, nblocks)) < density
        x *= np.repeat(keep, BLOCK_SIZE, axis=1)[:, :count]
    return x.astype(dtype)


def one_call(emu: Emulator, i: int, algos: list[str], cycle: int) -> tuple[str, int]:
    """Run call ``i``; return its algorithm and the number of wrong elements on this rank."""
    algo, count, dtype, op, density, seed = draw_call(i, algos, cycle)
    x = inputs(emu.topology.nodes, count, dtype, density, seed)
    work = x[emu.node_range.start:emu.node_range.stop].copy()   # run_inplace overwrites it
    half = 2 * (i % cycle) // cycle          # the spot capacity changes at mid-cycle
    sparse = {"block_size": BLOCK_SIZE, "spot_blocks": SPOT_BLOCKS[half]}
    emu.run_inplace("allreduce", work, op, algo, sparse if algo in SPARSE_ALGOS else None)
    ref = UFUNC[op].reduce(x.astype(np.int64), axis=0)    # exact: small integers
    return algo, int(np.count_nonzero(work.astype(np.int64) != ref))


# --------------------------------------------------------------------------- report

def worst(comm: MPI.Comm, value: float, op=MPI.MAX) -> float:
    out = np.zeros(1)
    comm.Allreduce(np.array([float(value)]), out, op=op)
    return float(out[0])


def soak(args: SoakOptions, comm: MPI.Comm) -> dict:
    """Run the calls and every check; the report (the same on every rank)."""
    headroom_before = comm_headroom(comm) if args.comm_probe else None
    start = census()
    calls_by_algo: Counter[str] = Counter()
    wrong = 0
    t0 = MPI.Wtime()
    emu = Emulator(comm, args.topology, args.profile, faults=args.faults)
    warm = None
    for i in range(args.calls):
        if i == args.warmup:
            warm = census()
        algo, bad = one_call(emu, i, args.algos, args.cycle)
        calls_by_algo[algo] += 1
        wrong += bad
    end = census()
    wall_s = MPI.Wtime() - t0
    if warm is None:
        warm = end
    leftover = pending_messages(emu.comm)
    emu.free()
    comm_freed = emu.comm == MPI.COMM_NULL
    del emu
    after = census()
    headroom_after = comm_headroom(comm) if args.comm_probe else None

    growth_pct = 100.0 * (end["rss_KiB"] - warm["rss_KiB"]) / warm["rss_KiB"]
    checks = {
        "results exact": worst(comm, wrong, MPI.SUM) == 0,
        f"RSS growth < {args.max_growth:g}%": worst(comm, growth_pct) < args.max_growth,
        "windows do not grow": worst(comm, end["windows"] - warm["windows"]) <= 0,
        "persistent requests do not grow": worst(comm, end["persistent"] - warm["persistent"]) <= 0,
        "no request in flight between calls": worst(comm, max(end["requests"], warm["requests"])) == 0,
        "shm segments do not grow": worst(comm, end["shm_mappings"] - warm["shm_mappings"]) <= 0,
        "free() releases the windows": worst(comm, after["windows"] - start["windows"]) <= 0,
        "free() leaves no request": worst(comm, after["requests"] + after["persistent"]
                                          - start["requests"] - start["persistent"]) <= 0,
        "free() unmaps the shm segments": worst(comm, after["shm_mappings"] - start["shm_mappings"]) <= 0,
        "free() frees the communicator": worst(comm, 0 if comm_freed else 1) == 0,
        "no unmatched message": worst(comm, 1 if leftover else 0) == 0,
    }
    if args.comm_probe:
        checks["no communicator leaked"] = headroom_after == headroom_before
    return {
        "ranks": comm.size, "topology": args.topology, "profile": args.profile, "faults": args.faults,
        "calls": args.calls,
        "cycle": args.cycle, "warmup": args.warmup, "calls_by_algo": dict(calls_by_algo),
        "wrong": int(worst(comm, wrong, MPI.SUM)),
        "wall_s": worst(comm, wall_s),
        "rss_KiB": {"start": int(worst(comm, start["rss_KiB"])), "after_warmup": int(worst(comm, warm["rss_KiB"])),
                    "end": int(worst(comm, end["rss_KiB"])), "after_free": int(worst(comm, after["rss_KiB"]))},
        "rss_growth_pct_max_over_ranks": worst(comm, growth_pct),
        "held": {name: {k: int(worst(comm, c[k])) for k in HELD}
                 for name, c in (("start", start), ("after_warmup", warm), ("end", end), ("after_free", after))},
        "comm_headroom": None if not args.comm_probe else {"before": headroom_before, "after": headroom_after},
        "checks": checks,
        "ok": all(checks.values()),
    }


def print_report(r: dict) -> None:
    print(f"# soak: {r['calls']} AllReduces on {r['topology']}, {r['ranks']} ranks, profile {r['profile']}, "
          f"cycles of {r['cycle']} calls, warm-up {r['warmup']} calls, faults {r['faults'] or 'none'}")
    print(f"calls per algorithm : {', '.join(f'{a} {n}' for a, n in r['calls_by_algo'].items())}")
    print(f"wall time           : {r['wall_s']:.1f} s ({1e3 * r['wall_s'] / r['calls']:.2f} ms per call)")
    print(f"wrong elements      : {r['wrong']}")
    rss = r["rss_KiB"]
    print(f"RSS (max over ranks): start {rss['start'] / 1024:.1f} MiB, after warm-up {rss['after_warmup'] / 1024:.1f} "
          f"MiB, end {rss['end'] / 1024:.1f} MiB, after free {rss['after_free'] / 1024:.1f} MiB; "
          f"growth {r['rss_growth_pct_max_over_ranks']:+.2f}% (worst rank)")
    for k in HELD:
        print(f"{k + ' held':<20}: " + ", ".join(f"{stage} {v[k]}" for stage, v in r["held"].items()))
    if r["comm_headroom"]:
        print(f"communicator room   : before {r['comm_headroom']['before']}, after {r['comm_headroom']['after']}")
    for name, ok in r["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print("soak: OK" if r["ok"] else "soak: FAILED")


def run(args: SoakOptions, comm: MPI.Comm) -> int:
    """Soak, print the report on rank 0 (and write it as JSON if asked); 0 if every check passed."""
    report = soak(args, comm)
    if comm.rank == 0:
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1
