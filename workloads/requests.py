"""Serving requests: synthetic arrivals with length distributions, and Azure-format trace replay.

Synthetic arrivals are Poisson (exponential gaps) or Gamma with coefficient
of variation ``cv`` (shape ``1/cv^2``, scale ``1/(rate * shape)``, so the mean
rate stays ``rate``; cv > 1 is burstier than Poisson). Arrival times, input
lengths and output lengths draw from three separate seeded streams, so
changing one distribution leaves the others unchanged.

Traces use the Azure LLM inference trace format: a CSV with the header
``TIMESTAMP,ContextTokens,GeneratedTokens`` (extra columns are ignored), where
TIMESTAMP is an ISO date-time (``2023-11-16 18:15:46.6805900``) or plain
seconds. Blank lines and lines starting with ``#`` are skipped. Arrival times
are taken relative to the first row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from nicemu.errors import WorkloadError

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
_STREAM_ARRIVALS, _STREAM_INPUT, _STREAM_OUTPUT = 0, 1, 2

#: tokens of one request's prompt or output: 2**24 (16.7M) covers the longest contexts in use; every
#: output token is one decode iteration, so this also bounds how long one request can run
MAX_TOKENS = 1 << 24
#: synthetic requests in one run: a million (each is a Python object; the arrivals of more take minutes)
MAX_REQUESTS = 1_000_000
#: arrival rate, requests/s: below one per 1000 s the arrival times (us) of a million requests would
#: outgrow the float64 resolution that per-request latencies need
MIN_RATE = 1e-3
#: a trace's last arrival after its first, us (31.7 years): beyond it float64 arrival times lose the
#: sub-microsecond resolution that per-request latencies need
MAX_ARRIVAL_US = 1e15
#: coefficient of variation of the gaps: 1/cv^2 is the Gamma shape, finite and non-zero in this range
MIN_CV, MAX_CV = 1e-3, 1e3
#: lognormal sigma: e^(10 sigma) already spans far beyond MAX_TOKENS
MAX_SIGMA = 10.0


@dataclass(frozen=True)
class Request:
    id: int
    arrival_us: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0      # a prompt prefix whose KV cache waits in host memory (--prefix-reuse)


# ---------------------------------------------------------------- length distributions

@dataclass(frozen=True)
class Fixed:
    tokens: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Integers in ``[low, high]``, both included."""

    low: int
    high: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """Lognormal with the given mean (mu = ln(mean) - sigma^2 / 2), rounded, at least 1, at most ``max_tokens``
    (or :data:`MAX_TOKENS`)."""

    mean: float
    sigma: float
    max_tokens: int | None = None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma ** 2 / 2
        # clipped while still float: a heavy tail must not overflow the cast to int64
        top = MAX_TOKENS if self.max_tokens is None else self.max_tokens
        return np.clip(np.rint(rng.lognormal(mu, self.sigma, size=n)), 1, top).astype(np.int64)


LengthDist = Fixed | Uniform | LogNormal


def parse_lengths(spec: str) -> LengthDist:
    """``1024`` / ``fixed:1024``, ``uniform:LOW:HIGH`` or ``lognormal:MEAN:SIGMA[:MAX]``; token counts in
    1..:data:`MAX_TOKENS`, sigma in 0..:data:`MAX_SIGMA`."""
    parts = str(spec).strip().split(":")
    kind, args = (parts[0].lower(), parts[1:]) if not parts[0].isdigit() else ("fixed", parts)
    usage = "use N, fixed:N, uniform:LOW:HIGH or lognormal:MEAN:SIGMA[:MAX]"
    try:
        if kind == "fixed" and len(args) == 1:
            dist: LengthDist = Fixed(int(args[0]))
            ok = dist.tokens >= 1
        elif kind == "uniform" and len(args) == 2:
            dist = Uniform(int(args[0]), int(args[1]))
            ok = 1 <= dist.low <= dist.high
        elif kind == "lognormal" and len(args) in (2, 3):
            dist = LogNormal(float(args[0]), float(args[1]), int(args[2]) if len(args) == 3 else None)
            ok = dist.mean >= 1 and dist.sigma >= 0 and (dist.max_tokens is None or dist.max_tokens >= 1)
        else:
            raise ValueError
    except ValueError:
        raise WorkloadError(f"bad length distribution '{spec}': {usage}") from None
    if not ok:
        raise WorkloadError(f"bad length distribution '{spec}': token counts must be >= 1 "
                            f"(and sigma >= 0, low <= high)")
    if isinstance(dist, Fixed):
        largest = dist.tokens
    elif isinstance(dist, Uniform):
        largest = dist.high
    else:
        largest = max(dist.mean, dist.max_tokens or 0)
    if largest > MAX_TOKENS:
        raise WorkloadError(f"bad length distribution '{spec}': at most {MAX_TOKENS:,} (2**24) tokens per request")
    if isinstance(dist, LogNormal) and dist.sigma > MAX_SIGMA:
        raise WorkloadError(f"bad length distribution '{spec}': sigma must be at most {MAX_SIGMA:g}")
    return dist


# ---------------------------------------------------------------- arrivals

def arrival_times_us(n: int, rate_per_s: float, cv: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` arrival times (us), the first at 0; Poisson when cv == 1, Gamma(1/cv^2) gaps otherwise.

    ``rate_per_s = inf`` puts every request at time 0 (an offline batch).
    """
    if n < 0:
        raise WorkloadError(f"number of requests must be >= 0, got {n}")
    if n > MAX_REQUESTS:
        raise WorkloadError(f"{n:,} synthetic requests is over the limit of {MAX_REQUESTS:,}; replay an --arrivals CSV "
                            f"for more")
    if not rate_per_s > 0:
        raise WorkloadError(f"arrival rate must be > 0 requests/s, got {rate_per_s}")
    if rate_per_s < MIN_RATE:
        raise WorkloadError(f"arrival rate {rate_per_s:g} requests/s is below the limit of {MIN_RATE:g} (one request "
                            f"per {1 / MIN_RATE:g} s)")
    if not MIN_CV <= cv <= MAX_CV:
        if not cv > 0:
            raise WorkloadError(f"coefficient of variation --cv must be > 0, got {cv}")
        raise WorkloadError(f"coefficient of variation --cv {cv:g} is outside {MIN_CV:g}..{MAX_CV:g}")
    if n == 0 or math.isinf(rate_per_s):
        return np.zeros(n)
    rng = np.random.default_rng([seed, _STREAM_ARRIVALS])
    mean_gap_us = 1e6 / rate_per_s
    if cv == 1.0:
        gaps = rng.exponential(mean_gap_us, size=n - 1)
    else:
        shape = 1.0 / cv ** 2
        gaps = rng.gamma(shape, mean_gap_us / shape, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def synthetic_requests(n: int, rate_per_s: float, input_lengths: LengthDist | str,
                       output_lengths: LengthDist | str, cv: float = 1.0, seed: int = 0) -> list[Request]:
    """Seeded synthetic workload: arrivals at ``rate_per_s`` (Poisson or Gamma) and sampled lengths."""
    inp = parse_lengths(input_lengths) if isinstance(input_lengths, str) else input_lengths
    out = parse_lengths(output_lengths) if isinstance(output_lengths, str) else output_lengths
    times = arrival_times_us(n, rate_per_s, cv, seed)
    ins = inp.sample(n, np.random.default_rng([seed, _STREAM_INPUT]))
    outs = out.sample(n, np.random.default_rng([seed, _STREAM_OUTPUT]))
    return [Request(i, float(t), int(a), int(b)) for i, (t, a, b) in enumerate(zip(times, ins, outs))]


# ---------------------------------------------------------------- Azure-format traces

def _parse_time(text: str) -> tuple[str, int, float] | None:
    """(format, whole seconds, fraction) of a TIMESTAMP cell, or None if it is neither format."""
    m = _ISO.match(text)
    if m:
        y, mo, d, hh, mm, ss, frac = m.groups()
        try:
            moment = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss))
        except ValueError:
            return None
        whole = (moment - datetime(1970, 1, 1)) // timedelta(seconds=1)
        return "iso", whole, (int(frac) / 10 ** len(frac)) if frac else 0.0
    try:
        sec = float(text)
    except ValueError:
        return None
    if not math.isfinite(sec):
        return None
    whole = math.floor(sec)
    return "seconds", whole, sec - whole


def _parse_count(where: str, column: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise WorkloadError(f"{where}: {column} '{text}' is not a whole number") from None
    if value < 1:
        raise WorkloadError(f"{where}: {column} must be >= 1, got {value}")
    if value > MAX_TOKENS:
        raise WorkloadError(f"{where}: {column} {value} is over the limit of {MAX_TOKENS:,} (2**24) tokens")
    return value


def load_trace(path: str | Path, limit: int | None = None, speedup: float = 1.0) -> list[Request]:
    """Requests of an Azure-format CSV trace, arrivals relative to the first row, divided by ``speedup``.

    Every bad row is an error naming its line; so are timestamps that go backwards.
    """
    p = Path(path)
    if not speedup > 0:
        raise WorkloadError(f"trace speedup must be > 0, got {speedup}")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"cannot read trace {p}: {exc}") from None
    expected = ",".join(TRACE_COLUMNS)
    columns: dict[str, int] | None = None
    requests: list[Request] = []
    first: tuple[str, int, float] | None = None
    prev_us, prev_line = -math.inf, 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip().strip('"') for c in line.split(",")]
        where = f"{p} line {lineno}"
        if columns is None:
            missing = [c for c in TRACE_COLUMNS if c not in cells]
            if missing:
                raise WorkloadError(f"{where}: header lacks {', '.join(missing)}; expected {expected}")
            columns = {c: cells.index(c) for c in TRACE_COLUMNS}
            width = len(cells)
            continue
        if len(cells) != width:
            raise WorkloadError(f"{where}: expected {width} comma-separated fields, got {len(cells)}")
        stamp = _parse_time(cells[columns["TIMESTAMP"]])
        if stamp is None:
            raise WorkloadError(f"{where}: TIMESTAMP '{cells[columns['TIMESTAMP']]}' is neither an ISO "
                                f"date-time like 2023-11-16 18:15:46.6805900 nor a number of seconds")
        if first is None:
            first = stamp
        elif stamp[0] != first[0]:
            raise WorkloadError(f"{where}: TIMESTAMP is in {stamp[0]} format but the first row uses {first[0]}")
        arrival_us = round(((stamp[1] - first[1]) + (stamp[2] - first[2])) * 1e6 / speedup, 3)  # ns resolution
        if arrival_us > MAX_ARRIVAL_US:
            raise WorkloadError(f"{where}: TIMESTAMP is {arrival_us / 1e6:.3g} s after the first row, over the "
                                f"limit of {MAX_ARRIVAL_US / 1e6:g} s (31 years)")
        if arrival_us < prev_us:
            raise WorkloadError(f"{where}: TIMESTAMP goes back in time (earlier than line {prev_line}); "
                                f"sort the trace by TIMESTAMP")
        prev_us, prev_line = arrival_us, lineno
        inp = _parse_count(where, "ContextTokens", cells[columns["ContextTokens"]])
        out = _parse_count(where, "GeneratedTokens", cells[columns["GeneratedTokens"]])
        requests.append(Request(len(requests), arrival_us, inp, out))
        if limit is not None and len(requests) >= limit:
            break
    if columns is None:
        raise WorkloadError(f"{p}: empty trace; expected a header {expected}")
    if not requests:
        raise WorkloadError(f"{p}: the trace has a header but no requests")
    return requests


def write_trace(path: str | Path, requests: list[Request], start: datetime,
                comment_lines: tuple[str, ...] = ()) -> None:
    """Write requests in the Azure format, TIMESTAMP as ``start`` + arrival (7 fractional digits)."""
    out = [f"# {c}" for c in comment_lines] + [",".join(TRACE_COLUMNS)]
    for r in requests:
        moment = start + timedelta(microseconds=round(r.arrival_us))
        out.append(f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond:06d}0,{r.input_tokens},{r.output_tokens}")
    Path(path).write_text("\n".join(out) + "\n")
