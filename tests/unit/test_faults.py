"""Link faults (nic/faults.py, collectives/model/link_faults.py) and stragglers, without MPI.

The closed-form go-back-N cost is checked against a packet-by-packet simulation
that walks every attempt; fault-free runs must be bit-identical to the plain
model executor.
"""

import math

import numpy as np
import pytest

from nicemu.collectives import build_schedule, model_time
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.registry import names
from nicemu.errors import FaultSpecError
from nicemu.nic.faults import FaultSpec, expected_delay_us, parse_faults, transfer_faults, transfer_keys, uniforms
from nicemu.nic.profile import load_profile
from nicemu.nic.stragglers import parse_stragglers
from nicemu.topologies import parse_topology

PROFILE = load_profile("directreduce-paper")


def test_parse_full_spec():
    spec = parse_faults("drop=1e-3, corrupt=2e-3,seed=7,link=3->4,link=5->6")
    assert spec == FaultSpec(1e-3, 2e-3, 7, ((3, 4), (5, 6)))
    assert math.isclose(spec.fail_probability, 1e-3 + (1 - 1e-3) * 2e-3)
    assert parse_faults(None) is None and parse_faults("  ") is None


@pytest.mark.parametrize("text, words", [
    ("drop", "key=value"), ("drop=x", "not a number"), ("drop=0.9", "[0, 0.5]"),
    ("corrupt=-1", "[0, 0.5]"), ("seed=1", "drop=P"), ("drop=0.1,lose=2", "unknown key 'lose'"),
    ("drop=0.1,drop=0.2", "twice"), ("drop=0.1,seed=-3", "seed"), ("drop=0.1,link=3-4", "SRC->DST"),
    ("drop=0.1,link=2->2", "different"),
])
def test_parse_errors_are_one_line(text, words):
    with pytest.raises(FaultSpecError) as exc:
        parse_faults(text)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def simulate_go_back_n(spec, rto_us, P, us_per_B, latency_us, call, step, src, dst, nbytes):
    """Walk every packet attempt of one transfer; returns (delay of first, delay of last, drops, corruptions)."""
    key = transfer_keys(spec.seed, call, step, [src], [dst])
    e = spec.fail_probability
    k = -(-nbytes // P)
    sizes = [P] * (k - 1) + [nbytes - (k - 1) * P]
    event = 0

    def next_gap():
        u = float(uniforms(key, event, 0)[0])
        return math.floor(math.log1p(-u) / math.log1p(-e))

    good_left = next_gap()
    t = 0.0
    first_done = None
    drops = corruptions = 0
    i = 0
    while i < k:
        t += sizes[i] * us_per_B                  # this attempt's serialisation
        if good_left > 0:
            good_left -= 1
            if i == 0:
                first_done = t
            i += 1
            continue
        dropped = float(uniforms(key, event, 1)[0]) < spec.drop / e
        drops += dropped
        corruptions += not dropped
        t += rto_us if dropped else 2 * latency_us  # detection; the packet goes again
        event += 1
        good_left = next_gap()
    clean = nbytes * us_per_B
    return first_done - sizes[0] * us_per_B, t - clean, drops, corruptions


@pytest.mark.parametrize("nbytes", [1, 1000, 1024, 5000, 300_000])
@pytest.mark.parametrize("spec", [FaultSpec(0.05, 0.0, 1), FaultSpec(0.0, 0.05, 2), FaultSpec(0.03, 0.04, 3)])
def test_closed_form_matches_packet_walk(nbytes, spec):
    P, beta, alpha, rto = 1024, 8e-5, 1.0, 131.072
    src = np.arange(40)
    dst = (src + 1) % 40
    tf = transfer_faults(spec, rto, P, beta, alpha, 3, 5, src, dst, np.full(40, nbytes))
    for t in range(40):
        first, last, drops, corr = simulate_go_back_n(spec, rto, P, beta, alpha, 3, 5, int(src[t]), int(dst[t]),
                                                       nbytes)
        assert (tf.drops[t], tf.corruptions[t]) == (drops, corr)
        assert math.isclose(tf.delay_us[t], last, rel_tol=1e-12, abs_tol=1e-9)
        assert math.isclose(tf.delay_first_us[t], first, rel_tol=1e-12, abs_tol=1e-9)


def test_retransmitted_bytes_go_back_n_window():
    # a corruption is caught 2*alpha after its packet: with alpha = 1 us and 0.08192 us per
    # 1 KiB packet, floor(2 / 0.08192) = 24 packets behind it are resent too
    spec = FaultSpec(0.0, 0.5, 9)
    tf = transfer_faults(spec, 131.072, 1024, 8e-5, 1.0, 0, 0, [0], [1], [1024 * 1000])
    i = int(tf.events[0][1][0])
    assert tf.retransmit_bytes[0] >= 1024 * (1 + min(24, 999 - i))
    one = transfer_faults(FaultSpec(0.0, 0.5, 9), 131.072, 1024, 8e-5, 1.0, 0, 0, [0], [1], [1024])
    assert one.retransmit_bytes[0] == 1024 * one.corruptions[0]


def test_mean_delay_matches_expectation():
    spec = FaultSpec(2e-3, 2e-3, 4)
    n = 20000
    tf = transfer_faults(spec, 131.072, 1024, 8e-5, 1.0, 0, 0, np.arange(n), np.arange(n) + 1,
                         np.full(n, 64 * 1024))
    want = expected_delay_us(spec, 131.072, 64, 1024 * 8e-5, 1.0)
    assert abs(tf.delay_us.mean() - want) / want < 0.05


def test_draws_depend_on_every_key_part():
    base = transfer_keys(1, 2, 3, [4], [5])
    for other in (transfer_keys(0, 2, 3, [4], [5]), transfer_keys(1, 0, 3, [4], [5]),
                  transfer_keys(1, 2, 0, [4], [5]), transfer_keys(1, 2, 3, [0], [5]),
                  transfer_keys(1, 2, 3, [4], [0])):
        assert other[0] != base[0]


@pytest.mark.parametrize("algo", names(kind="dense", emulated=True, link_faults=True))
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("topology", ["ring:8", "torus:3x2x2"])
def test_no_faults_is_bit_identical(algo, collective, topology):
    topo = parse_topology(topology)
    schedule = build_schedule(collective, algo, topo, 12345)
    plain = run_model(schedule, PROFILE, 4)
    for faults in ("drop=0,corrupt=0,seed=1", "drop=0.5,corrupt=0.5,seed=1,link=0->5"):
        # probability 0, or faults only on a link no schedule uses: not one bit may change
        t = model_time(collective, algo, topo, PROFILE, 12345, "float32", faults, 3)
        assert t.emulated_us == plain.emulated_us
        assert np.array_equal(t.node_done_us, plain.node_done_us)
        assert (t.host_busy_us, t.nic_busy_us, t.wire_bytes) == (plain.host_busy_us, plain.nic_busy_us,
                                                                 plain.wire_bytes)
    slow_by_one = model_time(collective, algo, topo, PROFILE, 12345, stragglers="1:1")
    assert slow_by_one.emulated_us == plain.emulated_us


@pytest.mark.parametrize("algo", names(kind="dense", emulated=True, link_faults=True))
def test_faults_and_stragglers_slow_down(algo):
    topo = parse_topology("ring:8")
    clean = model_time("allreduce", algo, topo, PROFILE, 1 << 18)
    faulty = model_time("allreduce", algo, topo, PROFILE, 1 << 18, faults="drop=1e-3,corrupt=1e-3,seed=1")
    assert faulty.emulated_us > clean.emulated_us
    assert faulty.faults["drops"] + faulty.faults["corruptions"] > 0
    assert sum(r["retransmit_bytes"] for r in faulty.faults["per_link"]) == faulty.faults["retransmit_bytes"]
    slow = model_time("allreduce", algo, topo, PROFILE, 1 << 18, stragglers="3:2")
    slower = model_time("allreduce", algo, topo, PROFILE, 1 << 18, stragglers="3:4")
    assert clean.emulated_us < slow.emulated_us < slower.emulated_us


def test_named_link_only():
    topo = parse_topology("ring:8")
    t = model_time("allreduce", "ring", topo, PROFILE, 1 << 18, faults="drop=0.01,seed=2,link=3->4")
    assert [r["link"] for r in t.faults["per_link"]] == ["3->4"]


def test_host_ring_straggler_closed_form():
    # ideal profile: a host-ring step costs alpha + c*beta (+ c*gamma when reducing) on the
    # receiving host; a straggler's gamma is F times larger, and in a ring every step waits
    # for the slowest node, so each reduce-scatter step costs alpha + c*beta + F*c*gamma
    prof = load_profile("ideal")
    topo = parse_topology("ring:4")
    n, F = 4 * 1024 * 1024, 3.0
    c = n / 4
    alpha, beta, gamma = 1.0, 1 / 12.5e3, 1 / 20e3
    t = model_time("reducescatter", "ring", topo, prof, n // 4, "float32", stragglers={2: F})
    # the straggler's extra time enters once per step in which it reduces (every step), and
    # each later step of its successors starts after it
    assert t.emulated_us > 3 * (alpha + c * beta + c * gamma)
    assert t.emulated_us <= 3 * (alpha + c * beta + F * c * gamma) + 1e-9


def test_straggler_parse():
    assert parse_stragglers(["3:2", "5:1.5,6:4"]) == {3: 2.0, 5: 1.5, 6: 4.0}
    for bad in ("3", "x:2", "3:0.5", "3:inf", "-1:2"):
        with pytest.raises(FaultSpecError):
            parse_stragglers(bad)
    with pytest.raises(FaultSpecError, match="twice"):
        parse_stragglers("3:2,3:4")


def test_profile_retransmit_timeout():
    assert PROFILE.nic.retransmit_timeout_us == 131.072
    assert load_profile("ideal", ("nic.retransmit_timeout_us=20",)).nic.retransmit_timeout_us == 20.0
    with pytest.raises(Exception, match="retransmit_timeout_us"):
        load_profile("ideal", ("nic.retransmit_timeout_us=-1",))


@pytest.mark.parametrize("algo", names(kind="dense", emulated=True, link_faults=True))
def test_single_process_faults_exact_and_model_equal(algo):
    """All nodes in one process: every transfer goes through the in-memory attempts (loopback)."""
    from mpi4py import MPI

    from nicemu.collectives import Emulator

    faults = "drop=0.03,corrupt=0.03,seed=4"
    prof = load_profile("directreduce-paper", ("nic.packet_bytes=256",))
    with Emulator(MPI.COMM_SELF, "torus:2x3", prof, faults=faults, stragglers="4:2") as emu:
        x = np.random.default_rng(2).integers(-99, 99, size=(6, 2000))
        for call in range(2):
            res = emu.allreduce(x, algo=algo)
            np.testing.assert_array_equal(res.data, np.broadcast_to(x.sum(axis=0), x.shape))
            m = model_time("allreduce", algo, emu.topology, prof, 2000, "int64", faults, call, "4:2")
            assert res.emulated_us == m.emulated_us and res.faults == m.faults
            assert res.faults["drops"] + res.faults["corruptions"] > 0
