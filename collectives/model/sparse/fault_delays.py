"""--faults on the Rx-spot writes: the go-back-N delay each record adds to its worker's link.

Each record that crosses a link draws its drops and corruptions from the
fault spec (seeded by call, round and slot, so both executors draw the same),
and its retransmissions hold the worker's link out for the delay. The
aggregator's own record stays in its node and crosses no link.
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.model.sparse.records import Chunk
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.schedules.spot_protocol import Round
from nicemu.nic.faults import transfer_faults


def record_delays(st: SpotState, rnd: Round, ch: Chunk) -> np.ndarray | None:
    """Per record (rows in aggregator order, like ``ch.msg``) the extra link time, or None if none."""
    if st.faults is None:
        return None
    if ch.dense:
        f_row, f_col = np.divmod(np.arange(ch.m * st.n), st.n)
        f_who = f_col
    else:
        f_row, f_who, f_col = ch.row, ch.who, ch.col
    f_p = ch.pos_of[f_row]
    f_g = ch.g[f_row]
    f_bytes = np.rint(ch.msg[f_p, 0 if ch.const else f_col]).astype(np.int64)
    f_bytes[f_who == f_g] = 0         # the aggregator's own record crosses no link
    tf = transfer_faults(st.faults, st.rto_us, st.packet_bytes, st.beta, st.alpha,
                         st.call, rnd.index * 2**32 + ch.slots[f_row], f_who, f_g, f_bytes, st.header)
    if not tf.any:
        return None
    st.fault_stats.add(f_who, f_g, tf)
    fb = np.zeros((ch.m, ch.width))
    fb[f_p, f_col] = tf.delay_us
    return fb
