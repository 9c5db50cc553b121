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
import sys
from pathlib import Path

import numpy as np

from nicemu.workloads.sparse_gradients import distinct_expected, fit_zipf


def _legacy_torch_vector(raw: bytes) -> np.ndarray:
    """A 1-D int tensor saved by PyTorch's legacy format: a small pickled header (never unpickled here), then
    the storage as an 8-byte little-endian element count and the raw elements, to the end of the file. The
    count is found where it and the elements after it fill the file exactly."""
    for width in (4, 8):
        for at in range(min(len(raw) - 8, 1 << 16)):
            count = int.from_bytes(raw[at:at + 8], "little")
            if count and at + 8 + width * count == len(raw):
                return np.frombuffer(raw[at + 8:], dtype=f"<i{width}").astype(np.float64)
    raise SystemExit("word_zipf: no int32 or int64 storage fills the end of the file")


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
