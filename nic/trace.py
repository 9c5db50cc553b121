"""Chrome trace-event JSON of traced calls: what Perfetto (ui.perfetto.dev) and chrome://tracing open.

Timestamps are emulated microseconds, the unit of the format. Every traced call is
drawn from time 0, so calls of one run (algorithms, sizes) line up for comparison:
each (call, node) pair is one process (a track group named ``ring 64M · node 3``)
and each resource of the node one thread (a track) in it:

* ``link d0 +1 -> 1``: the node's link in dimension 0, direction +1, towards node 1
  (``-> switch`` on a switch); a routed transfer shows on the first link it takes;
* ``PCIe read`` (host to NIC) and ``PCIe write`` (NIC to host);
* ``NIC engine`` (the ComputeEnhancer's reductions);
* ``host CPU`` (notification overhead plus the pass);
* ``host DRAM`` (when the profile charges host memory);
* the spot protocol (sparse algorithms): ``host CPU thread t`` (a host's t-th thread, t > 0),
  ``Rx spot s`` (the aggregator's s-th Rx spot, from a round's first record in it to the moment
  they are all consumed) and ``Tx spot s.t`` (the s-th slot's t-th Tx spot, from the start of the
  aggregation into it to the return of the last reader's credit).

One complete event (``"ph": "X"``) per stream a resource served: from the moment it
started on the stream to the moment it had served its last byte. Its args carry the
step number, phase and ring step (sparse algorithms: the protocol round, its half, up or
down, and its slots), the dimension and direction, the engine, the chunk (element offset
and bytes), the stream's bytes, the algorithm and the call's size.
A resource serves one stream at a time, so the events of a track never overlap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from nicemu.nic.telemetry import HOST, KINDS, LINK, RX_SPOT, TX_SPOT, LinkStats

TRACK_NAMES = {"pcie_read": "PCIe read (host to NIC)", "pcie_write": "PCIe write (NIC to host)",
               "nic": "NIC engine", "host": "host CPU", "dram": "host DRAM",
               "nvlink": "NVLink port (to the node's ranks)"}
PHASES = {"rs": "reduce-scatter", "ag": "allgather", "rd": "recursive doubling", "fold": "fold-in",
          "unfold": "fold-out", "reduce": "tree reduce", "bcast": "tree broadcast", "scatter": "scatter",
          "gather": "gather", "chain": "chain", "a2a": "all-to-all",
          "up": "upstream round", "down": "downstream round"}
#: roughly what one event takes in the file (for the size warning)
EVENT_BYTES = 260
#: events beyond which the file is slow to open in a browser
LARGE_TRACE_EVENTS = 1_000_000
#: events encoded at a time when writing
WRITE_CHUNK = 20_000


def count_events(stats: LinkStats) -> int:
    return 0 if stats.events is None else len(stats.events["kind"])


def _track(kind: int, lane: int, node: int, stats: LinkStats) -> tuple[int, str]:
    """(thread id, name) of a resource of ``node``; links sort after the node's own resources, spots
    after the links."""
    if kind == RX_SPOT:
        return 1000 + lane, f"Rx spot {lane}"
    if kind == TX_SPOT:
        tx = max(int((stats.events or {}).get("tx_spots", 1)), 1)
        return 1_000_000 + lane, f"Tx spot {lane // tx}.{lane % tx}"
    if kind == HOST and lane:
        return 100 + lane, f"{TRACK_NAMES['host']} thread {lane}"
    if kind != LINK:
        return kind + 1, TRACK_NAMES[KINDS[kind]]
    dim, slot = divmod(lane, 2)
    direction = -1 if slot else 1
    if stats.switched:
        return 10 + lane, "link -> switch"
    k, stride = stats.shape[dim], stats.strides[dim]
    c = (node // stride) % k
    dst = node + (((c + direction) % k) - c) * stride
    return 10 + lane, f"link d{dim} {direction:+d} -> {dst}"


def trace_events(calls: Sequence[dict], first_pid: int = 1) -> list[dict]:
    """Trace events of ``calls``: dicts with ``label`` (``ring 64M``), ``algo``, ``bytes`` and ``stats``
    (a traced ``LinkStats``). Process ids count up from ``first_pid``."""
    out: list[dict] = []
    pid = first_pid
    for order, call in enumerate(calls):
        stats: LinkStats = call["stats"]
        ev = stats.events
        if ev is None:
            continue
        steps = ev.get("steps") or []
        nodes = np.unique(ev["node"]).tolist()
        pids = {}
        for n in nodes:
            pids[n] = pid
            out.append({"ph": "M", "name": "process_name", "pid": pid,
                        "args": {"name": f"{call['label']} · node {n}"}})
            out.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                        "args": {"sort_index": order * 1_000_000 + n}})
            pid += 1
        named: set = set()
        kinds, lanes, where = ev["kind"].tolist(), ev["lane"].tolist(), ev["node"].tolist()
        starts, ends, sizes = ev["start"].tolist(), ev["end"].tolist(), ev["bytes"].tolist()
        numbers, sides = ev["step"].tolist(), ev["side"].tolist()
        for kind, lane, node, start, end, nbytes, number, side in zip(kinds, lanes, where, starts, ends, sizes,
                                                                     numbers, sides):
            tid, tname = _track(kind, lane, node, stats)
            if (node, tid) not in named:
                named.add((node, tid))
                out.append({"ph": "M", "name": "thread_name", "pid": pids[node], "tid": tid,
                            "args": {"name": tname}})
                out.append({"ph": "M", "name": "thread_sort_index", "pid": pids[node], "tid": tid,
                            "args": {"sort_index": tid}})
            meta = steps[number] if 0 <= number < len(steps) else {}
            args = {"algo": call["algo"], "size_bytes": call["bytes"], "step": number, "bytes": int(nbytes)}
            name = "stream"
            if meta and "sides" in meta:        # a round of the spot protocol: its upstream or downstream half
                phase = meta["sides"][side]
                name = f"{PHASES.get(phase, phase)} {meta['index']}"
                args.update(phase=phase, round=meta["index"], slots=meta["slots"])
            elif meta:
                name = f"{PHASES.get(meta['phase'], meta['phase'])} {meta['index']}"
                args.update(phase=meta["phase"], ring_step=meta["index"], engine=meta["engine"],
                            reduce=meta["reduce"])
                if not meta["routed"] and not meta["local"]:
                    args.update(dim=meta["dim"], dir=meta["dir"])
                chunk = meta.get("send" if side == 0 else "recv", {}).get(node)
                if chunk is not None:
                    args.update(chunk_offset=chunk[0], chunk_bytes=chunk[1])
            out.append({"ph": "X", "name": name, "cat": KINDS[kind], "pid": pids[node], "tid": tid,
                        "ts": start, "dur": max(end - start, 0.0), "args": args})
    return out


def write_trace(path: str, calls: Sequence[dict], extra: Sequence[dict] = (), meta: dict | None = None) -> int:
    """Write the Chrome trace of ``calls`` (see :func:`trace_events`) plus ``extra`` events; returns the
    number of complete events."""
    events = trace_events(calls) + list(extra)
    for e in events:
        if "ts" in e and not math.isfinite(e["ts"]):
            raise ValueError(f"trace event {e['name']!r} has a non-finite time")
    other = {"generator": "nicemu", "time": "emulated microseconds", **(meta or {})}
    compact = (",", ":")
    # json.dump(doc, f) would encode in pure Python; json.dumps of slices uses the C encoder (5x faster on
    # large traces) and writes the same bytes: {"traceEvents":[...],"displayTimeUnit":"ns","otherData":{...}}
    with open(path, "w") as f:
        f.write('{"traceEvents":[')
        for i in range(0, len(events), WRITE_CHUNK):
            if i:
                f.write(",")
            f.write(json.dumps(events[i:i + WRITE_CHUNK], separators=compact)[1:-1])
        f.write('],"displayTimeUnit":"ns","otherData":' + json.dumps(other, separators=compact) + "}")
    return sum(1 for e in events if e.get("ph") == "X")
