#!/usr/bin/env python3
"""Soak test: back-to-back small AllReduces over every algorithm, watching for leaks.

    mpiexec -n 4 python scripts/soak.py --calls 10000 --comm-probe

One Emulator runs ``--calls`` AllReduces in a row, cycling through the
algorithms (every one of the registry, ``nicemu info`` lists them). The
calls come in cycles of ``--cycle`` calls. Each call of a cycle has its own
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
  and at the end; the growth must stay below ``--max-growth`` percent;
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
* with ``--comm-probe``, communicators: MPICH has a fixed number of context ids,
  so the script counts how many more communicators ``Dup`` can create (until
  it fails) before the Emulator exists and after it is freed; a leaked
  communicator would lower that number. It costs ~2,000 ``Dup`` calls per probe.

``--faults drop=P,corrupt=Q,seed=S`` injects link faults into every call, so the
retransmission protocol's extra messages and requests are soaked too (results
must still be exact).

Exit status 0 when every result is exact and every check passes, 1 otherwise.
Bad arguments: one ``soak: error: ...`` line from rank 0, status 2 on every rank.
"""

from __future__ import annotations

import argparse
import sys

from mpi4py import MPI

from nicemu.argtypes import ScriptParser
from nicemu.collectives import ALGORITHMS
from nicemu.errors import NicemuError
from nicemu.studies import soak


def parse_args(argv: list[str] | None, comm: MPI.Comm) -> soak.SoakOptions:
    ScriptParser.rank = comm.rank
    ap = ScriptParser(prog=soak.PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--calls", type=int, default=10_000,
                    help="AllReduces in total, rounded up to whole cycles (default 10000)")
    ap.add_argument("--cycle", type=int, default=100, help="calls per cycle (default 100)")
    ap.add_argument("--warmup-cycles", type=int, default=None,
                    help="cycles before the reference measurement (default a tenth of the cycles, 1 to 5)")
    ap.add_argument("--algos", default=",".join(ALGORITHMS), help="comma list (default: every algorithm)")
    ap.add_argument("--topology", default=None, help="default ring:R for R ranks (one node per rank)")
    ap.add_argument("--profile", default="directreduce-paper", help="hardware profile (default directreduce-paper)")
    ap.add_argument("--faults", default=None, metavar="drop=P,corrupt=Q,seed=S",
                    help="link faults on every call (exercises the retransmission protocol's requests)")
    ap.add_argument("--max-growth", type=float, default=5.0, help="resident memory growth limit, percent (default 5)")
    ap.add_argument("--comm-probe", action="store_true",
                    help="count how many communicators MPI can still create, before and after (slow)")
    ap.add_argument("--json", metavar="FILE", help="write the report as JSON")
    a = ap.parse_args(argv)
    return soak.make_options(comm.size, a.calls, a.cycle, a.warmup_cycles, a.algos, a.topology, a.profile,
                             a.faults, a.max_growth, a.comm_probe, a.json)


def main(argv: list[str] | None = None) -> int:
    comm = MPI.COMM_WORLD
    try:
        args = parse_args(argv, comm)
    except NicemuError as exc:
        if comm.rank == 0:
            print(f"{soak.PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    status = soak.run(args, comm)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
