#!/usr/bin/env python3
"""Data-parallel training of NCF, LSTM-GBW and DeepLight with dense buckets against zero-block sparse
AllReduce of their embedding tables (nicemu.studies.sparse_training runs ``nicemu train`` for each).

    python scripts/sparse_training.py --out docs/results/sparse_training
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import sparse_training
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/sparse_training")
    ap.add_argument("--models", default=",".join(sparse_training.MODELS),
                    help="comma list of embedding-model presets (default: all three)")
    args = ap.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return guarded("sparse_training", lambda: sparse_training.reproduce(
        args.out, command=script_command("sparse_training", argv), models=models, progress=True))


if __name__ == "__main__":
    sys.exit(main())
