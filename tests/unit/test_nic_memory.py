"""NIC memory is enforced for DirectReduce (docs/model.md §4.3).

A chunk the NIC must forward keeps at most its share of ``nic.memory_KiB`` in the
NIC; the rest is DMA-written to host memory as it is produced (or is there
already, as final data) and read back over PCIe when it is sent. The closed
forms below are derived by hand under ``ideal`` with a finite PCIe (rate π,
latency α_P), the link the bottleneck (β ≥ 2π) and whole packets.
"""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives.api.model import build_schedule, model_time
from nicemu.collectives.model.executor import run_model
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

PCIE = ["pcie.bandwidth_GBps=50", "pcie.latency_us=0.5"]


def params(prof):
    alpha = prof.link.latency_us
    beta = 1.0 / (prof.link.bandwidth_GBps * 1e3)
    pi = 1.0 / (prof.pcie.bandwidth_GBps * 1e3)
    return alpha, beta, pi, prof.pcie.latency_us, prof.nic.packet_bytes


@pytest.mark.parametrize("p", [2, 3, 4, 8])
@pytest.mark.parametrize("chunk_KiB, memory_KiB", [(64, 16), (64, 60), (256, 4)])
def test_spilled_ring_allreduce_closed_form(p, chunk_KiB, memory_KiB):
    """Every send from the NIC (2p-3 of them) also waits for the excess's DMA write (α_P + Pπ after the
    reduction) and read (α_P + Pπ): T = 2(p-1)(α + cβ + 2α_P + 2Pπ); the spill is e = c - B per send."""
    prof = load_profile("ideal", [f"nic.memory_KiB={memory_KiB}", *PCIE])
    alpha, beta, pi, a_p, pkt = params(prof)
    c = chunk_KiB * 1024
    t = model_time("allreduce", "directreduce", f"ring:{p}", prof, p * c // 4, "float32")
    assert t.emulated_us == pytest.approx(2 * (p - 1) * (alpha + c * beta + 2 * a_p + 2 * pkt * pi), rel=1e-12)
    assert t.nic_spill_bytes == (2 * p - 3) * (c - memory_KiB * 1024)


@pytest.mark.parametrize("p", [2, 3, 8])
@pytest.mark.parametrize("memory_KiB", [64, 1e9])
def test_a_chunk_that_fits_costs_what_it_did(p, memory_KiB):
    """Chunk = memory, or a huge memory: today's DirectReduce closed form (§3.6), nothing read back."""
    prof = load_profile("ideal", [f"nic.memory_KiB={memory_KiB}", *PCIE])
    alpha, beta, pi, a_p, pkt = params(prof)
    c = 64 * 1024
    t = model_time("allreduce", "directreduce", f"ring:{p}", prof, p * c // 4, "float32")
    assert t.emulated_us == pytest.approx(2 * (p - 1) * (alpha + c * beta) + 2 * a_p + 2 * pkt * pi, rel=1e-12)
    assert t.nic_spill_bytes == 0


@pytest.mark.parametrize("topology", ["ring:8", "torus:4x4", "torus:2x3x4"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather", "alltoall"])
def test_large_memory_changes_nothing(topology, collective):
    """With the shipped 4 MiB and chunks that fit, or with any larger memory, every time is the same."""
    count = 48 * 1024
    base = load_profile("directreduce-paper")
    big = load_profile("directreduce-paper", ["nic.memory_KiB=1e12"])
    for bidir in ("false", "true"):
        a = model_time(collective, "directreduce", topology,
                       base.with_overrides([f"topology.bidirectional={bidir}"]), count, "float32")
        b = model_time(collective, "directreduce", topology,
                       big.with_overrides([f"topology.bidirectional={bidir}"]), count, "float32")
        assert (a.emulated_us, a.host_busy_us, a.nic_busy_us) == (b.emulated_us, b.host_busy_us, b.nic_busy_us)
        assert b.nic_spill_bytes == 0


def test_spill_slows_directreduce_and_grows_as_memory_shrinks():
    prof = load_profile("directreduce-paper")
    count = 64 * 1024 * 1024 // 4            # 64 MiB per node: 8 MiB chunks on ring:8
    times = [model_time("allreduce", "directreduce", "ring:8", prof.with_overrides([f"nic.memory_KiB={m}"]),
                        count, "float32") for m in (16384, 8192, 4096, 1024, 0)]
    assert times[0].emulated_us == times[1].emulated_us and times[1].nic_spill_bytes == 0   # 8 MiB fits
    assert [t.nic_spill_bytes for t in times[2:]] == [13 * (8 * 2**20 - m * 1024) for m in (4096, 1024, 0)]
    # PCIe (25 GB/s) outruns the link (12.5 GB/s): the excess streams beside it, and only the write's last
    # and the read's first packet, with their DMA latencies, are exposed per send, whatever the excess
    assert times[2].emulated_us == times[3].emulated_us == times[4].emulated_us > times[1].emulated_us
    # a PCIe slower than the link cannot hide it: less memory, more time
    slow = [model_time("allreduce", "directreduce", "ring:8",
                       prof.with_overrides([f"nic.memory_KiB={m}", "pcie.bandwidth_GBps=8"]), count, "float32")
            for m in (8192, 4096, 1024, 0)]
    assert all(a.emulated_us < b.emulated_us for a, b in zip(slow, slow[1:]))


def test_bidirectional_directions_share_the_memory():
    """Each direction's half-chunk may hold half the memory: a half of 32 KiB fits in B = 48 KiB but not
    in B/2, so each of a node's two sends per step reads back 8 KiB (one direction alone: 16 KiB)."""
    c = 64 * 1024
    for bidir, sends, spill in (("false", 1, c - 48 * 1024), ("true", 2, c // 2 - 24 * 1024)):
        prof = load_profile("ideal", ["nic.memory_KiB=48", *PCIE, f"topology.bidirectional={bidir}"])
        t = model_time("allreduce", "directreduce", "ring:4", prof, 4 * c // 4, "float32")
        assert t.nic_spill_bytes == (2 * 4 - 3) * sends * spill


def test_torus_segment_spills_into_later_dimensions():
    """Between torus dimensions the intermediate segment is the operand pool: when it does not fit, the
    later dimension's sends and operands read back the same share of what they use."""
    prof = load_profile("ideal", ["nic.memory_KiB=16", *PCIE])
    topo = parse_topology("torus:4x4")
    count = 16 * 64 * 1024 // 4                 # dim 0 chunks of 256 KiB, dim 1 chunks of 64 KiB
    t = run_model(build_schedule("allreduce", "directreduce", topo, count), prof, 4)
    seg, chunk, budget = 256 * 1024, 64 * 1024, 16 * 1024
    share = (seg - budget) / seg
    # dim 0: 2 RS sends + (allgather) 3 sends of 256 KiB; dim 1: every RS send and operand of 64 KiB at the
    # segment's share (3 sends, 3 operands), allgather 3 sends of 64 KiB
    want = 2 * (seg - budget) + 3 * (seg - budget) + 6 * round(chunk * share) + 3 * (chunk - budget)
    assert t.nic_spill_bytes == want
    fits = run_model(build_schedule("allreduce", "directreduce", topo, count),
                     prof.with_overrides(["nic.memory_KiB=256"]), 4)
    assert fits.nic_spill_bytes == 0 and fits.emulated_us < t.emulated_us


def test_model_and_scalar_paths_agree_with_random_memory():
    """The model executor (NicAgents on all nodes) against one ScalarAgent per node run in lockstep."""
    from nicemu.collectives.model.step_timing import link_params
    from nicemu.nic.scalar_agent import ScalarAgent
    rng = np.random.default_rng(5)
    for _ in range(12):
        topo = parse_topology(str(rng.choice(["ring:3", "ring:5", "torus:2x3", "torus:3x2x2"])))
        bidir = str(bool(rng.random() < 0.5)).lower()
        prof = load_profile("directreduce-paper", [f"nic.memory_KiB={float(rng.uniform(0, 64))!r}",
                                                   f"topology.bidirectional={bidir}"])
        count = int(rng.integers(1, 200_000))
        collective = str(rng.choice(["allreduce", "reducescatter", "allgather"]))
        sched = build_schedule(collective, "directreduce", topo, count, prof.topology.bidirectional)
        want = run_model(sched, prof, 4)
        agents = [ScalarAgent(prof, link_params(topo, prof)) for _ in range(topo.nodes)]
        for step_group in _groups(sched):
            arrivals = []
            for step in step_group:
                arrivals.append([agents[s].send(agents[s].costs(step, int(n) * 4))
                                 for s, n in zip(step.src, step.count)])
            for step, arr in zip(step_group, arrivals):
                for d, n, (f, last) in zip(step.dst, step.count, arr):
                    agents[d].receive(agents[d].costs(step, int(n) * 4), f, last)
        assert max(a.clock for a in agents) == want.emulated_us
        assert list(want.node_done_us) == [a.clock for a in agents]
        assert max(a.spill_bytes for a in agents) == want.nic_spill_bytes


def _groups(sched):
    from nicemu.collectives.schedules.steps import step_groups
    return step_groups(sched.steps())
