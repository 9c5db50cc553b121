"""Where a call's bytes and time went: every directed link and node resource, and its stream events.

Off unless asked for (``NicAgents.telemetry is None``: no stage pays anything). When on,
every stage that serves a packet stream reports it here:

* *bytes* it moved (links: payload, and framed bytes with ``link.header_bytes`` per packet);
* *busy time*, the time the resource spent serving: bytes times its microseconds per byte
  (links: framed bytes; PCIe and DRAM: their rate; the NIC engine: ``nic.reduce_GBps``; the host:
  its overhead plus the pass, exactly what ``host_busy_us`` counts). A resource serves one stream
  at a time within the call, so its busy time never exceeds the call's emulated time;
* for the *traced* nodes only, one event per stream: the interval from the moment the resource
  starts on it (first packet in and resource free) to the moment it has served the last byte.

Links are the model's (nic/link.py): one per (node, dimension, direction) on a torus or
ring, one port per node on a switch. A routed transfer (recursive doubling, Rabenseifner, trees)
counts its bytes on every link it crosses, so the links' bytes add up to the call's ``wire_bytes``.
Node ids are the topology's; an agent set that holds nodes ``lo .. lo+n-1`` (one MPI rank) reports
with ``lo`` added, and the ranks' arrays add up to the whole call (each stream is reported once,
by the rank of the node whose resource served it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: node resources besides links, in report order
RESOURCES = ("pcie_read", "pcie_write", "nic", "host", "dram", "nvlink")
#: event kinds: the resources, then links, then the spot protocol's Rx and Tx spots (occupied by a round)
KINDS = (*RESOURCES, "link", "rx_spot", "tx_spot")
READ, WRITE, NIC, HOST, DRAM, NVLINK, LINK, RX_SPOT, TX_SPOT = range(len(KINDS))


def _index(ix, lo: int):
    return ix + lo if lo else ix


def _add(row: np.ndarray, g, values) -> None:
    """``row[g] += values`` for unique node ids ``g`` (a scalar or an array): bincount is twice as fast as
    fancy-index addition on a 262,144-node row, and exact (one value per node)."""
    if np.ndim(g) == 0:
        row[g] += values
        return
    np.add(row, np.bincount(g, np.broadcast_to(np.asarray(values, dtype=np.float64), np.shape(g)),
                            minlength=len(row)), out=row)


def _by_node(links: np.ndarray) -> np.ndarray:
    """(dims, 2, nodes) accumulation layout to LinkStats' (nodes, dims, 2)."""
    return np.ascontiguousarray(links.transpose(2, 0, 1))


class Telemetry:
    """Accumulates one call's telemetry for the nodes of one agent set (see the module docstring).

    The stages report bytes only; busy times follow at the end from the bytes and each resource's
    rate (links, PCIe, DRAM), or are the agents' own busy counters (host, NIC engine), so watching
    adds one bincount per stage and step.
    """

    def __init__(self, shape: tuple[int, ...], strides: tuple[int, ...], network_ndim: int, switched: bool,
                 link_us_per_B: list[float], header_bytes: float = 0.0, lo: int = 0,
                 traced: np.ndarray | None = None) -> None:
        """``shape``/``strides``: the topology's; ``network_ndim``: its dimensions with links;
        ``link_us_per_B``: each dimension's service time per byte; ``header_bytes``: framing per packet;
        ``lo``: the agent set's first node; ``traced``: bool per node (None: no events)."""
        self.shape, self.strides = tuple(shape), tuple(strides)
        self.nodes = int(np.prod(shape))
        self.ndim = network_ndim
        self.switched = switched
        self.link_us_per_B = np.asarray(link_us_per_B[:network_ndim], dtype=np.float64)
        self.lo = lo
        self.traced = traced
        # (dims, 2, nodes): each link row contiguous
        self.link_bytes = np.zeros((self.ndim, 2, self.nodes))
        self.link_framed = np.zeros((self.ndim, 2, self.nodes)) if header_bytes else self.link_bytes
        self.bytes = np.zeros((len(RESOURCES), self.nodes))
        self.events: list[tuple] = []
        #: the step being timed (set by the executor): its number and which side of it runs
        self.step = -1
        self.side = 0            # 0: the sender's half, 1: the receiver's

    @property
    def tracing(self) -> bool:
        return self.traced is not None

    def reset(self) -> None:
        for arr in (self.link_bytes, self.link_framed, self.bytes):
            arr.fill(0.0)
        self.events.clear()
        self.step, self.side = -1, 0

    # ---- what the stages report ------------------------------------------------------------

    def serve(self, kind: int, ix, nbytes, start, end) -> None:
        """Resource ``RESOURCES[kind]`` of nodes ``ix`` (unique) served ``nbytes`` from ``start`` to ``end``."""
        g = _index(ix, self.lo)
        _add(self.bytes[kind], g, nbytes)
        if self.traced is not None:
            self._event(kind, g, 0, start, end, nbytes)

    def link(self, ix, dim: int, slot: int, nbytes, framed, start, end) -> None:
        """The links (``ix``, ``dim``, ``slot``) carried one stream each."""
        g = _index(ix, self.lo)
        _add(self.link_bytes[dim, slot], g, nbytes)
        if self.link_framed is not self.link_bytes:
            _add(self.link_framed[dim, slot], g, framed)
        if self.traced is not None:
            self._event(LINK, g, 2 * dim + slot, start, end, nbytes)

    def routed(self, ix, route, nbytes, framed, start, end) -> None:
        """Transfers routed over several links (collectives/schedules/routing.py ``Route``): every link
        crossed counts the bytes; the trace shows the first link (the sender's port)."""
        src = np.atleast_1d(_index(ix, self.lo)).astype(np.int64)
        nbytes = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src.shape)
        framed = np.broadcast_to(np.asarray(framed, dtype=np.float64), src.shape)
        hops = np.diff(route.cum, axis=1, prepend=0)
        node = src.copy()
        for d in range(min(hops.shape[1], self.ndim)):
            h = hops[:, d]
            if not h.any():
                continue
            dirs = route.dirs[:, d].astype(np.int64)
            slot = np.zeros(len(src), dtype=np.int64) if self.switched else (dirs < 0).astype(np.int64)
            k, stride = self.shape[d], self.strides[d]
            for s in range(int(h.max())):
                m = h > s
                at = node[m]
                where = slot[m] * self.nodes + at
                self.link_bytes[d] += np.bincount(where, nbytes[m], minlength=2 * self.nodes).reshape(2, -1)
                if self.link_framed is not self.link_bytes:
                    self.link_framed[d] += np.bincount(where, framed[m], minlength=2 * self.nodes).reshape(2, -1)
                c = (at // stride) % k
                node[m] = at + (((c + dirs[m]) % k) - c) * stride
        if self.traced is not None:
            slot0 = (np.zeros(len(src), dtype=np.int64) if self.switched
                     else (np.asarray(route.first_dir) < 0).astype(np.int64))
            self._event(LINK, src, 2 * np.asarray(route.first_dim, dtype=np.int64) + slot0, start, end, nbytes)

    def _event(self, kind: int, g, lane, start, end, nbytes) -> None:
        """Keep the streams of traced nodes that moved bytes."""
        g = np.atleast_1d(g)
        n = len(g)
        nbytes = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), n)
        m = self.traced[g] & (nbytes > 0)
        if not m.any():
            return
        self.events.append((kind, g[m], np.broadcast_to(np.asarray(lane, dtype=np.int64), n)[m],
                            np.broadcast_to(np.asarray(start, dtype=np.float64), n)[m],
                            np.broadcast_to(np.asarray(end, dtype=np.float64), n)[m],
                            nbytes[m], self.step, self.side))

    # ---- results -----------------------------------------------------------------------------

    def event_table(self) -> dict[str, np.ndarray]:
        """The events as columns: kind, node, lane, start, end, bytes, step, side."""
        cols = {k: [] for k in ("kind", "node", "lane", "start", "end", "bytes", "step", "side")}
        for kind, g, lane, start, end, nbytes, step, side in self.events:
            n = len(g)
            cols["kind"].append(np.full(n, kind, dtype=np.int64))
            cols["node"].append(np.asarray(g, dtype=np.int64))
            cols["lane"].append(np.asarray(lane, dtype=np.int64))
            cols["start"].append(start)
            cols["end"].append(end)
            cols["bytes"].append(nbytes)
            cols["step"].append(np.full(n, step, dtype=np.int64))
            cols["side"].append(np.full(n, side, dtype=np.int64))
        return {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.float64 if k in ("start", "end", "bytes")
                                                           else np.int64)) for k, v in cols.items()}

    def stats(self, emulated_us: float, busy: np.ndarray) -> LinkStats:
        """The call's statistics: ``emulated_us`` is its span (the utilisation's denominator), ``busy`` the
        resources' busy time per node, (len(RESOURCES), nodes)."""
        framed = _by_node(self.link_framed)
        return LinkStats(self.shape, self.strides, self.ndim, self.switched, float(emulated_us),
                         _by_node(self.link_bytes), framed, framed * self.link_us_per_B[None, :, None],
                         self.bytes.copy(), busy)


@dataclass
class LinkStats:
    """Per-link and per-resource telemetry of one call (``Timing.telemetry``, ``Result.telemetry``).

    ``link_bytes``, ``link_framed`` and ``link_busy_us`` are (nodes, dims, 2) arrays indexed by the
    sending node, the dimension and the direction slot (0: +1, 1: -1; a switch port uses slot 0 only);
    ``resource_bytes`` and ``resource_busy_us`` are (len(RESOURCES), nodes). ``events`` holds the trace
    events when the call was traced (``Telemetry.event_table`` columns plus ``steps``).
    """

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    ndim: int
    switched: bool
    emulated_us: float
    link_bytes: np.ndarray
    link_framed: np.ndarray
    link_busy_us: np.ndarray
    resource_bytes: np.ndarray
    resource_busy_us: np.ndarray
    events: dict | None = field(default=None, repr=False)

    @property
    def nodes(self) -> int:
        return self.link_bytes.shape[0]

    def write_trace(self, path: str, label: str = "call", algo: str = "", nbytes: int = 0) -> int:
        """Write this call's trace as Chrome trace-event JSON (nic/trace.py); returns the event count.
        Needs a traced call (``Emulator(trace_nodes=...)``, ``model_time(..., trace_nodes=...)``)."""
        from nicemu.nic.trace import write_trace
        if self.events is None:
            raise ValueError("this call was not traced: ask for trace_nodes to keep its events")
        return write_trace(path, [{"label": label, "algo": algo, "bytes": nbytes, "stats": self}])

    def utilization(self, busy: np.ndarray) -> np.ndarray:
        span = self.emulated_us
        if span <= 0.0:
            return np.zeros_like(busy)
        return np.minimum(busy / span, 1.0)

    def link_table(self) -> dict[str, np.ndarray]:
        """Every directed link as columns: src, dst (-1: the switch), dim, dir, bytes, framed_bytes,
        busy_us, utilization; ordered by dimension, direction (+1 first), then node."""
        nodes = np.arange(self.nodes, dtype=np.int64)
        cols: dict[str, list] = {k: [] for k in ("src", "dst", "dim", "dir", "bytes", "framed_bytes",
                                                 "busy_us", "utilization")}
        for d in range(self.ndim):
            for slot, direction in (((0, 1),) if self.switched else ((0, 1), (1, -1))):
                k, stride = self.shape[d], self.strides[d]
                c = (nodes // stride) % k
                dst = np.full(self.nodes, -1, dtype=np.int64) if self.switched else \
                    nodes + (((c + direction) % k) - c) * stride
                busy = self.link_busy_us[:, d, slot]
                cols["src"].append(nodes)
                cols["dst"].append(dst)
                cols["dim"].append(np.full(self.nodes, d, dtype=np.int64))
                cols["dir"].append(np.full(self.nodes, direction, dtype=np.int64))
                cols["bytes"].append(self.link_bytes[:, d, slot])
                cols["framed_bytes"].append(self.link_framed[:, d, slot])
                cols["busy_us"].append(busy)
                cols["utilization"].append(self.utilization(busy))
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}

    def resource_table(self) -> dict[str, np.ndarray]:
        """Every node resource as columns: node, resource, bytes, busy_us, utilization."""
        nodes = np.arange(self.nodes, dtype=np.int64)
        kinds = len(RESOURCES)
        busy = self.resource_busy_us.ravel()
        return {"node": np.tile(nodes, kinds), "resource": np.repeat(np.arange(kinds), self.nodes),
                "bytes": self.resource_bytes.ravel(), "busy_us": busy, "utilization": self.utilization(busy)}

    def summary(self, hottest: int = 3) -> list[dict]:
        """Per dimension and direction: links, bytes, utilisation min/mean/max and the hottest links."""
        out = []
        for d in range(self.ndim):
            for slot, direction in (((0, 1),) if self.switched else ((0, 1), (1, -1))):
                busy = self.link_busy_us[:, d, slot]
                util = self.utilization(busy)
                nbytes = self.link_bytes[:, d, slot]
                top = np.argsort(-util, kind="stable")[:hottest]
                out.append({"dim": d, "dir": direction, "links": int(self.nodes),
                            "bytes": int(nbytes.sum()), "util_min": float(util.min()) if util.size else 0.0,
                            "util_mean": float(util.mean()) if util.size else 0.0,
                            "util_max": float(util.max(initial=0.0)),
                            "hottest": [{"src": int(n), "utilization": float(util[n]), "bytes": int(nbytes[n])}
                                        for n in top if util[n] > 0.0]})
        return out
