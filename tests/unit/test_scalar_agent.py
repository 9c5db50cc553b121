"""ScalarAgent (the one-node-per-rank fast path) gives NicAgents' times bit for bit.

Random profiles (finite and infinite rates, zero and non-zero latencies, odd
packet sizes) and random sequences of steps with every combination of flags
and sizes (empty, one packet, exact multiples and remainders) drive both a
one-node NicAgents (the arithmetic the model executor runs on all nodes) and a
ScalarAgent; every output time and every piece of state must be identical.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nicemu.collectives.schedules.steps import Step
from nicemu.nic.agent import NicAgents
from nicemu.nic.profile import load_profile
from nicemu.nic.scalar_agent import ScalarAgent

EMPTY = np.zeros(0, dtype=np.int64)


def random_profile(rng: np.random.Generator):
    def rate() -> str:
        return ".inf" if rng.random() < 0.15 else f"{rng.uniform(0.5, 200.0)!r}"

    def latency() -> str:
        return "0" if rng.random() < 0.2 else f"{rng.uniform(0.01, 3.0)!r}"

    return load_profile("directreduce-paper", [
        f"link.bandwidth_GBps={rng.uniform(1.0, 50.0)!r}", f"link.latency_us={latency()}",
        f"pcie.bandwidth_GBps={rate()}", f"pcie.latency_us={latency()}",
        f"host.reduce_GBps={rate()}", f"host.overhead_us={latency()}",
        f"nic.reduce_GBps={rate()}", f"nic.latency_us={latency()}",
        f"nic.packet_bytes={int(rng.choice([64, 1000, 1024, 4096]))}",
        f"link.header_bytes={int(rng.choice([0, 0, 58, 82]))}",
        f"host.memory_GBps={'.inf' if rng.random() < 0.3 else repr(rng.uniform(5.0, 400.0))}",
        f"host.ddio_KiB={float(rng.choice([0.0, 1.0, rng.uniform(1.0, 1 << 16)]))!r}",
        # NIC memory: none, a fraction of a packet, a few KiB, odd sizes, the shipped 4 MiB
        f"nic.memory_KiB={float(rng.choice([0.0, 0.3, 1.0, rng.uniform(1.0, 1 << 13), 4096.0]))!r}"])


def random_step(rng: np.random.Generator, ndim: int) -> Step:
    engine = "host" if rng.random() < 0.5 else "nic"
    return Step("rs", int(rng.integers(ndim)), int(rng.choice([1, -1])), int(rng.integers(2)), EMPTY, EMPTY,
                EMPTY, EMPTY, engine, bool(rng.random() < 0.6), bool(rng.random() < 0.5), bool(rng.random() < 0.5),
                bool(rng.random() < 0.5), nic_share=float(rng.choice([1.0, 0.5, 0.125])),
                early_operand=bool(engine == "nic" and rng.random() < 0.3))


def nic_flags(step: Step) -> dict:
    """What send_half passes NicAgents.send beyond the positional arguments."""
    return {"engine": step.engine, "reduce": step.reduce, "nic_share": step.nic_share,
            "new_pool": step.reduce and not step.from_host and step.index == 0, "mark_group": step.early_operand}


def random_nbytes(rng: np.random.Generator, packet: int) -> int:
    return int(rng.choice([0, 1, packet - 1 if packet > 1 else 1, packet, 3 * packet,
                           3 * packet + 7, int(rng.integers(1, 1 << 28))]))


def state(a: NicAgents) -> tuple:
    return (a.clock[0], a.nic_ready[0], a.pcie.read_free[0], a.pcie.write_free[0], a.compute.free[0],
            a.compute.busy_us[0], a.host.free[0], a.host.busy_us[0], a.memory.free[0], a.spill_share[0],
            a.pool_share[0], a.spill_bytes[0], a.group_clock[0], *a.links.free[0].ravel())


def scalar_state(s: ScalarAgent) -> tuple:
    return (s.clock, s.nic_ready, s.read_free, s.write_free, s.compute_free, s.compute_busy, s.host_free,
            s.host_busy, s.mem_free, s.spill_share, s.pool_share, s.spill_bytes, s.group_clock, *s.link_free)


@pytest.mark.parametrize("seed", range(40))
def test_scalar_agent_equals_nic_agents_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    profile = random_profile(rng)
    ndim = int(rng.integers(1, 4))
    links = [(float(rng.uniform(1.0, 50.0)), float(rng.uniform(0.0, 2.0))) for _ in range(ndim)]
    ranks_per_node = int(rng.choice([1, 1, 2, 8]))      # each rank's share of host DRAM and DDIO
    ref = NicAgents(profile, 1, links, ranks_per_node=ranks_per_node)
    fast = ScalarAgent(profile, links, ranks_per_node=ranks_per_node)
    for _call in range(2):          # reset between calls must restore the idle state
        ref.reset()
        fast.reset()
        for _ in range(30):
            step = random_step(rng, ndim)
            nbytes = random_nbytes(rng, profile.nic.packet_bytes)
            costs = fast.costs(step, nbytes)
            sent = ref.send(0, step.dim, step.direction, nbytes, step.from_host, **nic_flags(step))
            assert fast.send(costs) == tuple(float(t) for t in sent)
            # a peer's stream arrives (as a remote node's would): perturb it to cover every max()
            first = float(sent[0]) + float(rng.choice([0.0, rng.uniform(0, 50)]))
            last = max(first, float(sent[1]) + float(rng.choice([0.0, rng.uniform(0, 50)])))
            ref.receive(0, first, last, nbytes, step.engine, step.reduce, step.to_host, step.operand_from_host,
                        nic_share=step.nic_share, early_operand=step.early_operand)
            fast.receive(costs, first, last)
            assert scalar_state(fast) == tuple(float(x) for x in state(ref))


def test_every_flag_combination_is_covered():
    profile = load_profile("directreduce-paper")
    ref = NicAgents(profile, 1, [(12.5, 1.0)])
    fast = ScalarAgent(profile, [(12.5, 1.0)])
    for engine, reduce, from_host, to_host, operand in itertools.product(
            ("host", "nic"), *[(False, True)] * 4):
        step = Step("ag", 0, 1, 0, EMPTY, EMPTY, EMPTY, EMPTY, engine, reduce, from_host, to_host, operand)
        for nbytes in (0, 100, 1024, 5000):
            costs = fast.costs(step, nbytes)
            sent = ref.send(0, 0, 1, nbytes, from_host)
            assert fast.send(costs) == (float(sent[0]), float(sent[1]))
            ref.receive(0, sent[0], sent[1], nbytes, engine, reduce, to_host, operand)
            fast.receive(costs, float(sent[0]), float(sent[1]))
            assert scalar_state(fast) == tuple(float(x) for x in state(ref))
    assert fast.clock > 0 and fast.host_busy > 0 and fast.compute_busy > 0


def test_random_cases_spill():
    """The random profiles above do exercise NIC-memory read-backs (the comparison is not vacuous)."""
    rng = np.random.default_rng(0)
    profile = load_profile("ideal", ["nic.memory_KiB=1", "pcie.bandwidth_GBps=30"])
    ref = NicAgents(profile, 1, [(12.5, 1.0)])
    fast = ScalarAgent(profile, [(12.5, 1.0)])
    rs = Step("rs", 0, 1, 1, EMPTY, EMPTY, EMPTY, EMPTY, "nic", True, False, False, True)
    ag = Step("ag", 0, 1, 1, EMPTY, EMPTY, EMPTY, EMPTY, "nic", False, False, True)
    for step in (rs, rs, ag):
        nbytes = int(rng.integers(5000, 9000))
        costs = fast.costs(step, nbytes)
        sent = ref.send(0, 0, 1, nbytes, False, **nic_flags(step))
        assert fast.send(costs) == (float(sent[0]), float(sent[1]))
        ref.receive(0, sent[0], sent[1], nbytes, step.engine, step.reduce, step.to_host, step.operand_from_host)
        fast.receive(costs, float(sent[0]), float(sent[1]))
        assert scalar_state(fast) == tuple(float(x) for x in state(ref))
    assert fast.spill_bytes > 2 * (5000 - 1024)
