"""Straggler nodes: one node's host and NIC run slower by a factor.

``--straggler NODE:FACTOR`` (repeatable, or a comma list) multiplies the
service times of that node's host CPU (``o_H`` and ``γ``), its NIC
(ComputeEnhancer ``ν`` and the NIC pipeline latency ``α_N``) and its PCIe DMA
engines (``π`` and ``α_P``) by FACTOR (docs/model.md §12). Links are not
slowed: the wire runs at its rate whatever the endpoints do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from nicemu.errors import FaultSpecError

#: the largest slowdown accepted: beyond it emulated times stop meaning anything
MAX_FACTOR = 1e6


def parse_stragglers(items: Iterable[str] | str | None) -> dict[int, float]:
    """``["3:2.0", "5:1.5,6:4"]`` -> {3: 2.0, 5: 1.5, 6: 4.0}; one-line errors."""
    if items is None:
        return {}
    if isinstance(items, str):
        items = [items]
    out: dict[int, float] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            node_s, sep, factor_s = part.partition(":")
            try:
                node = int(node_s)
                factor = float(factor_s)
            except ValueError:
                node, factor = -1, math.nan
            if not sep or node < 0:
                raise FaultSpecError(f"--straggler {part}: write NODE:FACTOR, e.g. --straggler 3:2.0")
            _check_factor(factor, part)
            if node in out:
                raise FaultSpecError(f"--straggler: node {node} given twice; give it once")
            out[node] = factor
    return out


def _check_factor(factor: float, what: str) -> None:
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and 1.0 <= factor <= MAX_FACTOR):
        raise FaultSpecError(f"--straggler {what}: FACTOR must be a number >= 1 and <= {MAX_FACTOR:g} "
                             f"(how many times slower), e.g. 3:2.0")


def check_stragglers(stragglers: dict[int, float], nodes: int) -> None:
    for node, factor in stragglers.items():
        if not isinstance(node, (int, np.integer)) or node < 0:
            raise FaultSpecError(f"--straggler {node!r}: a node is an integer >= 0")
        _check_factor(factor, f"{node}:{factor}")
        if node >= nodes:
            raise FaultSpecError(f"--straggler {node}: the topology has nodes 0..{nodes - 1}")


def node_factors(stragglers: dict[int, float], lo: int, hi: int) -> np.ndarray | None:
    """Slowdown factor of nodes lo..hi-1, or None when none of them straggles."""
    if not any(lo <= n < hi for n in stragglers):
        return None
    f = np.ones(hi - lo)
    for n, factor in stragglers.items():
        if lo <= n < hi:
            f[n - lo] = factor
    return f


def describe(stragglers: dict[int, float]) -> str:
    return ",".join(f"{n}:{f:g}" for n, f in sorted(stragglers.items()))


def per_node(value, ix):
    """A service parameter of the nodes ``ix``: the scalar itself, or its per-node entry once slowed."""
    return value[ix] if isinstance(value, np.ndarray) else value
