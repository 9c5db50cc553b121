"""Data-parallel training of the embedding-heavy models that zero-block sparse AllReduce targets
(docs/results/sparse_training.md).

Each preset of workloads/embedding_models.py (NCF, LSTM-GBW, DeepLight: shapes and per-worker batches of
OmniReduce's training scripts) runs ``nicemu train`` on eight workers behind one switch with the
``omniccl-paper`` profile (100 Gb/s RoCEv2), as in that evaluation's testbed. The baselines keep every
gradient in DDP's dense buckets, reduced by the host ring, the best host algorithm per bucket (host-best)
or DirectReduce; the sparse runs take the embedding tables out of the buckets and reduce them with
OmniReduce, OmNICCL on the host CPU or OmNICCL on the NIC, beside the dense buckets on host-best.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nicemu.errors import NicemuError
from nicemu.report import write_result_files
from nicemu.studies.pages import page, scratch_dir

SCRIPT = "sparse_training"
MODELS = ("NCF", "LSTM-GBW", "DeepLight")
DENSE = "ring,host-best,directreduce"
SPARSE = ("omnireduce", "omniccl-cpu", "omniccl")
COMMON = ["--topology", "switch:8", "--profile", "omniccl-paper", "--accelerator", "A100-80G", "--executor", "model"]


#: the one refusal a run may end with and still be a row: a call too large for the fabric replay
TOO_MANY_FLOWS = "the fabric replay holds in memory"


def run_train(args: Sequence[str], out: Path) -> list[dict] | str:
    """``nicemu train ARGS`` in a subprocess, as a user runs it: its records, or the one-line refusal of a
    run whose flows exceed the replay's limit (any other failure stops the study)."""
    cmd = [sys.executable, "-m", "nicemu", "train", *COMMON, *args, "--json", str(out)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        if done.returncode == 2 and TOO_MANY_FLOWS in said:
            return said.removeprefix("nicemu: error: ")
        raise NicemuError(f"nicemu train {' '.join(args)} failed ({done.returncode}): {said}")
    return json.loads(out.read_text())


def _row(model: str, r: dict) -> dict:
    sparse = r.get("sparse_embedding")
    return {"model": model, "embedding": sparse or "dense buckets", "algo": r["algo"],
            "iteration_ms": r["iteration_us"] / 1e3, "compute_ms": r["compute_us"] / 1e3,
            "exposed_ms": r["exposed_us"] / 1e3, "grad_bytes": r["grad_bytes"],
            "embedding_bytes": r.get("embedding_bytes"), "embedding_density": r.get("embedding_density"),
            "embedding_union_density": r.get("embedding_union_density"),
            "embedding_ms": None if sparse is None else r["embedding_us"] / 1e3,
            "embedding_alone_ms": None if sparse is None else r["embedding_alone_us"] / 1e3,
            "global_batch": r["global_batch"], "dp": r["dp"]}


def rows(scratch: Path, models: Sequence[str] = MODELS, progress: bool = False) -> list[dict]:
    runs = [(m, ["--algo", DENSE]) for m in models]
    runs += [(m, ["--algo", "host-best", "--sparse-embedding", s]) for m in models for s in SPARSE]
    runs.sort(key=lambda run: models.index(run[0]))
    out = []
    for i, (model, args) in enumerate(runs):
        if progress:
            print(f"[{i + 1}/{len(runs)}] {model} {' '.join(args)}", file=sys.stderr, flush=True)
        got = run_train(["--model", model, *args], scratch / f"run{i}.json")
        if isinstance(got, str):
            out.append({"model": model, "embedding": args[-1], "algo": "host-best", "refused": got})
        else:
            out += [_row(model, r) for r in got]
    return out


def _base(data: Sequence[dict], model: str, algo: str) -> dict:
    return next(r for r in data if r["model"] == model and r["embedding"] == "dense buckets" and r["algo"] == algo)


def table(data: Sequence[dict]) -> list[str]:
    lines = ["| model | embedding tables | dense buckets | iteration (ms) | exposed (ms) | tables' call (ms, alone) "
             "| block density (per rank / union) | vs ring | vs host-best |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data:
        if r.get("refused"):
            lines.append(f"| {r['model']} | {r['embedding']} | `{r['algo']}` | refused: {r['refused']} "
                         "| | | | | |")
            continue
        ring, best = _base(data, r["model"], "ring"), _base(data, r["model"], "host-best")
        call = "–" if r["embedding_ms"] is None else f"{r['embedding_ms']:.3f} ({r['embedding_alone_ms']:.3f})"
        dens = ("–" if r["embedding_density"] is None else
                f"{100 * r['embedding_density']:.2f}% / {100 * r['embedding_union_density']:.2f}%")
        lines.append(f"| {r['model']} | {r['embedding']} | `{r['algo']}` | {r['iteration_ms']:.3f} | "
                     f"{r['exposed_ms']:.3f} | {call} | {dens} | {ring['iteration_ms'] / r['iteration_ms']:.2f}x | "
                     f"{best['iteration_ms'] / r['iteration_ms']:.2f}x |")
    return lines


def findings(data: Sequence[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in data):
        best = _base(data, model, "host-best")
        mine = [r for r in data if r["model"] == model and r["embedding"] != "dense buckets"
                and not r.get("refused")]
        top = min(mine, key=lambda r: r["iteration_ms"])
        gain = best["iteration_ms"] / top["iteration_ms"]
        out.append(f"{model}: {100 * top['embedding_density']:.2f}% of the tables' blocks are non-zero per rank "
                   f"({100 * top['embedding_union_density']:.2f}% on some rank); the fastest sparse run "
                   f"(`{top['embedding']}`) takes {top['iteration_ms']:.2f} ms per iteration against "
                   f"{best['iteration_ms']:.2f} ms with every gradient in host-best's dense buckets "
                   f"({gain:.2f}x; compute {best['compute_ms']:.2f} ms).")
    out.append("OmniReduce's times count 8 dedicated aggregator machines beside the 8 workers (one per worker, "
               "as its training scripts run them); OmNICCL aggregates on the workers' own NICs (`omniccl`) or "
               "CPUs (`omniccl-cpu`), with no extra machine.")
    for r in (r for r in data if r.get("refused")):
        out.append(f"{r['model']} with `{r['embedding']}` is not in the table: its call and the buckets make "
                   "more flows than the fabric replay holds (a one-line refusal, as a user would get).")
    return out


def reproduce(out: str, command: str = "", models: Sequence[str] = MODELS, progress: bool = False) -> list[dict]:
    """Run every model and write ``out.{json,csv,md}``."""
    with scratch_dir(out) as scratch:
        data = rows(scratch, models, progress)
    write_result_files(out, data, page_lines(data, command))
    return data


def page_lines(data: Sequence[dict], command: str) -> list[str]:
    """The page from the rows (so it can be rebuilt from the committed JSON)."""
    about = ("`nicemu train` with the model executor on switch:8, profile `omniccl-paper` (100 Gb/s RoCEv2), "
             "A100-80G roofline compute, float32 gradients, each model at its training script's batch per worker "
             "(docs/model.md §22.3); sparse runs reduce every embedding table in one call when backward ends, "
             "the other gradients in host-best's buckets. Also writes sparse_training.json and .csv.")
    return page(command, SCRIPT, about, table(data), findings(data))
