#!/usr/bin/env python3
"""Scale AllReduce over 6D tori torus:K^6 with the model executor: host ring vs DirectReduce.

Sweeps K in {3, 4, 6, 8} (729, 4,096, 46,656 and 262,144 nodes) and message
sizes M = 1 KiB .. 1 GiB (x4 steps) for the algorithms ``ring`` and
``directreduce``, timing every point with the model executor
(``nicemu.collectives.model_time``, float32, count = M / 4). Writes PREFIX.csv and
PREFIX.json (one record per point), PREFIX.md (a Markdown table), and the
figures PREFIX_time_vs_nodes.png and PREFIX_gain_heatmap.png (redraw them
with ``scripts/plot_scaling.py PREFIX``).

    python scripts/scale_topology.py                      # full sweep, a few minutes
    python scripts/scale_topology.py --quick --progress   # K = 3, 4 and M = 1K, 1M, 256M
    python scripts/scale_topology.py --k 8 --sizes 256K,1G --algo directreduce
    python scripts/scale_topology.py --sizes 1K:1G:2 --set nic.packet_bytes=4096 --out /tmp/pkt4k
    python scripts/scale_topology.py --variants unidirectional,bidirectional

Resuming: every finished point is appended to PREFIX.partial.jsonl at once.
A later run with the same PREFIX reuses the points found there whose key
(K, M, algorithm, variant, profile with its --set overrides) matches, so an
interrupted sweep (Ctrl-C) continues where it stopped: run the same command
again. The partial file is kept after the sweep completes (a rerun then
computes nothing) unless --clean is given; --fresh ignores and replaces it.
Use --fresh after changing the model code, since old points would be reused.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nicemu.collectives import CollectiveError, model_time, names  # noqa: E402
from nicemu.errors import UsageError  # noqa: E402
from nicemu.nic.profile import Profile, load_profile  # noqa: E402
from nicemu.progress import Progress  # noqa: E402
from nicemu.sizes import format_size, parse_sizes  # noqa: E402
from nicemu.topologies import Torus, parse_topology  # noqa: E402

SCHEDULED = names(kind="dense", emulated=True)

PROG = "scale_topology"
DIMS = 6
DTYPE, ITEMSIZE = "float32", 4
DEFAULT_K, QUICK_K = "3,4,6,8", "3,4"
DEFAULT_SIZES, QUICK_SIZES = "1K:1G:4", "1K,1M,256M"
VARIANTS = {"unidirectional": False, "bidirectional": True}   # value of topology.bidirectional
BUDGET_S = 10.0   # model wall time allowed per AllReduce on torus:8^6

FIELDS = ["k", "topology", "nodes", "bytes", "count", "dtype", "bytes_per_node", "algo", "variant",
          "profile", "overrides", "profile_id", "emulated_us", "host_busy_us", "nic_busy_us",
          "wire_bytes", "model_wall_s", "gain_vs_ring"]
_NEEDED = {"k": int, "topology": str, "nodes": int, "bytes": int, "algo": str, "variant": str,
           "profile_id": str, "emulated_us": float, "model_wall_s": float}


# --------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def make_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    ap = _Parser(prog=PROG, description=doc.split("\n\n")[0],
                 epilog="\n\n".join(doc.split("\n\n")[1:]),
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", help=f"torus sizes per dimension, comma list, each >= 2 (default {DEFAULT_K})")
    ap.add_argument("--sizes", help="message sizes M per node, as for `nicemu bench --sizes`: 64K, 1K,256K,1G "
                                    f"or MIN:MAX[:FACTOR] (default {DEFAULT_SIZES})")
    ap.add_argument("--algo", default="ring,directreduce",
                    help=f"comma list of {', '.join(SCHEDULED)} (default ring,directreduce)")
    ap.add_argument("--profile", default="directreduce-paper",
                    help="shipped profile name or YAML path (default directreduce-paper)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one profile field, e.g. --set nic.packet_bytes=4096 (repeatable)")
    ap.add_argument("--variants", default="unidirectional",
                    help="comma list of unidirectional, bidirectional (bidirectional = "
                         "--set topology.bidirectional=true; a variant the model cannot run yet is "
                         "skipped with a message). Default unidirectional")
    ap.add_argument("--out", default="docs/results/scale_topology",
                    help="output path prefix (default docs/results/scale_topology)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small sweep for tests: --k {QUICK_K} --sizes {QUICK_SIZES} "
                         "(an explicit --k or --sizes wins)")
    ap.add_argument("--progress", action="store_true",
                    help="show the progress bar even when stderr is not a terminal")
    ap.add_argument("--fresh", action="store_true",
                    help="ignore and replace PREFIX.partial.jsonl instead of resuming from it")
    ap.add_argument("--clean", action="store_true",
                    help="delete PREFIX.partial.jsonl once the sweep completes (it is kept by default)")
    ap.add_argument("--no-plots", action="store_true", help="skip the two figures")
    return ap


@dataclass
class Config:
    ks: list[int]
    sizes: list[int]
    algos: list[str]
    variants: list[str]
    profile_name: str
    overrides: list[str]
    profile: Profile
    profile_id: str
    prefix: str
    progress: bool
    fresh: bool
    clean: bool
    plots: bool
    tori: dict[int, Torus] = field(default_factory=dict)

    @property
    def partial(self) -> Path:
        return Path(f"{self.prefix}.partial.jsonl")

    def points(self) -> list[tuple[int, int, str, str]]:
        """Every (k, bytes, variant, algo) of the sweep, in the order they run."""
        return [(k, m, v, a) for k in self.ks for m in self.sizes for v in self.variants for a in self.algos]

    def key(self, k: int, nbytes: int, algo: str, variant: str) -> tuple:
        return (self.tori[k].name, nbytes, algo, variant, self.profile_id)


def _comma_list(text: str, option: str, example: str) -> list[str]:
    items = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not items:
        raise UsageError(f"{option} is empty; e.g. {option} {example}")
    return items


def _parse_ks(text: str) -> list[int]:
    ks = []
    for item in _comma_list(text, "--k", DEFAULT_K):
        if not item.isdigit():
            raise UsageError(f"--k: '{item}' is not a whole number; e.g. --k {DEFAULT_K}")
        k = int(item)
        if k < 2:
            raise UsageError(f"--k: {k} is too small; a torus dimension needs at least 2 nodes")
        ks.append(k)
    return sorted(set(ks))


def profile_fingerprint(profile: Profile) -> str:
    """Short hash of every field of the resolved profile: the part of a resume key that covers --set."""
    text = json.dumps(profile.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_config(argv: Sequence[str] | None) -> Config:
    args = make_parser().parse_args(argv)
    ks = _parse_ks(args.k or (QUICK_K if args.quick else DEFAULT_K))
    sizes = sorted(set(parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))))
    for s in sizes:
        if s % ITEMSIZE:
            raise UsageError(f"size {s} B is not a multiple of {DTYPE} ({ITEMSIZE} B); "
                             f"use a multiple of {ITEMSIZE}")
    algos = _comma_list(args.algo, "--algo", "ring,directreduce")
    for a in algos:
        if a not in SCHEDULED:
            raise UsageError(f"unknown algorithm '{a}' for the model executor; use {', '.join(SCHEDULED)}")
    variants = _comma_list(args.variants, "--variants", "unidirectional,bidirectional")
    for v in variants:
        if v not in VARIANTS:
            raise UsageError(f"unknown variant '{v}'; use {', '.join(VARIANTS)}")
    for text in args.overrides:
        if text.split("=", 1)[0].replace(" ", "") == "topology.bidirectional":
            raise UsageError(f"--set {text}: the link direction is chosen by --variants; "
                             "use --variants bidirectional instead")
    profile = load_profile(args.profile, args.overrides)
    cfg = Config(ks=ks, sizes=sizes, algos=algos, variants=variants, profile_name=args.profile,
                 overrides=list(args.overrides), profile=profile, profile_id=profile_fingerprint(profile),
                 prefix=str(args.out), progress=args.progress or sys.stderr.isatty(),
                 fresh=args.fresh, clean=args.clean, plots=not args.no_plots)
    cfg.tori = {k: parse_topology(f"torus:{k}^{DIMS}") for k in ks}
    return cfg


def variant_profile(profile: Profile, variant: str) -> Profile:
    return profile.with_overrides([f"topology.bidirectional={'true' if VARIANTS[variant] else 'false'}"])


# --------------------------------------------------------------------------
# The partial file: one JSON record per line, appended as each point finishes


def _valid_record(rec: object) -> bool:
    if not isinstance(rec, dict):
        return False
    for key, kind in _NEEDED.items():
        value = rec.get(key)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return False
        elif not isinstance(value, kind) or isinstance(value, bool):
            return False
    return True


def load_partial(path: Path) -> tuple[list[dict], int]:
    """Whole, valid records of the partial file, and how many lines were damaged (e.g. cut by a crash).

    If any line is damaged, the file is rewritten with the good lines only, so
    that new records are never appended to the end of a cut line.
    """
    if not path.exists():
        return [], 0
    raw = path.read_bytes()
    good, bad = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if _valid_record(rec):
            good.append(rec)
        else:
            bad += 1
    if bad or (raw and not raw.endswith(b"\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in good))
        os.replace(tmp, path)
    return good, bad


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a line is written, so the file only ever gets whole lines."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def append_record(f, rec: dict) -> None:
    line = json.dumps(rec) + "\n"
    with _sigint_deferred():
        f.write(line)
        f.flush()


# --------------------------------------------------------------------------
# The sweep


class SweepProgress(Progress):
    """nicemu's progress bar, also drawn before each point so it shows the point that is running."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__(total, enabled)
        self.open = False

    def running(self, label: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * self.done / self.total)
        elapsed = time.monotonic() - self.start
        left = f"~{elapsed / self.done * (self.total - self.done):5.1f}s" if self.done else "     ?s"
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r\033[K[{bar}] {self.done}/{self.total} {label:<28} "
                         f"{elapsed:6.1f}s elapsed, {left} left")
        sys.stderr.flush()
        self.open = True

    def update(self, label: str) -> None:
        super().update(label)
        self.open = self.enabled and self.done < self.total

    def clear(self) -> None:
        """Erase the bar so that a message can be printed on its own line."""
        if self.open:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.open = False


def run_point(cfg: Config, k: int, nbytes: int, algo: str, variant: str, profile: Profile) -> dict:
    topo = cfg.tori[k]
    t0 = time.perf_counter()
    timing = model_time("allreduce", algo, topo, profile, nbytes // ITEMSIZE, DTYPE)
    wall = time.perf_counter() - t0
    return {"k": k, "topology": topo.name, "nodes": topo.nodes, "bytes": nbytes,
            "count": nbytes // ITEMSIZE, "dtype": DTYPE, "bytes_per_node": nbytes / topo.nodes,
            "algo": algo, "variant": variant, "profile": cfg.profile.name, "overrides": cfg.overrides,
            "profile_id": cfg.profile_id, "emulated_us": float(timing.emulated_us),
            "host_busy_us": float(timing.host_busy_us), "nic_busy_us": float(timing.nic_busy_us),
            "wire_bytes": int(timing.wire_bytes), "model_wall_s": wall}


def add_gains(records: list[dict]) -> None:
    """gain_vs_ring = 1 - t / t_ring for the same (k, bytes, variant); None for ring itself."""
    ring = {(r["k"], r["bytes"], r["variant"]): r["emulated_us"] for r in records if r["algo"] == "ring"}
    for r in records:
        t_ring = ring.get((r["k"], r["bytes"], r["variant"]))
        r["gain_vs_ring"] = (1.0 - r["emulated_us"] / t_ring) if t_ring and r["algo"] != "ring" else None


def _label(cfg: Config, k: int, nbytes: int, algo: str, variant: str) -> str:
    label = f"k={k} {format_size(nbytes)} {algo}"
    return label + (f" {variant[:3]}" if len(cfg.variants) > 1 else "")


@dataclass
class Outcome:
    records: list[dict]
    computed: int
    reused: int
    skipped: list[str]


def sweep(cfg: Config) -> Outcome:
    """Run every point not already in the partial file; KeyboardInterrupt leaves the file whole."""
    partial = cfg.partial
    partial.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple, dict] = {}
    if cfg.fresh:
        partial.write_text("")
    else:
        previous, bad = load_partial(partial)
        for rec in previous:
            done[(rec["topology"], rec["bytes"], rec["algo"], rec["variant"], rec["profile_id"])] = rec
        if bad:
            print(f"{PROG}: ignored {bad} damaged line(s) in {partial}", file=sys.stderr)
    points = cfg.points()
    todo = [p for p in points if cfg.key(p[0], p[1], p[3], p[2]) not in done]
    reused = len(points) - len(todo)
    if reused:
        print(f"{PROG}: reusing {reused} of {len(points)} points from {partial}", file=sys.stderr)
    profiles = {v: variant_profile(cfg.profile, v) for v in cfg.variants}
    skipped: list[str] = []
    progress = SweepProgress(len(todo), cfg.progress)
    computed = 0
    with open(partial, "a") as f:
        try:
            for i, (k, nbytes, variant, algo) in enumerate(todo):
                if variant in skipped:
                    continue
                progress.running(_label(cfg, k, nbytes, algo, variant))
                try:
                    rec = run_point(cfg, k, nbytes, algo, variant, profiles[variant])
                except CollectiveError as exc:
                    progress.clear()
                    print(f"skipping variant {variant}: {exc}", file=sys.stderr)
                    skipped.append(variant)
                    progress.total -= sum(1 for p in todo[i:] if p[2] == variant)
                    continue
                append_record(f, rec)
                done[cfg.key(k, nbytes, algo, variant)] = rec
                computed += 1
                progress.update(_label(cfg, k, nbytes, algo, variant))
        except KeyboardInterrupt:
            progress.clear()
            raise
    progress.clear()
    records = [done[cfg.key(k, m, a, v)] for k, m, v, a in points
               if v not in skipped and cfg.key(k, m, a, v) in done]
    records = [{name: rec.get(name) for name in FIELDS} for rec in records]
    add_gains(records)
    return Outcome(records, computed, reused, skipped)


# --------------------------------------------------------------------------
# Outputs


def _per_node(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def markdown_table(records: Sequence[dict], algos: Sequence[str], profile: str) -> str:
    from plot_scaling import algo_name
    variants = list(dict.fromkeys(r["variant"] for r in records))
    by_key = {(r["k"], r["bytes"], r["variant"], r["algo"]): r for r in records}
    others = [a for a in algos if a != "ring"] if "ring" in algos else []
    head = ["k", "N", "M", "M/N (B)"] + (["variant"] if len(variants) > 1 else [])
    head += [f"{algo_name(a)} (µs)" for a in algos]
    head += ["gain" if len(others) == 1 else f"gain {algo_name(a)}" for a in others]
    lines = [f"AllReduce on 6D tori, model executor, {DTYPE}, profile {profile}; "
             "gain = 1 − t / t_ring.", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    rows = sorted({(r["k"], r["bytes"], r["variant"]) for r in records},
                  key=lambda x: (x[0], x[1], variants.index(x[2])))
    for k, m, v in rows:
        any_rec = next(by_key[(k, m, v, a)] for a in algos if (k, m, v, a) in by_key)
        cells = [str(k), f"{any_rec['nodes']:,}", format_size(m), _per_node(any_rec["bytes_per_node"])]
        cells += [v] if len(variants) > 1 else []
        for a in algos:
            r = by_key.get((k, m, v, a))
            cells.append("—" if r is None else f"{r['emulated_us']:,.2f}")
        for a in others:
            r = by_key.get((k, m, v, a))
            cells.append("—" if r is None or r["gain_vs_ring"] is None else f"{100 * r['gain_vs_ring']:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(cfg: Config, records: list[dict]) -> list[str]:
    prefix = cfg.prefix
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    paths = [f"{prefix}.json", f"{prefix}.csv", f"{prefix}.md"]
    Path(paths[0]).write_text(json.dumps(records, indent=1) + "\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in records:
            row = {k: ("" if r[k] is None else r[k]) for k in FIELDS}
            row["overrides"] = ";".join(r["overrides"] or [])
            w.writerow(row)
    name = cfg.profile.name + (f" ({', '.join(cfg.overrides)})" if cfg.overrides else "")
    Path(paths[2]).write_text(markdown_table(records, cfg.algos, name))
    if cfg.plots:
        from plot_scaling import write_figures
        paths += write_figures(records, prefix)
    return paths


def summary(cfg: Config, outcome: Outcome, paths: list[str], wall: float) -> str:
    lines = [f"# wrote {', '.join(paths)}"]
    if cfg.clean:
        lines.append(f"# removed {cfg.partial} (--clean)")
    else:
        lines.append(f"# kept {cfg.partial}: a rerun reuses it; --fresh ignores it, --clean removes it")
    lines.append(f"# {len(outcome.records)} records: {outcome.computed} computed, {outcome.reused} reused; "
                 f"total wall time {wall:.1f} s")
    lines.append("# largest model wall time per AllReduce (s)" +
                 (", incl. reused points from earlier runs" if outcome.reused else "") + ":")
    lines.append("# " + f"{'k':>3} {'nodes':>9}" + "".join(f" {a:>13}" for a in cfg.algos))
    for k in cfg.ks:
        rows = [r for r in outcome.records if r["k"] == k]
        if not rows:
            continue
        cells = []
        for a in cfg.algos:
            walls = [r["model_wall_s"] for r in rows if r["algo"] == a]
            cells.append(f" {max(walls):13.3f}" if walls else f" {'—':>13}")
        lines.append("# " + f"{k:>3} {rows[0]['nodes']:>9,}" + "".join(cells))
    big = [r["model_wall_s"] for r in outcome.records if r["nodes"] == 8 ** DIMS]
    if big:
        verdict = "within" if max(big) <= BUDGET_S else "OVER"
        lines.append(f"# torus:8^6: {max(big):.2f} s at most, {verdict} the {BUDGET_S:g} s per AllReduce budget")
    return "\n".join(lines)


def _fail(exc: BaseException, code: int = 2) -> int:
    text = " ".join(str(exc).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    try:
        cfg = parse_config(argv)
    except SystemExit as exc:   # --help
        return int(exc.code or 0)
    except ValueError as exc:   # UsageError, ProfileError, TopologyError, CollectiveError
        return _fail(exc)
    if cfg.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"{PROG}: matplotlib is not installed, so no figures (pip install 'nicemu[plot]')",
                  file=sys.stderr)
            cfg.plots = False
    try:
        outcome = sweep(cfg)
    except KeyboardInterrupt:
        saved, _ = load_partial(cfg.partial)
        wanted = {cfg.key(k, m, a, v) for k, m, v, a in cfg.points()}
        ours = sum(1 for r in saved
                   if (r["topology"], r["bytes"], r["algo"], r["variant"], r["profile_id"]) in wanted)
        print(f"{PROG}: interrupted; {ours} finished point(s) are saved in {cfg.partial}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except ValueError as exc:
        return _fail(exc)
    except OSError as exc:
        return _fail(exc, 1)
    if not outcome.records:
        return _fail(UsageError("no results: every variant was skipped; "
                                "add --variants unidirectional"))
    try:
        paths = write_outputs(cfg, outcome.records)
    except OSError as exc:
        return _fail(exc, 1)
    if cfg.clean:
        cfg.partial.unlink(missing_ok=True)
    print(Path(f"{cfg.prefix}.md").read_text(), end="")
    print(summary(cfg, outcome, paths, time.perf_counter() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
