"""Packet streams in closed form.

A stream of ``k`` packets is never simulated packet by packet. It is described
by two times: when its *first* packet is complete at some point of the data
path, and when its *last* byte is. Between them the packets are spaced by the
slowest stage they went through, so pushing a stream through one more stage is
O(1) whatever the packet count (docs/model.md §2).

All functions are plain numpy arithmetic and work elementwise on scalars or on
arrays of streams, so the model executor can push every node's stream through a
stage in one call while the MPI executor pushes one. Both do the same floating
point operations in the same order, which is what makes their emulated times
agree bit for bit.

Times are in microseconds, sizes in bytes, rates as microseconds per byte.
"""

from __future__ import annotations

import math

import numpy as np

ArrayLike = float | np.ndarray


def us_per_byte(bandwidth_GBps: float) -> float:
    """Service time of one byte at a rate in GB/s (1e9 B/s); 0 for an infinite rate."""
    if math.isinf(bandwidth_GBps):
        return 0.0
    return 1.0 / (bandwidth_GBps * 1e3)


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray)


def vmax(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Elementwise max; plain Python for scalars (the one-node-per-rank fast path).

    Both branches return one of their inputs unchanged, so they agree bit for bit.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


#: (nbytes array, packet size, result) of the latest calls, newest last: the stages of one step (link, PCIe,
#: DRAM, the NIC's read-back) see a few size arrays in turn
_split_cache: list = []
_SPLIT_CACHE_SIZE = 4


def packet_split(nbytes: ArrayLike, packet_bytes: int) -> tuple[ArrayLike, ArrayLike]:
    """Sizes of the first and of the last packet of a stream of ``nbytes``.

    The last packet carries the remainder (or a full packet); a stream that fits
    in one packet has first == last == nbytes. An empty stream has both 0.
    The stages of one step see the same few ``nbytes`` arrays, so the latest results
    are kept (sizes are exact integers, so integer arithmetic gives the same floats).
    """
    size = float(packet_bytes)
    if not _is_array(nbytes):
        n = float(nbytes)
        rem = n % size
        return min(n, size), (size if rem == 0 and n > 0 else rem)
    for entry in _split_cache:
        if entry[0] is nbytes and entry[1] == packet_bytes:
            return entry[2]
    n = np.asarray(nbytes, dtype=np.float64)      # whole byte counts below 2**53: exact in float64
    rem = np.fmod(n, size)
    first = np.minimum(n, size)
    last = np.where((rem == 0) & (n > 0), size, rem)
    _split_cache.append((nbytes, packet_bytes, (first, last)))
    if len(_split_cache) > _SPLIT_CACHE_SIZE:
        del _split_cache[0]
    return first, last


def packets(nbytes: ArrayLike, packet_bytes: int) -> ArrayLike:
    """Packets of a stream of ``nbytes`` (0 for an empty stream)."""
    if not _is_array(nbytes):
        return -(-int(nbytes) // packet_bytes)
    return -(-np.asarray(nbytes, dtype=np.int64) // packet_bytes)


def framed(nbytes: ArrayLike, packet_bytes: int, header_bytes: float) -> ArrayLike:
    """Bytes on the wire: the payload plus ``header_bytes`` per packet (RoCEv2 framing, docs/model.md §18)."""
    return as_float(nbytes) + packets(nbytes, packet_bytes) * float(header_bytes)


def framed_split(nbytes: ArrayLike, packet_bytes: int, header_bytes: float
                 ) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """(whole stream, first packet, last packet) in wire bytes, headers included; an empty stream is 0."""
    first, last = packet_split(nbytes, packet_bytes)
    if not header_bytes:
        return as_float(nbytes), first, last
    h = float(header_bytes)
    if not _is_array(nbytes):
        return framed(nbytes, packet_bytes, h), (first + h if nbytes else 0.0), (last + h if nbytes else 0.0)
    some = np.asarray(nbytes) > 0
    return framed(nbytes, packet_bytes, h), np.where(some, first + h, 0.0), np.where(some, last + h, 0.0)


def as_float(nbytes: ArrayLike) -> ArrayLike:
    return np.asarray(nbytes, dtype=np.float64) if _is_array(nbytes) else float(nbytes)


def overflow(nbytes: ArrayLike, budget: float) -> ArrayLike:
    """Bytes of ``nbytes`` beyond ``budget`` (a buffer's capacity: NIC memory, the DDIO share)."""
    if _is_array(nbytes):
        return np.maximum(as_float(nbytes) - budget, 0.0)
    return max(float(nbytes) - budget, 0.0)


def stage(
    first_in: ArrayLike,
    last_in: ArrayLike,
    nbytes: ArrayLike,
    free_at: ArrayLike,
    us_per_B: float,
    latency_us: float,
    packet_bytes: int,
    header_bytes: float = 0.0,
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Push a stream through one FIFO stage (a link, a DMA engine, a reduction unit).

    The stage serves bytes at ``us_per_B`` and then delays them by
    ``latency_us``. It can start on the first packet once that packet has
    arrived and the stage is free (``free_at`` is its busy-until). Its last byte
    leaves no earlier than (a) the start plus the service of the whole stream,
    when the stage is the bottleneck, and (b) the arrival of the last packet
    plus the service of that packet, when an upstream stage is.

    ``header_bytes`` (links only): every packet carries that many more bytes on the wire.

    Returns ``(first_out, last_out, busy_until)``.
    """
    whole, first_pkt, last_pkt = framed_split(nbytes, packet_bytes, header_bytes)
    start = vmax(first_in, free_at)
    first_out = start + first_pkt * us_per_B + latency_us
    busy = vmax(start + whole * us_per_B, last_in + last_pkt * us_per_B)
    return first_out, busy + latency_us, busy


def memory_stage(
    first_in: ArrayLike,
    last_in: ArrayLike,
    nbytes: ArrayLike,
    dram: ArrayLike,
    free_at: ArrayLike,
    us_per_B: float,
    packet_bytes: int,
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Pass a stream of ``nbytes`` that moves ``dram`` bytes through host DRAM (nic/host_memory.py).

    DRAM is a work-conserving server: from ``start`` (first packet in, DRAM free) it does the stream's
    ``dram`` bytes of work at ``us_per_B``, and is free again when that work is done (``free``), however
    slowly the stream itself arrives. Each packet carries its share ``dram / nbytes`` of the work. A stream
    with no DRAM bytes (it fits in the LLC) passes untouched and leaves DRAM as it was.

    Returns ``(first_out, last_out, free)``.
    """
    n, d = as_float(nbytes), as_float(dram)
    if not (_is_array(n) or _is_array(d)):
        if d <= 0.0:
            return first_in, last_in, free_at
        first_pkt, last_pkt = packet_split(nbytes, packet_bytes)
        ratio = d / n
        start = vmax(first_in, free_at)
        done = start + d * us_per_B
        return start + first_pkt * ratio * us_per_B, vmax(done, last_in + last_pkt * ratio * us_per_B), done
    some = d > 0.0
    if not some.any():
        return first_in, last_in, free_at
    first_pkt, last_pkt = packet_split(nbytes, packet_bytes)
    start = vmax(first_in, free_at)
    done = start + d * us_per_B
    if d is n or (_is_array(nbytes) and dram is nbytes):    # a read: every byte from DRAM, ratio 1
        first_out, last_b = start + first_pkt * us_per_B, last_in + last_pkt * us_per_B
    else:
        ratio = np.divide(d, n, out=np.zeros(np.shape(some)), where=some)
        first_out, last_b = start + first_pkt * ratio * us_per_B, last_in + last_pkt * ratio * us_per_B
    if some.all():
        return first_out, vmax(done, last_b), done
    return (np.where(some, first_out, first_in), np.where(some, vmax(done, last_b), last_in),
            np.where(some, done, free_at))


def join(first_a: ArrayLike, last_a: ArrayLike, first_b: ArrayLike,
         last_b: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Two streams consumed packet by packet together (operand A and operand B of a reduction)."""
    return vmax(first_a, first_b), vmax(last_a, last_b)


def whole_message(
    last_in: ArrayLike,
    nbytes: ArrayLike,
    free_at: ArrayLike,
    us_per_B: float,
    overhead_us: float,
) -> tuple[ArrayLike, ArrayLike]:
    """A store-and-forward step: starts once the whole message is in, after a fixed overhead.

    This is how the host takes part: it is notified when the NIC has written
    the complete chunk, then reduces it in one pass. Returns ``(done, busy_until)``.
    """
    start = vmax(last_in, free_at) + overhead_us
    done = start + as_float(nbytes) * us_per_B
    return done, done
