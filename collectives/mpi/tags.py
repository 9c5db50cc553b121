"""Every MPI tag of every protocol, in disjoint ranges.

An ``Emulator`` runs dense calls, point-to-point transfers and sparse calls on
one communicator, and ranks run ahead of each other: a fast rank may already
send the messages of its next call while a slow one still receives those of
the previous call. Every receive therefore names its source and a tag from its
own protocol's range, so a message can only ever match the receive it was
meant for. The ranges:

=========================  ===========  =============================================
protocol                   tags         who
=========================  ===========  =============================================
dense step loop            10-12        collectives/mpi/step_loop.py and its transports
reliable delivery          20-22        collectives/mpi/reliable.py (with link faults)
point-to-point             30-31        collectives/mpi/p2p.py
serve's result gathering   41           nicemu/serve.py (reserved here)
spot protocol              60-64        collectives/mpi/spot_executor.py
watchdog stall notice      ``TAG_UB``   collectives/mpi/watchdog.py (from any rank)
=========================  ===========  =============================================

Within one protocol two messages with the same source and tag match their
receives in the order both ends post them (MPI's non-overtaking rule), which
is what lets the dense and point-to-point protocols use a fixed tag per kind of
message.
"""

from __future__ import annotations

from mpi4py import MPI

#: the dense step loop: a transfer's packet-stream times, its data, or both in one packed message
STEP_TIME = 10
STEP_DATA = 11
STEP_PACKED = 12

#: reliable delivery (go-back-N): an attempt's header and payload, and the receiver's ACKs
RELIABLE_HEADER = 20
RELIABLE_PAYLOAD = 21
RELIABLE_ACK = 22

#: point-to-point transfers: times and data of every pair, matched in pair order
P2P_TIME = 30
P2P_DATA = 31

#: nicemu/serve.py gathers its records on rank 0 with this tag (kept out of every range above)
SERVE_RESULTS = 41

#: the spot protocol's control messages
SPOT_RECORD = 60
SPOT_CREDIT = 61
SPOT_TXCREDIT = 62
SPOT_NACK = 63
#: the spot protocol's Tx records (results); the record's header names its slot and round
SPOT_RESULT = 64

#: what MPI guarantees every communicator allows (the standard's minimum ``TAG_UB``)
MIN_TAG_UB = 32767


def tag_ub(comm: MPI.Comm) -> int:
    """The largest tag ``comm`` allows."""
    ub = comm.Get_attr(MPI.TAG_UB)
    return int(ub) if ub is not None else MIN_TAG_UB


def notice_tag(comm: MPI.Comm) -> int:
    """The watchdog's stall notice: the largest tag, above every other range."""
    return tag_ub(comm)

