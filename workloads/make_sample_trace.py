"""Write the shipped SYNTHETIC sample trace ``workloads/data/sample_azure_conv.csv``.

This is not the Azure LLM inference trace, and no part of it comes from
that trace. It is synthetic, in the Azure trace's CSV format
(``TIMESTAMP,ContextTokens,GeneratedTokens``), with lengths chosen to resemble
the published statistics of its conversation part (mean 1,155 input
and 211 output tokens, near-Poisson arrivals). It exists so that ``nicemu
serve --arrivals`` can be tried without downloading anything. The real trace can
be replayed with the same loader.

How it was made (deterministic; rerunning gives the same bytes)::

    python -m nicemu.workloads.make_sample_trace --seed 2023 --requests 200 \\
        --out workloads/data/sample_azure_conv.csv

- 200 requests (``--requests``), seed 2023 (``--seed``), through
  :func:`nicemu.workloads.requests.synthetic_requests`.
- Arrivals: Poisson at 4 requests/s (exponential gaps, cv = 1), first request
  at 0; numpy ``default_rng([seed, 0])``.
- ContextTokens: lognormal with mean 1,155 and sigma 0.8 (mu = ln 1155 - 0.32),
  rounded, clipped to [1, 8192] (Llama-3's context); ``default_rng([seed, 1])``.
- GeneratedTokens: lognormal with mean 211 and sigma 0.8, rounded, clipped to
  [1, 2048]; ``default_rng([seed, 2])``.
- TIMESTAMP: 2000-01-01 00:00:00 plus the arrival, rounded to the microsecond,
  written with 7 fractional digits as in the Azure files. The year 2000 marks
  it as synthetic.
- The first lines are ``#`` comments saying the file is synthetic
  (:func:`nicemu.workloads.requests.load_trace` skips them).

Realised statistics of the shipped file (printed by this script): 200 requests
over 50.4 s (3.97 req/s), inter-arrival cv 0.96, mean 1,147 input and 203
output tokens (one input clipped at 8,192).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import numpy as np

from nicemu.workloads.requests import LogNormal, Request, synthetic_requests, write_trace

RATE_PER_S = 4.0
INPUT = LogNormal(1155.0, 0.8, max_tokens=8192)
OUTPUT = LogNormal(211.0, 0.8, max_tokens=2048)
START = datetime(2000, 1, 1)
DEFAULT_PATH = Path(__file__).parent / "data" / "sample_azure_conv.csv"


def sample_requests(n: int = 200, seed: int = 2023) -> list[Request]:
    """The sample's requests, arrivals rounded to the microsecond as written."""
    reqs = synthetic_requests(n, RATE_PER_S, INPUT, OUTPUT, cv=1.0, seed=seed)
    return [Request(r.id, float(round(r.arrival_us)), r.input_tokens, r.output_tokens) for r in reqs]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write the synthetic Azure-format sample trace")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = p.parse_args(argv)
    reqs = sample_requests(args.requests, args.seed)
    comment = (f"SYNTHETIC sample in the Azure LLM inference trace format; NOT the real Azure trace. "
               f"Made by: python -m nicemu.workloads.make_sample_trace --seed {args.seed} --requests {args.requests}",
               f"Poisson {RATE_PER_S} req/s; ContextTokens lognormal(mean {INPUT.mean:g}, sigma {INPUT.sigma:g}, "
               f"max {INPUT.max_tokens}); GeneratedTokens lognormal(mean {OUTPUT.mean:g}, "
               f"sigma {OUTPUT.sigma:g}, max {OUTPUT.max_tokens})")
    write_trace(args.out, reqs, START, comment)
    span_s = reqs[-1].arrival_us / 1e6
    mean_in = sum(r.input_tokens for r in reqs) / len(reqs)
    mean_out = sum(r.output_tokens for r in reqs) / len(reqs)
    gaps = np.diff([r.arrival_us for r in reqs])
    print(f"wrote {args.out}: {len(reqs)} requests over {span_s:.1f} s ({len(reqs) / span_s:.2f} req/s, "
          f"inter-arrival cv {gaps.std() / gaps.mean():.2f}), "
          f"mean {mean_in:.0f} input / {mean_out:.0f} output tokens")


if __name__ == "__main__":
    main()
