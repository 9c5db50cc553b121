"""``nicemu sweep GRID.yml``: the cartesian product of a grid of sizes, topologies, algorithms and
profile values on the model executor, one ``nicemu bench``-style record per point.

Each point is timed exactly as ``nicemu bench --executor model`` times it (the same function builds
the record), so a sweep replaces a study's own loop. ``--jobs`` forked processes share the points;
records are written in grid order whatever ``--jobs`` is. OUT.json is rewritten atomically as points
finish, and ``--resume`` reruns only the points it does not hold yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import sys
import time
import traceback

from nicemu import argtypes, bench
from nicemu.errors import NicemuError, UsageError
from nicemu.grid import Grid, load_grid, point_label
from nicemu.hostinfo import available_cpus, fork_writer
from nicemu.launch import SoloComm
from nicemu.progress import Progress
from nicemu.report import KEYS

#: the grid columns that set a bench flag of the same meaning (``bytes`` is ``--sizes``)
_FLAGS = {"topology": "topology", "ranks_per_node": "ranks_per_node", "collective": "collective", "root": "root",
          "dtype": "dtype", "op": "op", "density": "density", "block_size": "block_size", "overlap": "overlap",
          "seed": "seed", "aggregators": "aggregators", "spot_blocks": "spot_blocks", "tx_spots": "tx_spots",
          "profile": "profile", "bytes": "sizes", "algo": "algo"}
#: OUT.json is rewritten at most this often while points finish (and always at the end)
SAVE_EVERY_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID.yml", help="the grid: lists of topology, ranks_per_node, algo, collective, "
                   "root, sizes, dtype, density, profile, op, block_size, a 'set' mapping of profile keys, and "
                   "'exclude'")
    p.add_argument("--json", required=True, type=argtypes.output_file,
                   help="write the records here (rewritten as points finish)")
    p.add_argument("--csv", type=argtypes.output_file, help="also write the records as CSV")
    p.add_argument("--resume", action="store_true",
                   help="keep the points already in the --json file and run only the others")
    p.add_argument("--keep-going", action="store_true",
                   help="record a point that cannot run as failed (status, error) and go on")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes that run points side by side (default: the available CPUs)")
    p.add_argument("--plot", type=argtypes.output_file, help="draw a figure to this image file (needs matplotlib)")
    p.add_argument("--plot-spec", default="x=bytes,y=emulated_us,hue=algo",
                   help="columns to plot: x=,y=,hue= for lines, x=,y=,z= for a heatmap "
                        "(default x=bytes,y=emulated_us,hue=algo)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")


def bench_args(point: dict) -> argparse.Namespace:
    """The ``nicemu bench --executor model`` arguments of one point: bench's defaults, then the grid values."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    ns = parser.parse_args([])
    ns.executor = "model"
    for col, value in point.items():
        if col == "tag":
            continue
        if col in _FLAGS:
            if col in ("bytes", "topology"):
                value = str(value)
            elif col == "density":
                value = float(value)       # as bench's --density reads it: 1 is 1.0
            setattr(ns, _FLAGS[col], value)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            ns.overrides.append(f"{col}={text}")
    return ns


def _prepare(point: dict):
    args = bench_args(point)
    try:
        algos, dtype, sizes, topology, profile = bench.validate(args, SoloComm())
    except NicemuError as exc:     # unknown algorithm, dense-only collective, bad profile key, ...
        raise UsageError(f"grid point {point_label(point)} cannot run: {exc}") from None
    return args, algos[0], dtype, sizes[0], topology, profile


def check_point(point: dict) -> None:
    """Raise the one-line :class:`UsageError` of a point that cannot run."""
    _prepare(point)


def run_point(point: dict, keep_going: bool = False) -> dict:
    """The record of one point: bench's keys, the ``set`` columns, ``point``, ``status`` and ``error``."""
    try:
        args, algo, dtype, nbytes, topology, profile = _prepare(point)
    except UsageError as exc:
        if not keep_going:
            raise
        rec = {k: None for k in KEYS}
        rec.update({k: v for k, v in point.items()})
        rec.update(executor="model", point=point_label(point), status="failed", error=str(exc))
        return rec
    rec = bench.model_record(args, algo, topology, profile, dtype, nbytes)
    rec.update({k: v for k, v in point.items() if k not in _FLAGS or k not in rec})   # set columns, seed, ...
    rec.update(point=point_label(point), status="ok", error=None)
    return rec


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _columns(records: list[dict]) -> list[str]:
    cols = list(KEYS)
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def save_json(path: str, records: list[dict]) -> None:
    """Write ``records`` atomically: a reader (or an interrupted sweep) sees the old or the new file."""
    cols = _columns(records)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump([{k: _clean(r.get(k)) for k in cols} for r in records], f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def save_csv(path: str, records: list[dict]) -> None:
    import csv
    cols = _columns(records)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _previous(path: str) -> dict[str, dict]:
    """The finished records of an earlier run of this sweep, by their ``point``."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume cannot read {path}: {exc}; delete it or drop --resume") from None
    if not isinstance(old, list) or not all(isinstance(r, dict) for r in old):
        raise UsageError(f"--resume: {path} is not a sweep's record list; delete it or drop --resume")
    return {r["point"]: r for r in old if r.get("status") == "ok" and isinstance(r.get("point"), str)}


def _parse_plot_spec(spec: str) -> dict[str, str]:
    out = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in ("x", "y", "hue", "z") or not value or key in out:
            raise UsageError(f"bad --plot-spec '{spec}'; write x=COLUMN,y=COLUMN[,hue=COLUMN] or "
                             "x=COLUMN,y=COLUMN,z=COLUMN, e.g. x=bytes,y=emulated_us,hue=algo")
        out[key] = value
    if "x" not in out or "y" not in out or ("z" in out and "hue" in out):
        raise UsageError(f"bad --plot-spec '{spec}'; give x= and y=, and hue= (lines) or z= (heatmap), "
                         "not both")
    return out


def write_plot(path: str, records: list[dict], spec: dict[str, str], title: str) -> None:
    """Lines of y over x per hue value, or a heatmap of z over the (x, y) grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in records if r.get("status") == "ok"]
    for col in spec.values():
        if rows and col not in rows[0]:
            raise UsageError(f"--plot-spec names column '{col}', which the records do not have; use one of "
                             f"{', '.join(rows[0])}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if "z" in spec:
        xs = list(dict.fromkeys(r[spec["x"]] for r in rows))
        ys = list(dict.fromkeys(r[spec["y"]] for r in rows))
        cells = [[math.nan] * len(xs) for _ in ys]
        for r in rows:
            if r[spec["z"]] is not None:
                cells[ys.index(r[spec["y"]])][xs.index(r[spec["x"]])] = r[spec["z"]]
        im = ax.imshow(cells, aspect="auto", origin="lower")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=45, ha="right")
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        fig.colorbar(im, ax=ax, label=spec["z"])
    else:
        hue = spec.get("hue")
        groups = list(dict.fromkeys(r.get(hue) for r in rows)) if hue else [None]
        for g in groups:
            pts = sorted((r[spec["x"]], r[spec["y"]]) for r in rows
                         if (hue is None or r.get(hue) == g) and r[spec["y"]] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=None if hue is None else str(g))
        for key, setter in ((spec["x"], ax.set_xscale), (spec["y"], ax.set_yscale)):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] > 0]
            if vals and max(vals) > 100 * min(vals):
                setter("log")
        if hue:
            ax.legend(title=hue)
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y"])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(label: str, width: int = 28) -> str:
    """The innermost grid values of a point label that fit the progress bar's label field."""
    words = label.split()
    while len(words) > 1 and len(" ".join(words)) > width:
        words.pop(0)
    return " ".join(words)[-width:]


def _add_gains(records: list[dict], points: list[dict]) -> bool:
    """bench's ``gain_vs_ring`` (1 - t / t_ring) for points whose grid values differ from a ring point's only
    in ``algo``; True when any record changed."""
    ring_t = {}
    for r, p in zip(records, points):
        if p.get("algo") == "ring" and r.get("emulated_us"):
            ring_t[tuple((k, v) for k, v in p.items() if k != "algo")] = r["emulated_us"]
    changed = False
    for r, p in zip(records, points):
        t = ring_t.get(tuple((k, v) for k, v in p.items() if k != "algo"))
        if t and p.get("algo") != "ring" and r.get("emulated_us") is not None:
            gain = 1.0 - r["emulated_us"] / t
            changed |= r.get("gain_vs_ring") != gain
            r["gain_vs_ring"] = gain
    return changed


def run_points(todo: list[tuple[int, dict]], jobs: int, keep_going: bool, done) -> None:
    """Run the (index, point) pairs of ``todo`` in this process (``jobs`` 1) or in forked workers, calling
    ``done(index, record)`` as each point finishes."""
    if jobs == 1:
        for i, point in todo:
            done(i, run_point(point, keep_going))
    elif todo:
        _run_forked(todo, jobs, keep_going, done)


def records(points: list[dict], jobs: int | None = None, show_progress: bool = False) -> list[dict]:
    """The records of ``points`` in order, with ``gain_vs_ring``: what ``nicemu sweep`` writes, for a study
    that builds its page from a grid. Every point is checked first; a point that cannot run raises
    :class:`UsageError`."""
    for point in points:
        check_point(point)
    jobs = max(1, min(jobs or available_cpus(), len(points)))
    results: dict[int, dict] = {}
    progress = Progress(len(points), show_progress)

    def done(index: int, rec: dict) -> None:
        results[index] = rec
        progress.update(_short(rec["point"]))

    try:
        run_points(list(enumerate(points)), jobs, False, done)
    finally:
        progress.finish()
    out = [results[i] for i in range(len(points))]
    _add_gains(out, points)
    return out


def _fork_worker(points: list[tuple[int, dict]], keep_going: bool) -> tuple[int, int]:
    """Run ``points`` in a forked child that writes one JSON line per finished point to a pipe
    (``[index, record]``, or ``["error", traceback]``) and leaves with ``os._exit``."""
    def write(out) -> None:
        try:
            for i, point in points:
                out.write(json.dumps([i, run_point(point, keep_going)]) + "\n")
                out.flush()
        except BaseException:
            out.write(json.dumps(["error", traceback.format_exc(limit=-4)]) + "\n")

    return fork_writer(write)


def _run_forked(todo: list[tuple[int, dict]], jobs: int, keep_going: bool, done) -> None:
    """Share ``todo`` out round-robin over ``jobs`` children; call ``done(index, record)`` as each finishes."""
    children = [_fork_worker(todo[w::jobs], keep_going) for w in range(jobs)]
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    for _, fd in children:
        os.set_blocking(fd, True)
        sel.register(fd, selectors.EVENT_READ)
        buffers[fd] = b""
    errors = []
    try:
        while sel.get_map():
            for key, _ in sel.select():
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
                    continue
                buffers[fd] += chunk
                *lines, buffers[fd] = buffers[fd].split(b"\n")
                for line in lines:
                    index, rec = json.loads(line)
                    if index == "error":
                        errors.append(rec)
                    else:
                        done(index, rec)
    finally:
        for pid, _ in children:
            os.waitpid(pid, 0)
    if errors:
        raise RuntimeError("a --jobs worker process failed:\n" + errors[0])


def run(args: argparse.Namespace, comm) -> int:
    if comm.size > 1:
        raise UsageError("nicemu sweep runs the model executor in one process; run it without mpiexec "
                         "and use --jobs for parallelism")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    spec = _parse_plot_spec(args.plot_spec) if args.plot else None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'nicemu[plot]'") from None
    grid: Grid = load_grid(args.grid)
    points = grid.points()
    if not points:
        raise UsageError(f"every point of {args.grid} is excluded; loosen 'exclude'")
    old = _previous(args.json) if args.resume else {}
    results: dict[int, dict] = {}
    todo = []
    for i, point in enumerate(points):
        rec = old.get(point_label(point))
        if rec is not None:
            results[i] = rec
        else:
            todo.append((i, point))
    if not args.keep_going:
        for _, point in todo:      # every point is checked before any runs
            check_point(point)
    jobs = max(1, min(args.jobs or available_cpus(), len(todo))) if todo else 1
    print(f"# nicemu sweep {args.grid}: {len(points)} points, {len(results)} kept from {args.json}, "
          f"{len(todo)} to run with {jobs} job(s)", flush=True)
    progress = Progress(len(todo), args.progress or sys.stderr.isatty())
    last_save = time.monotonic()

    def save() -> None:
        save_json(args.json, [results[i] for i in sorted(results)])

    def done(index: int, rec: dict) -> None:
        nonlocal last_save
        results[index] = rec
        progress.update(_short(rec["point"]))
        if time.monotonic() - last_save >= SAVE_EVERY_S:
            save()
            last_save = time.monotonic()

    try:
        run_points(todo, jobs, args.keep_going, done)
    finally:
        progress.finish()
        save()
    records = [results[i] for i in range(len(points))]
    if _add_gains(records, points):
        save()
    failed = [r for r in records if r.get("status") != "ok"]
    for r in failed:
        print(f"# failed: {r['error']}")
    print(f"# wrote {len(records)} records to {args.json} ({len(failed)} failed)")
    if args.csv:
        save_csv(args.csv, records)
        print(f"# wrote {len(records)} records to {args.csv}")
    if args.plot:
        write_plot(args.plot, records, spec, os.path.basename(args.grid))
        print(f"# wrote plot to {args.plot}")
    return 1 if failed else 0
