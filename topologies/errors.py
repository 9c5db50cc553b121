"""The one exception type the topology package raises for bad user input."""

from __future__ import annotations


class TopologyError(ValueError):
    """One-line, user-facing error about a topology spec or file; the message names the problem and the fix."""
