#!/usr/bin/env python3
"""The Zipf exponent of a vocabulary's word counts, fitted at one rank's batch (workloads/sparse_gradients.py,
``fit_zipf``): the source of LSTM-GBW's token law (docs/model.md §22.3).

    python scripts/word_zipf.py word_freq.pt --draws 10240

``word_freq.pt`` is the One Billion Word benchmark's count per word as OmniReduce's LSTM run ships it
(models/LSTM/data/lm1b/word_freq.pt of its experiments repository): a 1-D int32 tensor in PyTorch's legacy
serialization, whose raw storage is the file's last 4 x words bytes. A ``.npy`` or a text file of counts
works too. Nothing here is committed data; the script reads the file it is given.
"""

from __future__ import annotations

import argparse
import io
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

from nicemu.workloads.sparse_gradients import distinct_expected, fit_zipf


def _legacy_torch_vector(raw: bytes) -> np.ndarray:
    """A 1-D int tensor saved by PyTorch's legacy format: five pickles (magic, protocol, system info, the tensor
    with its storage as a persistent id, the storage keys), then each storage as an 8-byte count and raw data."""

    class Skeleton(pickle.Unpickler):      # reads the structure only: no class is ever constructed
        def persistent_load(self, pid):
            return pid

        def find_class(self, module, name):
            return lambda *a, **k: (module, name, a)

    buf = io.BytesIO(raw)
    for _ in range(3):
        Skeleton(buf).load()
    _, _, (storage, *_rest) = Skeleton(buf).load()
    kind, elems = storage[1]()[1], storage[4]
    Skeleton(buf).load()
    (count,) = struct.unpack("<q", buf.read(8))
    width = {"IntStorage": 4, "LongStorage": 8}.get(kind)
    if width is None or count != elems:
        raise SystemExit(f"word_zipf: unsupported storage {kind} ({count} of {elems} elements)")
    return np.frombuffer(buf.read(count * width), dtype=f"<i{width}").astype(np.float64)


def read_counts(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".npy":
        return np.load(path).astype(np.float64).ravel()
    if raw[:2] == b"\x80\x02":
        return _legacy_torch_vector(raw)
    return np.loadtxt(path, dtype=np.float64).ravel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("counts", type=Path)
    ap.add_argument("--draws", type=int, default=10_240, help="ids one rank looks up per step (default 10,240)")
    args = ap.parse_args(argv)
    counts = read_counts(args.counts)
    probs = np.sort(counts)[::-1] / counts.sum()
    s = fit_zipf(counts, args.draws)
    ranks = np.arange(1, len(counts) + 1, dtype=np.float64)
    print(f"{len(counts):,} words, {counts.sum():,.0f} tokens")
    print(f"rows touched by {args.draws:,} draws: measured law {distinct_expected(probs, args.draws):,.1f}, "
          f"Zipf 1 {distinct_expected(1 / ranks / np.sum(1 / ranks), args.draws):,.1f}")
    print(f"fitted Zipf exponent: {s:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
