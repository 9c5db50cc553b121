"""Rings: the 1-D special case of a torus, kept as its own constructor for clarity."""

from __future__ import annotations

import operator

from nicemu.errors import TopologyError

from .torus import Torus


def ring(n: int) -> Torus:
    """Build a ring of ``n`` nodes; a 1-D torus so every algorithm handles it the same way.

    Raises :class:`TopologyError` unless ``n`` is a whole number from 2 to 2**24."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TopologyError(
            f"ring:{n}: the node count must be a whole number; use ring:N, e.g. ring:8"
        ) from None
    if n < 2:
        raise TopologyError(f"ring:{n}: a ring needs at least 2 nodes; use ring:N with N >= 2")
    return Torus((n,), name=f"ring:{n}")
