"""The closed-form packet stream against a packet-by-packet reference."""

import numpy as np
import pytest

from nicemu.nic.streams import join, packet_split, stage, us_per_byte, whole_message


def packet_sim(arrivals, sizes, free, us_per_B, latency):
    """FIFO server, one packet at a time: the definition the closed form must reproduce."""
    t = free
    first = None
    for a, s in zip(arrivals, sizes):
        t = max(t, a) + s * us_per_B
        if first is None:
            first = t + latency
    return first, t + latency, t


def link_stream(start, nbytes, P, b):
    """Arrival times of packets leaving a link that starts sending at `start`."""
    sizes = [P] * (nbytes // P) + ([nbytes % P] if nbytes % P else [])
    times, t = [], start
    for s in sizes:
        t += s * b
        times.append(t)
    return times, sizes


@pytest.mark.parametrize("nbytes", [1, 512, 1024, 4096, 10 * 1024])
@pytest.mark.parametrize("b_up,b_here", [(0.08, 0.01), (0.01, 0.08), (0.05, 0.05)])
def test_stage_matches_packet_simulation_for_full_packets(nbytes, b_up, b_here):
    P = 1024
    nbytes = max(nbytes // P, 1) * P if nbytes >= P else nbytes
    arr, sizes = link_stream(0.0, nbytes, P, b_up)
    ref = packet_sim(arr, sizes, 0.0, b_here, 0.3)
    got = stage(arr[0], arr[-1], nbytes, 0.0, b_here, 0.3, P)
    assert got[0] == pytest.approx(ref[0])
    assert got[1] == pytest.approx(ref[1])
    assert got[2] == pytest.approx(ref[2])


def test_stage_waits_for_a_busy_stage():
    f, last, busy = stage(1.0, 1.0, 1000, 5.0, 0.01, 0.5, 1024)
    assert f == pytest.approx(5.0 + 10.0 + 0.5)
    assert busy == pytest.approx(15.0)


def test_packet_split():
    first, last = packet_split(np.array([0, 1, 1024, 1025, 4096]), 1024)
    assert list(first) == [0, 1, 1024, 1024, 1024]
    assert list(last) == [0, 1, 1024, 1, 1024]


def test_join_and_whole_message():
    assert join(1.0, 4.0, 2.0, 3.0) == (2.0, 4.0)
    done, busy = whole_message(10.0, 1000, 12.0, 0.01, 1.0)
    assert done == pytest.approx(12.0 + 1.0 + 10.0) and busy == done


def test_us_per_byte_units():
    assert us_per_byte(1.0) == pytest.approx(1e-3)   # 1 GB/s = 1000 bytes per microsecond
    assert us_per_byte(float("inf")) == 0.0


def test_vectorised_equals_scalar():
    rng = np.random.default_rng(0)
    fi = rng.random(50) * 10
    la = fi + rng.random(50) * 10
    nb = rng.integers(0, 100_000, 50)
    fr = rng.random(50) * 10
    vec = stage(fi, la, nb, fr, 0.02, 0.7, 1024)
    for i in range(50):
        sc = stage(fi[i], la[i], nb[i], fr[i], 0.02, 0.7, 1024)
        assert all(v[i] == s for v, s in zip(vec, sc))
