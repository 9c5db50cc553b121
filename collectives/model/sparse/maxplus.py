"""Max-plus scans: the completion times of jobs that a FIFO resource serves in order.

A resource (a link direction, a PCIe engine, a NIC reduction engine, a host
CPU) that serves jobs one after the other finishes job ``j`` at
``done_j = max(done_{j-1}, ready_j) + service_j``. With running sums of the
service times this is a cumulative maximum, so whole rows of jobs are timed
with numpy at once. Every function here gives, bit for bit, what the plain
one-job-at-a-time recursion gives: the spot-protocol timing rests on that.
"""

from __future__ import annotations

import numpy as np

#: ready time of a neutral entry of a scan: it never wins a maximum
NEG = -np.inf


def max_plus_scan(start: float, ready: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Completion times of FIFO jobs in order: done_j = max(done_{j-1}, ready_j) + service_j."""
    if len(ready) == 0:
        return ready
    csum = np.cumsum(service)
    prev = np.concatenate([[0.0], csum[:-1]])
    return csum + np.maximum(start, np.maximum.accumulate(ready - prev))


def max_plus_rows(start: np.ndarray, ready: np.ndarray, service: np.ndarray | None,
                  work: tuple[np.ndarray, np.ndarray] | None = None,
                  csum: np.ndarray | None = None) -> np.ndarray:
    """Row ``i`` is ``max_plus_scan(start[i], ready[i], service[i])``, bit for bit.

    An entry with ``service`` 0 and ``ready`` -inf is neutral: every other entry
    gets the value it would get without it (0 added to the running sum changes
    nothing, -inf never wins the max), and it takes the value of the entry
    before it, or ``start``. Rows are padded at the end with such entries, and
    entries that do not use the resource are hidden with them, so the last
    column holds the resource's new free time. ``work``: two arrays of the shape
    of ``ready`` for the running sum and the result (the result may be ``ready``).
    ``csum``: the running sums of ``service`` if they are known already.
    """
    if csum is not None:
        d = np.empty_like(ready) if work is None else work[1]
    elif work is None:
        csum, d = np.cumsum(service, axis=1), np.empty_like(ready)
    else:
        csum, d = work
        np.cumsum(service, axis=1, out=csum)
    d[:, 0] = ready[:, 0]
    np.subtract(ready[:, 1:], csum[:, :-1], out=d[:, 1:])
    np.maximum.accumulate(d, axis=1, out=d)
    np.maximum(d, start[:, None], out=d)
    d += csum
    return d


def max_plus_shared(start: np.ndarray, ready: np.ndarray, sums: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """``max_plus_rows`` (in place in ``ready``) when every row has the same service times,
    whose running sums are ``sums`` and, shifted right by one with 0 first, ``prev``."""
    np.subtract(ready, prev, out=ready)
    np.maximum.accumulate(ready, axis=1, out=ready)
    np.maximum(ready, start[:, None], out=ready)
    ready += sums
    return ready


def row_sums(m: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``m[i, :length[i]].sum()`` per row, in numpy's pairwise order for that length."""
    if len(length) and (length == m.shape[1]).all():
        return m.sum(axis=1)
    if m.shape[1] <= 2 or (len(length) and int(length.max()) <= 2):
        # one or two terms: a single rounding whatever the order
        out = np.where(length > 0, m[:, 0], 0.0)
        two = np.flatnonzero(length == 2)
        out[two] += m[two, 1]
        return out
    out = np.zeros(len(length))
    for ell in np.unique(length):
        if ell > 0:
            rows = np.flatnonzero(length == ell)
            out[rows] = m[rows, :ell].sum(axis=1)
    return out


def rank_in_group(group: np.ndarray) -> np.ndarray:
    """Position of each entry among the consecutive entries with the same ``group`` value."""
    m = len(group)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.ones(m, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    idx = np.arange(m)
    return idx - np.maximum.accumulate(np.where(first, idx, 0))


class Workspace:
    """Reusable work arrays and memoised sums of constants, shared by every scan of one timing.

    ``width`` of a row never exceeds ``nodes`` (one record per worker), which
    bounds the memoised running sums.
    """

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self._pool: dict[str, np.ndarray] = {}
        self._fullsums: dict[tuple[float, int], float] = {}
        self._cumsums: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def buf(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """A reusable work array (its pages are faulted in once, not per chunk)."""
        size = shape[0] * shape[1]
        b = self._pool.get(name)
        if b is None or b.size < size:
            b = self._pool[name] = np.empty(max(size, 1))
        return b[:size].reshape(shape)

    def const_sums(self, c: np.ndarray, length: np.ndarray) -> np.ndarray:
        """``np.full(length[i], c[i]).sum()`` per row (numpy's pairwise order, memoised)."""
        memo = self._fullsums
        if len(c) and (c == c[0]).all() and (length == length[0]).all():
            key = (float(c[0]), int(length[0]))
            v = memo.get(key)
            if v is None:
                v = memo[key] = float(np.full(key[1], key[0]).sum()) if key[1] else 0.0
            return np.full(len(c), v)
        out = np.zeros(len(c))
        for i, (ci, li) in enumerate(zip(c.tolist(), length.tolist())):
            if li:
                v = memo.get((ci, li))
                if v is None:
                    v = memo[(ci, li)] = float(np.full(li, ci).sum())
                out[i] = v
        return out

    def const_cumsum(self, v: float) -> tuple[np.ndarray, np.ndarray]:
        """``np.cumsum(np.full(nodes, v))`` and the same shifted right by one (0 first)."""
        out = self._cumsums.get(v)
        if out is None:
            if len(self._cumsums) > 64:
                self._cumsums.clear()
            sums = np.cumsum(np.full(max(self.nodes, 1), v))
            out = self._cumsums[v] = (sums, np.concatenate([[0.0], sums[:-1]]))
        return out

    def entries(self, x: np.ndarray, valid: np.ndarray | None, width: int, name: str) -> np.ndarray:
        """A per-record quantity as a full (rows, width) array, 0 on padding."""
        if valid is None:
            return np.broadcast_to(x, (x.shape[0], width))
        out = self.buf(name, (x.shape[0], width))
        np.copyto(out, x)
        np.copyto(out, 0.0, where=~valid)
        return out

    def scan(self, start: np.ndarray, ready: np.ndarray, per_record: np.ndarray, valid: np.ndarray | None,
             length: np.ndarray, const: bool, csum: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``max_plus_rows`` in place in ``ready``, with service ``per_record``.

        Returns the completion times and, per row, the resource's new free time (the
        last record's completion, or ``start`` for a row without records). When every
        record of the block has the same service time, the running sums are those of
        a constant: computed once and shared by the rows. Padding then costs that
        service too, but its ready time is -inf, so no record before it is affected;
        its own times are meaningless and the free time is read at the last record.
        """
        r, width = ready.shape
        if const:
            c = per_record[:, 0]
            v = float(c[0])
            if v >= 0 and (c == v).all():
                sums, prev = self.const_cumsum(v)
                out = max_plus_shared(start, ready, sums[:width], prev[:width])
                if valid is None:
                    return out, out[:, -1]
                last = out[np.arange(r), np.maximum(length - 1, 0)]
                return out, np.where(length > 0, last, start)
        service = self.entries(per_record, valid, width, name)
        out = max_plus_rows(start, ready, service, (csum, ready))
        return out, out[:, -1]
