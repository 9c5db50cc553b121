"""One node's NIC timing on Python floats: the MPI executor's one-node-per-rank fast path.

:class:`~nicemu.nic.agent.NicAgents` keeps every node's state in numpy arrays, which
is what the model executor needs for 262,144 nodes. With one node per rank
that costs ~8 µs of numpy-scalar and call overhead per step, more than a
1 KiB message takes to cross. :class:`ScalarAgent` does the *same floating
point operations in the same order* (see nic/streams.py ``stage``,
``whole_message`` and nic/agent.py ``send``/``receive``) on plain floats, with
every product that depends only on the step (bytes x service time per byte,
packet sizes) computed once per step in :class:`StepCosts`. IEEE arithmetic
gives the same bits for the same operations, so its times equal NicAgents'
exactly; tests/unit/test_scalar_agent.py checks that over random profiles and
step sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nicemu.nic.gatekeeper import budget_bytes, host_part, host_share
from nicemu.nic.host import pass_dram
from nicemu.nic.host_memory import HostMemory
from nicemu.nic.profile import Profile
from nicemu.nic.streams import framed_split, memory_stage, overflow, us_per_byte


def _later(a: float, b: float) -> float:
    """nicemu.nic.streams.vmax on scalars."""
    return a if a >= b else b


@dataclass(frozen=True)
class StageCosts:
    """What ``stage`` multiplies for one stream size: first packet, whole stream, last packet."""

    first_pkt_us: float
    whole_us: float
    last_pkt_us: float
    latency_us: float

    @staticmethod
    def of(nbytes: int, us_per_B: float, latency_us: float, packet_bytes: int,
           header_bytes: float = 0.0) -> StageCosts:
        whole, first_pkt, last_pkt = framed_split(nbytes, packet_bytes, header_bytes)
        return StageCosts(first_pkt * us_per_B, whole * us_per_B, last_pkt * us_per_B, latency_us)

    def run(self, first_in: float, last_in: float, free_at: float) -> tuple[float, float, float]:
        """nicemu.nic.streams.stage: (first_out, last_out, busy_until)."""
        start = first_in if first_in >= free_at else free_at
        first_out = start + self.first_pkt_us + self.latency_us
        a = start + self.whole_us
        b = last_in + self.last_pkt_us
        busy = a if a >= b else b
        return first_out, busy + self.latency_us, busy


@dataclass(frozen=True)
class StepCosts:
    """Everything about one step of one node that does not depend on the clock."""

    link_slot: int                 # dim * 2 + (0 for +1, 1 for -1)
    from_host: bool
    engine: str
    reduce: bool
    to_host: bool
    operand_from_host: bool
    pcie: StageCosts               # reads and writes (same engine rate)
    link: StageCosts
    compute: StageCosts
    steer: StageCosts
    host_work_us: float            # nbytes x host rate (0 when the host only places the chunk)
    host_busy_us: float            # overhead + host_work_us, as HostCpu.timing accumulates it
    compute_busy_us: float
    nbytes: int = 0                # the transfer (host DRAM traffic, nic/host_memory.py)
    spill: float = 0.0             # its DRAM bytes when DMA-written (past the DDIO share)
    pass_dram: float = 0.0         # DRAM bytes of the host's pass over it
    # NIC memory (nic/gatekeeper.py, docs/model.md §4.3); nic engine only
    read_back: bool = False        # sent from the NIC buffer: read back what did not fit
    place_host: float = 0.0        # allgather sends: the chunk's overflow of its share of NIC memory
    new_pool: bool = False         # first step of a later torus dimension (operand segment changes)
    own_share: float = 0.0         # reduce: the share of the produced chunk that does not fit
    early_operand: bool = False    # reduce: prefetch the operand when the group began (Step.early_operand)


class ScalarAgent:
    """The timing state of one node (NIC, PCIe engines, host CPU, its outgoing links)."""

    def __init__(self, profile: Profile, link_params: Sequence[tuple[float, float]],
                 shared_port: bool = False, ranks_per_node: int = 1) -> None:
        self.packet_bytes = profile.nic.packet_bytes
        self.header_bytes = profile.link.header_bytes
        self.shared_port = shared_port
        self.pcie_us_per_B = us_per_byte(profile.pcie.bandwidth_GBps)
        self.pcie_latency_us = profile.pcie.latency_us
        self.link_us_per_B = [us_per_byte(bw) for bw, _ in link_params]
        self.link_latency_us = [lat for _, lat in link_params]
        self.ce_us_per_B = us_per_byte(profile.nic.reduce_GBps)
        self.nic_latency_us = profile.nic.latency_us
        self.host_us_per_B = us_per_byte(profile.host.reduce_GBps)
        self.host_overhead_us = profile.host.overhead_us
        self.memory_KiB = profile.nic.memory_KiB
        memory = HostMemory(profile, 1, ranks_per_node)
        self.memory = memory if memory.active else None
        self.reset()

    def reset(self) -> None:
        """Back to an idle node at time 0."""
        self.clock = self.nic_ready = self.group_clock = 0.0
        self.read_free = self.write_free = 0.0
        self.link_free = [0.0] * (2 * len(self.link_us_per_B))
        self.compute_free = self.compute_busy = 0.0
        self.host_free = self.host_busy = 0.0
        self.mem_free = 0.0
        self.spill_share = self.pool_share = self.spill_bytes = 0.0

    def costs(self, step, nbytes: int) -> StepCosts:
        """Precompute a step (a nicemu.collectives.schedules.steps.Step's flags) for a transfer of ``nbytes``."""
        pkt = self.packet_bytes
        host_rate = self.host_us_per_B if step.reduce else 0.0
        host_work = float(nbytes) * host_rate
        nic = step.engine == "nic"
        budget = budget_bytes(self.memory_KiB, step.nic_share)
        return StepCosts(
            link_slot=2 * step.dim + (0 if step.direction > 0 or self.shared_port else 1),
            from_host=step.from_host, engine=step.engine, reduce=step.reduce, to_host=step.to_host,
            operand_from_host=step.operand_from_host,
            pcie=StageCosts.of(nbytes, self.pcie_us_per_B, self.pcie_latency_us, pkt),
            link=StageCosts.of(nbytes, self.link_us_per_B[step.dim], self.link_latency_us[step.dim], pkt,
                               self.header_bytes),
            compute=StageCosts.of(nbytes, self.ce_us_per_B, self.nic_latency_us, pkt),
            steer=StageCosts.of(nbytes, 0.0, self.nic_latency_us, pkt),
            host_work_us=host_work, host_busy_us=self.host_overhead_us + host_work,
            compute_busy_us=float(nbytes) * self.ce_us_per_B, nbytes=nbytes,
            spill=0.0 if self.memory is None else self.memory.spill(nbytes),
            pass_dram=0.0 if self.memory is None else pass_dram(self.memory, nbytes, step.reduce, False),
            read_back=nic and not step.from_host and not step.cut_through and step.host_count is None,
            place_host=overflow(nbytes, budget) if nic and not step.reduce else 0.0,
            new_pool=nic and step.reduce and not step.from_host and step.index == 0,
            own_share=host_share(nbytes, budget) if nic and step.reduce else 0.0,
            early_operand=step.early_operand)

    # Host DRAM (nic/host_memory.py), in HostMemory's operations and order; only when it is charged.
    def _dram(self, first: float, last: float, nbytes: float, dram: float) -> tuple[float, float]:
        """HostMemory.stream: a stream of ``nbytes`` that moves ``dram`` bytes through DRAM."""
        first, last, self.mem_free = memory_stage(first, last, nbytes, dram, self.mem_free,
                                                  self.memory.us_per_B, self.packet_bytes)
        return first, last

    def _read(self, c: StepCosts, ready: float) -> tuple[float, float]:
        """Pcie.read: DRAM, then the DMA read engine."""
        first = last = ready
        if self.memory is not None:
            first, last = self._dram(ready, ready, c.nbytes, float(c.nbytes))
        first, last, self.read_free = c.pcie.run(first, last, self.read_free)
        return first, last

    def _write(self, c: StepCosts, first: float, last: float) -> tuple[float, float]:
        """Pcie.write: the DMA write engine, then what spills past DDIO to DRAM."""
        first, last, self.write_free = c.pcie.run(first, last, self.write_free)
        if self.memory is not None:
            first, last = self._dram(first, last, c.nbytes, c.spill)
        return first, last

    def _read_bytes(self, nbytes: float, ready: float) -> tuple[float, float]:
        """Pcie.read of ``nbytes`` that are not the step's chunk (NIC memory read-back)."""
        first = last = ready
        if self.memory is not None:
            first, last = self._dram(ready, ready, nbytes, nbytes)
        costs = StageCosts.of(nbytes, self.pcie_us_per_B, self.pcie_latency_us, self.packet_bytes)
        first, last, self.read_free = costs.run(first, last, self.read_free)
        return first, last

    def _read_back(self, nbytes: float, first: float, last: float) -> tuple[float, float]:
        """GateKeeper.read_back: join with the read of the ``nbytes`` that did not fit in the NIC."""
        if nbytes <= 0.0:
            return first, last
        self.spill_bytes += nbytes
        f_host, l_host = self._read_bytes(nbytes, self.clock)
        return _later(first, f_host), _later(last, l_host)

    def send(self, c: StepCosts) -> tuple[float, float]:
        """NicAgents.send: the packet stream (first, last) arriving at the peer's NIC."""
        if c.early_operand:
            self.group_clock = self.clock
        if c.from_host:
            first, last = self._read(c, self.clock)
        else:
            first = last = self.nic_ready
            if c.read_back:
                if c.new_pool:
                    self.pool_share = self.spill_share
                host = host_part(c.nbytes, self.spill_share) if c.reduce else c.place_host
                first, last = self._read_back(host, first, last)
        slot = c.link_slot
        first, last, self.link_free[slot] = c.link.run(first, last, self.link_free[slot])
        return first, last

    def receive(self, c: StepCosts, first: float, last: float) -> None:
        """NicAgents.receive: advances the node's clock."""
        if c.engine == "host":
            first, last = self._write(c, first, last)
            start = (last if last >= self.host_free else self.host_free) + self.host_overhead_us
            done = start + c.host_work_us
            if self.memory is None:
                self.host_busy += c.host_busy_us
            else:       # HostCpu.timing's roofline
                mem_done = start
                if c.pass_dram > 0.0:
                    mem_done = _later(start, self.mem_free) + c.pass_dram * self.memory.us_per_B
                    self.mem_free = mem_done
                done = _later(done, mem_done)
                self.host_busy += self.host_overhead_us + (done - start)
            self.host_free = done
            self.clock = _later(self.clock, done)
            self.nic_ready = _later(self.nic_ready, done)
            return
        if c.reduce:
            if c.operand_from_host:
                op_first, op_last = self._read(c, self.group_clock if c.early_operand else self.clock)
            else:
                op_first, op_last = self._read_back(host_part(c.nbytes, self.pool_share),
                                                    self.nic_ready, self.nic_ready)
            first, last = _later(first, op_first), _later(last, op_last)
            first, last, self.compute_free = c.compute.run(first, last, self.compute_free)
            self.compute_busy += c.compute_busy_us
            share = c.own_share if c.operand_from_host else _later(c.own_share, self.pool_share)
            self.spill_share = share
        else:
            first, last, _ = c.steer.run(first, last, first)
        self.nic_ready = _later(self.nic_ready, last)
        done = last
        if c.to_host:
            _, done = self._write(c, first, last)
        elif c.reduce:
            host = host_part(c.nbytes, share)
            if host > 0.0:     # DataDirector.spill: the part that does not fit, DMA-written
                costs = StageCosts.of(host, self.pcie_us_per_B, self.pcie_latency_us, self.packet_bytes)
                w_first, end, self.write_free = costs.run(first, last, self.write_free)
                if self.memory is not None:
                    _, end = self._dram(w_first, end, host, self.memory.spill(host))
                done = _later(done, end)
        self.clock = _later(self.clock, done)
