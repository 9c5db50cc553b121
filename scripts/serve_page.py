#!/usr/bin/env python3
"""The serving results page (docs/results/serve.md) from the real-data serve run.

With ``--run`` it first runs ``mpiexec -n 8 nicemu serve --model llama3-70b --tp 8 --requests 50`` (about
4 minutes on 2 cores) to refresh the JSON, CSV and CDF plot; without it, it rebuilds the page from the
committed JSON (nicemu.studies.serve_page does the work).

    python scripts/serve_page.py --run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nicemu.studies import serve_page
from nicemu.studies.pages import script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="docs/results", help="folder of the serve files and the page")
    ap.add_argument("--run", action="store_true", help="rerun the deployment under mpiexec first")
    ap.add_argument("--ranks", type=int, default=8, help="MPI ranks for --run (default 8)")
    args = ap.parse_args(argv)
    results = Path(args.results)
    if args.run:
        serve_page.run(results, args.ranks)
    path = serve_page.write_page(results, script_command("serve_page", ["--run"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
