"""The SmartNIC agent of every emulated node, and the two ways a step can be handled.

A schedule step says, for each transfer, which engine handles the data at the
receiver and where the data lives. The agent turns that into time:

* ``engine="host"`` (the baseline ring): the NIC DMA-reads the chunk from host
  memory, sends it, the receiving NIC DMA-writes it into host memory, and the
  host is notified and reduces it. Two PCIe crossings and a host pass per step.
* ``engine="nic"`` (DirectReduce): the receiving NIC's DataDirector steers the
  packets to the ComputeEnhancer, which reduces them against the local operand
  that the GateKeeper prefetched, packet by packet. The result stays in the NIC
  for the next step; only final data is DMA-written to the host.

One agent object holds the state of a *set* of nodes as arrays (all nodes in
the model executor, the rank's own nodes in the MPI executor), and every method
works on an index array, so both executors run exactly the same arithmetic.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.compute_enhancer import ComputeEnhancer
from nicemu.nic.datadirector import DataDirector
from nicemu.nic.gatekeeper import GateKeeper, budget_bytes, host_part, host_share
from nicemu.nic.host import HostCpu
from nicemu.nic.host_memory import HostMemory
from nicemu.nic.intra_node import IntraNode
from nicemu.nic.link import Links
from nicemu.nic.pcie import Pcie
from nicemu.nic.profile import Profile
from nicemu.nic.streams import as_float, overflow, vmax
from nicemu.nic.telemetry import DRAM, HOST, NIC, NVLINK, READ, RESOURCES, WRITE


class NicAgents:
    """Timing state of the NICs, PCIe engines, host CPUs and links of ``nodes`` nodes."""

    def __init__(self, profile: Profile, nodes: int, link_params: list[tuple[float, float]],
                 shared_port: bool = False, ranks_per_node: int = 1) -> None:
        """``nodes`` counts ranks (one NIC each); ``ranks_per_node`` of them share a host's DRAM."""
        self.profile = profile
        self.nodes = nodes
        self.memory = HostMemory(profile, nodes, ranks_per_node)
        self.pcie = Pcie(profile, nodes, self.memory)
        self.links = Links(nodes, link_params, profile.nic.packet_bytes, shared_port, profile.link.header_bytes)
        self.gatekeeper = GateKeeper(self.pcie)
        self.datadirector = DataDirector(profile, self.pcie)
        self.compute = ComputeEnhancer(profile, nodes)
        self.host = HostCpu(profile, nodes, self.memory)
        #: ranks of one node on an NVLink-class fabric (nic/intra_node.py); None: through host memory
        self.intra = IntraNode(profile, nodes) if profile.intra_node.nvlink and ranks_per_node > 1 else None
        # when the node has finished its last step (result in host memory, or in the NIC
        # buffer for DirectReduce steps whose output is not final)
        self.clock = np.zeros(nodes)
        self.nic_ready = np.zeros(nodes)  # when its last output is available in the NIC buffer
        self.nic_first = np.zeros(nodes)  # first packet of the last chunk the DataDirector steered
        # the clock when the node began its current step group (its sends), for early operand prefetches
        self.group_clock = np.zeros(nodes)
        # NIC memory (docs/model.md §4.3): the share of the chunk a node forwards next, and of its
        # intermediate segment (a torus's later operands), that did not fit and sits in host memory
        self.memory_KiB = profile.nic.memory_KiB
        self.spill_share = np.zeros(nodes)
        self.pool_share = np.zeros(nodes)
        self.spill_bytes = np.zeros(nodes)   # bytes read back from host memory because they did not fit
        # the all-to-all's NIC memory (docs/model.md §13.7): bytes of the bundle forwarded next that lie in host
        # memory, and the blocks held for a later torus dimension (all of them, and those in host memory)
        self.a2a_fwd_host = np.zeros(nodes)
        self.a2a_held = np.zeros(nodes)
        self.a2a_held_host = np.zeros(nodes)
        #: link fault injection (collectives/model/link_faults.py), None when off
        self.faults = None
        self._telemetry = None
        self.slowed = False   # stragglers: some service times are per-node arrays
        #: some node of the topology straggles (the same on every rank, unlike ``slowed``)
        self.stragglers_anywhere = False

    @property
    def telemetry(self):
        """Per-link and per-resource accounting of the call (nic/telemetry.py), None when off."""
        return self._telemetry

    @telemetry.setter
    def telemetry(self, value) -> None:
        self._telemetry = value
        for part in (self.links, self.pcie, self.compute, self.host, self.memory, self.intra):
            if part is not None:
                part.telemetry = value

    def slow_down(self, factors: np.ndarray) -> None:
        """Stragglers: scale each node's host, NIC and PCIe service times by its factor (>= 1)."""
        for part, names in ((self.pcie, ("us_per_B", "latency_us")),
                            (self.host, ("us_per_B", "overhead_us")),
                            (self.compute, ("us_per_B", "latency_us")),
                            (self.datadirector, ("latency_us",))):
            for name in names:
                setattr(part, name, getattr(part, name) * factors)
        self.slowed = True

    def reset(self) -> None:
        """Back to an idle fabric at time 0 (every collective call starts idle)."""
        for arr in (self.clock, self.nic_ready, self.nic_first, self.group_clock, self.spill_share, self.pool_share,
                    self.spill_bytes, self.a2a_fwd_host, self.a2a_held, self.a2a_held_host,
                    self.pcie.read_free, self.pcie.write_free,
                    self.links.free, self.compute.free, self.compute.busy_us, self.host.free,
                    self.host.busy_us, self.memory.free):
            arr.fill(0.0)
        if self.intra is not None:
            self.intra.reset()
        self.links.bytes_sent = 0
        self.links.framed_sent = 0
        if self._telemetry is not None:
            self._telemetry.reset()

    def send(self, ix: np.ndarray, dim: int, direction: int, nbytes: np.ndarray,
             from_host: bool, cut_through: bool = False, host_nbytes: np.ndarray | None = None,
             local: bool = False, engine: str = "host", reduce: bool = False, nic_share: float = 1.0,
             new_pool: bool = False, mark_group: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Sender side of a step: packet stream (first, last) arriving at the peer's NIC.

        ``cut_through``: the chunk is the part of the previous incoming stream that
        travels on, forwarded as its packets arrive (all-to-all, NIC variant).
        ``local``: the peer is a rank of the same node; it reads the chunk from this rank's
        memory once the rank is done with its previous step (no NIC, no link).
        ``engine="nic"`` with a chunk from the NIC buffer: the part that did not fit in NIC memory is
        read back from host memory (``reduce``: the share the previous step left there; else the chunk's
        overflow of its ``nic_share`` of the memory). ``new_pool``: the first step of a later torus
        dimension; the intermediate segment it takes its operands from is the previous output.
        ``mark_group``: remember the node's clock as the start of its step group (``early_operand`` receives
        issue their operand prefetch then); sends run before any receive of their group.
        """
        if mark_group:
            self.group_clock[ix] = self.clock[ix]
        if local:
            ready = self.clock[ix].copy()
            if self.intra is not None:
                return self.intra.send(ix, ready, nbytes)
            return ready, ready
        first, last = self.gatekeeper.outgoing(ix, from_host, self.clock[ix],
                                               self.nic_ready[ix], nbytes,
                                               self.nic_first[ix] if cut_through else None,
                                               host_nbytes)
        if engine == "nic" and not from_host and not cut_through and host_nbytes is None:
            if new_pool:
                self.pool_share[ix] = self.spill_share[ix]
            host = (host_part(nbytes, self.spill_share[ix]) if reduce
                    else overflow(nbytes, budget_bytes(self.memory_KiB, nic_share)))
            first, last = self.gatekeeper.read_back(ix, self.clock[ix], host, first, last, self.spill_bytes)
        elif engine == "nic" and cut_through:       # all-to-all: the forwarded part that did not fit
            first, last = self.gatekeeper.read_back(ix, self.clock[ix], self.a2a_fwd_host[ix], first, last,
                                                    self.spill_bytes)
        elif engine == "nic" and host_nbytes is not None and not from_host:
            first, last = self._release_held(ix, nbytes, host_nbytes, first, last)
        return self.links.transmit(ix, dim, direction, first, last, nbytes)

    def _release_held(self, ix, nbytes, own_nbytes, first, last):
        """All-to-all, first bundle of a later torus dimension: besides the node's own blocks it sends held
        blocks, of which the share that was spilled to host memory is read back (docs/model.md §13.7)."""
        released = as_float(nbytes) - as_float(own_nbytes)
        held, in_host = self.a2a_held[ix], self.a2a_held_host[ix]
        if isinstance(held, np.ndarray):
            share = np.divide(in_host, held, out=np.zeros(held.shape), where=held > 0)
        else:
            share = float(in_host) / float(held) if held > 0 else 0.0
        back = host_part(released, share)
        self.a2a_held[ix] = held - released
        self.a2a_held_host[ix] = in_host - back
        return self.gatekeeper.read_back(ix, self.clock[ix], back, first, last, self.spill_bytes)

    def _keep_in_nic(self, ix, nbytes, final_nbytes, hold_nbytes):
        """All-to-all receive: what of the bundle stays in the NIC and what does not fit in ``nic.memory_KiB``
        (docs/model.md §13.7). The bundle forwarded next comes first; blocks held for a later dimension take
        the rest, and those that do not fit (newly arrived or held before) are written to host memory and stay
        there. Returns the bytes written beside the final ones."""
        budget = budget_bytes(self.memory_KiB, 1.0)
        forward = as_float(nbytes) - as_float(final_nbytes) - as_float(hold_nbytes)
        fwd_host = overflow(forward, budget)
        self.a2a_fwd_host[ix] = fwd_host
        held = self.a2a_held[ix] + as_float(hold_nbytes)
        self.a2a_held[ix] = held
        before = self.a2a_held_host[ix]
        in_host = vmax(before, held - vmax(budget - forward, 0.0))
        self.a2a_held_host[ix] = in_host
        return fwd_host + (in_host - before)

    def send_routed(self, ix: np.ndarray, route, nbytes: np.ndarray, from_host: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Sender side of a step whose partners are not neighbours (nic/link.py ``transmit_routed``)."""
        first, last = self.gatekeeper.outgoing(ix, from_host, self.clock[ix], self.nic_ready[ix], nbytes,
                                               None, None)
        return self.links.transmit_routed(ix, route, first, last, nbytes)

    # A node's clock only moves forward: a step's completion is never earlier than the
    # node's previous one, and the two halves of a bidirectional step complete together.
    def receive(self, ix: np.ndarray, first: np.ndarray, last: np.ndarray,
                nbytes: np.ndarray, engine: str, reduce: bool, to_host: bool,
                operand_from_host: bool = True, deliver_nbytes: np.ndarray | None = None,
                local: bool = False, dram_per_byte: float | None = None, nic_share: float = 1.0,
                early_operand: bool = False, hold_nbytes: np.ndarray | None = None) -> None:
        """Receiver side of a step: advances the receiving nodes' clocks.

        ``deliver_nbytes`` (nic engine): only this part of the chunk is final and
        DMA-written to host memory; the rest stays in the NIC to travel on.
        A reduced chunk keeps at most its ``nic_share`` of NIC memory (on a torus's later dimensions,
        at most the share its intermediate segment kept); the rest is DMA-written to host memory
        as it is produced, unless the whole chunk is final and written anyway.
        ``early_operand``: the operand prefetch is issued when the node began its step group (pipelined
        DirectReduce: the GateKeeper fetches the group's operands back to back) instead of at its clock.
        ``hold_nbytes`` (all-to-all): the part of the bundle held for a later torus dimension; what of the
        bundle does not fit in NIC memory is DMA-written with the final part (docs/model.md §13.7).
        """
        if local and self.intra is not None:
            done = self.intra.receive(ix, first, last, nbytes, reduce)
            self.clock[ix] = vmax(self.clock[ix], done)
            self.nic_ready[ix] = vmax(self.nic_ready[ix], done)
            return
        if engine == "host":
            if not local:
                first, last = self.pcie.write(ix, first, last, nbytes)
            done = self.host.timing(ix, last, nbytes, reduce, local, dram_per_byte)
            self.clock[ix] = vmax(self.clock[ix], done)
            self.nic_ready[ix] = vmax(self.nic_ready[ix], done)
            return
        if reduce:
            if operand_from_host:
                issue = self.group_clock[ix] if early_operand else self.clock[ix]
                operand = self.gatekeeper.prefetch_operand(ix, issue, nbytes)
            else:
                ready = self.nic_ready[ix]
                operand = self.gatekeeper.read_back(ix, self.clock[ix], host_part(nbytes, self.pool_share[ix]),
                                                    ready, ready, self.spill_bytes)
            first, last = self.compute.timing(ix, (first, last), operand, nbytes)
            share = host_share(nbytes, budget_bytes(self.memory_KiB, nic_share))
            if not operand_from_host:
                share = vmax(share, self.pool_share[ix])
            self.spill_share[ix] = share
        else:
            first, last = self.datadirector.steer(first, last, nbytes, ix)
            self.nic_first[ix] = first
            if hold_nbytes is not None:
                deliver_nbytes = deliver_nbytes + self._keep_in_nic(ix, nbytes, deliver_nbytes, hold_nbytes)
        self.nic_ready[ix] = vmax(self.nic_ready[ix], last)
        done = last
        if to_host:
            _, done = self.datadirector.deliver(ix, first, last,
                                                nbytes if deliver_nbytes is None else deliver_nbytes)
        elif reduce:
            done = self.datadirector.spill(ix, first, last, host_part(nbytes, share), done)
        self.clock[ix] = vmax(self.clock[ix], done)

    def resource_busy(self) -> np.ndarray:
        """Telemetry: (len(RESOURCES), nodes) busy time of every resource of the call so far, from the bytes
        the telemetry counted (PCIe, DRAM: at their rates) and the host's and NIC engine's own counters."""
        tel = self._telemetry
        served = tel.bytes[:, tel.lo:tel.lo + self.nodes]
        busy = np.zeros((len(RESOURCES), self.nodes))
        busy[READ] = served[READ] * self.pcie.us_per_B
        busy[WRITE] = served[WRITE] * self.pcie.us_per_B
        busy[NIC] = self.compute.busy_us
        busy[HOST] = self.host.busy_us
        busy[DRAM] = served[DRAM] * self.memory.us_per_B
        if self.intra is not None:
            busy[NVLINK] = served[NVLINK] * self.intra.us_per_B
        return busy

    def stats(self, ix: np.ndarray | slice = slice(None)) -> dict[str, np.ndarray]:
        return {"host_busy_us": self.host.busy_us[ix], "nic_busy_us": self.compute.busy_us[ix],
                "nic_spill_bytes": self.spill_bytes[ix]}
