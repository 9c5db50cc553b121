"""One program under ``mpiexec -n 1, 2, 4, 8``: identical results and emulated times.

Virtual nodes: any number of ranks from 1 to the node count must
give the same results. The script below runs every algorithm on the
virtual-node tori (``torus:4x4x4``, 64 nodes, and ``torus:3x3x3x3``, 81 nodes)
with real data, gathers every node's result to rank 0 and prints, per case, the
emulated time, wire bytes and busy times (``repr``, so exact), a sha256 of the
results' bytes, the number of wrong elements against numpy's float64 reference,
and the model executor's emulated time. The test asserts that the four outputs
are identical, byte for byte, and that every case has no wrong element and
matches the model executor exactly.

The counts are small (a few hundred elements per node) so that the four runs
(eight ranks oversubscribe a 2-core machine) stay well within a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TIMEOUT_S, Run, run_python

pytestmark = pytest.mark.e2e

RANKS = [1, 2, 4, 8]

SCRIPT = r'''
import hashlib

import numpy as np
from mpi4py import MPI

from nicemu.collectives.registry import names
from nicemu.collectives import Emulator, model_time
from nicemu.collectives import model_sparse, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile

COMM = MPI.COMM_WORLD
DENSE = load_profile("directreduce-paper")
SPARSE = load_profile("omniccl-paper")
SPARSE_OPTS = {"block_size": 8, "spot_blocks": 4}


def inputs(nodes, count, dtype, seed, density=1.0, block=8):
    rng = np.random.default_rng(seed)           # same on every rank
    if np.dtype(dtype).kind == "i":
        x = rng.integers(-10**6, 10**6, size=(nodes, count)).astype(dtype)
    else:
        x = rng.standard_normal((nodes, count)).astype(dtype)
    if density < 1.0:
        keep = rng.random((nodes, -(-count // block))) < density
        x *= np.repeat(keep, block, axis=1)[:, :count].astype(dtype)
    return x


def wrong(rows, x, segments=None):
    """Elements off the float64 reference: integers exactly, floats beyond the summation bound."""
    full = x.astype(np.float64)
    eps = 0.0 if x.dtype.kind == "i" else np.finfo(x.dtype).eps
    ref, bound = full.sum(axis=0), x.shape[0] * eps * np.abs(full).sum(axis=0)
    bad = 0
    for i, row in enumerate(rows):
        lo, hi = (0, x.shape[1]) if segments is None else segments[i]
        bad += int(np.count_nonzero(np.abs(row.astype(np.float64) - ref[lo:hi]) > bound[lo:hi]))
    return bad


def report(name, rows, timing, model_us, x, segments=None, expect=None):
    """Gather every node's result to rank 0 (in node order) and print one line."""
    parts = COMM.gather([np.array(r) for r in rows], root=0)
    if COMM.rank != 0:
        return
    all_rows = [r for part in parts for r in part]
    assert len(all_rows) == x.shape[0]
    if expect is not None:
        bad = sum(int(np.count_nonzero(r != expect)) for r in all_rows)
    else:
        bad = wrong(all_rows, x, segments)
    sha = hashlib.sha256(b"".join(r.tobytes() for r in all_rows)).hexdigest()
    print(f"case {name} emulated_us={timing.emulated_us!r} wire={timing.wire_bytes} "
          f"host={timing.host_busy_us!r} nic={timing.nic_busy_us!r} sha256={sha} wrong={bad} "
          f"model_us={model_us!r}", flush=True)


for spec in ("torus:4x4x4", "torus:3x3x3x3"):
    with Emulator(COMM, spec, DENSE) as emu, Emulator(COMM, spec, SPARSE) as sp:
        n, topo = emu.topology.nodes, emu.topology
        lo, hi = emu.node_range.start, emu.node_range.stop
        off, cnt = emu.segments(700)
        for algo in ("ring", "directreduce"):
            for count, dtype in ((5, "float32"), (700, "float32"), (700, "int64"), (700, "float64")):
                x = inputs(n, count, dtype, seed=count + n)
                res = emu.allreduce(x[lo:hi], algo=algo)
                model = model_time("allreduce", algo, topo, DENSE, count, dtype).emulated_us
                report(f"{spec} allreduce {algo} {dtype} {count}", np.atleast_2d(res.data), res, model, x)
            x = inputs(n, 700, "float32", seed=3)
            res = emu.reduce_scatter(x[lo:hi], algo=algo)
            segs = res.data if isinstance(res.data, list) else [res.data]
            model = model_time("reducescatter", algo, topo, DENSE, 700, "float32").emulated_us
            report(f"{spec} reducescatter {algo} float32 700", segs, res, model, x,
                   segments=[(off[i], off[i] + cnt[i]) for i in range(n)])
            res = emu.allgather(x[lo:hi], algo=algo)
            expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
            model = model_time("allgather", algo, topo, DENSE, 700, "float32").emulated_us
            report(f"{spec} allgather {algo} float32 700", np.atleast_2d(res.data), res, model, x,
                   expect=expect)
        for algo in tuple(names(kind="sparse")):
            x = inputs(n, 700, "float32", seed=5, density=0.3, block=SPARSE_OPTS["block_size"])
            work = x[lo:hi].copy()
            t = sp.run_inplace("allreduce", work, "sum", algo, dict(SPARSE_OPTS))
            cfg = sparse_config(algo, n, **SPARSE_OPTS)
            model = model_sparse(cfg, block_mask(x, cfg.block_size), SPARSE, 4).emulated_us
            report(f"{spec} allreduce {algo} float32 700", work, t, model, x)
'''


def run_script(script: Path, nprocs: int, timeout: float = TIMEOUT_S) -> Run:
    return run_python([script], script.parent, nprocs, timeout,
                      env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def test_same_results_and_times_on_1_2_4_8_ranks(tmp_path: Path):
    script = tmp_path / "rank_independence.py"
    script.write_text(SCRIPT)
    outputs: dict[int, list[str]] = {}
    for ranks in RANKS:
        run = run_script(script, ranks)
        assert run.returncode == 0, str(run)
        assert "Traceback" not in run.stderr, str(run)
        outputs[ranks] = [line for line in run.stdout.splitlines() if line.startswith("case ")]

    base = outputs[RANKS[0]]
    assert len(base) == 2 * (2 * 6 + 3), "\n".join(base)   # per torus: 2 dense algos x 6 cases + 3 sparse
    for line in base:
        f = fields(line)
        assert f["wrong"] == "0", line
        assert f["emulated_us"] == f["model_us"], line          # repr of the same float
        assert float(f["emulated_us"]) > 0, line
    for ranks in RANKS[1:]:
        differ = [(a, b) for a, b in zip(base, outputs[ranks]) if a != b]
        assert len(outputs[ranks]) == len(base) and not differ, (
            f"{ranks} ranks differ from 1 rank:\n" + "\n".join(f"  1: {a}\n  {ranks}: {b}" for a, b in differ))
