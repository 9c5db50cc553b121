"""Every message of the spot protocol that crosses a link, as it was timed alone: the recorder behind
:mod:`nicemu.collectives.model.sparse_flows`.

Off unless asked for (``SpotState.rec is None``: the timing runs exactly as without it). When on, the
phases hand it, after each message's time at the receiver is known and without changing any value:

* records: worker endpoint -> aggregator endpoint, done at the aggregator's link in
  (``upstream._receive``, after its max-plus scan; the aggregator node's own record crosses no link);
* Rx credits and result copies: aggregator endpoint -> every far worker, done at the worker's link in
  (``downstream._Receivers``).

A message is timed as a whole (docs/model.md §10.5): it holds the receiver's link for its wire time,
so its window at the receiver is ``[done - wire_us, done]``. The Tx credits the workers return are not
here: the model charges them no link time (they only delay the reuse of a Tx spot by ``16β + α``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: message kinds
RECORD, RX_CREDIT, RESULT = 0, 1, 2
KIND_NAMES = ("record", "rx_credit", "result")


@dataclass
class SparseMessages:
    """One sparse call's link-crossing messages (endpoint ids: the nodes, then dedicated aggregators)."""

    kind: np.ndarray        # RECORD, RX_CREDIT or RESULT
    src: np.ndarray         # sending endpoint
    dst: np.ndarray         # receiving endpoint
    slot: np.ndarray        # the slot (spot) it belongs to
    round: np.ndarray       # the slot's round
    nbytes: np.ndarray      # bytes on the wire (headers not included)
    wire_us: np.ndarray     # time on the receiver's link (headers included)
    done_us: np.ndarray     # its last byte at the receiver, alone

    def __len__(self) -> int:
        return len(self.src)


class MessageRecorder:
    """Collects the messages while ``sparse_time`` runs (``SpotState.rec``)."""

    def __init__(self) -> None:
        self.round = 0
        self._parts: list[tuple] = []
        self._who: tuple[object, np.ndarray] | None = None

    def _add(self, kind: int, src, dst, slot, nbytes, wire_us, done_us) -> None:
        """Messages of one kind; each argument an array as long as ``done_us``, or a number shared by all."""
        k = np.size(done_us)
        if not k:
            return
        cols = [np.broadcast_to(np.asarray(x, dtype=t), (k,)).copy()
                for x, t in ((src, np.int64), (dst, np.int64), (slot, np.int64), (nbytes, np.float64),
                             (wire_us, np.float64), (done_us, np.float64))]
        self._parts.append((np.full(k, kind, dtype=np.int8), *cols, np.full(k, self.round, dtype=np.int64)))

    def records(self, ch, b: slice, arrival: np.ndarray, local_rows: np.ndarray, local_pos: np.ndarray) -> None:
        """The records of chunk rows ``b`` (aggregator order), ``arrival`` their completions at the
        aggregators' links in; ``local_rows``/``local_pos``: the aggregator nodes' own records (chunk rows)."""
        m, width = b.stop - b.start, ch.width
        if ch.dense:
            ok = np.ones((m, width), dtype=bool)
            who = np.broadcast_to(np.arange(width), (m, width))
        else:
            ok = np.array(ch.valid[b], dtype=bool)
            if self._who is None or self._who[0] is not ch:
                wk = np.zeros((ch.m, width), dtype=np.int64)
                wk[ch.pos_of[ch.row], ch.col] = ch.who
                self._who = (ch, wk)
            who = self._who[1][b]
        ok[local_rows - b.start, local_pos[local_rows]] = False
        rows, cols = np.nonzero(ok)
        msg = np.broadcast_to(ch.msg, (ch.m, width))[b][rows, cols]
        msg_b = np.broadcast_to(ch.msg_b, (ch.m, width))[b][rows, cols]
        self._add(RECORD, who[rows, cols], ch.g_p[b][rows], ch.slots_p[b][rows], msg, msg_b, arrival[rows, cols])

    def downstream(self, kind: int, g: int, slot: int, far: np.ndarray, nbytes: float, wire_us: float,
                   done: np.ndarray) -> None:
        """A credit or a result copy from aggregator ``g`` to workers ``far``, done at ``done[far]``."""
        self._add(kind, g, far, slot, nbytes, wire_us, done[far])

    def result(self) -> SparseMessages:
        if not self._parts:
            z = np.zeros(0, dtype=np.int64)
            f = np.zeros(0)
            return SparseMessages(z.astype(np.int8), z, z, z, z, f, f, f)
        cat = [np.concatenate(c) for c in zip(*self._parts)]
        kind, src, dst, slot, nbytes, wire, done, rnd = cat
        return SparseMessages(kind, src, dst, slot, rnd, nbytes, wire, done)
