"""Host DRAM in the spot protocol (docs/model.md §10.5, §19.1).

* ``MemoryTimeline``: a work-conserving server charged out of time order.
* Tiny cases worked out by hand under ``ideal`` with a slow DRAM, for omniccl, omniccl-cpu and
  omnireduce, with and without DDIO, on both timing paths (numpy and scalar).
* With ``host.memory_GBps`` unset (``.inf``) or large, every number is the one the code gave before
  DRAM was charged (tests/sparse_dram_golden.py), on both paths.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nicemu.collectives import model_sparse, sparse_config
from nicemu.collectives.model import sparse_timing
from nicemu.nic.memory_timeline import MemoryTimeline
from nicemu.nic.profile import load_profile
from nicemu.nic.telemetry import DRAM
from tests.sparse_dram_golden import GOLDEN

BETA = 1 / 12.5e3       # µs per byte of ideal's links
ALPHA = 1.0             # ideal's link latency (µs)
GAMMA = 1 / 20e3        # µs per byte of ideal's host
RTOL = 1e-12           # relative tolerance of the times from before (rounding level)
MU = 1e-3               # µs per byte of DRAM at host.memory_GBps=1
B = 1024                # one block of 256 float32
MSG = 16 + B + 8        # a record (or a result) of one block on the wire


@pytest.fixture(params=[True, False], ids=["scalar", "numpy"])
def path(request, monkeypatch):
    monkeypatch.setattr(sparse_timing, "SCALAR", request.param)
    return request.param


def timeline(gbps: float = 0.001) -> MemoryTimeline:
    return MemoryTimeline(load_profile("ideal", [f"host.memory_GBps={gbps}"]), 1)


def test_timeline_serves_work_in_the_idle_gaps_from_its_start():
    m = timeline()          # 1 µs per byte
    assert m.work(0, 10.0, 5) == 15.0
    assert m.work(0, 20.0, 5) == 25.0
    assert m.work(0, 0.0, 3) == 3.0          # charged later, earlier in time: no wait
    assert m.work(0, 8.0, 10) == 28.0        # fills [8, 10), [15, 20) and [25, 28)
    assert m.work(0, 12.0, 1) == 29.0        # busy from 8 to 28
    assert m.work(0, 3.0, 2) == 5.0          # the gap [3, 8) is still idle
    assert (m.starts[0], m.ends[0]) == ([0.0, 8.0], [5.0, 29.0])
    assert m.dram_bytes == [26.0]


def test_timeline_work_of_no_bytes_does_not_wait():
    m = timeline()
    m.work(0, 0.0, 100)
    assert m.work(0, 50.0, 0) == 50.0
    assert m.work(0, 50.0, 0.0) == 50.0
    assert (m.starts[0], m.ends[0]) == ([0.0], [100.0])


def test_timeline_is_off_when_dram_is_not_charged():
    assert MemoryTimeline.of(load_profile("ideal"), 3) is None
    assert MemoryTimeline.of(load_profile("omniccl-paper"), 3) is None
    assert MemoryTimeline.of(load_profile("400g-gen5"), 3) is not None


def tiny(algo: str, sets: list[str]):
    """2 nodes, one block each, one aggregator (node 0), one spot: one round."""
    kw = {"aggregators": 1, "spots": 1} if algo == "omnireduce" else {"aggregators": 1}
    return model_sparse(sparse_config(algo, 2, **kw), np.ones((2, 1), dtype=bool),
                        load_profile("ideal", sets), 4)


# Hand derivations (ideal: PCIe, NIC and host overhead free; DRAM at 1 GB/s, DDIO 0 or 1 KiB):
# omniccl: node 1 reads its block (B·μ), sends it (MSG·β + α); the NIC reduces it for free; the result
#   goes back (MSG·β + α) and its DMA write spills to DRAM (B·μ; nothing with a 1 KiB DDIO share).
# omniccl-cpu: as omniccl, then at the aggregator the DMA write of node 1's record spills (B·μ; node 0's
#   own record was written while node 1's crossed the link), the host pass reads both records from DRAM
#   and writes the result (3B·μ, above 2B·γ), the NIC reads the result (B·μ); with DDIO the pass reads
#   nothing of the records (B·μ) and the writes spill nothing.
# omnireduce: each worker scans the window and writes its record (2B·μ), its NIC reads it (B·μ); the
#   dedicated aggregator's NIC writes both records (2B·μ), its thread reads each from DRAM, each after
#   the write before it (2B·μ, above B·γ each), the NIC reads the result (B·μ); the last of the two
#   copies of the result (2·MSG·β + α) is written (B·μ) and unpacked (a read and a write, 2B·μ). With
#   DDIO the writes spill nothing and the thread reads nothing from DRAM: the workers' passes and
#   reads (3B·μ), the second record behind the first on the aggregator's link (MSG·β) and its copy
#   (B·γ), the result read (B·μ) and the unpack's write (B·μ) remain.
HAND = {
    ("omniccl", 0): 2 * B * MU + 2 * MSG * BETA + 2 * ALPHA,
    ("omniccl", 1): B * MU + 2 * MSG * BETA + 2 * ALPHA,
    ("omniccl-cpu", 0): 7 * B * MU + 2 * MSG * BETA + 2 * ALPHA,
    ("omniccl-cpu", 1): 3 * B * MU + 2 * MSG * BETA + 2 * ALPHA,
    ("omnireduce", 0): 11 * B * MU + 3 * MSG * BETA + 2 * ALPHA,
    ("omnireduce", 1): 5 * B * MU + 4 * MSG * BETA + B * GAMMA + 2 * ALPHA,
}
WITHOUT = {"omniccl": 2 * MSG * BETA + 2 * ALPHA, "omniccl-cpu": 2 * MSG * BETA + 2 * ALPHA + 2 * B * GAMMA,
           "omnireduce": 4 * MSG * BETA + 2 * ALPHA + 4 * B * GAMMA}


@pytest.mark.parametrize("algo", ["omniccl", "omniccl-cpu", "omnireduce"])
@pytest.mark.parametrize("ddio", [0, 1])
def test_tiny_cases_by_hand(algo, ddio, path):
    t = tiny(algo, ["host.memory_GBps=1", f"host.ddio_KiB={ddio}"])
    assert t.emulated_us == pytest.approx(HAND[algo, ddio], abs=1e-9)
    assert tiny(algo, []).emulated_us == pytest.approx(WITHOUT[algo], abs=1e-9)


def test_tiny_host_busy_counts_the_dram_waits(path):
    """omnireduce without DDIO: each worker's pack and unpack passes last 2B·μ each."""
    assert tiny("omnireduce", ["host.memory_GBps=1"]).host_busy_us == pytest.approx(4 * B * MU, abs=1e-12)
    # omniccl-cpu: the aggregator's one pass, 3B·μ
    assert tiny("omniccl-cpu", ["host.memory_GBps=1"]).host_busy_us == pytest.approx(3 * B * MU, abs=1e-12)


#: the shipped profiles as the golden rows were recorded (before RoCEv2 framing and omniccl-paper's sourced
#: NIC rate, docs/model.md §7)
AS_RECORDED = {"directreduce-paper": ["link.header_bytes=0"],
               "omniccl-paper": ["link.header_bytes=0", "nic.reduce_GBps=25.0"]}


def golden_cases():
    return [pytest.param(row, id=f"{row[0]}-{row[1]}-{row[2]}-{row[3]}-{'-'.join(row[4])}-v{row[5]}")
            for row in GOLDEN]


@pytest.mark.parametrize("row", golden_cases())
def test_unset_or_large_dram_gives_the_numbers_from_before(row, monkeypatch):
    prof, algo, nodes, dens, extra, var, emu, host, nic, wire, done = row
    masks = np.random.default_rng([nodes, int(dens * 100), var]).random((nodes, 1500)) < dens
    cfg = sparse_config(algo, nodes)
    if var == 2:
        cfg = replace(cfg, tx_spots=1)
    for memory in (".inf", "1e9"):
        p = load_profile(prof, AS_RECORDED.get(prof, []) + list(extra) + [f"host.memory_GBps={memory}"])
        for scalar in (True, False):
            monkeypatch.setattr(sparse_timing, "SCALAR", scalar)
            t = model_sparse(cfg, masks, p, 4)
            assert t.wire_bytes == wire, (memory, scalar)
            # times to RTOL, not bit for bit: their last bits depend on the machine
            # (tests/unit/test_sparse_fastpath.py)
            assert [t.emulated_us, t.host_busy_us, t.nic_busy_us] == pytest.approx([emu, host, nic], rel=RTOL,
                                                                                    abs=1e-9), (memory, scalar)
            assert t.node_done_us.tolist() == pytest.approx(list(done), rel=RTOL, abs=1e-9), (memory, scalar)


def test_telemetry_reports_each_endpoints_dram_bytes():
    """omniccl-cpu, tiny case without DDIO: node 0 reads its block, writes both records, reads them and
    writes the result in its pass (3b), reads the result and writes its own copy: 8b; node 1 reads
    its block and writes the result: 2b. Busy is bytes × μ."""
    t = model_sparse(sparse_config("omniccl-cpu", 2, aggregators=1), np.ones((2, 1), dtype=bool),
                     load_profile("ideal", ["host.memory_GBps=1"]), 4, telemetry=True)
    tab = t.telemetry.resource_table()
    rows = [i for i, r in enumerate(tab["resource"]) if r == DRAM]
    assert [float(tab["bytes"][i]) for i in rows] == [8 * B, 2 * B]
    assert [float(tab["busy_us"][i]) for i in rows] == pytest.approx([8 * B * MU, 2 * B * MU], abs=1e-12)
