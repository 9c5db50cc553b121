"""Timing of point-to-point transfers (collectives/schedules/p2p.py), shared by both executors.

The sender half (:func:`arrivals`) pushes each transfer's packet stream through
the sender's PCIe read and every link of its route; the receiver half
(:func:`receive_done`) through the receiver's PCIe write and, on the host path,
the host's completion. docs/model.md §14 gives the closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.step_timing import link_params
from nicemu.collectives.schedules.p2p import check_pairs, route
from nicemu.nic.profile import Profile
from nicemu.nic.streams import stage, us_per_byte
from nicemu.topologies import Torus


@dataclass(frozen=True)
class Arrival:
    """A transfer's packet stream at the receiver's NIC (before its PCIe write)."""

    first_us: float
    last_us: float
    hops: int
    landed: bool = False    # over NVLink: already in the receiver's memory (no PCIe write, no host)


def over_nvlink(topology: Torus, profile: Profile, a: int, b: int) -> bool:
    """Two ranks of one node on an NVLink-class fabric (``intra_node.nvlink``, docs/model.md §19.5)."""
    p = topology.ranks_per_node
    return p > 1 and profile.intra_node.nvlink and a // p == b // p


def arrivals(topology: Torus, profile: Profile, pairs: list[tuple[int, int]], nbytes: int,
             path: str) -> list[Arrival]:
    """Sender half of every transfer, in order: DMA read, then each link (shared links serialise). Between
    two accelerators of one NVLink node: the sender's NVLink port, then the receiver's, GPU to GPU."""
    check_pairs(topology, pairs, nbytes, path)
    pkt = profile.nic.packet_bytes
    pcie_rate, pcie_lat = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    links = [(us_per_byte(bw), lat) for bw, lat in link_params(topology, profile)]
    post_us = profile.host.overhead_us if path == "host" else 0.0
    read_free: dict[int, float] = {}
    link_free: dict[tuple[int, int, int], float] = {}
    nv_rate, nv_lat = us_per_byte(profile.intra_node.bandwidth_GBps), profile.intra_node.latency_us
    nv_free: dict[tuple[str, int], float] = {}
    out = []
    for a, b in pairs:
        if over_nvlink(topology, profile, a, b):
            first, last, busy = stage(0.0, 0.0, nbytes, nv_free.get(("out", a), 0.0), nv_rate, nv_lat, pkt)
            nv_free[("out", a)] = busy
            first, last, busy = stage(first, last, nbytes, nv_free.get(("in", b), 0.0), nv_rate, 0.0, pkt)
            nv_free[("in", b)] = busy
            out.append(Arrival(first, last, 0, True))
            continue
        ready = post_us
        first, last, busy = stage(ready, ready, nbytes, read_free.get(a, 0.0), pcie_rate, pcie_lat, pkt)
        read_free[a] = busy
        hops = route(topology, a, b)
        for hop in hops:
            rate, lat = links[hop[1]]
            first, last, busy = stage(first, last, nbytes, link_free.get(hop, 0.0), rate, lat, pkt,
                                      profile.link.header_bytes)
            link_free[hop] = busy
        out.append(Arrival(first, last, len(hops)))
    return out


def receive_done(profile: Profile, arrived: list[tuple[int, Arrival]], nbytes: int, path: str) -> list[float]:
    """Receiver half, in order: DMA write per receiving node, then the host's completion on the host path."""
    return receive_windows(profile, arrived, nbytes, path)[0]


def receive_windows(profile: Profile, arrived: list[tuple[int, Arrival]], nbytes: int, path: str
                    ) -> tuple[list[float], list[tuple[float, float] | None]]:
    """:func:`receive_done`, and each DMA write's window on the receiver's PCIe (from the moment the engine
    starts on it to the moment it is free again; None over NVLink), for the shared fabric."""
    pkt = profile.nic.packet_bytes
    rate, lat = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    write_free: dict[int, float] = {}
    done, windows = [], []
    for node, arr in arrived:
        if arr.landed:
            done.append(arr.last_us)
            windows.append(None)
            continue
        free = write_free.get(node, 0.0)
        _, last, busy = stage(arr.first_us, arr.last_us, nbytes, free, rate, lat, pkt)
        write_free[node] = busy
        done.append(last + (profile.host.overhead_us if path == "host" else 0.0))
        windows.append((max(arr.first_us, free), busy))
    return done, windows


def host_busy(profile: Profile, pairs: list[tuple[int, int]], path: str, topology: Torus | None = None) -> float:
    """Busiest host's time: one overhead per transfer it sends or receives on the host path (NVLink transfers
    inside a node involve no host)."""
    if path != "host" or not pairs:
        return 0.0
    per_node: dict[int, int] = {}
    for a, b in pairs:
        if topology is not None and over_nvlink(topology, profile, a, b):
            continue
        per_node[a] = per_node.get(a, 0) + 1
        per_node[b] = per_node.get(b, 0) + 1
    return max(per_node.values(), default=0) * profile.host.overhead_us


def p2p_time(topology: Torus, profile: Profile, pairs: list[tuple[int, int]], nbytes: int,
             path: str) -> Timing:
    """Emulated time of transfers issued together, without data (the model executor)."""
    arr = arrivals(topology, profile, pairs, nbytes, path)
    done = receive_done(profile, [(b, x) for (_, b), x in zip(pairs, arr)], nbytes, path)
    wire = sum(x.hops for x in arr) * nbytes
    return Timing(max(done, default=0.0), np.asarray(done), host_busy(profile, pairs, path, topology), 0.0, wire)


