"""AllReduce over 6D tori torus:K^6 with the model executor: host ring vs DirectReduce, up to 262,144 nodes.

Sweeps K (729, 4,096, 46,656 and 262,144 nodes for K = 3, 4, 6, 8) and message
sizes M for the dense emulated algorithms, timing every point with
``model_time`` (float32, count = M / 4). Writes PREFIX.csv and PREFIX.json (one
record per point), the page PREFIX.md and the figures of
:mod:`nicemu.studies.scaling_plots`.

Resuming: every finished point is appended to PREFIX.partial.jsonl at once. A
later run with the same PREFIX reuses the points found there whose key (K, M,
algorithm, variant, profile with its overrides) matches, so an interrupted
sweep continues where it stopped. The partial file is kept after the sweep
completes unless ``clean``; ``fresh`` ignores and replaces it.

    from nicemu.studies import scale_topology
    cfg = scale_topology.make_config(k="3,4", sizes="1K,1M")
    outcome = scale_topology.sweep(cfg)
"""

from __future__ import annotations

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

from nicemu.collectives import CollectiveError, model_time, names
from nicemu.errors import UsageError
from nicemu.nic.profile import Profile, load_profile
from nicemu.progress import Progress
from nicemu.sizes import format_size, parse_sizes
from nicemu.studies.pages import page
from nicemu.studies.scaling_plots import algo_name, write_figures
from nicemu.topologies import Torus, parse_topology

SCHEDULED = names(kind="dense", emulated=True, scheduled=True)

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
# Configuration


@dataclass
class Config:
    """A resolved sweep: what to run and where to write."""

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
    command: str = ""   # the command line that ran the sweep, for the page
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


def make_config(k: str | None = None, sizes: str | None = None, algo: str = ",".join(SCHEDULED),
                profile: str = "directreduce-paper", overrides: Sequence[str] = (),
                variants: str = "unidirectional", out: str = "docs/results/scale_topology", quick: bool = False,
                progress: bool = False, fresh: bool = False, clean: bool = False, no_plots: bool = False,
                command: str = "") -> Config:
    """Check the options (as typed on the command line) and resolve them; UsageError, ProfileError, ...
    on a bad one."""
    ks = _parse_ks(k or (QUICK_K if quick else DEFAULT_K))
    size_list = sorted(set(parse_sizes(sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))))
    for s in size_list:
        if s % ITEMSIZE:
            raise UsageError(f"size {s} B is not a multiple of {DTYPE} ({ITEMSIZE} B); "
                             f"use a multiple of {ITEMSIZE}")
    algos = _comma_list(algo, "--algo", "ring,directreduce")
    for a in algos:
        if a not in SCHEDULED:
            raise UsageError(f"unknown algorithm '{a}' for the model executor; use {', '.join(SCHEDULED)}")
    variant_list = _comma_list(variants, "--variants", "unidirectional,bidirectional")
    for v in variant_list:
        if v not in VARIANTS:
            raise UsageError(f"unknown variant '{v}'; use {', '.join(VARIANTS)}")
    for text in overrides:
        if text.split("=", 1)[0].replace(" ", "") == "topology.bidirectional":
            raise UsageError(f"--set {text}: the link direction is chosen by --variants; "
                             "use --variants bidirectional instead")
    prof = load_profile(profile, list(overrides))
    cfg = Config(ks=ks, sizes=size_list, algos=algos, variants=variant_list, profile_name=profile,
                 overrides=list(overrides), profile=prof, profile_id=profile_fingerprint(prof),
                 prefix=str(out), progress=progress or sys.stderr.isatty(),
                 fresh=fresh, clean=clean, plots=not no_plots, command=command)
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


def intro(profile: str) -> str:
    return f"AllReduce on 6D tori, model executor, {DTYPE}, profile {profile}; gain = 1 − t / t_ring."


def markdown_table(records: Sequence[dict], algos: Sequence[str], profile: str) -> str:
    """The intro line and the table (what the sweep prints)."""
    return "\n".join([intro(profile), "", *table_lines(records, algos)]) + "\n"


def table_lines(records: Sequence[dict], algos: Sequence[str]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in records))
    by_key = {(r["k"], r["bytes"], r["variant"], r["algo"]): r for r in records}
    others = [a for a in algos if a != "ring"] if "ring" in algos else []
    head = ["k", "N", "M", "M/N (B)"] + (["variant"] if len(variants) > 1 else [])
    head += [f"{algo_name(a)} (µs)" for a in algos]
    head += ["gain" if len(others) == 1 else f"gain {algo_name(a)}" for a in others]
    lines = ["| " + " | ".join(head) + " |",
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
    return lines


def findings(records: Sequence[dict]) -> list[str]:
    """What the table shows, read from the records themselves (per variant, for each algorithm
    compared with the ring)."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in records):
        gains = [r for r in records if r["variant"] == variant and r["gain_vs_ring"] is not None]
        for algo in dict.fromkeys(r["algo"] for r in gains):
            mine = [r for r in gains if r["algo"] == algo]
            lo, hi = min(mine, key=lambda r: r["gain_vs_ring"]), max(mine, key=lambda r: r["gain_vs_ring"])
            big = [r for r in mine if r["bytes_per_node"] >= 1024]
            text = (f"{algo_name(algo)} ({variant} links): the gain over the ring runs from "
                    f"{100 * lo['gain_vs_ring']:.2f}% (M/N = {_per_node(lo['bytes_per_node'])} B, {lo['topology']}) "
                    f"to {100 * hi['gain_vs_ring']:.2f}% (M/N = {_per_node(hi['bytes_per_node'])} B, "
                    f"{hi['topology']}): it follows the bytes per node M/N.")
            if big:
                text += (f" Wherever M/N ≥ 1 KiB it is {100 * min(r['gain_vs_ring'] for r in big):.2f}% to "
                         f"{100 * max(r['gain_vs_ring'] for r in big):.2f}%.")
            out.append(text)
    largest = max(records, key=lambda r: (r["nodes"], r["bytes"]))
    at = {r["algo"]: r["emulated_us"] for r in records
          if (r["k"], r["bytes"], r["variant"]) == (largest["k"], largest["bytes"], largest["variant"])}
    out.append(f"On {largest['topology']} ({largest['nodes']:,} nodes) at {format_size(largest['bytes'])}: "
               + ", ".join(f"{algo_name(a)} {t:,.0f} µs" for a, t in at.items()) + ".")
    return out


def page_lines(cfg: Config, records: Sequence[dict], figures: Sequence[str]) -> list[str]:
    """The result page: command, figures and table, what it shows."""
    name = cfg.profile.name + (f" ({', '.join(cfg.overrides)})" if cfg.overrides else "")
    about = (intro(name) + f" Also writes {Path(cfg.prefix).name}.json and .csv; "
             "`scripts/plot_scaling.py` redraws the figures from the JSON.")
    body = [line for f in figures for line in (f"![{Path(f).stem}]({Path(f).name})", "")]
    return page(cfg.command, PROG, about, [*body, *table_lines(records, cfg.algos)], findings(records))


def write_outputs(cfg: Config, records: list[dict]) -> list[str]:
    """PREFIX.json, .csv, the page .md and (unless --no-plots) the figures; returns the paths."""
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
    figures = write_figures(records, prefix) if cfg.plots else []
    Path(paths[2]).write_text("\n".join(page_lines(cfg, records, figures)) + "\n")
    return paths + figures


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




def fail(exc: BaseException, code: int = 2) -> int:
    """Print ``scale_topology: error: ...`` on one line; return the exit status."""
    text = " ".join(str(exc).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def run(cfg: Config, t_start: float | None = None) -> int:
    """What the command does: sweep (resuming), write every output, print the table and a summary.

    Returns the exit status: 0, 130 when interrupted (the finished points stay in
    the partial file), 2 for bad input, 1 when a file cannot be written.
    """
    t_start = time.perf_counter() if t_start is None else t_start
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
        return fail(exc)
    except OSError as exc:
        return fail(exc, 1)
    if not outcome.records:
        return fail(UsageError("no results: every variant was skipped; add --variants unidirectional"))
    try:
        paths = write_outputs(cfg, outcome.records)
    except OSError as exc:
        return fail(exc, 1)
    if cfg.clean:
        cfg.partial.unlink(missing_ok=True)
    name = cfg.profile.name + (f" ({', '.join(cfg.overrides)})" if cfg.overrides else "")
    print(markdown_table(outcome.records, cfg.algos, name), end="")
    print(summary(cfg, outcome, paths, time.perf_counter() - t_start))
    return 0
