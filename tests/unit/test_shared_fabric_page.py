"""The shared-fabric study (nicemu/studies/shared_fabric.py) on small cases: what must hold whatever the
numbers, checked against the replay's own guarantees."""

from __future__ import annotations

from nicemu.studies import shared_fabric


def test_one_call_is_alone_and_more_calls_are_slower():
    rows = shared_fabric.same_node_rows(["ring:4"], ["ideal"], ["ring", "host-best", "directreduce"], 1 << 20,
                                        [1, 2, 3])
    for r in rows:
        if r["k"] == 1:
            assert r["emulated_us"] == r["alone_us"] and r["slowdown_vs_alone"] == 1.0
        else:
            assert r["emulated_us"] > r["alone_us"]
    by = {(r["algo"], r["k"]): r for r in rows}
    for algo in ("ring", "host-best", "directreduce"):
        assert by[(algo, 2)]["emulated_us"] < by[(algo, 3)]["emulated_us"]
    assert all(r["gain_vs_ring"] == 0.0 for r in rows if r["algo"] == "ring")
    assert all(r["gain_vs_best_host"] == 0.0 for r in rows if r["algo"] == "host-best")


def test_contiguous_jobs_keep_their_alone_times_and_scattered_ones_do_not():
    rows = shared_fabric.placement_rows(["ring", "directreduce"], [1 << 20])
    for r in rows:
        if r["placement"] == "contiguous":
            assert r["slowdown_vs_alone"] == 1.0
        elif r["placement"] == "scattered":
            assert r["slowdown_vs_alone"] > 1.0
    assert {r["placement"] for r in rows} == {"contiguous", "interleaved", "scattered"}


def test_serving_rows_come_from_serve_and_sharing_never_speeds_a_request_up():
    # one small deployment: Llama-3-8B at 40 requests/s, 4 requests; the rows carry serve's own alone values
    rows = shared_fabric.serve_rows([40.0], 4, "ring,directreduce")
    assert [r["algo"] for r in rows] == ["ring", "directreduce"]
    for r in rows:
        assert r["topology"] == "ring:16" and r["rate"] == 40.0
        assert r["ttft_ms_mean"] >= r["ttft_ms_mean_alone"] > 0
        assert r["fabric_max_delay_ms"] >= 0.0
        assert r["ttft_ms_mean_first_order"] >= r["ttft_ms_mean_alone"]
        assert r["fabric_reform_converged"] and r["fabric_reform_rounds"] <= 4
