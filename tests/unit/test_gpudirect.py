"""``nic.gpudirect``: the hardware, not the AllReduce algorithm, picks the path of serve's point-to-point transfers.

Absent, a run is exactly what it was before the key existed (a golden run from that commit); true, every KV
cache and pipeline activation takes the NIC path; false, the host path; whatever ``--algo`` is.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nicemu import cli
from nicemu.errors import ProfileError
from nicemu.nic.profile import load_profile, profile_from_dict
from nicemu.workloads.comm_backends import algos_for
from nicemu.workloads.models import find_preset
from nicemu.workloads.traffic import kv_transfer_bytes

#: directreduce-paper as the golden run was recorded, before its RoCEv2 framing (docs/model.md §7)
AS_RECORDED = ("link.header_bytes=0",)
GOLDEN = json.loads((Path(__file__).resolve().parent.parent / "serve_gpudirect_golden.json").read_text())


def _serve(tmp_path, args, *sets, name="out"):
    """Run ``nicemu serve`` in this process; its records (without wall_s, and without ``fabric``, a key added
    after the golden run, which must say the calls ran on an idle fabric) and its per-request CSV text."""
    (tmp_path / "trace.csv").write_text(GOLDEN["trace"])
    argv = [a if a != "trace.csv" else str(tmp_path / "trace.csv") for a in args]
    for s in (*AS_RECORDED, *sets):
        argv += ["--set", s]
    assert cli.main([*argv, "--jobs", "1", "--json", str(tmp_path / f"{name}.json"),
                     "--csv", str(tmp_path / f"{name}.csv")]) == 0
    recs = json.loads((tmp_path / f"{name}.json").read_text())
    for r in recs:
        r.pop("wall_s")
        assert r.pop("fabric") == "alone"
    return recs, (tmp_path / f"{name}.csv").read_text()


# -- the profile key


def test_absent_by_default_and_set_by_override():
    for name in ("ideal", "400g-gen5", "directreduce-paper", "omniccl-paper"):
        assert load_profile(name).nic.gpudirect is None
    assert load_profile("ideal", ["nic.gpudirect=true"]).nic.gpudirect is True
    assert load_profile("ideal", ["nic.gpudirect=false"]).nic.gpudirect is False


@pytest.mark.parametrize("value", ["1", "0", "maybe", "2.5", ""])
def test_bad_value_is_a_one_line_profile_error(value):
    with pytest.raises(ProfileError, match=r"nic\.gpudirect must be true or false") as exc:
        load_profile("ideal", [f"nic.gpudirect={value}"])
    assert "\n" not in str(exc.value)


def test_bad_value_in_a_file_names_the_file(tmp_path):
    d = load_profile("ideal").to_dict()
    d["nic"]["gpudirect"] = "sometimes"
    path = tmp_path / "mine.yml"
    path.write_text(json.dumps(d).replace("Infinity", ".inf"))
    with pytest.raises(ProfileError, match=r"mine\.yml.*nic\.gpudirect must be true or false"):
        load_profile(str(path))


def test_to_dict_leaves_an_absent_key_out_and_keeps_a_set_one():
    assert "gpudirect" not in load_profile("400g-gen5").to_dict()["nic"]
    for flag in (True, False):
        p = load_profile("400g-gen5", [f"nic.gpudirect={str(flag).lower()}"])
        assert p.to_dict()["nic"]["gpudirect"] is flag
        assert profile_from_dict(p.to_dict(), "x") == p


def test_algos_for_takes_the_path_from_the_flag():
    for algo, engine in (("ring", "host"), ("directreduce", "nic"), ("omniccl", "nic"), ("omnireduce", "host")):
        assert algos_for(algo)[3] == algos_for(algo, None)[3] == f"p2p-{engine}"
        assert algos_for(algo, True)[3] == "p2p-nic" and algos_for(algo, False)[3] == "p2p-host"
        assert algos_for(algo, True)[:3] == algos_for(algo)[:3]


# -- serve


def _close(a, b, path="") -> None:
    """Equal, floats to 1e-12 relative: stored numbers may differ in the last bits on another CPU (the
    libm under numpy differs between machines; docs/testing.md)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _cells(text: str) -> list:
    """A CSV's cells, numbers as floats."""
    out = []
    for line in text.splitlines():
        for cell in line.split(","):
            try:
                out.append(float(cell))
            except ValueError:
                out.append(cell)
    return out


def test_absent_key_gives_the_run_from_before_the_key_existed(tmp_path):
    recs, rows = _serve(tmp_path, GOLDEN["args"])
    _close(recs, GOLDEN["records"])
    _close(_cells(rows), _cells(GOLDEN["csv"]))


def test_explicit_flag_equal_to_the_algorithm_path_changes_nothing(tmp_path):
    """ring's transfers already take the host path and directreduce's the NIC path: naming that path
    explicitly gives the same record (gains against ring aside, where ring itself changed)."""
    old = {r["algo"]: r for r in GOLDEN["records"]}
    host, _ = _serve(tmp_path, GOLDEN["args"], "nic.gpudirect=false", name="host")
    nic, _ = _serve(tmp_path, GOLDEN["args"], "nic.gpudirect=true", name="nic")
    _close(host[0], old["ring"])
    def strip(r):
        return {k: v for k, v in r.items() if "vs_ring" not in k}
    _close(strip(nic[1]), strip(old["directreduce"]))
    # and the other algorithm follows the flag: ring on the NIC path moves KV as directreduce does
    for recs, path in ((host, "host"), (nic, "nic")):
        ring, dr = recs
        assert ring["p2p_path"] == dr["p2p_path"] == path
        assert ring["kv_transfer_ms_mean"] == dr["kv_transfer_ms_mean"]
        assert ring["kv_transfer_ms_p99"] == dr["kv_transfer_ms_p99"]
    assert nic[0]["kv_transfer_ms_mean"] < host[0]["kv_transfer_ms_mean"]
    assert nic[0]["p2p_ms"] < host[0]["p2p_ms"]          # the pipeline activations (PP 2) follow too


O_H = 5.0       # us, host.overhead_us added to ideal so that the two paths differ


@pytest.mark.parametrize("flag", ["true", "false"])
def test_kv_transfer_closed_form_under_ideal(tmp_path, flag):
    """TP 1, 1:1 on ring:2: each request's KV cache is one transfer of n bytes over one hop.
    NIC path: alpha + n beta (PCIe free under ideal); host path: the same plus o_H at each end."""
    args = ["serve", "--model", "llama2-7b", "--tp", "1", "--disaggregated", "1:1", "--arrivals", "trace.csv",
            "--algo", "ring,directreduce", "--executor", "model", "--profile", "ideal"]
    recs, rows = _serve(tmp_path, args, f"host.overhead_us={O_H}", f"nic.gpudirect={flag}")
    ideal = load_profile("ideal")
    alpha, beta = ideal.link.latency_us, 1.0 / (ideal.link.bandwidth_GBps * 1e3)
    model = find_preset("Llama-2-7B")
    seen = 0
    for row in csv.DictReader(rows.splitlines()):
        n = kv_transfer_bytes(int(row["input_tokens"]), model)
        assert n == 2 * 32 * 32 * 128 * int(row["input_tokens"]) * 2     # by hand: 2 x layers x kv_heads x dim x s x 2
        want_us = alpha + n * beta + (2 * O_H if flag == "false" else 0.0)
        assert float(row["kv_transfer_ms"]) * 1e3 == pytest.approx(want_us, rel=1e-9)
        seen += 1
    assert seen == 2 * 5                                  # both algorithms, every request
    assert all(r["p2p_path"] == ("nic" if flag == "true" else "host") for r in recs)
