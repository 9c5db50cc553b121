"""Host DRAM in the spot protocol (docs/model.md §10.5, §19.1): the roofline of an activity.

An activity of an endpoint (a DMA read or write, a host pass) that starts at
``t`` and would end at ``e`` without DRAM, and moves ``D`` bytes through the
endpoint's DRAM (:class:`~nicemu.nic.memory_timeline.MemoryTimeline`), ends at
``max(e, m)``, where ``m`` is when the DRAM has done that work. A host pass
that waits for DRAM is busy while it waits.

Both timing paths (numpy and scalar) charge every endpoint's activities in the
same order through these functions, so their times stay equal bit for bit.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.memory_timeline import MemoryTimeline

NEG = float("-inf")


def roof(mem: MemoryTimeline, e: int, start: float, end: float, dram: float, busy: list | np.ndarray | None = None
         ) -> float:
    """``max(end, DRAM done)`` for one activity of endpoint ``e``; the wait is added to ``busy[e]``."""
    if not dram > 0.0:
        return end
    m = mem.work(e, start, dram)
    if m > end:
        if busy is not None:
            busy[e] += m - end
        return m
    return end


def roof_rows(mem: MemoryTimeline, who: np.ndarray, start, end, dram, busy: np.ndarray | None = None) -> np.ndarray:
    """:func:`roof` for the activities of endpoints ``who`` (in that order); ``start``, ``end`` and
    ``dram`` are numbers or arrays like ``who``. Returns the new ends as an array."""
    k = len(who)
    s, e, d = _floats(start, k), _floats(end, k), _floats(dram, k)
    out = [roof(mem, w, si, ei, di, busy) for w, si, ei, di in zip(who.tolist(), s, e, d)]
    return np.array(out, dtype=np.float64)


def _floats(x, k: int) -> list[float]:
    """A number or an array of ``k`` numbers as a list of ``k`` Python floats."""
    if isinstance(x, np.ndarray) and x.ndim:
        return x.astype(np.float64, copy=False).tolist()
    return [float(x)] * k


def spill_all(mem: MemoryTimeline, nbytes) -> np.ndarray:
    """DRAM bytes of DMA writes of ``nbytes`` (an array): what does not fit in the DDIO share."""
    return np.maximum(np.asarray(nbytes, dtype=np.float64) - mem.ddio_bytes, 0.0)


def fifo_roof(mem: MemoryTimeline, e: int, free: float, ready: list[float], service: list[float],
              dram: list[float], lead: float = 0.0) -> tuple[list[float], list[float]]:
    """A FIFO resource of endpoint ``e`` serving jobs in order, each a roofline with its DRAM work.

    Job ``j`` starts at ``s = max(previous done, ready_j)``; its DRAM work starts at ``s + lead``, and
    it is done at ``max(s + service_j, DRAM done)``. Until a job waits for DRAM the done times are
    those of the closed-form max-plus scan (:mod:`.maxplus`), with the same operations in the same
    order, so they are the numbers of the scan without DRAM, bit for bit; a job that waits restarts
    the scan from its done time. Returns the done times and the DRAM waits.
    """
    done, waits = [], []
    start, csum, top, prev = free, 0.0, NEG, free
    for r, v, d in zip(ready, service, dram):
        x = r - csum
        if x > top:
            top = x
        csum += v
        end = (start if start > top else top) + csum
        if d > 0.0:
            m = mem.work(e, (prev if prev > r else r) + lead, d)
            if m > end:
                waits.append(m - end)
                end = start = m
                csum, top = 0.0, NEG
        done.append(end)
        prev = end
    return done, waits


def dedicated_roof(mem: MemoryTimeline, e: int, free: float, arrival: list[float], data: list[float],
                   a_p: float, pi: float, o_h: float, gamma: float) -> tuple[list[float], list[float]]:
    """OmniReduce's aggregator, a message at a time: its NIC DMA-writes the record into host memory
    (``arrival + α_P + d·π``, spilling past DDIO to DRAM), then the slot's thread wakes (``o_E``) and
    adds it to its pool (``d·γ``), reading from DRAM what DDIO did not keep. Returns the done times and
    the thread's DRAM waits."""
    ready, spills = [], []
    for a, d in zip(arrival, data):
        sp = mem.spill(d)
        landed = (a + a_p) + d * pi
        if sp > 0.0:
            m = mem.work(e, a, sp)
            if m > landed:
                landed = m
        ready.append(landed)
        spills.append(sp)
    return fifo_roof(mem, e, free, ready, [o_h + d * gamma for d in data], spills, o_h)
