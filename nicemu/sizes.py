"""Message sizes as users write them: 64K, 1K,256K,1G or a range MIN:MAX[:FACTOR]."""

from __future__ import annotations

import re

from nicemu.errors import UsageError

SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: bytes per node: 1 TiB, far beyond one node's memory (the model executor needs no data), and
#: 2**40 elements at most, which keeps offsets and byte counts inside int64
MAX_BYTES = 1 << 40
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"bad size '{text}'; write bytes or a whole number with K, M, G or T (binary), e.g. 64K "
                         "(at most 1T per node)")
    value = int(m.group(1)) * SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise UsageError(f"size '{text}' must be positive; the smallest useful size is one element")
    if value > MAX_BYTES:
        raise UsageError(f"size '{text}' is larger than the limit of 1T per node; use a smaller size")
    return value


def format_size(nbytes: int) -> str:
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


def parse_sizes(spec: str) -> list[int]:
    """A single size, a comma list, or MIN:MAX[:FACTOR] (multiply by FACTOR, default 2)."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--sizes is empty; e.g. --sizes 1K:1M or --sizes 64K,1M")
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise UsageError(f"bad size range '{spec}'; use MIN:MAX or MIN:MAX:FACTOR, e.g. 1K:1G:4")
        lo, hi = parse_size(parts[0]), parse_size(parts[1])
        factor = 2
        if len(parts) == 3:
            if not parts[2].strip().isdigit() or int(parts[2]) < 2:
                raise UsageError(f"bad factor '{parts[2]}' in '{spec}'; use a whole number >= 2")
            factor = int(parts[2])
        if lo > hi:
            raise UsageError(f"size range '{spec}' has MIN > MAX; write it as {parts[1]}:{parts[0]}")
        out = []
        size = lo
        while size <= hi:
            out.append(size)
            size *= factor
        return out
    return [parse_size(p) for p in spec.split(",")]
