"""Inputs made and results checked a chunk at a time (nicemu/data.py) equal the whole-vector definitions."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu import data


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(data, "CHUNK", 1000)


@pytest.mark.parametrize("dtype", ["float32", "int32", "float16"])
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_fill_inputs_equals_node_input(small_chunks, dtype, density):
    count, nodes = 4321, 5
    out = data.fill_inputs(np.empty((3, count), dtype=dtype), [1, 2, 4], nodes, density, 64, "random", 7)
    whole = np.stack([data.node_input(n, nodes, count, np.dtype(dtype), density, 64, "random", 7)
                      for n in (1, 2, 4)])
    assert out.dtype == whole.dtype and np.array_equal(out, whole)


def test_count_wrong_in_chunks(small_chunks):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=5555)
    bound = np.abs(rng.normal(size=5555)) * 1e-3
    res = (ref + rng.uniform(-1, 1, size=5555) * bound * 0.999).astype(np.float64)
    bad = rng.choice(5555, size=37, replace=False)
    res[bad] += 1.0
    res[5] = np.nan
    expected = len(set(bad.tolist()) | {5})
    assert data.count_wrong(res, ref, bound) == expected
    assert data.count_wrong(res.astype(np.float32), ref, 0.5) == np.count_nonzero(~(np.abs(
        res.astype(np.float32).astype(np.float64) - ref) <= 0.5))
    ints = np.arange(3000, dtype=np.int32)
    assert data.count_wrong(ints, ints.copy()) == 0
