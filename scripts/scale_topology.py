#!/usr/bin/env python3
"""Scale AllReduce over 6D tori torus:K^6 with the model executor: host ring vs DirectReduce.

Sweeps K in {3, 4, 6, 8} (729, 4,096, 46,656 and 262,144 nodes) and message
sizes M = 1 KiB .. 1 GiB (x4 steps) for the algorithms ``ring`` and
``directreduce``, timing every point with the model executor
(``nicemu.collectives.model_time``, float32, count = M / 4; nicemu.studies.scale_topology does
the work). Writes PREFIX.csv and
PREFIX.json (one record per point), PREFIX.md (a Markdown table), and the
figures PREFIX_time_vs_nodes.png and PREFIX_gain_heatmap.png (redraw them
with ``scripts/plot_scaling.py PREFIX``).

    python scripts/scale_topology.py                      # full sweep, a few minutes
    python scripts/scale_topology.py --quick --progress   # K = 3, 4 and M = 1K, 1M, 256M
    python scripts/scale_topology.py --k 8 --sizes 256K,1G --algo directreduce
    python scripts/scale_topology.py --sizes 1K:1G:2 --set nic.packet_bytes=4096 --out /tmp/pkt4k
    python scripts/scale_topology.py --variants unidirectional,bidirectional

Resuming: every finished point is appended to PREFIX.partial.jsonl at once.
A later run with the same PREFIX reuses the points found there whose key
(K, M, algorithm, variant, profile with its --set overrides) matches, so an
interrupted sweep (Ctrl-C) continues where it stopped: run the same command
again. The partial file is kept after the sweep completes (a rerun then
computes nothing) unless --clean is given; --fresh ignores and replaces it.
Use --fresh after changing the model code, since old points would be reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from nicemu.errors import UsageError
from nicemu.studies import scale_topology as st
from nicemu.studies.pages import script_command


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def make_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    ap = _Parser(prog=st.PROG, description=doc.split("\n\n")[0],
                 epilog="\n\n".join(doc.split("\n\n")[1:]),
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", help=f"torus sizes per dimension, comma list, each >= 2 (default {st.DEFAULT_K})")
    ap.add_argument("--sizes", help="message sizes M per node, as for `nicemu bench --sizes`: 64K, 1K,256K,1G "
                                    f"or MIN:MAX[:FACTOR] (default {st.DEFAULT_SIZES})")
    ap.add_argument("--algo", default="ring,directreduce",
                    help=f"comma list of {', '.join(st.SCHEDULED)} (default: ring,directreduce)")
    ap.add_argument("--profile", default="directreduce-paper",
                    help="shipped profile name or YAML path (default directreduce-paper)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one profile field, e.g. --set nic.packet_bytes=4096 (repeatable)")
    ap.add_argument("--variants", default="unidirectional",
                    help="comma list of unidirectional, bidirectional (bidirectional = "
                         "--set topology.bidirectional=true; a variant the model cannot run yet is "
                         "skipped with a message). Default unidirectional")
    ap.add_argument("--out", default="docs/results/scale_topology",
                    help="output path prefix (default docs/results/scale_topology)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small sweep for tests: --k {st.QUICK_K} --sizes {st.QUICK_SIZES} "
                         "(an explicit --k or --sizes wins)")
    ap.add_argument("--progress", action="store_true",
                    help="show the progress bar even when stderr is not a terminal")
    ap.add_argument("--fresh", action="store_true",
                    help="ignore and replace PREFIX.partial.jsonl instead of resuming from it")
    ap.add_argument("--clean", action="store_true",
                    help="delete PREFIX.partial.jsonl once the sweep completes (it is kept by default)")
    ap.add_argument("--no-plots", action="store_true", help="skip the two figures")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = make_parser().parse_args(argv)
        cfg = st.make_config(args.k, args.sizes, args.algo, args.profile, args.overrides, args.variants, args.out,
                             args.quick, args.progress, args.fresh, args.clean, args.no_plots,
                             command=script_command(st.PROG, argv))
    except SystemExit as exc:   # --help
        return int(exc.code or 0)
    except ValueError as exc:   # UsageError, ProfileError, TopologyError, CollectiveError
        return st.fail(exc)
    return st.run(cfg, t_start)


if __name__ == "__main__":
    sys.exit(main())
