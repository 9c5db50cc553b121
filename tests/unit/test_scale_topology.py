"""scripts/scale_topology.py and nicemu.studies.scale_topology: outputs, gains, resume after a finished or
interrupted run, bad input."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from nicemu.collectives import model_time
from nicemu.nic.profile import load_profile
from nicemu.studies import scale_topology as study
from nicemu.topologies import parse_topology

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "scale_topology.py"
_spec = importlib.util.spec_from_file_location("scale_topology", SCRIPT)
st = importlib.util.module_from_spec(_spec)
sys.modules["scale_topology"] = st
_spec.loader.exec_module(st)

SMALL = ["--quick", "--k", "3", "--sizes", "1K,1M", "--algo", "ring,directreduce"]   # 2 sizes x 2 algorithms on torus:3^6


def run(tmp_path, *extra, name="st"):
    prefix = tmp_path / name
    return st.main([*SMALL, "--out", str(prefix), *extra]), prefix


def lines(path):
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    code, prefix = run(tmp)
    return code, prefix


def test_writes_every_output_with_one_record_per_point(full_run):
    code, prefix = full_run
    assert code == 0
    for suffix in (".csv", ".json", ".md", ".partial.jsonl", "_time_vs_nodes.png", "_gain_heatmap.png"):
        path = Path(f"{prefix}{suffix}")
        assert path.is_file() and path.stat().st_size > 0, suffix
    records = json.loads(Path(f"{prefix}.json").read_text())
    assert len(records) == 4
    assert {(r["k"], r["nodes"], r["bytes"], r["algo"], r["variant"]) for r in records} == {
        (3, 729, m, a, "unidirectional") for m in (1 << 10, 1 << 20) for a in ("ring", "directreduce")}
    for r in records:
        assert set(study.FIELDS) <= set(r)
        assert r["bytes_per_node"] == r["bytes"] / r["nodes"]
        assert r["count"] == r["bytes"] // 4
        assert r["emulated_us"] > 0 and r["model_wall_s"] > 0
    with open(f"{prefix}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0]) == study.FIELDS
    assert len(lines(Path(f"{prefix}.partial.jsonl"))) == 4


def test_gains_are_one_minus_directreduce_over_ring(full_run):
    _, prefix = full_run
    records = json.loads(Path(f"{prefix}.json").read_text())
    t = {(r["bytes"], r["algo"]): r for r in records}
    for m in (1 << 10, 1 << 20):
        assert t[(m, "ring")]["gain_vs_ring"] is None
        expected = 1 - t[(m, "directreduce")]["emulated_us"] / t[(m, "ring")]["emulated_us"]
        assert t[(m, "directreduce")]["gain_vs_ring"] == pytest.approx(expected, rel=1e-12)
    assert t[(1 << 20, "directreduce")]["gain_vs_ring"] > 0.15   # M/N > 1 KB: the paper's 15-36 %
    table = Path(f"{prefix}.md").read_text()
    assert table.splitlines()[0] == ("Regenerate (from the repository root): `python scripts/scale_topology.py "
                                     f"{' '.join(SMALL)} --out {prefix}`")
    assert "![st_gain_heatmap](st_gain_heatmap.png)" in table
    assert "| 3 | 729 | 1M |" in table
    assert f"{100 * t[(1 << 20, 'directreduce')]['gain_vs_ring']:.2f}%" in table


def test_emulated_time_matches_model_time_directly(full_run):
    _, prefix = full_run
    rec = next(r for r in json.loads(Path(f"{prefix}.json").read_text())
               if r["algo"] == "directreduce" and r["bytes"] == 1 << 20)
    timing = model_time("allreduce", "directreduce", parse_topology("torus:3^6"),
                        load_profile("directreduce-paper"), (1 << 20) // 4, "float32")
    assert rec["emulated_us"] == timing.emulated_us


def test_second_run_reuses_everything(tmp_path, monkeypatch, capsys):
    code, prefix = run(tmp_path, "--no-plots")
    assert code == 0
    partial = Path(f"{prefix}.partial.jsonl")
    first_partial, first_json = partial.read_text(), Path(f"{prefix}.json").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("a finished point was computed again")

    monkeypatch.setattr(study, "model_time", boom)
    capsys.readouterr()
    code, _ = run(tmp_path, "--no-plots")
    assert code == 0
    assert partial.read_text() == first_partial
    assert Path(f"{prefix}.json").read_text() == first_json
    out = capsys.readouterr()
    assert "reusing 4 of 4 points" in out.err
    assert "0 computed, 4 reused" in out.out


def test_other_profile_overrides_are_not_reused(tmp_path):
    code, prefix = run(tmp_path, "--no-plots")
    assert code == 0
    code, _ = run(tmp_path, "--no-plots", "--set", "nic.packet_bytes=4096")
    assert code == 0
    partial = [json.loads(x) for x in lines(Path(f"{prefix}.partial.jsonl"))]
    assert len(partial) == 8 and len({r["profile_id"] for r in partial}) == 2
    records = json.loads(Path(f"{prefix}.json").read_text())
    assert len(records) == 4 and all(r["overrides"] == ["nic.packet_bytes=4096"] for r in records)


def test_resumes_from_partial_file_with_a_cut_last_line(tmp_path, monkeypatch):
    code, prefix = run(tmp_path, "--no-plots", name="ref")
    assert code == 0
    reference = json.loads(Path(f"{prefix}.json").read_text())
    done = lines(Path(f"{prefix}.partial.jsonl"))

    # a run that was killed while writing its third record
    partial = tmp_path / "st.partial.jsonl"
    partial.write_text(done[0] + "\n" + done[1] + "\n" + done[2][: len(done[2]) // 2])
    calls = []
    real = study.model_time
    monkeypatch.setattr(study, "model_time", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    code, prefix = run(tmp_path, "--no-plots")
    assert code == 0
    assert len(calls) == 2                      # only the two missing points ran
    got = lines(partial)
    assert len(got) == 4 and got[:2] == done[:2]
    assert all(json.loads(x) for x in got)      # the cut line is gone, every line is whole
    records = json.loads(Path(f"{prefix}.json").read_text())
    strip = [{k: v for k, v in r.items() if k != "model_wall_s"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "model_wall_s"} for r in reference]


def test_ctrl_c_leaves_whole_lines_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    real = study.model_time
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "model_time", interrupted)
    code, prefix = run(tmp_path, "--no-plots")
    assert code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "resume" in err[0] and "2 finished" in err[0]
    partial = Path(f"{prefix}.partial.jsonl")
    assert [json.loads(x)["algo"] for x in lines(partial)] == ["ring", "directreduce"]
    assert not Path(f"{prefix}.json").exists()

    monkeypatch.setattr(study, "model_time", real)
    code, _ = run(tmp_path, "--no-plots")
    assert code == 0 and len(lines(partial)) == 4


def test_fresh_and_clean(tmp_path, capsys):
    code, prefix = run(tmp_path, "--no-plots")
    partial = Path(f"{prefix}.partial.jsonl")
    assert code == 0 and partial.exists()
    code, _ = run(tmp_path, "--no-plots", "--fresh", "--clean")
    assert code == 0 and not partial.exists()
    assert "4 computed, 0 reused" in capsys.readouterr().out
    assert len(json.loads(Path(f"{prefix}.json").read_text())) == 4


def test_bidirectional_variant_runs_and_is_faster(tmp_path, capsys):
    code, prefix = run(tmp_path, "--no-plots", "--variants", "unidirectional,bidirectional")
    assert code == 0
    assert "skipping variant" not in capsys.readouterr().err
    records = json.loads(Path(f"{prefix}.json").read_text())
    assert len(records) == 8 and {r["variant"] for r in records} == {"unidirectional", "bidirectional"}
    by = {(r["variant"], r["algo"], r["bytes"]): r["emulated_us"] for r in records}
    for (variant, algo, size), t in by.items():
        if variant == "bidirectional" and size >= 1 << 20:
            assert t < by[("unidirectional", algo, size)]


def test_progress_bar_names_the_running_point(tmp_path, capsys):
    code, _ = run(tmp_path, "--no-plots", "--progress")
    assert code == 0
    err = capsys.readouterr().err
    assert "k=3 1M directreduce" in err and "4/4" in err


@pytest.mark.parametrize("argv", [
    ["--algo", "ring,mpi"],
    ["--algo", "nccl"],
    ["--sizes", "1X"],
    ["--sizes", "6"],
    ["--sizes", "1G:1K"],
    ["--profile", "no-such-profile"],
    ["--set", "nic.packet_bytes=0"],
    ["--set", "nic.bogus=1"],
    ["--set", "topology.bidirectional=true"],
    ["--k", "1"],
    ["--k", "3,x"],
    ["--variants", "sideways"],
    ["--no-such-option"],
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv):
    code, _ = run(tmp_path, "--no-plots", *argv)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("scale_topology: error: ")
    assert all(x.startswith(("scale_topology: error: ", "skipping variant")) for x in err)
    assert "Traceback" not in "\n".join(err)
