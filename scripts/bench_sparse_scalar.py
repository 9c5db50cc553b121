#!/usr/bin/env python3
"""Wall time of serve's embedding AllReduces with the scalar sparse path on and off, and their equality.

Times ``model_sparse`` on the embedding calls recorded from ``nicemu serve --model llama3-70b
--tp 8 --requests 2000 --executor model`` (tests/serve_embedding_calls.py), alternating the
numpy path (``sparse_timing.SCALAR = False``) and the scalar path (docs/model.md §10.8) so that
both see the same machine load, and checks that every number of every call is the same.

    python scripts/bench_sparse_scalar.py --every 4 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # the repository root, for tests/

from nicemu.collectives import model_sparse, sparse_config  # noqa: E402
from nicemu.collectives.model import sparse_timing  # noqa: E402
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.workloads.embedding_shards import batch_token_ids, embedding_block_mask  # noqa: E402
from tests.serve_embedding_calls import SHAPE, TOKENS  # noqa: E402


def same(a, b) -> bool:
    """Every number of two timings is equal (``==``)."""
    return (a.emulated_us == b.emulated_us and np.array_equal(a.node_done_us, b.node_done_us)
            and a.host_busy_us == b.host_busy_us and a.nic_busy_us == b.nic_busy_us
            and (a.wire_bytes, a.upstream_bytes, a.downstream_bytes, a.spilled)
            == (b.wire_bytes, b.upstream_bytes, b.downstream_bytes, b.spilled))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=1, help="time every k-th recorded call (default all 926)")
    ap.add_argument("--repeats", type=int, default=1, help="alternations of numpy and scalar runs")
    a = ap.parse_args(argv)
    if a.every < 1 or a.repeats < 1:
        print("bench_sparse_scalar: --every and --repeats must be >= 1", file=sys.stderr)
        return 2
    vocab, nodes, hidden, block, itemsize, profile = SHAPE
    prof, cfg = load_profile(profile), sparse_config("omniccl", nodes)
    calls = TOKENS[::a.every]
    masks = [embedding_block_mask(batch_token_ids(t, vocab, 0), vocab, nodes, hidden, block) for t in calls]
    wall = {False: 0.0, True: 0.0}
    out: dict[bool, list] = {}
    for _ in range(a.repeats):
        for flag in (False, True):
            sparse_timing.SCALAR = flag
            t0 = time.perf_counter()
            out[flag] = [model_sparse(cfg, m, prof, itemsize) for m in masks]
            wall[flag] += time.perf_counter() - t0
    equal = all(same(x, y) for x, y in zip(out[True], out[False]))
    print(f"{len(calls)} calls x {a.repeats}: numpy path {wall[False]:.2f} s, scalar path {wall[True]:.2f} s, "
          f"speedup {wall[False] / wall[True]:.2f}x, identical: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
