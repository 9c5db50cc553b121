"""The all-to-all's NIC memory (docs/model.md §13.7): what the DataDirector holds, the spill, its cost.

Hand-derived emulated times on small rings and a 2x2 torus under ``ideal`` with a finite PCIe, the
bytes read back, both executors equal, and the default results unchanged where the memory suffices.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

P = 4096                                   # ideal's nic.packet_bytes
A, AP = 1.0, 0.5                           # link and PCIe latency (µs)
BETA, PI = 1 / 12.5e3, 1 / 25e3            # µs per byte: link 12.5 GB/s, PCIe 25 GB/s


def profile(memory_KiB):
    return load_profile("ideal").with_overrides(["pcie.bandwidth_GBps=25", f"pcie.latency_us={AP}",
                                                 f"nic.memory_KiB={memory_KiB}"])


@pytest.mark.parametrize("k", [3, 4, 5, 8])
@pytest.mark.parametrize("memory_KiB", [1e9, 16, 48, 80, 112])
def test_ring_spilling_steps_turn_store_and_forward(k, memory_KiB):
    """Step s >= 1 forwards c_s = (k-1-s)·M/k bytes. When c_s > B the excess is written with the final block
    and read back at the send, which then waits for the whole bundle: every such step costs one more
    α + 2α_P + 2Pπ, so T = (1 + S)(α + 2α_P + 2Pπ) + ((k-1)/2)·Mβ with S such steps."""
    c = 16 * P                              # one block; every bundle and every excess whole packets
    m = k * c
    budget = memory_KiB * 1024
    spills = [max((k - 1 - s) * c - budget, 0) for s in range(1, k - 1)]
    s_count = sum(1 for e in spills if e > 0)
    t = model_time("alltoall", "directreduce", f"ring:{k}", profile(memory_KiB), m // 4)
    assert t.emulated_us == pytest.approx((1 + s_count) * (A + 2 * AP + 2 * P * PI) + (k - 1) / 2 * m * BETA,
                                          rel=1e-12)
    assert t.nic_spill_bytes == sum(spills)
    assert t.wire_bytes == k * (k - 1) // 2 * m      # the spill moves no byte over a link


@pytest.mark.parametrize("memory_KiB, spilled", [(1e9, False), (32, False), (16, True)])
def test_torus_blocks_held_for_the_next_dimension(memory_KiB, spilled):
    """torus:2x2 (block b = 32 KiB): the block that arrives in dimension 0 and travels in dimension 1 waits in
    the NIC. When it does not fit (B < b) the excess is written with the final block and read back with the
    own block of dimension 1's bundle: 2α_P + 2Pπ more, no α (there is no cut-through to lose)."""
    b = 8 * P
    t = model_time("alltoall", "directreduce", "torus:2x2", profile(memory_KiB), b)      # M = 4b bytes
    assert t.emulated_us == pytest.approx(2 * A + (4 if spilled else 2) * (AP + P * PI) + 4 * b * BETA, rel=1e-12)
    assert t.nic_spill_bytes == (b - memory_KiB * 1024 if spilled else 0)


@pytest.mark.parametrize("spec, per_node", [("ring:4", 1), ("torus:3x3", 1), ("torus:2x3", 1), ("ring:3", 2)])
@pytest.mark.parametrize("memory_KiB", [1, 4, 1e9])
def test_executors_agree_and_data_is_right(spec, per_node, memory_KiB):
    topo = parse_topology(spec).with_ranks_per_node(per_node)
    prof = load_profile("directreduce-paper", [f"nic.memory_KiB={memory_KiB}"])
    n = topo.nodes
    count = n * 1024
    x = np.random.default_rng(n).integers(-1000, 1000, size=(n, count)).astype(np.int32)
    with Emulator(MPI.COMM_SELF, topo, prof) as emu:
        res = emu.alltoall(x, algo="directreduce")
    want = x.reshape(n, n, -1).transpose(1, 0, 2).reshape(n, count)
    np.testing.assert_array_equal(res.data, want)
    t = model_time("alltoall", "directreduce", topo, prof, count, "int32")
    assert (res.emulated_us, res.nic_spill_bytes) == (t.emulated_us, t.nic_spill_bytes)
    assert (t.nic_spill_bytes > 0) == (memory_KiB < 1e9)


#: directreduce-paper (4 MiB of NIC memory), float32, measured before §13.7 (main at 8b4bfab) with
#: model_time("alltoall", algo, spec, "directreduce-paper", size // 4): (spec, size, algo) -> emulated_us
BEFORE = {
    ("ring:8", 1024, "ring"): 12.840939999999996,
    ("ring:8", 1024, "directreduce"): 13.082054999999999,
    ("ring:8", 16384, "ring"): 17.445960000000007,
    ("ring:8", 16384, "directreduce"): 14.475320000000002,
    ("ring:8", 262144, "ring"): 86.25875999999998,
    ("ring:8", 262144, "directreduce"): 75.73724000000001,
    ("ring:8", 4194304, "ring"): 1187.2635600000008,
    ("ring:8", 4194304, "directreduce"): 1176.74204,
    ("ring:8", 67108864, "ring"): 18803.362395714285,
    ("ring:8", 67108864, "directreduce"): 18792.81884,
    ("ring:8", 268435456, "ring"): 75174.81787892856,
    ("ring:8", 268435456, "directreduce"): 75164.26835000001,
    ("torus:4x4", 1024, "ring"): 11.006519999999998,
    ("torus:4x4", 1024, "directreduce"): 11.29047,
    ("torus:4x4", 16384, "ring"): 14.953680000000004,
    ("torus:4x4", 16384, "directreduce"): 13.38068,
    ("torus:4x4", 262144, "ring"): 73.93607999999999,
    ("torus:4x4", 262144, "directreduce"): 67.00148,
    ("torus:4x4", 4194304, "ring"): 1017.6544800000001,
    ("torus:4x4", 4194304, "directreduce"): 1010.7198800000001,
    ("torus:4x4", 67108864, "ring"): 16117.169713333335,
    ("torus:4x4", 67108864, "directreduce"): 16110.216780000002,
    ("torus:4x4", 268435456, "ring"): 64435.55866833332,
    ("torus:4x4", 268435456, "directreduce"): 64428.60073499999,
}


def test_defaults_unchanged_where_the_memory_suffices():
    """Every call whose bundles fit in the NIC is as before; only the NIC variant's 64 and 256 MiB rows spill."""
    changed = []
    unframed = load_profile("directreduce-paper", ["link.header_bytes=0"])   # as BEFORE was measured (§7)
    for (spec, size, algo), before_us in BEFORE.items():
        t = model_time("alltoall", algo, spec, unframed, size // 4)
        if t.nic_spill_bytes:
            changed.append((spec, size, algo))
            assert t.emulated_us > before_us
        else:
            assert t.emulated_us == before_us, (spec, size, algo)
    assert changed == [(spec, size, "directreduce") for spec in ("ring:8", "torus:4x4") for size in (1 << 26, 1 << 28)]
