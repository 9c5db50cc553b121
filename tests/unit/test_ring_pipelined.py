"""ring-pipelined: closed forms under `ideal`, identity with `ring` at one segment, schedule invariants,
the segment-size profile key, and the comparison with `ring` on the shipped profiles (model executor)."""

import numpy as np
import pytest

from nicemu.collectives import build_schedule, model_time
from nicemu.collectives.schedules import ring_pipelined
from nicemu.collectives.schedules.steps import step_groups
from nicemu.errors import CollectiveError, ProfileError
from nicemu.nic.profile import DEFAULT_SEGMENT_KiB, load_profile, profile_from_dict, shipped_profiles
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")
ALPHA = IDEAL.link.latency_us
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)     # us per byte
GAMMA = 1.0 / (IDEAL.host.reduce_GBps * 1e3)       # us per byte; GAMMA < BETA under ideal
SEG_ELEMS = IDEAL.host.segment_elems(4)            # 1 MiB of float32


def pipelined_formula(collective: str, k: int, S: int, b: float, beta=BETA, gamma=GAMMA) -> float:
    """One ring of k nodes, S segments of b bytes per chunk: the wavefront's closed form (docs/model.md §4.5).

    A group that sends m segments costs α + m·bβ (link, serialised), plus bγ when its last segment is
    reduced (the host reduces each segment while the next one arrives, which needs γ ≤ β); with γ > β
    a reduce-scatter group costs α + bβ + m·bγ instead.
    """
    steps = k - 1
    if collective == "allgather":
        return (steps + S - 1) * ALPHA + steps * S * b * beta
    if collective == "reducescatter":
        if gamma <= beta:
            return (steps + S - 1) * (ALPHA + b * gamma) + steps * S * b * beta
        return (steps + S - 1) * (ALPHA + b * beta) + steps * S * b * gamma
    assert gamma <= beta
    # one run of 2(k-1) steps; only the first k-1 groups end on a reduce-scatter segment
    return (2 * steps + S - 1) * ALPHA + 2 * steps * S * b * beta + steps * b * gamma


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("S", [1, 2, 7, 16])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
def test_closed_form_on_a_ring(k, S, collective):
    count = k * S * SEG_ELEMS                      # every chunk is S whole segments
    t = model_time(collective, "ring-pipelined", f"ring:{k}", IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(pipelined_formula(collective, k, S, SEG_ELEMS * 4), rel=1e-9)


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("S", [1, 5])
def test_host_bound_reduce_scatter(k, S):
    """A host slower than the link (γ > β): the host's reductions, not the link, set the pace."""
    prof = load_profile("ideal", ["host.reduce_GBps=5", "host.segment_KiB=4"])
    seg = prof.host.segment_elems(4)
    t = model_time("reducescatter", "ring-pipelined", f"ring:{k}", prof, k * S * seg, "float32")
    assert t.emulated_us == pytest.approx(
        pipelined_formula("reducescatter", k, S, seg * 4, gamma=1 / 5e3), rel=1e-9)


@pytest.mark.parametrize("shape", ["torus:4x4x2", "torus:3x3"])
@pytest.mark.parametrize("m", [1, 3])
def test_closed_form_on_a_torus(shape, m):
    """Dimensions do not pipeline into each other: one run per dimension, the last one's two phases as one."""
    prof = load_profile("ideal", ["host.segment_KiB=4"])
    seg = prof.host.segment_elems(4)
    topo = parse_topology(shape)
    count = topo.nodes * seg * m
    expected, piece = 0.0, count
    for d, k in enumerate(topo.shape):
        piece //= k                                # the chunk of dimension d, S_d whole segments
        S = piece // seg
        if d == topo.ndim - 1:
            expected += pipelined_formula("allreduce", k, S, seg * 4)
        else:
            expected += pipelined_formula("reducescatter", k, S, seg * 4)
            expected += pipelined_formula("allgather", k, S, seg * 4)
    t = model_time("allreduce", "ring-pipelined", topo, prof, count, "float32")
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


def _steps(collective, algo, topo, count, bidirectional, seg=None):
    sched = build_schedule(collective, algo, topo, count, bidirectional, seg)
    return list(sched.steps())


@pytest.mark.parametrize("topology", ["ring:5", "torus:3x2x4"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("count", [0, 7, 1000])
def test_one_segment_is_the_host_ring(topology, collective, bidirectional, count):
    """Chunks no larger than a segment: the very steps of `ring`, so the same time to the bit."""
    topo = parse_topology(topology)
    ring = _steps(collective, "ring", topo, count, bidirectional)
    pipe = _steps(collective, "ring-pipelined", topo, count, bidirectional, 10**6)
    assert len(ring) == len(pipe)
    for a, b in zip(ring, pipe):
        assert (a.phase, a.dim, a.direction, a.index, a.group, a.engine, a.reduce, a.from_host, a.to_host) == \
               (b.phase, b.dim, b.direction, b.index, b.group, b.engine, b.reduce, b.from_host, b.to_host)
        for field in ("src", "dst", "offset", "count"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for prof in shipped_profiles():
        p = load_profile(prof, [f"topology.bidirectional={str(bidirectional).lower()}"])
        assert model_time(collective, "ring-pipelined", topo, p, count).emulated_us == \
               model_time(collective, "ring", topo, p, count).emulated_us


@pytest.mark.parametrize("topology", ["ring:2", "ring:5", "torus:3x2x4"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("count,seg", [(1000, 7), (97, 3), (40, 64)])
def test_groups_keep_the_step_invariants(topology, collective, bidirectional, count, seg):
    """Per group: no node writes a range it sends; per ring step, every element of every chunk is
    moved exactly once (the segments tile the chunks `ring` moves)."""
    topo = parse_topology(topology)
    pipe = _steps(collective, "ring-pipelined", topo, count, bidirectional, seg)
    for group in step_groups(pipe):
        sent = np.zeros((topo.nodes, count), dtype=bool)
        for s in group:
            assert len(np.unique(s.src)) == len(s.src) and len(np.unique(s.dst)) == len(s.dst)
            for n, o, c in zip(s.src, s.offset, s.count):
                sent[n, o:o + c] = True
        for s in group:
            for n, o, c in zip(s.dst, s.offset, s.count):
                assert not sent[n, o:o + c].any()
    moved: dict[tuple, np.ndarray] = {}
    for s in pipe:
        key = (s.phase, s.dim, s.direction, s.index)
        acc = moved.setdefault(key, np.zeros((topo.nodes, count), dtype=np.int64))
        for n, o, c in zip(s.src, s.offset, s.count):
            acc[n, o:o + c] += 1
    for s in _steps(collective, "ring", topo, count, bidirectional):
        acc = moved.pop((s.phase, s.dim, s.direction, s.index))
        want = np.zeros_like(acc)
        for n, o, c in zip(s.src, s.offset, s.count):
            want[n, o:o + c] = 1
        np.testing.assert_array_equal(acc, want)
    assert not moved


def test_wavefront_group_count():
    """A run of T ring steps with S segments takes T + S - 1 groups."""
    sched = build_schedule("allreduce", "ring-pipelined", "ring:8", 8 * 5 * 100, False, 100)
    assert len(list(step_groups(sched.steps()))) == 2 * 7 + 5 - 1
    assert sched.transfers == 8 * 2 * 7 * 5 == sum(len(s.src) for s in sched.steps())
    sched = build_schedule("reducescatter", "ring-pipelined", "torus:4x2", 8 * 12, True, 2)
    runs = ring_pipelined.plan_runs(parse_topology("torus:4x2"), 8 * 12, "reducescatter", 2, True)
    assert [(r.dim, len(r.steps), r.segments) for r in runs] == [(0, 3, 6), (1, 1, 3)]
    assert len(list(step_groups(sched.steps()))) == (3 + 6 - 1) + (1 + 3 - 1)


@pytest.mark.parametrize("profile", shipped_profiles())
@pytest.mark.parametrize("topology", ["ring:8", "ring:5", "torus:4x4x2"])
def test_never_slower_than_ring_at_large_sizes(profile, topology):
    """Gain 1 - t/t_ring at 64 MiB .. 1 GiB (docs/model.md §4.5): positive and growing with the size,
    below γ/(2β+γ) (the whole reduction hidden behind the link, β with the packets' headers), and on
    rings within 0.03 of it from 256 MiB on when the link, not the host's reduction, is the slower
    stage (γ < β: every shipped 100 Gb/s profile; on 400g-gen5 the host's reduction is slower)."""
    prof = load_profile(profile)
    beta = (1 + prof.link.header_bytes / prof.nic.packet_bytes) / (prof.link.bandwidth_GBps * 1e3)
    gamma = 1.0 / (prof.host.reduce_GBps * 1e3)
    bound = gamma / (2 * beta + gamma)
    gains = []
    for nbytes in (1 << 26, 1 << 28, 1 << 30):
        ring = model_time("allreduce", "ring", topology, profile, nbytes // 4).emulated_us
        pipe = model_time("allreduce", "ring-pipelined", topology, profile, nbytes // 4).emulated_us
        gains.append(1 - pipe / ring)
    assert 0 < gains[0] < gains[1] < gains[2] < bound
    if topology.startswith("ring") and gamma < beta:
        assert gains[1] > bound - 0.03


def test_segment_size_follows_profile_and_dtype():
    prof = load_profile("directreduce-paper", ["host.segment_KiB=64"])
    assert prof.host.segment_elems(4) == 16384 and prof.host.segment_elems(8) == 8192
    count = 8 * 65536                               # 64K float32 elements per chunk: 4 segments of 64 KiB
    t32 = model_time("reducescatter", "ring-pipelined", "ring:8", prof, count, "float32")
    t_half = model_time("reducescatter", "ring-pipelined", "ring:8", prof, count // 2, "float64")
    assert t32.emulated_us == t_half.emulated_us    # the same bytes in the same segments
    coarse = load_profile("directreduce-paper", ["host.segment_KiB=256"])
    assert model_time("reducescatter", "ring-pipelined", "ring:8", coarse, count).emulated_us == \
           model_time("reducescatter", "ring", "ring:8", coarse, count).emulated_us


def test_profile_key_is_optional_and_checked():
    data = {"link": {"bandwidth_GBps": 12.5, "latency_us": 1.0}, "pcie": {"bandwidth_GBps": 25, "latency_us": 0.5},
            "host": {"reduce_GBps": 20, "overhead_us": 1.0},
            "nic": {"reduce_GBps": 50, "latency_us": 0.2, "packet_bytes": 1024, "memory_KiB": 4096}}
    assert profile_from_dict(data, "x").host.segment_KiB == DEFAULT_SEGMENT_KiB == 1024
    data["host"]["segment_KiB"] = 0.5
    assert profile_from_dict(data, "x").host.segment_elems(8) == 64
    for bad in ("0", "-1", ".inf", "true"):
        with pytest.raises(ProfileError, match=r"^--set host\.segment_KiB=.*: host\.segment_KiB must be a number "
                                               r"> 0 and at most 2\*\*40, got"):
            load_profile("ideal", [f"host.segment_KiB={bad}"])
    assert load_profile("ideal", ["host.segment_KiB=1e-3"]).host.segment_elems(4) == 1   # at least one element


def test_bad_calls_are_one_line_errors():
    with pytest.raises(CollectiveError, match=r"^ring-pipelined does not implement alltoall; use one of ring, "):
        build_schedule("alltoall", "ring-pipelined", "ring:4", 8)
    with pytest.raises(CollectiveError, match=r"^segment_elems must be a whole number"):
        build_schedule("allreduce", "ring-pipelined", "ring:4", 8, False, 2.5)
    with pytest.raises(CollectiveError, match=r"^segment_elems must be at least 1"):
        build_schedule("allreduce", "ring-pipelined", "ring:4", 8, False, 0)
    with pytest.raises(CollectiveError, match=r"over the limit of 2\*\*30; raise host\.segment_KiB"):
        model_time("allreduce", "ring-pipelined", "ring:1024", load_profile("ideal", ["host.segment_KiB=1e-3"]),
                   1 << 20)
