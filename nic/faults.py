"""Link faults and go-back-N retransmission, in closed form per transfer.

``--faults drop=P,corrupt=Q,seed=S[,link=A->B]`` makes every packet attempt on
a directed link fail with probability ``e = P + (1-P)·Q``: dropped with
probability P (the sender learns of it when its retransmission timeout
expires), otherwise corrupted with probability Q (the receiver's CRC32 check
fails and it NACKs at once). The NIC then goes back to the failed packet and
resends from there (go-back-N), so every failure costs a detection delay plus
the failed packet's own transmission again, and the packets in flight behind
it are resent too (docs/model.md §11).

The draws are a pure function of (seed, call, step, directed link, event
number): a counter-based hash, evaluated with numpy over all transfers of a
step at once. Whichever executor and whichever rank evaluates a transfer gets
the same events, so emulated times stay bit-identical. Per transfer the cost
is O(events), never O(packets).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from nicemu.errors import FaultSpecError

#: the largest per-packet probability accepted for drop and for corrupt
MAX_PROBABILITY = 0.5
_LINK = re.compile(r"\s*(\d+)\s*->\s*(\d+)\s*")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class FaultSpec:
    """What ``--faults`` asked for: per-packet probabilities, the seed and the faulty links."""

    drop: float = 0.0
    corrupt: float = 0.0
    seed: int = 0
    links: tuple[tuple[int, int], ...] = ()   # directed (src, dst) pairs; empty means every link

    @property
    def active(self) -> bool:
        return self.drop > 0.0 or self.corrupt > 0.0

    @property
    def fail_probability(self) -> float:
        """Probability that one attempt of one packet fails (dropped, or delivered corrupted)."""
        return self.drop + (1.0 - self.drop) * self.corrupt

    def describe(self) -> str:
        where = ",".join(f"link={a}->{b}" for a, b in self.links) or "every link"
        return f"drop={self.drop:g},corrupt={self.corrupt:g},seed={self.seed} on {where}"

    def check_nodes(self, nodes: int) -> None:
        """Named links must be node ids of the topology."""
        for a, b in self.links:
            if a >= nodes or b >= nodes:
                raise FaultSpecError(f"--faults link={a}->{b}: the topology has nodes 0..{nodes - 1}; "
                                     f"name a link between existing nodes")


def _probability(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FaultSpecError(f"--faults {key}={raw}: not a number; e.g. {key}=1e-3") from None
    if not (0.0 <= value <= MAX_PROBABILITY):
        raise FaultSpecError(f"--faults {key}={raw}: a per-packet probability must be in "
                             f"[0, {MAX_PROBABILITY:g}]; e.g. {key}=1e-3")
    return value


def parse_faults(text: str | None) -> FaultSpec | None:
    """``drop=P,corrupt=Q,seed=S[,link=A->B ...]`` -> FaultSpec; None or "" -> None.

    Every problem is a one-line :class:`FaultSpecError` naming the part and the fix.
    """
    if text is None or not text.strip():
        return None
    values: dict[str, object] = {}
    links: list[tuple[int, int]] = []
    for part in text.split(","):
        if "=" not in part:
            raise FaultSpecError(f"--faults: '{part.strip()}' is not key=value; write e.g. "
                                 f"drop=1e-3,corrupt=1e-3,seed=1[,link=3->4]")
        key, raw = (s.strip() for s in part.split("=", 1))
        if key == "link":
            m = _LINK.fullmatch(raw)
            if m is None:
                raise FaultSpecError(f"--faults link={raw}: write a directed link as SRC->DST, "
                                     f"e.g. link=3->4")
            a, b = int(m.group(1)), int(m.group(2))
            if a == b:
                raise FaultSpecError(f"--faults link={raw}: a link joins two different nodes")
            links.append((a, b))
            continue
        if key not in ("drop", "corrupt", "seed"):
            raise FaultSpecError(f"--faults: unknown key '{key}'; use drop, corrupt, seed and link")
        if key in values:
            raise FaultSpecError(f"--faults: '{key}' given twice; give it once")
        if key == "seed":
            try:
                seed = int(raw)
            except ValueError:
                raise FaultSpecError(f"--faults seed={raw}: the seed must be a non-negative "
                                     f"integer, e.g. seed=1") from None
            if seed < 0 or seed >= 2**63:
                raise FaultSpecError(f"--faults seed={raw}: the seed must be in [0, 2^63)")
            values[key] = seed
        else:
            values[key] = _probability(key, raw)
    if "drop" not in values and "corrupt" not in values:
        raise FaultSpecError("--faults: give drop=P and/or corrupt=Q, e.g. drop=1e-3,corrupt=1e-3")
    return FaultSpec(float(values.get("drop", 0.0)), float(values.get("corrupt", 0.0)),
                     int(values.get("seed", 0)), tuple(dict.fromkeys(links)))


# ---- counter-based draws -------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective avalanche of 64-bit words (wrapping uint64 arithmetic)."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def _absorb(h: np.ndarray, value) -> np.ndarray:
    return _mix(h ^ np.asarray(value, dtype=np.int64).astype(np.uint64))


def uniforms(key: np.ndarray, event: int, lane: int) -> np.ndarray:
    """Uniform draws in [0, 1) for every transfer ``key``, event number and lane (53 random bits)."""
    h = _absorb(_absorb(key, event), lane)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def transfer_keys(seed: int, call: int, step, src, dst) -> np.ndarray:
    """One 64-bit key per transfer: hashes (seed, call, step, src, dst) in that order.

    ``step`` is one number, or one per transfer (the sparse records of a round).
    """
    n = np.size(src)
    h = np.full(n, seed, dtype=np.int64).astype(np.uint64)
    for value in (call, step):
        h = _absorb(h, np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)))
    return _absorb(_absorb(h, np.atleast_1d(src)), np.atleast_1d(dst))


# ---- closed-form cost -----------------------------------------------------------------


@dataclass
class TransferFaults:
    """Outcome of the faults of a set of transfers (arrays over the transfers)."""

    drops: np.ndarray            # dropped attempts
    corruptions: np.ndarray      # corrupted attempts
    retransmit_bytes: np.ndarray  # bytes sent again (the failed packet and the ones behind it)
    delay_first_us: np.ndarray   # added to the first packet's arrival
    delay_us: np.ndarray         # added to the last packet's arrival and to the link's busy-until
    events: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    #: per event round j: (transfer mask, failed packet index, is_drop), for the real-data protocol

    @property
    def any(self) -> bool:
        return bool(self.events)


def transfer_faults(spec: FaultSpec, rto_us: float, packet_bytes: int, us_per_B: float,
                    latency_us: float, call: int, step, src, dst, nbytes,
                    header_bytes: float = 0.0) -> TransferFaults:
    """Go-back-N cost of every transfer of one step on links (src -> dst), in closed form.

    Attempts are a Bernoulli sequence with failure probability ``e``; a failure does not
    advance the packet index, so the number of good packets before the next failure is
    geometric: ``gap = floor(log(1-u) / log(1-e))``. Each failure of packet ``i`` costs
    ``D + s_i`` (``D = rto_us`` for a drop, ``2·latency_us`` for a corruption caught by
    the receiver's CRC and NACKed; ``s_i`` the packet's serialisation) and resends
    ``s_i`` plus the packets sent while the sender did not yet know:
    ``min(floor(D / (P·β)), k-1-i)`` of them. Serialisation counts every packet's
    ``header_bytes``; ``retransmit_bytes`` counts payload.
    """
    src = np.atleast_1d(np.asarray(src, dtype=np.int64))
    dst = np.atleast_1d(np.asarray(dst, dtype=np.int64))
    size = np.atleast_1d(np.asarray(nbytes, dtype=np.int64))
    n = len(src)
    zeros = np.zeros(n)
    out = TransferFaults(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                         np.zeros(n, dtype=np.int64), zeros.copy(), zeros.copy())
    e = spec.fail_probability
    if e <= 0.0 or n == 0:
        return out
    packets = -(-size // packet_bytes)
    live = packets > 0
    if spec.links:
        on = np.zeros(n, dtype=bool)
        for a, b in spec.links:
            on |= (src == a) & (dst == b)
        live &= on
    if not live.any():
        return out
    keys = transfer_keys(spec.seed, call, step, src, dst)
    last_size = size - (packets - 1) * packet_bytes
    log_ok = math.log1p(-e)
    drop_share = spec.drop / e
    full_us = (packet_bytes + header_bytes) * us_per_B
    pos = np.zeros(n, dtype=np.int64)
    j = 0
    while True:
        u = uniforms(keys, j, 0)
        gap = np.floor(np.log1p(-u) / log_ok)
        gap = np.minimum(gap, 2.0**62).astype(np.int64)
        pos = np.where(live, pos + gap, pos)
        live &= pos < packets
        if not live.any():
            break
        is_drop = uniforms(keys, j, 1) < drop_share
        i = np.where(live, pos, 0)
        pkt = np.where(i == packets - 1, last_size, packet_bytes)
        detect = np.where(is_drop, rto_us, 2.0 * latency_us)
        cost = detect + (pkt + header_bytes) * us_per_B
        behind = packets - 1 - i
        if full_us > 0.0:
            inflight = np.minimum(np.floor(detect / full_us), behind.astype(np.float64)).astype(np.int64)
        else:
            inflight = behind
        # the in-flight packets are full, except the stream's last one if they reach it
        resent = pkt + inflight * packet_bytes - np.where(
            (inflight > 0) & (i + inflight == packets - 1), packet_bytes - last_size, 0)
        out.delay_us = np.where(live, out.delay_us + cost, out.delay_us)
        out.delay_first_us = np.where(live & (i == 0), out.delay_first_us + cost, out.delay_first_us)
        out.drops += live & is_drop
        out.corruptions += live & ~is_drop
        out.retransmit_bytes += np.where(live, resent, 0)
        out.events.append((live.copy(), i, is_drop))
        j += 1
    return out


def expected_delay_us(spec: FaultSpec, rto_us: float, packets: int, packet_us: float,
                      latency_us: float) -> float:
    """Mean added time of a stream of ``packets`` equal packets: failures x mean cost.

    The expected number of failed attempts before ``k`` successes is ``k·e/(1-e)``.
    """
    e = spec.fail_probability
    if e <= 0:
        return 0.0
    detect = (spec.drop * rto_us + (1 - spec.drop) * spec.corrupt * 2 * latency_us) / e
    return packets * e / (1 - e) * (detect + packet_us)
