#!/usr/bin/env python3
"""Restore an offloaded KV cache: load it, recompute it, or recompute part of it.

OPT-6.7B, 13B and 30B on an A100 at its datasheet peaks, PCIe 32 GB/s, batch 8 and 32, 256 to 4,096
tokens per sequence; then the best split l as the PCIe rate moves from 8 to 128 GB/s. Writes JSON, CSV,
a Markdown page and a figure (nicemu.studies.kv_restore builds them from workloads/kv_restore.py).

    python scripts/kv_restore.py --out docs/results/kv_restore
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import kv_restore
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/kv_restore")
    args = ap.parse_args(argv)
    return guarded("kv_restore", lambda: kv_restore.reproduce(args.out, command=script_command("kv_restore", argv)))


if __name__ == "__main__":
    sys.exit(main())
