"""Host DRAM as a work-conserving server that is charged out of time order (the spot protocol).

The dense algorithms charge DRAM in time order, step by step, so a busy-until
per rank is enough (nic/host_memory.py). The spot-protocol timing walks its
resources in a canonical order instead (docs/model.md §10.5): one node's DMA
reads, DMA writes and host passes are charged phase by phase, and a later
charge may well start earlier in time (a slot of round 3 before another slot
of round 2). A busy-until would make it wait behind work that happens later.

So each endpoint keeps the intervals its DRAM is busy. Work of ``D`` bytes
that can start at ``t`` takes ``D·μ`` of the server's idle time from ``t`` on,
filling the gaps left by earlier charges, and ends when it is done. Work that
does not overlap other work in time ends at ``t + D·μ`` whatever the order of
the charges; work that does is served after what was charged before it. Work
of 0 bytes does not wait (docs/model.md §19.1).
"""

from __future__ import annotations

from bisect import bisect_right

from nicemu.nic.profile import Profile
from nicemu.nic.streams import us_per_byte


class MemoryTimeline:
    """Busy intervals of the DRAM of each endpoint (a node or a dedicated aggregator)."""

    def __init__(self, profile: Profile, endpoints: int) -> None:
        self.us_per_B = us_per_byte(profile.host.memory_GBps)
        self.ddio_bytes = profile.host.ddio_KiB * 1024.0
        # per endpoint: the starts and ends of its disjoint busy intervals, ascending
        self.starts: list[list[float]] = [[] for _ in range(endpoints)]
        self.ends: list[list[float]] = [[] for _ in range(endpoints)]
        self.dram_bytes = [0.0] * endpoints

    @classmethod
    def of(cls, profile: Profile, endpoints: int) -> MemoryTimeline | None:
        """The timeline, or None when the profile leaves DRAM out (``host.memory_GBps`` infinite)."""
        return cls(profile, endpoints) if us_per_byte(profile.host.memory_GBps) > 0.0 else None

    def spill(self, nbytes: float) -> float:
        """DRAM bytes of a DMA write of ``nbytes``: what does not fit in the DDIO share."""
        return max(nbytes - self.ddio_bytes, 0.0)

    def work(self, e: int, t: float, dram: float) -> float:
        """When ``dram`` bytes of work on endpoint ``e``'s DRAM, able to start at ``t``, are done."""
        if not dram > 0.0:
            return t
        self.dram_bytes[e] += dram
        left = dram * self.us_per_B
        s, f = self.starts[e], self.ends[e]
        if not f or t >= f[-1]:         # after all the work so far (the common case)
            end = t + left
            if f and f[-1] == t:
                f[-1] = end
            else:
                s.append(t)
                f.append(end)
            return end
        i = bisect_right(f, t)          # the first interval that ends after t
        if s[i] > t and left <= s[i] - t:       # idle at t, long enough: the loop below, in one step
            end = t + left
            self._take(s, f, i, t, end)
            return end
        cur = t
        while True:
            if i < len(s) and s[i] <= cur:      # busy at cur: skip to the interval's end
                cur = f[i]
                i += 1
                continue
            gap = s[i] - cur if i < len(s) else float("inf")
            if left <= gap:
                end = cur + left
                self._take(s, f, i, cur, end)
                return end
            left -= gap
            self._take(s, f, i, cur, s[i])     # fill the whole gap; it joins the interval after it
            i = bisect_right(f, cur)           # ... which is now busy at cur

    @staticmethod
    def _take(s: list[float], f: list[float], i: int, a: float, b: float) -> None:
        """Mark ``[a, b)`` busy: an idle span that ends at or before ``s[i]`` and starts after ``f[i - 1]``."""
        join_prev = i > 0 and f[i - 1] == a
        join_next = i < len(s) and s[i] == b
        if join_prev and join_next:
            f[i - 1] = f[i]
            del s[i], f[i]
        elif join_prev:
            f[i - 1] = b
        elif join_next:
            s[i] = a
        else:
            s.insert(i, a)
            f.insert(i, b)
