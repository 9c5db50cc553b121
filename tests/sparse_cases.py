"""Input cases for the sparse AllReduce tests, shared by the unit and MPI suites."""

import numpy as np


def case_inputs(name: str, nodes: int, count: int, block: int, dtype: str, seed: int = 0) -> np.ndarray:
    """(nodes, count) inputs for one named correctness case."""
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    def values(shape):
        if kind == "i":
            return rng.integers(-1000, 1000, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
    x = np.zeros((nodes, count), dtype=dtype)
    nb = -(-count // block)
    if name == "all-zero":
        return x
    if name == "dense":
        return values((nodes, count))
    if name == "disjoint":
        for b in range(nb):
            n = b % nodes
            x[n, b * block:(b + 1) * block] = values(min(block, count - b * block))
        return x
    if name == "one-in-partial-last-block":
        x[nodes - 1, count - 1] = values(1)[0] if kind != "i" else 7
        return x
    if name == "nan-inf":
        x[:] = values((nodes, count))
        keep = rng.random((nodes, nb)) < 0.5
        x *= np.repeat(keep, block, axis=1)[:, :count].astype(dtype)
        if kind == "f":
            x[0, 0] = np.nan
            x[nodes - 1, count // 2] = np.inf
        return x
    if name == "random-sparse":
        x[:] = values((nodes, count))
        keep = rng.random((nodes, nb)) < 0.3
        return x * np.repeat(keep, block, axis=1)[:, :count].astype(dtype)
    raise ValueError(name)


CASES = ["all-zero", "dense", "disjoint", "one-in-partial-last-block", "nan-inf", "random-sparse"]


def check_sum(result: np.ndarray, inputs: np.ndarray) -> None:
    """Equal to the float64 sum; integers bit-exact; all-zero blocks exactly zero; NaN/Inf kept."""
    ref = inputs.astype(np.float64).sum(axis=0)
    for row in np.atleast_2d(result):
        if row.dtype.kind == "i":
            np.testing.assert_array_equal(row, ref.astype(row.dtype))
            continue
        tol = {"float16": 5e-3, "float32": 2e-6, "float64": 1e-13}[row.dtype.name] * inputs.shape[0]
        scale = np.abs(ref[np.isfinite(ref)]).max(initial=1.0)
        np.testing.assert_allclose(row.astype(np.float64), ref, rtol=tol, atol=tol * scale)
        zero = ~(inputs != 0).any(axis=0)
        assert (row[zero] == 0).all() and not np.signbit(row[zero]).any()
