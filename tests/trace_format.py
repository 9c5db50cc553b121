"""The Chrome trace-event rules the viewers (Perfetto, chrome://tracing) rely on, for the trace tests."""

from __future__ import annotations

import math


def check_trace_format(doc):
    """The Chrome trace-event rules the viewers rely on: required fields, non-negative durations,
    and the complete events of one track either nested or disjoint."""
    assert isinstance(doc["traceEvents"], list)
    tracks: dict = {}
    for e in doc["traceEvents"]:
        assert {"ph", "name", "pid"} <= set(e)
        assert isinstance(e["pid"], int)
        if e["ph"] == "M":
            assert "args" in e and "name" in e["args"] or "sort_index" in e["args"]
            continue
        assert e["ph"] == "X"
        assert isinstance(e["tid"], int) and math.isfinite(e["ts"]) and e["ts"] >= 0 and e["dur"] >= 0
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends: list[float] = []
        for start, end in spans:
            while open_ends and open_ends[-1] <= start + 1e-9:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1] + 1e-9, "partly overlapping events on one track"
            open_ends.append(end)
    return tracks
