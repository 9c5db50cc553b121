"""Synthetic arrivals and length distributions (workloads/requests.py)."""

import math

import numpy as np
import pytest

from nicemu.errors import WorkloadError
from nicemu.workloads.requests import (
    Fixed,
    LogNormal,
    Uniform,
    arrival_times_us,
    parse_lengths,
    synthetic_requests,
)


def gaps(times):
    return np.diff(times)


def test_poisson_mean_rate_and_unit_cv():
    t = arrival_times_us(20001, rate_per_s=5.0, seed=3)
    g = gaps(t)
    assert t[0] == 0.0 and np.all(g >= 0)
    assert g.mean() == pytest.approx(1e6 / 5.0, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_keeps_rate_and_sets_cv(cv):
    g = gaps(arrival_times_us(40001, rate_per_s=10.0, cv=cv, seed=1))
    assert g.mean() == pytest.approx(1e5, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.06)


def test_arrivals_are_seeded():
    a = arrival_times_us(100, 2.0, 1.5, seed=7)
    assert np.array_equal(a, arrival_times_us(100, 2.0, 1.5, seed=7))
    assert not np.array_equal(a, arrival_times_us(100, 2.0, 1.5, seed=8))


def test_infinite_rate_is_an_offline_batch():
    assert np.array_equal(arrival_times_us(5, math.inf), np.zeros(5))


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_bad_rate(rate):
    with pytest.raises(WorkloadError, match="rate must be > 0"):
        arrival_times_us(10, rate)


@pytest.mark.parametrize("cv", [0.0, -1.0, float("inf")])
def test_bad_cv(cv):
    with pytest.raises(WorkloadError, match="--cv"):
        arrival_times_us(10, 1.0, cv)


def test_negative_count():
    with pytest.raises(WorkloadError):
        arrival_times_us(-1, 1.0)


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert np.all(Fixed(7).sample(10, rng) == 7)
    u = Uniform(10, 20).sample(10000, rng)
    assert u.min() == 10 and u.max() == 20
    ln = LogNormal(1155, 0.8).sample(200_000, rng)
    assert ln.mean() == pytest.approx(1155, rel=0.01) and ln.min() >= 1
    capped = LogNormal(1155, 1.5, max_tokens=2000).sample(10000, rng)
    assert capped.max() == 2000


@pytest.mark.parametrize("spec, dist", [
    ("1024", Fixed(1024)), ("fixed:8", Fixed(8)), ("uniform:1:9", Uniform(1, 9)),
    ("lognormal:1155:0.8", LogNormal(1155.0, 0.8)), ("lognormal:211:1:2048", LogNormal(211.0, 1.0, 2048))])
def test_parse_lengths(spec, dist):
    assert parse_lengths(spec) == dist


@pytest.mark.parametrize("spec", ["", "fixed", "fixed:0", "uniform:5:1", "uniform:a:b", "zipf:1", "lognormal:0:1",
                                  "lognormal:10:-1", "fixed:1:2"])
def test_parse_lengths_errors(spec):
    with pytest.raises(WorkloadError, match="length distribution"):
        parse_lengths(spec)


def test_synthetic_requests_seeded_and_streams_independent():
    a = synthetic_requests(50, 3.0, "lognormal:1155:0.8", "lognormal:211:0.8", seed=11)
    b = synthetic_requests(50, 3.0, "lognormal:1155:0.8", "lognormal:211:0.8", seed=11)
    assert a == b
    assert [r.id for r in a] == list(range(50))
    c = synthetic_requests(50, 3.0, "lognormal:1155:0.8", "fixed:5", seed=11)
    assert [(r.arrival_us, r.input_tokens) for r in a] == [(r.arrival_us, r.input_tokens) for r in c]
    assert all(r.output_tokens == 5 for r in c)
    d = synthetic_requests(50, 3.0, "lognormal:1155:0.8", "lognormal:211:0.8", seed=12)
    assert a != d
