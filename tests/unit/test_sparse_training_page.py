"""docs/results/sparse_training.md follows from its committed JSON, and the JSON's rows keep train's rules."""

import json
from pathlib import Path

import pytest

from nicemu.studies import sparse_training
from nicemu.workloads import embedding_models

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _data() -> list[dict]:
    return json.loads((RESULTS / "sparse_training.json").read_text())


def test_page_is_its_json():
    lines = sparse_training.page_lines(_data(), "python scripts/sparse_training.py --out docs/results/sparse_training")
    assert (RESULTS / "sparse_training.md").read_text() == "\n".join(lines) + "\n"


def test_rows_keep_the_iteration_rules():
    data = _data()
    assert {r["model"] for r in data} == set(sparse_training.MODELS)
    for r in (r for r in data if not r.get("refused")):
        preset = embedding_models.find(r["model"])
        assert r["global_batch"] == 8 * preset.batch and r["dp"] == 8
        assert r["iteration_ms"] >= r["compute_ms"] > 0
        assert r["exposed_ms"] == pytest.approx(r["iteration_ms"] - r["compute_ms"])
        if r["embedding"] == "dense buckets":
            assert r["embedding_density"] is None and r["grad_bytes"] == 4 * preset.params()
        else:
            assert 0 < r["embedding_density"] <= r["embedding_union_density"] <= 1
            assert r["embedding_bytes"] == 4 * preset.embedding_elems
            assert r["grad_bytes"] == 4 * (preset.params() - preset.embedding_elems)
            # the call starts when backward ends and shares the fabric: never faster than alone
            assert r["embedding_ms"] >= r["embedding_alone_ms"]
            assert r["iteration_ms"] >= r["compute_ms"] + r["embedding_ms"] - 1e-9
    for r in (r for r in data if r.get("refused")):
        assert sparse_training.TOO_MANY_FLOWS in r["refused"]
