#!/usr/bin/env python3
"""Serving deployments an operator would recognise: TP in a node, TP over two nodes, disaggregated.

Llama-3-70B at TP 8 and Llama-3.1-405B at TP 16 on nodes of eight NVLinked H100s with a 400 Gb/s
NIC each, colocated and with prefill and decode on separate nodes, ring vs host-best vs DirectReduce
(model executor; nicemu.studies.serve_deployments does the work, about a minute).

    python scripts/serve_deployments.py --out docs/results/serve_deployments
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import serve_deployments
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/serve_deployments")
    ap.add_argument("--requests", type=int, default=200, help="requests per deployment (default 200)")
    args = ap.parse_args(argv)
    return guarded("serve_deployments", lambda: serve_deployments.reproduce(
        args.out, args.requests, command=script_command("serve_deployments", argv), progress=sys.stderr.isatty()))


if __name__ == "__main__":
    sys.exit(main())
