"""Parsing of topology spec strings (``ring:8``, ``switch:8``, ``torus:4x4x2``, ``torus:8^6``, ``astra:FILE``).

One parser serves the CLI, the Python API and the scripts, so every entry
point accepts the same specs and reports the same errors.
"""

from __future__ import annotations

import re

from nicemu.errors import TopologyError

from .astra import load_astra_network
from .ring import ring
from .switch import switch
from .torus import MAX_NODES, Torus

_USAGE = "use ring:N, switch:N, torus:AxBxC, torus:K^D or astra:FILE.yml"
_TORUS_EXAMPLE = "e.g. torus:4x4x2, torus:8^6 or torus:4^2x2"
_PART = re.compile(r"(\d+)(?:\^(\d+))?")


def _whole(text: str, spec: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:  # e.g. more digits than Python converts
        raise TopologyError(f"{spec}: {what} {text[:20]}... is too large; {_TORUS_EXAMPLE}") from None


def _parse_ring(arg: str, spec: str, kind: str = "ring") -> Torus:
    if not re.fullmatch(r"\d+", arg):
        raise TopologyError(f"{spec}: N must be a whole number of nodes; e.g. {kind}:8")
    n = _whole(arg, spec, "node count")
    if n > MAX_NODES:
        raise TopologyError(f"{spec}: {n} nodes is over the limit of {MAX_NODES} (2**24); use a smaller {kind}")
    return ring(n) if kind == "ring" else switch(n)


def _parse_torus(arg: str, spec: str) -> Torus:
    if not arg:
        raise TopologyError(f"{spec}: give the dimension sizes; {_TORUS_EXAMPLE}")
    shape: list[int] = []
    parts = arg.split("x")
    for i, part in enumerate(parts):
        m = _PART.fullmatch(part)
        if m is None:
            raise TopologyError(
                f"{spec}: part {i + 1} ({part!r}) is not a size K or a power K^D of whole numbers; {_TORUS_EXAMPLE}"
            )
        k = _whole(m.group(1), spec, "size")
        d = 1 if m.group(2) is None else _whole(m.group(2), spec, "exponent")
        if d < 1:
            raise TopologyError(f"{spec}: the exponent in {part!r} must be at least 1; {_TORUS_EXAMPLE}")
        if k < 2:
            # Let Torus word the size error, without expanding e.g. 1^1000000 first.
            Torus([*shape, k], name=spec)
        # With every size >= 2, more than 24 dimensions always exceeds 2**24 nodes.
        if len(shape) + d > MAX_NODES.bit_length():
            raise TopologyError(
                f"{spec}: 2**{len(shape) + d} or more nodes is over the limit of {MAX_NODES} (2**24); "
                "use a smaller shape"
            )
        shape.extend([k] * d)
    return Torus(shape, name=spec)


def parse_topology(spec: str) -> Torus:
    """Turn a topology spec string into a :class:`Torus`; raises :class:`TopologyError` with the fix.

    Specs: ``ring:N``, ``switch:N``, ``torus:AxBxC``, ``torus:K^D`` (mixable: ``torus:4^2x2``) and
    ``astra:FILE.yml``."""
    if not isinstance(spec, str):
        raise TopologyError(f"topology spec must be a string, got {type(spec).__name__}; {_USAGE}")
    text = spec.strip()
    if not text:
        raise TopologyError(f"empty topology spec; {_USAGE}")
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("ring", "switch", "torus", "astra"):
        raise TopologyError(f"unknown topology {text!r}; {_USAGE}")
    if kind == "astra":
        path = arg.strip()
        if not path:
            raise TopologyError(f"{text}: give the network file after 'astra:'; e.g. astra:network.yml")
        return load_astra_network(path)
    arg = re.sub(r"\s+", "", arg).lower()
    canonical = f"{kind}:{arg}"
    if kind in ("ring", "switch"):
        return _parse_ring(arg, canonical, kind)
    return _parse_torus(arg, canonical)


def topology_kinds() -> list[str]:
    """Short help lines describing each accepted spec, for ``nicemu info`` (raises nothing)."""
    return [
        "ring:N           ring of N nodes (N >= 2), e.g. ring:8",
        "switch:N         N nodes on one non-blocking switch, one full-duplex port each, e.g. switch:8",
        "torus:AxBx...    N-D torus, node ids row-major (last dim fastest), e.g. torus:4x4x2",
        "torus:K^D        D-dimensional torus with K nodes per dimension, e.g. torus:8^6 (262,144 nodes)",
        "torus:K^DxB...   powers and sizes mix, e.g. torus:4^2x2 = torus:4x4x2",
        "astra:FILE.yml   ASTRA-sim network YAML with Ring dimensions (bandwidth GB/s, latency ns)",
        f"limits           every dimension >= 2 nodes, at most {MAX_NODES:,} (2**24) nodes in total",
    ]
