"""What the spot-protocol timing carries from one round to the next.

The cost parameters of the profile (per byte and per message, and, with
``--straggler``, per endpoint), and every shared resource's free time: each
endpoint's link in each direction, its PCIe read and write engines, its host
CPU and its NIC reduction engine, its host DRAM, plus the Tx spots' reuse times
and the workers' self-clock. Endpoints are the nodes, then any dedicated aggregators.
"""

from __future__ import annotations

import math

import numpy as np

from nicemu.collectives.model.link_faults import FaultStats
from nicemu.collectives.model.sparse.maxplus import Workspace, rank_in_group
from nicemu.collectives.schedules.spot_protocol import (
    CREDIT_BYTES,
    INDEX_BYTES,
    RECORD_HEADER_BYTES,
    Plan,
    SparseConfig,
)
from nicemu.nic.faults import FaultSpec
from nicemu.nic.memory_timeline import MemoryTimeline
from nicemu.nic.profile import Profile
from nicemu.nic.streams import framed, packets, us_per_byte

#: (slot, worker) pairs held at once (a few MiB per array: cache-sized); tests lower it
CHUNK = 1 << 18


def spot_memory_bytes(nodes: int, cfg: SparseConfig, block_bytes: int) -> int:
    """NIC memory one aggregator needs for its Rx spots (one region per worker) and Tx spots."""
    record = cfg.spot_blocks * (block_bytes + INDEX_BYTES) + RECORD_HEADER_BYTES
    return cfg.spots * (nodes + cfg.tx_spots) * record


class SpotState:
    """Cost parameters and resource free times while the rounds of one plan are timed."""

    def __init__(self, plan: Plan, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
                 call: int = 0, slow: np.ndarray | None = None) -> None:
        cfg, lay = plan.cfg, plan.layout
        self.cfg, self.lay = cfg, lay
        n = self.n = lay.nodes
        self.chunk = CHUNK
        self.faults, self.call = faults, call
        self.fault_stats = FaultStats()
        self.rto_us, self.packet_bytes = profile.nic.retransmit_timeout_us, profile.nic.packet_bytes
        self.bb = cfg.block_size * itemsize
        self.beta, self.alpha = us_per_byte(profile.link.bandwidth_GBps), profile.link.latency_us
        self.pi, self.a_p = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
        # a host event (a message handled, a round reduced): the profile's wake-up, or the
        # configuration's own cost (OmniReduce's busy-polling threads)
        o_h = profile.host.overhead_us if cfg.host_event_us is None else float(cfg.host_event_us)
        self.gamma, self.o_h = us_per_byte(profile.host.reduce_GBps), o_h
        self.nu, self.a_n = us_per_byte(profile.nic.reduce_GBps), profile.nic.latency_us
        self.header = profile.link.header_bytes
        self.cb = self.wire_us(CREDIT_BYTES)
        self.dedicated = cfg.aggregation == "dedicated"
        self.spilled = (cfg.aggregation == "nic"
                        and spot_memory_bytes(n, cfg, self.bb) > profile.nic.memory_KiB * 1024)
        k = len(lay.aggregator_node)
        ends = n + (k if self.dedicated else 0)
        agg_end = (n + np.arange(k)) if self.dedicated else lay.aggregator_node
        self.slot_g = np.asarray(agg_end, dtype=np.int64)[lay.slot_agg]   # per slot: its aggregator endpoint
        self.far = n if self.dedicated else n - 1     # workers a result is scattered to
        self._per_endpoint(slow, ends)
        # host DRAM of every endpoint (docs/model.md §10.5); None: not charged (host.memory_GBps .inf)
        self.dram = MemoryTimeline.of(profile, ends)
        self.out_free = np.zeros(ends)
        self.in_free = np.zeros(ends)
        self.rd_free = np.zeros(ends)
        self.wr_free = np.zeros(ends)
        # per host thread and endpoint; a slot's host work runs on its thread (``slot_thread``)
        self.host_thr = np.zeros((cfg.host_threads, ends))
        self.host_free = self.host_thr[0]
        spot = np.arange(lay.slots) - lay.slot_agg * cfg.spots
        self.slot_thread = (spot * cfg.host_threads) // cfg.spots
        self.nic_free = np.zeros(ends)
        self.host_busy = np.zeros(ends)
        self.nic_busy = np.zeros(ends)
        self.tx_free = np.zeros((lay.slots, cfg.tx_spots))
        self.done = np.zeros(n)
        self.up = self.down = 0
        self.packets = 0      # packets of the messages ``up`` and ``down`` count (kept with headers only)
        # With finite non-negative costs every free time only grows. Then a worker's latest
        # landed result is its latest done time, the latest arrival on a link is the latest
        # arrival of any message, and a host-packing self-clock, a copy of the worker
        # host's free time, never exceeds that host's free time when it is read (not so
        # when the next record is packed on the result: OmniReduce keeps its clock).
        self.monotone = all(math.isfinite(x) and x >= 0
                            for x in (self.beta, self.alpha, self.pi, self.a_p, self.gamma, self.o_h))
        self.skip_clock = cfg.host_packing and not cfg.credits and self.monotone and not cfg.pack_on_result
        # the self-clock per (slot, worker): calloc'ed, only rows of slots that go on are touched
        self.clock = None if self.skip_clock else np.zeros((lay.slots, n))
        self.consumed = self.ready_at = np.zeros(0)   # per slot of the round: Rx spot free, result ready
        self.ws = Workspace(n)
        self.tel = None       # telemetry (sparse/telemetry.py SpotTelemetry), set by the caller
        self.trace = False    # ... and it keeps the traced endpoints' events
        self.rec = None       # the link-crossing messages (sparse/messages.py MessageRecorder), when asked for
        self._rank: tuple[np.ndarray, np.ndarray] | None = None

    def wire_us(self, nbytes):
        """Link time of whole messages of ``nbytes`` (integral, float or array), their packets' headers
        included (docs/model.md §18)."""
        if not self.header:
            return nbytes * self.beta
        return framed(np.rint(nbytes).astype(np.int64), self.packet_bytes, self.header) * self.beta

    def count_packets(self, nbytes, times=1) -> None:
        """With headers on: add the packets of messages of ``nbytes`` (integral, float or array), each
        sent ``times`` times (a number or an array like ``nbytes``), to ``packets``."""
        if self.header:
            pk = packets(np.rint(nbytes).astype(np.int64), self.packet_bytes)
            self.packets += int(np.sum(pk * times))

    def framed_bytes(self) -> int:
        """``up + down`` with ``link.header_bytes`` per packet of every message they count."""
        return int(self.up + self.down + self.packets * float(self.header)) if self.header else self.up + self.down

    def host_of(self, slot: int) -> np.ndarray:
        """The host free times (over the endpoints, a view) of the thread that serves ``slot``."""
        return self.host_thr[self.slot_thread[slot]]

    def slot_rank(self, slots: np.ndarray) -> np.ndarray:
        """Position of each slot among the consecutive ``slots`` of its aggregator.

        Both phases of a round ask for the round's slots: the last answer is kept
        for the same array.
        """
        if self._rank is None or self._rank[0] is not slots:
            self._rank = (slots, rank_in_group(self.lay.slot_agg[slots]))
        return self._rank[1]

    def _per_endpoint(self, slow: np.ndarray | None, ends: int) -> None:
        """--straggler: per-endpoint service parameters (scalar x factor, so a factor of 1 gives
        the scalar itself); None keeps the scalars and the shared-constant shortcuts."""
        self.slow = slow
        if slow is None:
            return
        fe = np.ones(ends)
        fe[:self.n] = slow
        self.pi_e, self.a_p_e, self.gamma_e = self.pi * fe, self.a_p * fe, self.gamma * fe
        self.o_h_e, self.nu_e, self.a_n_e = self.o_h * fe, self.nu * fe, self.a_n * fe
