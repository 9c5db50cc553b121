"""directreduce-pipelined: closed forms under `ideal`, identity with `directreduce` at one segment, the
steps shared with ring-pipelined, the NIC-memory segment rule, and the comparison with directreduce and
the pipelined host ring on the shipped profiles (model executor)."""

import numpy as np
import pytest

from nicemu.collectives import build_schedule, model_time, segment_elems
from nicemu.collectives.registry import get
from nicemu.collectives.schedules import directreduce_pipelined as drp
from nicemu.collectives.schedules.steps import step_groups
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile, shipped_profiles
from nicemu.topologies import parse_topology

ALGO = "directreduce-pipelined"
IDEAL = load_profile("ideal")
ALPHA = IDEAL.link.latency_us
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)     # us per byte
PACKET = IDEAL.nic.packet_bytes


def nic_pipelined_formula(collective: str, k: int, S: int, b: float, gamma_nic: float = 0.0) -> float:
    """One ring of k nodes, S segments of b bytes per chunk, the reduction in the NIC (docs/model.md §4.6).

    A group that sends m segments costs α + m·bβ (the link serialises them; the NIC reduces each packet as
    it arrives, so only the group's last packet is reduced after the link, pγ_N, when that packet belongs
    to a reduce-scatter segment). A run of T ring steps takes T + S - 1 groups and moves T·S segments.
    """
    steps = k - 1
    runs = 2 * steps if collective == "allreduce" else steps
    groups = runs + S - 1
    reducing = {"allreduce": steps, "reducescatter": groups, "allgather": 0}[collective]
    return groups * ALPHA + runs * S * b * BETA + reducing * min(PACKET, b) * gamma_nic


def _seg(profile, topology, collective="allreduce"):
    return segment_elems(profile, 4, ALGO, collective, topology)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("S", [1, 2, 7, 16])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("nic_GBps", [None, 25.0])
def test_closed_form_on_a_ring(k, S, collective, nic_GBps):
    prof = IDEAL if nic_GBps is None else load_profile("ideal", [f"nic.reduce_GBps={nic_GBps}"])
    seg = _seg(prof, f"ring:{k}", collective)
    count = k * S * seg                            # every chunk is S whole segments
    t = model_time(collective, ALGO, f"ring:{k}", prof, count, "float32")
    gamma = 0.0 if nic_GBps is None else 1.0 / (nic_GBps * 1e3)
    assert t.emulated_us == pytest.approx(nic_pipelined_formula(collective, k, S, seg * 4, gamma), rel=1e-9)
    assert t.host_busy_us == 0.0 and t.nic_spill_bytes == 0


@pytest.mark.parametrize("shape", ["torus:4x4x2", "torus:3x3"])
@pytest.mark.parametrize("m", [1, 3])
def test_closed_form_on_a_torus(shape, m):
    """Dimensions do not pipeline into each other: one run per dimension, the last one's two phases as one."""
    topo = parse_topology(shape)
    seg = _seg(IDEAL, topo)
    count = topo.nodes * seg * m
    expected, piece = 0.0, count
    for d, k in enumerate(topo.shape):
        piece //= k                                # the chunk of dimension d, S_d whole segments
        S = piece // seg
        if d == topo.ndim - 1:
            expected += nic_pipelined_formula("allreduce", k, S, seg * 4)
        else:
            expected += nic_pipelined_formula("reducescatter", k, S, seg * 4)
            expected += nic_pipelined_formula("allgather", k, S, seg * 4)
    t = model_time("allreduce", ALGO, topo, IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


def _steps(collective, algo, topo, count, bidirectional, seg=None):
    return list(build_schedule(collective, algo, topo, count, bidirectional, seg).steps())


@pytest.mark.parametrize("topology", ["ring:5", "torus:3x2x4"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("count", [0, 7, 1000])
def test_one_segment_is_directreduce(topology, collective, bidirectional, count):
    """Chunks no larger than a segment: directreduce's transfers and flags, and its times to the bit on a
    one-way ring. Both ways, the second direction's operand is fetched when the group begins, not after the
    first direction's reduction (``early_operand``), so it is never slower."""
    topo = parse_topology(topology)
    plain = _steps(collective, "directreduce", topo, count, bidirectional)
    pipe = _steps(collective, ALGO, topo, count, bidirectional, 10**6)
    assert len(plain) == len(pipe)
    for a, b in zip(plain, pipe):
        assert (a.phase, a.dim, a.direction, a.index, a.group, a.engine, a.reduce, a.from_host, a.to_host,
                a.operand_from_host) == \
               (b.phase, b.dim, b.direction, b.index, b.group, b.engine, b.reduce, b.from_host, b.to_host,
                b.operand_from_host)
        for field in ("src", "dst", "offset", "count"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for prof in shipped_profiles():
        p = load_profile(prof, [f"topology.bidirectional={str(bidirectional).lower()}"])
        pipe = model_time(collective, ALGO, topo, p, count).emulated_us
        plain = model_time(collective, "directreduce", topo, p, count).emulated_us
        assert pipe <= plain if bidirectional else pipe == plain


@pytest.mark.parametrize("topology", ["ring:2", "ring:5", "torus:3x2x4"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_same_transfers_as_ring_pipelined(topology, collective, bidirectional):
    """One segmentation (ring_pipelined.pipelined_steps): the transfers and groups of ring-pipelined; only who
    handles the data differs, and the NIC's share of its memory per transfer is 1 / (2 x the group's)."""
    topo = parse_topology(topology)
    host = _steps(collective, "ring-pipelined", topo, 1000, bidirectional, 7)
    nic = _steps(collective, ALGO, topo, 1000, bidirectional, 7)
    assert len(host) == len(nic)
    for a, b in zip(host, nic):
        assert (a.phase, a.dim, a.direction, a.index, a.group) == (b.phase, b.dim, b.direction, b.index, b.group)
        for field in ("src", "dst", "offset", "count"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.engine == "host" and b.engine == "nic"
        assert b.early_operand == (b.reduce and b.operand_from_host)
    for group in step_groups(nic):
        assert all(s.nic_share == 1.0 / (2 * len(group)) for s in group)


def test_segment_rule():
    """The largest whole number of packets whose operand and result fit NIC memory for the fullest group."""
    prof = load_profile("400g-gen5")
    mem, pkt = 4096 * 1024, 4096
    assert drp.in_flight(parse_topology("ring:8"), "allreduce") == 14
    assert drp.in_flight(parse_topology("ring:8"), "reducescatter") == 7
    assert drp.in_flight(parse_topology("torus:4x4x2"), "allreduce") == 3
    assert drp.in_flight(parse_topology("ring:8"), "allreduce", bidirectional=True) == 28
    assert drp.segment_bytes(prof, parse_topology("ring:8"), "allreduce") == mem // 28 // pkt * pkt == 147456
    assert drp.segment_bytes(prof, parse_topology("ring:2"), "allreduce") == 1 << 20   # host.segment_KiB caps it
    tiny = load_profile("400g-gen5", ["nic.memory_KiB=1"])
    assert drp.segment_bytes(tiny, parse_topology("ring:8"), "allreduce") == pkt        # at least one packet
    assert segment_elems(prof, 8, ALGO, "allreduce", "ring:8") == 147456 // 8
    assert segment_elems(prof, 4) == segment_elems(prof, 4, "ring-pipelined", "allreduce", "ring:8") == 1 << 18
    rails = parse_topology("ring:4").with_ranks_per_node(2)                         # the rails' ring is ring:4
    assert drp.in_flight(rails, "allreduce") == 6


@pytest.mark.parametrize("topology", ["ring:8", "torus:4x4x2"])
def test_default_segment_keeps_the_nic_within_its_memory(topology):
    """At 1 GiB directreduce's chunks overflow NIC memory and are read back over PCIe; the pipelined NIC
    holds one group's segments and reads nothing back."""
    dr = model_time("allreduce", "directreduce", topology, "400g-gen5", 1 << 28)
    pipe = model_time("allreduce", ALGO, topology, "400g-gen5", 1 << 28)
    assert dr.nic_spill_bytes > 0 and pipe.nic_spill_bytes == 0
    assert pipe.wire_bytes == dr.wire_bytes and pipe.host_busy_us == 0.0


@pytest.mark.parametrize("topology", ["ring:8", "torus:4x4x2"])
def test_gains_where_directreduce_spills(topology):
    """400g-gen5 (PCIe no faster than the link): directreduce's 256 MiB and 1 GiB chunks overflow NIC memory,
    and the PCIe read engine carries their read-back beside the operands; the pipelined NIC ring, which
    spills nothing, is faster than directreduce and than the pipelined host ring (docs/model.md §4.6)."""
    for nbytes in (1 << 28, 1 << 30):
        n = nbytes // 4
        pipe = model_time("allreduce", ALGO, topology, "400g-gen5", n).emulated_us
        assert pipe < model_time("allreduce", "directreduce", topology, "400g-gen5", n).emulated_us
        assert pipe < model_time("allreduce", "ring-pipelined", topology, "400g-gen5", n).emulated_us


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("S", [2, 9])
def test_where_nothing_spills_the_pipeline_costs_alpha_per_extra_group(k, S):
    """Under `ideal` directreduce already streams every chunk at line rate: the T·c·β of both closed forms
    is the same, and the pipelined ring pays (S - 1)·α more for its extra groups."""
    seg = _seg(IDEAL, f"ring:{k}")
    count = k * S * seg
    pipe = model_time("allreduce", ALGO, f"ring:{k}", IDEAL, count).emulated_us
    plain = model_time("allreduce", "directreduce", f"ring:{k}", IDEAL, count).emulated_us
    assert pipe - plain == pytest.approx((S - 1) * ALPHA, rel=1e-9)


def test_early_operand_in_the_printed_schedule():
    text = build_schedule("reducescatter", ALGO, "ring:3", 12, False, 2).describe()
    assert "early_operand" in text and "[group 0]" in text and "segments of at most 2 elements" in text


def test_registry_entry_and_bad_calls():
    entry = get(ALGO)
    assert entry.engine == "nic" and entry.segmented and entry.link_faults
    assert entry.collectives == ("allreduce", "reducescatter", "allgather")
    with pytest.raises(CollectiveError, match=r"^directreduce-pipelined does not implement alltoall; use one of "):
        build_schedule("alltoall", ALGO, "ring:4", 8)
    with pytest.raises(CollectiveError, match=r"^directreduce-pipelined does not implement broadcast; use one of "):
        model_time("broadcast", ALGO, "ring:4", "ideal", 8)
    with pytest.raises(CollectiveError, match=r"^segment_elems of directreduce-pipelined depends on the topology"):
        segment_elems("ideal", 4, ALGO)
    with pytest.raises(CollectiveError, match=r"over the limit of 2\*\*30; raise host\.segment_KiB"):
        model_time("allreduce", ALGO, "ring:4096", load_profile("ideal", ["nic.memory_KiB=1"]), 1 << 28)


def test_stragglers_slow_it_down():
    base = model_time("allreduce", ALGO, "ring:8", "400g-gen5", 1 << 22)
    slow = model_time("allreduce", ALGO, "ring:8", "400g-gen5", 1 << 22, stragglers="3:4")
    assert slow.emulated_us > base.emulated_us
