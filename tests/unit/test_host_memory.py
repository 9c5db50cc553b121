"""Host DRAM bandwidth, DDIO and ranks per node (docs/model.md §19) against hand-derived closed forms.

Under ``ideal`` PCIe, host overhead and NIC latencies vanish, so every DRAM term can be written down:
a rank's share of DRAM costs mu = P / (1e3 * host.memory_GBps) microseconds per byte.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nicemu.collectives.api.model import build_schedule, model_time
from nicemu.collectives.schedules.steps import step_groups
from nicemu.errors import CollectiveError, ProfileError, TopologyError
from nicemu.nic.agent import NicAgents
from nicemu.nic.host_memory import HostMemory
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")
MEM_GBps = 40.0


def ideal_with_memory(ddio_KiB: float = 0.0, memory_GBps: float = MEM_GBps):
    return IDEAL.with_overrides([f"host.memory_GBps={memory_GBps!r}", f"host.ddio_KiB={ddio_KiB!r}"])


def test_defaults_leave_dram_out_and_bad_values_fail():
    assert math.isinf(IDEAL.host.memory_GBps) and IDEAL.host.ddio_KiB == 0.0
    assert not HostMemory(IDEAL, 1).active
    with pytest.raises(ProfileError, match="host.memory_GBps must be a number >= 1e-06"):
        IDEAL.with_overrides(["host.memory_GBps=0"])
    with pytest.raises(ProfileError, match="host.ddio_KiB must be a finite number >= 0"):
        IDEAL.with_overrides(["host.ddio_KiB=-1"])


@pytest.mark.parametrize("ranks_per_node", [1, 4])
def test_dma_read_is_bound_by_the_ranks_share_of_dram(ranks_per_node):
    agents = NicAgents(ideal_with_memory(), 1, [(12.5, 1.0)], ranks_per_node=ranks_per_node)
    mu = ranks_per_node / (1e3 * MEM_GBps)
    n = 10 * 4096
    first, last = agents.pcie.read(0, 5.0, n)
    assert first == pytest.approx(5.0 + 4096 * mu, rel=1e-12)   # the first packet's share of the work
    assert last == pytest.approx(5.0 + n * mu, rel=1e-12)
    # a second read issued at the same time queues behind the first one's DRAM work
    _, last2 = agents.pcie.read(0, 5.0, n)
    assert last2 == pytest.approx(5.0 + 2 * n * mu, rel=1e-12)


def test_ddio_keeps_a_dma_write_out_of_dram():
    ddio = 64.0                                   # KiB
    agents = NicAgents(ideal_with_memory(ddio_KiB=ddio), 1, [(12.5, 1.0)])
    mu = 1 / (1e3 * MEM_GBps)
    agents.pcie.read(0, 0.0, 1 << 20)             # DRAM busy until (1 MiB) * mu
    busy = (1 << 20) * mu
    fits = int(ddio * 1024)
    assert agents.pcie.write(0, 1.0, 2.0, fits) == (1.0, 2.0)    # lands in the LLC: no wait, no work
    assert agents.memory.free[0] == pytest.approx(busy, rel=1e-15)
    spills = fits + 8192
    _, last = agents.pcie.write(0, 1.0, 2.0, spills)
    assert last == pytest.approx(busy + 8192 * mu, rel=1e-12)    # only the spill, after the read


@pytest.mark.parametrize("ddio_KiB", [0.0, 1024.0])
def test_host_reduction_is_a_roofline_of_core_and_dram(ddio_KiB):
    """A pass over an n-byte chunk the NIC wrote: max(n gamma, (2n + spill) mu) after it landed."""
    gamma = 1 / (1e3 * IDEAL.host.reduce_GBps)
    mu = 1 / (1e3 * MEM_GBps)
    agents = NicAgents(ideal_with_memory(ddio_KiB), 1, [(12.5, 1.0)])
    n = 1 << 19                                    # 512 KiB: spills only without DDIO
    spill = max(n - ddio_KiB * 1024, 0)
    done = agents.host.timing(0, 3.0, n, True)
    assert done == pytest.approx(3.0 + max(n * gamma, (2 * n + spill) * mu), rel=1e-12)
    assert agents.host.busy_us[0] == pytest.approx(done - 3.0, rel=1e-12)
    # a local pass (another rank's memory, no DMA) reads and writes everything: 3n
    agents.reset()
    done = agents.host.timing(0, 0.0, n, True, local=True)
    assert done == pytest.approx(max(n * gamma, 3 * n * mu), rel=1e-12)


def _local_phases(p: int, n: int, gamma: float, mu: float) -> tuple[float, float]:
    """Intra-node reduce-scatter (first pass 3n of DRAM, then n per peer) and allgather (2n per peer)."""
    rs = max(n * gamma, 3 * n * mu) + (p - 2) * max(n * gamma, n * mu)
    return rs, (p - 1) * 2 * n * mu


@pytest.mark.parametrize("algo", ["ring", "directreduce", "rabenseifner", "ring-pipelined", "tree"])
@pytest.mark.parametrize("spec,p", [("ring:4", 2), ("switch:3", 4), ("torus:2x3", 3)])
def test_ranks_per_node_is_local_phases_plus_the_rail_copies(algo, spec, p):
    """The AllReduce of N nodes x P ranks takes the intra-node reduce-scatter, then the algorithm on
    the nodes with a 1/P shard and a 1/P share of DRAM (shifted by the first phase), then the allgather."""
    profile = ideal_with_memory(ddio_KiB=256.0)
    count = 6 * 4096 * p                  # a whole number of packets per shard and chunk
    n = count // p * 4
    gamma, mu = 1 / (1e3 * IDEAL.host.reduce_GBps), p / (1e3 * MEM_GBps)
    rs, ag = _local_phases(p, n, gamma, mu)
    nodes = parse_topology(spec)
    share = profile.with_overrides([f"host.memory_GBps={MEM_GBps / p!r}", f"host.ddio_KiB={256.0 / p!r}"])
    rail = model_time("allreduce", algo, nodes, share, count // p).emulated_us
    whole = model_time("allreduce", algo, nodes.with_ranks_per_node(p), profile, count)
    assert whole.emulated_us == pytest.approx(rs + rail + ag, rel=1e-12)
    assert whole.wire_bytes == p * model_time("allreduce", algo, nodes, share, count // p).wire_bytes


def test_ranks_per_node_without_dram_costs_only_the_reduction():
    p, count = 4, 4096 * 16
    n = count // p * 4
    gamma = 1 / (1e3 * IDEAL.host.reduce_GBps)
    nodes = parse_topology("ring:8")
    rail = model_time("allreduce", "ring", nodes, IDEAL, count // p).emulated_us
    whole = model_time("allreduce", "ring", nodes.with_ranks_per_node(p), IDEAL, count).emulated_us
    assert whole == pytest.approx((p - 1) * n * gamma + rail, rel=1e-12)


def test_the_schedule_moves_every_shard_to_every_rank():
    """Replaying the lifted schedule on symbolic data gives every rank the sum of all ranks' vectors."""
    topo = parse_topology("ring:3").with_ranks_per_node(2)
    count = 12
    sched = build_schedule("allreduce", "rabenseifner", topo, count)
    rng = np.random.default_rng(1)
    data = rng.integers(-50, 50, size=(topo.nodes, count)).astype(np.int64)
    expect = data.sum(axis=0)
    for group in step_groups(sched.steps()):
        before = data.copy()             # every send of a group reads the state from before it
        for step in group:
            for s, d, o, c in zip(step.src, step.dst, step.offset, step.count):
                if step.reduce:
                    data[d, o:o + c] += before[s, o:o + c]
                else:
                    data[d, o:o + c] = before[s, o:o + c]
    assert (data == expect).all()


def test_bad_ranks_per_node_fail_clearly():
    with pytest.raises(TopologyError, match="at least 1"):
        parse_topology("ring:4").with_ranks_per_node(0)
    with pytest.raises(CollectiveError, match="one rank per node"):
        build_schedule("reducescatter", "ring", parse_topology("ring:4").with_ranks_per_node(2), 64)
