"""Wall-time overhead of the emulator's MPI data path against a bare ring and MPI_Allreduce (needs MPI).

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
shows the median over the timed iterations (after ``warmup`` untimed ones).

    mpiexec -n 4 python scripts/bench_overhead.py --sizes 1K:256M:4 \\
        --json docs/results/bench_overhead_R4.json --markdown docs/results/bench_overhead_R4.md

A wrong result from any implementation makes the run exit 1 and names it.
Missed overhead targets are reported as FAIL but do not change the exit status.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI

import nicemu
from nicemu.collectives import Emulator
from nicemu.errors import UsageError
from nicemu.memory import available_bytes
from nicemu.progress import Progress
from nicemu.sizes import format_size, parse_sizes
from nicemu.studies.pages import page, script_command

#: the repository (an editable install), for the git commit a result names
ROOT = Path(nicemu.__file__).resolve().parents[1]
PROG = "bench_overhead"
DEFAULT_SIZES = "1K:256M:4"
PROFILE = "directreduce-paper"
DTYPE = np.dtype(np.float32)
IMPLS = ("emulator", "bare_ring", "mpi_allreduce")
TAG_RING = 77
#: elements per block when generating data and checking results (bounds the temporaries)
BLOCK = 1 << 20
#: period of every rank's input pattern (a prime) and the seed of the patterns
PERIOD = 65521
SEED = 20240917
MiB = 1 << 20
KiB = 1 << 10




@dataclass
class Options:
    """A checked run (see :func:`make_options`)."""

    sizes: str                  # as typed: 1K:256M:4
    size_list: list[int]
    iters: int | None           # None: adaptive
    warmup: int
    json: str | None = None
    csv: str | None = None
    markdown: str | None = None
    progress: bool = False
    cprofile: str | None = None
    command: str = ""           # the command line, for the Markdown page


def make_options(sizes: str = DEFAULT_SIZES, iters: int | None = None, warmup: int = 2, json_path: str | None = None,
                 csv_path: str | None = None, markdown: str | None = None, progress: bool = False,
                 cprofile: str | None = None, command: str = "") -> Options:
    """Check the sizes (UsageError on a bad one) and resolve them."""
    size_list = parse_sizes(sizes)
    for size in size_list:
        if size % DTYPE.itemsize:
            raise UsageError(f"size {size} is not a multiple of {DTYPE.itemsize} bytes ({DTYPE.name})")
    if len(set(size_list)) != len(size_list):
        raise UsageError(f"--sizes {sizes} lists a size twice")
    return Options(sizes, size_list, iters, warmup, json_path, csv_path, markdown, progress, cprofile, command)


def launch_command(ranks: int, argv: list[str]) -> str:
    """The command line of a run with ``ranks`` ranks, as typed from the repository root."""
    return f"mpiexec -n {ranks} " + script_command(PROG, argv)


def iterations(size: int, fixed: int | None) -> int:
    """Timed iterations: ``--iters`` if given, else more for small sizes."""
    return fixed if fixed is not None else max(20, min(200, (1 << 22) // size))


# --------------------------------------------------------------------------- checks before any data moves

def _per_rank_bytes(size: int, ranks: int) -> float:
    """Input, working copy, reference, two chunk scratches, and MPI's own temporary."""
    return 4.0 * size + 2.0 * size / ranks


def preflight(comm: MPI.Comm, args: Options) -> None:
    """Collective: every rank raises the same UsageError, or none does."""
    if comm.size < 2:
        raise UsageError("needs at least 2 ranks (one ring node per rank); run it under mpiexec -n R, R >= 2")
    message = None
    # memory, per host: every rank keeps the largest size's input, reference and working copy
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    need = host.allreduce(_per_rank_bytes(max(args.size_list), comm.size), op=MPI.SUM)
    host.Free()
    verdicts = comm.allgather((need, available_bytes()))
    for r, (need_r, avail_r) in enumerate(verdicts):
        if need_r > 0.9 * avail_r:
            message = (f"size {format_size(max(args.size_list))} needs about {need_r / 2**30:.1f} GiB on the "
                       f"host of rank {r} but {avail_r / 2**30:.1f} GiB is available; use smaller --sizes "
                       "or fewer ranks per host")
            break
    # output files: rank 0 writes them, so rank 0 checks them
    if message is None and comm.rank == 0:
        for flag in ("json", "csv", "markdown", "cprofile"):
            path = getattr(args, flag)
            if path is None:
                continue
            p = Path(path)
            if p.is_dir():
                message = f"--{flag} {path} is a directory; give a file name"
            elif not p.parent.is_dir():
                message = f"--{flag} {path}: directory {p.parent} does not exist"
            elif not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
                message = f"--{flag} {path} is not writable"
            if message:
                break
    message = comm.bcast(message, root=0)
    if message:
        raise UsageError(message)


# --------------------------------------------------------------------------- data

def rank_tables(ranks: int) -> list[np.ndarray]:
    """Every rank's input pattern: PERIOD pseudo-random integers in [-8, 7], independent per rank."""
    return [np.random.default_rng([SEED, r]).integers(-8, 8, PERIOD, dtype=np.int8) for r in range(ranks)]


def make_data(rank: int, ranks: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's float32 input and the reference: the float64 sum of all ranks' inputs.

    Element k of rank r is ``table_r[k mod PERIOD]``; the period is a prime, so it
    never lines up with the chunking, and each size's data is a prefix of the
    largest size's. The sums are small integers, exact in float32, so the
    reference is kept in float32 (half the memory, a cheaper comparison).
    """
    tables = rank_tables(ranks)
    inp = np.empty(count, dtype=DTYPE)
    ref = np.empty(count, dtype=DTYPE)
    acc = np.empty(min(BLOCK, count), dtype=np.float64)
    for a in range(0, count, BLOCK):
        b = min(a + BLOCK, count)
        idx = np.arange(a, b, dtype=np.int64)
        idx %= PERIOD
        acc[:b - a] = 0.0
        for r, table in enumerate(tables):
            vals = table.take(idx)
            acc[:b - a] += vals
            if r == rank:
                inp[a:b] = vals
        ref[a:b] = acc[:b - a]
    return inp, ref


def count_wrong(result: np.ndarray, ref: np.ndarray) -> int:
    wrong = 0
    for a in range(0, result.size, BLOCK):
        wrong += int(np.count_nonzero(result[a:a + BLOCK] != ref[a:a + BLOCK]))
    return wrong


# --------------------------------------------------------------------------- the three implementations

def chunk_bounds(count: int, parts: int) -> list[int]:
    """Start of each of ``parts`` near-equal chunks (the first ``count % parts`` one longer), then ``count``."""
    q, r = divmod(count, parts)
    return [j * q + min(j, r) for j in range(parts + 1)]


def bare_ring_allreduce(comm: MPI.Comm, row: np.ndarray, scratch: np.ndarray, bounds: list[int]) -> None:
    """Ring AllReduce (sum) of ``row`` in place: reduce-scatter, then allgather, R-1 steps each.

    Node i ends the reduce-scatter owning chunk i: in step s it sends chunk
    (i-s-1) mod R to i+1 and adds chunk (i-s-2) mod R from i-1; in allgather
    step s it passes chunk (i-s) mod R on and receives (i-s-1) mod R in place.
    """
    size, i = comm.size, comm.rank
    right, left = (i + 1) % size, (i - 1) % size
    for s in range(size - 1):
        out, inc = (i - s - 1) % size, (i - s - 2) % size
        dst = row[bounds[inc]:bounds[inc + 1]]
        tmp = scratch[:dst.size]
        comm.Sendrecv(row[bounds[out]:bounds[out + 1]], right, TAG_RING, tmp, left, TAG_RING)
        np.add(dst, tmp, out=dst)
    for s in range(size - 1):
        out, inc = (i - s) % size, (i - s - 1) % size
        comm.Sendrecv(row[bounds[out]:bounds[out + 1]], right, TAG_RING,
                      row[bounds[inc]:bounds[inc + 1]], left, TAG_RING)


@dataclass
class Runners:
    """The three implementations as zero-argument calls on the current working buffer."""

    emu: Emulator
    comm: MPI.Comm          # a private duplicate for the bare ring and MPI_Allreduce
    work: np.ndarray        # (1, count), C-contiguous
    scratch: np.ndarray
    bounds: list[int]

    def calls(self) -> dict[str, Callable[[], None]]:
        row = self.work[0]
        return {
            "emulator": lambda: self.emu.run_inplace("allreduce", self.work, "sum", "ring"),
            "bare_ring": lambda: bare_ring_allreduce(self.comm, row, self.scratch, self.bounds),
            "mpi_allreduce": lambda: self.comm.Allreduce(MPI.IN_PLACE, row, op=MPI.SUM),
        }


# --------------------------------------------------------------------------- measuring

def measure(comm: MPI.Comm, emu: Emulator, bench_comm: MPI.Comm, size: int, iters: int, warmup: int,
            inp: np.ndarray, ref: np.ndarray, progress: Progress, profiler=None) -> dict:
    """Time and check the three implementations at one size; the same record on every rank."""
    count = size // DTYPE.itemsize
    ranks = comm.size
    work = np.empty((1, count), dtype=DTYPE)
    bounds = chunk_bounds(count, ranks)
    scratch = np.empty(max(bounds[1] - bounds[0], 1), dtype=DTYPE)
    calls = Runners(emu, bench_comm, work, scratch, bounds).calls()
    src, expect = inp[:count], ref[:count]
    total = warmup + iters
    times = np.zeros((len(IMPLS), iters))
    wrong = np.zeros((len(IMPLS), total), dtype=np.int64)
    for it in range(total):
        shift = it % len(IMPLS)
        for k in [*range(shift, len(IMPLS)), *range(shift)]:
            call = calls[IMPLS[k]]
            np.copyto(work[0], src)
            profiling = profiler is not None and IMPLS[k] == "emulator" and it >= warmup
            comm.Barrier()
            if profiling:
                profiler.enable()
            t0 = MPI.Wtime()
            call()
            elapsed = MPI.Wtime() - t0
            if profiling:
                profiler.disable()
            if it >= warmup:
                times[k, it - warmup] = elapsed
            wrong[k, it] = count_wrong(work[0], expect)
        progress.update(f"{format_size(size)} iteration {it + 1}/{total}")
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)   # an iteration takes as long as its slowest rank
    comm.Allreduce(MPI.IN_PLACE, wrong, op=MPI.SUM)   # wrong elements over all ranks, per iteration
    rec: dict = {"bytes": size, "size": format_size(size), "count": count, "ranks": ranks,
                 "topology": f"ring:{ranks}", "dtype": DTYPE.name, "op": "sum", "iters": iters,
                 "warmup": warmup}
    for k, name in enumerate(IMPLS):
        rec[f"{name}_us"] = statistics.median(times[k]) * 1e6
    for k, name in enumerate(IMPLS):
        rec[f"{name}_min_us"] = float(times[k].min()) * 1e6
    rec["emu_over_bare"] = rec["emulator_us"] / rec["bare_ring_us"]
    rec["emu_over_mpi"] = rec["emulator_us"] / rec["mpi_allreduce_us"]
    # the fastest iterations are the least disturbed by other jobs on a shared machine
    rec["emu_over_bare_min"] = rec["emulator_min_us"] / rec["bare_ring_min_us"]
    rec["emu_over_mpi_min"] = rec["emulator_min_us"] / rec["mpi_allreduce_min_us"]
    for k, name in enumerate(IMPLS):
        rec[f"{name}_wrong"] = int(wrong[k].max())            # the worst iteration
        rec[f"{name}_wrong_iters"] = int(np.count_nonzero(wrong[k]))
    rec["wrong"] = sum(rec[f"{name}_wrong"] for name in IMPLS)
    return rec


# --------------------------------------------------------------------------- targets and reports

@dataclass
class Target:
    label: str
    ratio: str          # record key
    limit: float
    applies: Callable[[int], bool]

    def check(self, records: list[dict]) -> tuple[str, str]:
        rel = [r for r in records if self.applies(r["bytes"])]
        if not rel:
            return "n/a", "no size in range"
        worst = max(rel, key=lambda r: r[self.ratio])
        status = "PASS" if worst[self.ratio] <= self.limit else "FAIL"
        return status, f"worst {worst[self.ratio]:.2f}x at {worst['size']}"


TARGETS = [
    Target("emulator <= 1.15x bare ring at >= 1M", "emu_over_bare", 1.15, lambda b: b >= MiB),
    Target("emulator <= 3x bare ring below 64K", "emu_over_bare", 3.0, lambda b: b < 64 * KiB),
    Target("emulator <= MPI_Allreduce at >= 1M", "emu_over_mpi", 1.0, lambda b: b >= MiB),
]


def target_results(records: list[dict]) -> list[tuple[str, str, str]]:
    return [(t.label, *t.check(records)) for t in TARGETS]


def summary_line(records: list[dict]) -> str:
    return "# targets: " + "; ".join(f"{status} {label} ({detail})"
                                     for label, status, detail in target_results(records))


COLUMNS = ["size", "emulator_us", "bare_ring_us", "mpi_allreduce_us", "emu/bare", "emu/mpi", "min emu/bare",
           "min emu/mpi", "iters", "load"]


def _row(rec: dict) -> list[str]:
    return [rec["size"], f"{rec['emulator_us']:,.1f}", f"{rec['bare_ring_us']:,.1f}",
            f"{rec['mpi_allreduce_us']:,.1f}", f"{rec['emu_over_bare']:.2f}", f"{rec['emu_over_mpi']:.2f}",
            f"{rec['emu_over_bare_min']:.2f}", f"{rec['emu_over_mpi_min']:.2f}", str(rec["iters"]),
            "-" if rec.get("loadavg_1min") is None else f"{rec['loadavg_1min']:.1f}"]


def text_table(records: list[dict]) -> list[str]:
    widths = [6, 14, 14, 18, 10, 9, 14, 13, 7, 6]
    lines = ["#" + "".join(c.rjust(w) for c, w in zip(COLUMNS, widths))[1:]]
    for rec in records:
        lines.append(" " + "".join(c.rjust(w) for c, w in zip(_row(rec), widths))[1:])
    return lines


def findings(records: list[dict]) -> list[str]:
    """What the table shows, read from the records themselves."""
    out = []
    for label, part in (("below 64 KiB", [r for r in records if r["bytes"] < 64 * KiB]),
                        ("from 1 MiB up", [r for r in records if r["bytes"] >= MiB])):
        if part:
            bare = [r["emu_over_bare"] for r in part]
            mpi = [r["emu_over_mpi"] for r in part]
            out.append(f"{label[0].upper() + label[1:]} the emulator takes {min(bare):.2f}× to {max(bare):.2f}× "
                       f"the bare ring's time and {min(mpi):.2f}× to {max(mpi):.2f}× MPI_Allreduce's.")
    out.append("Times are medians over iterations of the slowest rank's wall time, in µs; the min columns divide "
               "the fastest iterations (the least disturbed on a shared machine); load is the host's 1-minute "
               "load average after the size. The targets are judged on the medians:")
    return out


def markdown(records: list[dict], header: list[str], command: str = "") -> str:
    """The result page: the command, the run's header, the table, what it shows and the targets."""
    about = "; ".join(h.lstrip("# ").removeprefix(f"{PROG}: ") for h in header)
    lines = page(command, PROG, about + ".", ["| " + " | ".join(COLUMNS) + " |",
                                              "|" + "|".join(["---:"] * len(COLUMNS)) + "|",
                                              *("| " + " | ".join(_row(rec)) + " |" for rec in records)],
                 findings(records))
    lines += ["", "| target | result | |", "|---|---|---|"]
    lines += [f"| {label} | {status} | {detail} |" for label, status, detail in target_results(records)]
    return "\n".join(lines) + "\n"


def rerender(json_path: str | Path, markdown_path: str | Path, command: str) -> None:
    """Write the page of an earlier run again from its JSON records (measuring nothing)."""
    records = json.loads(Path(json_path).read_text())
    r = records[0]
    header = header_lines(r["ranks"], r["mpi_library"], r["ranks_per_host"], r["cpus_per_host"],
                          r["emulator_source"], r["git_head"], False)
    Path(markdown_path).write_text(markdown(records, header, command))


def source_fingerprint() -> str:
    """Short hash of the emulator code this process runs (its loaded nicemu modules and the profile
    file), so a result names the code it measured even in an uncommitted tree."""
    import nicemu.nic
    files = {Path(nicemu.nic.__file__).resolve().parent / "profiles" / f"{PROFILE}.yml"}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] == "nicemu" and not name.startswith("nicemu.studies") and path:
            files.add(Path(path).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        if path.is_file():
            digest.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_head() -> str:
    """The checked-out commit, read from .git (no subprocess inside an MPI job); '' if unknown."""
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = ROOT / ".git" / ref
            if loose.is_file():
                return loose.read_text().strip()[:12]
            for line in (ROOT / ".git" / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:12]
            return ""
        return head[:12]
    except OSError:
        return ""


def _loadavg() -> float | None:
    """The host's 1-minute load average after a size (other jobs on the machine skew wall times)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def host_cpus() -> int:
    """CPUs this process may run on (the affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def header_lines(ranks: int, library: str, ranks_per_host: int, cpus: int, source: str, head: str,
                 profiling: bool) -> list[str]:
    """What the run measured and on what: printed first, and the start of the page."""
    lines = [f"# {PROG}: float32 sum AllReduce, ring:{ranks}, {ranks} ranks (one node per rank), "
             f"emulator algo ring, profile {PROFILE}; MPI: {library}; "
             f"emulator source {source}" + (f" (git {head})" if head else "")]
    if ranks_per_host > cpus:
        lines.append(f"# WARNING: {ranks_per_host} ranks on a host with {cpus} CPUs (oversubscribed): "
                     "wall-time ratios are unreliable")
    if profiling:
        lines.append("# NOTE: --cprofile is on: rank 0's emulator calls run under cProfile, so emulator_us is "
                     "inflated")
    return lines


def write_outputs(args: Options, records: list[dict], header: list[str]) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    if args.markdown:
        Path(args.markdown).write_text(markdown(records, header, args.command))


# --------------------------------------------------------------------------- main

def run(args: Options, comm: MPI.Comm) -> int:
    """Measure every size, print the table on rank 0 and write the outputs; the exit status."""
    preflight(comm, args)
    rank = comm.rank
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks_per_host = comm.allreduce(host.size, op=MPI.MAX)
    host.Free()
    cpus = comm.allreduce(host_cpus(), op=MPI.MIN)
    emu = Emulator(comm, f"ring:{comm.size}", PROFILE)
    source, head = (source_fingerprint(), git_head()) if rank == 0 else ("", "")
    header = header_lines(comm.size, MPI.Get_library_version().splitlines()[0].strip(), ranks_per_host, cpus,
                          source, head, args.cprofile is not None)
    if rank == 0:
        print("\n".join(header), flush=True)
    bench_comm = comm.Dup()
    profiler = None
    if args.cprofile and rank == 0:
        import cProfile
        profiler = cProfile.Profile()
    inp, ref = make_data(rank, comm.size, max(args.size_list) // DTYPE.itemsize)
    plan = [(size, iterations(size, args.iters)) for size in args.size_list]
    progress = Progress(sum(args.warmup + n for _, n in plan),
                        rank == 0 and (args.progress or sys.stderr.isatty()))
    records = []
    try:
        for i, (size, iters) in enumerate(plan):
            rec = measure(comm, emu, bench_comm, size, iters, args.warmup, inp, ref, progress, profiler)
            rec.update(cpus_per_host=cpus, ranks_per_host=ranks_per_host, oversubscribed=ranks_per_host > cpus,
                       mpi_library=MPI.Get_library_version().splitlines()[0].strip(),
                       emulator_source=source, git_head=head, loadavg_1min=_loadavg())
            records.append(rec)
            if rank == 0:
                if progress.enabled and progress.done < progress.total:
                    sys.stderr.write("\r\033[K")
                lines = text_table([rec])
                print("\n".join(lines if i == 0 else lines[1:]), flush=True)
    finally:
        emu.free()
        bench_comm.Free()

    status = 0
    if rank == 0:
        print(summary_line(records), flush=True)
        bad = [f"{name} at {r['size']} ({r[f'{name}_wrong']} wrong elements in {r[f'{name}_wrong_iters']} "
               "iterations)" for r in records for name in IMPLS if r[f"{name}_wrong"]]
        try:
            write_outputs(args, records, header)
            if profiler is not None:
                import pstats
                profiler.dump_stats(args.cprofile)
                print(f"# cProfile of the emulator on rank 0, sizes {args.sizes}, top 15 by tottime "
                      f"(full stats in {args.cprofile}):", flush=True)
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
                sys.stdout.flush()
        except OSError as exc:
            print(f"{PROG}: error: cannot write the results: {exc}", file=sys.stderr, flush=True)
            status = 1
        if bad:
            print(f"{PROG}: error: wrong results: " + "; ".join(bad), file=sys.stderr, flush=True)
            status = 1
    return comm.bcast(status, root=0)
