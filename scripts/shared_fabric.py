#!/usr/bin/env python3
"""Collectives sharing a fabric: K calls on the same nodes, two jobs placed contiguously or interleaved on a
torus, disaggregated serving whose KV transfers cross the TP rings, and the model's speed for two 1 GiB
AllReduces on torus:4^6 (nicemu.studies.shared_fabric builds them from collectives/model/concurrent.py and
``nicemu serve --fabric shared``).

    python scripts/shared_fabric.py --out docs/results/shared_fabric
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import shared_fabric
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/shared_fabric")
    ap.add_argument("--no-speed", action="store_true", help="skip the torus:4^6 speed table")
    ap.add_argument("--no-serve", action="store_true", help="skip the serving table (two serve runs)")
    args = ap.parse_args(argv)
    return guarded("shared_fabric", lambda: shared_fabric.reproduce(
        args.out, command=script_command("shared_fabric", argv), speed=not args.no_speed,
        serve=not args.no_serve))


if __name__ == "__main__":
    sys.exit(main())
