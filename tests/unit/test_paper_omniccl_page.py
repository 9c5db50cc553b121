"""The sparse AllReduce study (scripts/paper_omniccl.py): its baseline columns, speedups and findings.

Every column is checked against an independent computation: `host-best` against
each host algorithm's model time, the sparse times against `model_sparse`
itself, every speedup against the ratio of the reported times. The committed
page must be the one its committed JSON gives.
"""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from nicemu.collectives import REGISTRY, model_sparse, model_time, sparse_config
from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.nic.profile import load_profile
from nicemu.studies import paper_omniccl

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
PROF = load_profile(paper_omniccl.PROFILE)
SPARSE = ["omniccl", "omniccl-cpu", "omnireduce"]
HOST = [a for a, alg in REGISTRY.items()
        if alg.engine == "host" and alg.kind == "dense" and alg.build is not None and "allreduce" in alg.collectives]
SMALL = 64 << 10           # host-best picks neither ring nor the first host algorithm here


def host_times(nbytes: int) -> dict[str, float]:
    return {a: model_time("allreduce", a, "ring:8", PROF, nbytes // 4).emulated_us for a in HOST}


@pytest.fixture(scope="module")
def small():
    return paper_omniccl.sweep(RESULTS.parents[1] / paper_omniccl.GRID, 8, SMALL, ["random", "all"],
                               [1.0, 0.75, 0.5, 0.25, 0.01], jobs=1)


@pytest.fixture(scope="module")
def committed():
    return json.loads((RESULTS / "paper_omniccl.json").read_text())


def check_columns(rows: list[dict], nbytes: int) -> None:
    times = host_times(nbytes)
    fastest = min(times, key=times.get)
    for r in rows:
        assert r["ring_us"] == times["ring"]
        assert r["host_best_us"] == times[fastest] == min(times.values())
        assert r["host_best_algo"] == fastest
        assert r["sparsity"] == pytest.approx(1 - r["density"], abs=1e-9)
        for label in [*SPARSE, "omniccl tx1"]:
            t = r[f"{label}_us"]
            assert r[f"{label}_speedup_vs_ring"] == pytest.approx(r["ring_us"] / t, rel=1e-12)
            assert r[f"{label}_speedup_vs_host_best"] == pytest.approx(r["host_best_us"] / t, rel=1e-12)
        assert r["nic_over_cpu"] == pytest.approx(r["omniccl-cpu_us"] / r["omniccl_us"], rel=1e-12)


def test_small_sweep_columns_match_independent_model_times(small):
    check_columns(small, SMALL)
    assert small[0]["host_best_algo"] != "ring" and small[0]["host_best_us"] < small[0]["ring_us"]
    count = SMALL // 4
    for r in small[::3]:
        masks = np.stack([pattern_mask(w, 8, count, 256, r["density"], r["overlap"], 0) for w in range(8)])
        for algo in SPARSE:
            t = model_sparse(sparse_config(algo, 8), masks, PROF, 4)
            assert (r[f"{algo}_us"], r[f"{algo}_wire_bytes"]) == (t.emulated_us, t.wire_bytes)
        tx1 = model_sparse(sparse_config("omniccl", 8, tx_spots=1), masks, PROF, 4)
        assert r["omniccl tx1_us"] == tx1.emulated_us


def test_committed_json_covers_the_sparsities_with_checked_columns(committed):
    assert [(r["overlap"], r["density"]) for r in committed] == [
        (o, d) for o in ("random", "all") for d in paper_omniccl.DENSITIES]
    assert sorted({round(100 * r["sparsity"]) for r in committed}) == [0, 25, 50, 75, 90, 95, 98, 99]
    check_columns(committed, 128 << 20)
    for r in committed:          # plottable: one row per point, every column but the labels numeric
        assert all(isinstance(v, (int, float)) for k, v in r.items() if k not in ("overlap", "host_best_algo"))


def test_committed_csv_matches_json(committed):
    with open(RESULTS / "paper_omniccl.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(committed)
    for c, j in zip(rows, committed):
        assert list(c) == list(j)
        for k, v in j.items():
            assert c[k] == str(v), k


def test_committed_page_is_current(committed):
    text = (RESULTS / "paper_omniccl.md").read_text()
    command = text.splitlines()[0].split("`")[1]
    assert command == "python scripts/paper_omniccl.py --out docs/results/paper_omniccl"
    fresh = paper_omniccl.page_lines("docs/results/paper_omniccl", committed, command)
    assert text == "\n".join(fresh) + "\n"


def bullets(rows: list[dict]) -> list[str]:
    return paper_omniccl.findings(rows)


def span(values: list[float], fmt: str) -> str:
    lo, hi = f"{min(values):{fmt}}×", f"{max(values):{fmt}}×"
    return lo if lo == hi else f"{lo} to {hi}"


@pytest.mark.parametrize("which", ["small", "committed"])
def test_findings_state_nic_over_cpu_and_host_best_at_25_to_75_percent(which, request):
    rows = request.getfixturevalue(which)
    out = bullets(rows)
    for overlap in ("random", "all"):
        band = [r for r in rows if r["overlap"] == overlap and 0.25 <= 1 - r["density"] <= 0.75]
        assert len(band) == 3
        gain = [r["omniccl-cpu_us"] / r["omniccl_us"] for r in band]
        line = next(b for b in out if b.startswith(f"25–75% sparsity, {overlap} placement"))
        assert f"is {span(gain, '.3f')} as fast as the CPU one" in line
        for algo in SPARSE:
            sp = [r["host_best_us"] / r[f"{algo}_us"] for r in band]
            slower = [r for r in band if r["host_best_us"] < r[f"{algo}_us"]]
            faster = [r for r in band if r not in slower]
            if not slower:
                verdict = "faster at every sparsity"
            elif not faster:
                verdict = "slower at every sparsity"
            else:
                verdict = f"slower at {pcts(slower)} sparsity, faster at {pcts(faster)}"
            assert f"{algo} {span(sp, '.2f')} ({verdict})" in line, line


def pcts(rows: list[dict]) -> str:
    p = [f"{100 * (1 - r['density']):g}" for r in rows]
    return (", ".join(p[:-1]) + " and " if len(p) > 1 else "") + p[-1] + "%"


def test_findings_name_every_loss_to_a_dense_baseline(small, committed):
    for rows in (small, committed):
        losses = next(b for b in bullets(rows) if b.startswith("Where a sparse algorithm loses"))
        for algo in SPARSE:
            for base, key in (("host-best", "host_best_us"), ("ring", "ring_us")):
                loses = any(r[key] < r[f"{algo}_us"] for r in rows)
                assert (f"{algo} is slower than `{base}`" in losses) == loses, (algo, base, losses)


def test_findings_say_when_a_sparse_algorithm_never_loses(small):
    rows = [dict(r) for r in small]
    for r in rows:                       # make omnireduce beat both baselines everywhere
        r["omnireduce_us"] = min(r["ring_us"], r["host_best_us"]) / 2
        r["omnireduce_speedup_vs_ring"] = r["ring_us"] / r["omnireduce_us"]
        r["omnireduce_speedup_vs_host_best"] = r["host_best_us"] / r["omnireduce_us"]
    losses = next(b for b in bullets(rows) if b.startswith("Where a sparse algorithm loses"))
    assert "omnireduce is slower" not in losses
    assert re.search(r"; [\w, -]*\bomnireduce beats? both at every point\.$", losses), losses


def test_baseline_bullet_names_the_host_algorithm(small):
    first = bullets(small)[0]
    r = small[0]
    assert f"`host-best` runs {r['host_best_algo']} in {r['host_best_us']:,.0f} µs" in first
    assert f"{r['ring_us'] / r['host_best_us']:.2f}× the speed of `ring`" in first


def test_model_md_quotes_the_current_times_table():
    """docs/model.md §10 copies the page's times table: the copy must be the page's."""
    page = (RESULTS / "paper_omniccl.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(page) if ln.startswith("| overlap | sparsity | density |"))
    end = next(i for i in range(start, len(page)) if not page[i].startswith("|"))
    model = (RESULTS.parent / "model.md").read_text()
    assert "\n".join(page[start:end]) in model
