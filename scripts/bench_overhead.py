#!/usr/bin/env python3
"""Wall-time overhead of the emulator's MPI data path against a bare ring and MPI_Allreduce.

One ``mpiexec`` run times three float32 sum AllReduces side by side on the
same data, with one topology node per rank (topology ``ring:R`` for R ranks):

- ``emulator``: ``Emulator(comm, "ring:R", "directreduce-paper").run_inplace(
  "allreduce", work, "sum", "ring")``, the emulator's host-ring path with its
  timing model;
- ``bare_ring``: the same ring written directly on mpi4py (reduce-scatter then
  allgather, R-1 ``Sendrecv`` steps each, on numpy buffers, no pickle), the
  same chunking as the emulator: the floor for a ring in Python;
- ``mpi_allreduce``: ``comm.Allreduce(MPI.IN_PLACE, work, op=MPI.SUM)``.
  In place is the fair choice: the other two also reduce in place with no
  extra copy, and a separate receive buffer would either add a copy back that
  MPI does not need or change the semantics.

Method: for every size, iteration and implementation the same input is copied
into the working buffer (not timed), the ranks meet at a barrier, the call is
timed with ``MPI.Wtime``, and the result is checked exactly against the numpy
float64 sum of all ranks' inputs (small integers in float32, so every sum is
exact and any difference is an error). The implementations are interleaved within each iteration, in an order
that rotates from one iteration to the next, so machine noise and cache state
hit all three alike. The time of an iteration is the slowest rank's; the table
shows the median over the timed iterations (after ``--warmup`` untimed ones).

    mpiexec -n 4 python scripts/bench_overhead.py --sizes 1K:256M:4 \\
        --json docs/results/bench_overhead_R4.json --markdown docs/results/bench_overhead_R4.md

A wrong result from any implementation makes the run exit 1 and names it.
Missed overhead targets are reported as FAIL but do not change the exit status.
Bad arguments: one ``bench_overhead: error: ...`` line from rank 0, status 2
on every rank.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from mpi4py import MPI

from nicemu.argtypes import ScriptParser
from nicemu.errors import UsageError
from nicemu.studies import overhead


def _whole(minimum: int, example: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; e.g. {example}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum}; e.g. {example}")
        return value
    return convert


def parse_args(argv: list[str], comm: MPI.Comm) -> overhead.Options:
    ScriptParser.rank = comm.rank
    ap = ScriptParser(prog=overhead.PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--sizes", default=overhead.DEFAULT_SIZES,
                    help=f"bytes per rank: 64K, 1K,256K,1G or MIN:MAX[:FACTOR] (default {overhead.DEFAULT_SIZES})")
    ap.add_argument("--iters", type=_whole(1, "--iters 20"), default=None,
                    help="timed iterations per size (default adaptive: max(20, min(200, 4 MiB / size)))")
    ap.add_argument("--warmup", type=_whole(0, "--warmup 2"), default=2, help="untimed iterations per size (default 2)")
    ap.add_argument("--json", metavar="FILE", help="write one record per size as a JSON list")
    ap.add_argument("--csv", metavar="FILE", help="write one record per size as CSV")
    ap.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    ap.add_argument("--progress", action="store_true",
                    help="show the progress bar on stderr even when it is not a terminal (under mpiexec "
                         "the ranks' stderr is usually a pipe)")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="profile the emulator's calls on rank 0 (timed iterations only), write the "
                         "pstats to FILE and print the top 15 functions by tottime; the emulator's "
                         "times in that run are inflated by the profiler")
    a = ap.parse_args(argv)
    return overhead.make_options(a.sizes, a.iters, a.warmup, a.json, a.csv, a.markdown, a.progress, a.cprofile,
                                 overhead.launch_command(comm.size, argv))


def main(argv: list[str] | None = None) -> int:
    comm = MPI.COMM_WORLD
    argv = sys.argv[1:] if argv is None else argv
    try:
        return overhead.run(parse_args(argv, comm), comm)
    except UsageError as exc:
        if comm.rank == 0:
            print(f"{overhead.PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as exc:   # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        if comm.size > 1:
            comm.Abort(130)
        return 130
    except Exception:
        sys.stderr.write(f"{overhead.PROG}: internal error on rank {comm.rank}:\n{traceback.format_exc()}")
        sys.stderr.flush()
        if comm.size > 1:
            comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
