"""Azure-format trace replay and the shipped synthetic sample trace."""

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import nicemu.workloads
from nicemu.errors import WorkloadError
from nicemu.workloads.make_sample_trace import main as make_sample
from nicemu.workloads.make_sample_trace import sample_requests
from nicemu.workloads.requests import Request, load_trace, write_trace

SAMPLE = Path(nicemu.workloads.__file__).parent / "data" / "sample_azure_conv.csv"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, text, name="trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_iso_timestamps_with_seven_digits(tmp_path):
    p = write(tmp_path, HEADER + "2023-11-16 18:15:46.6805900,374,44\n"
                                 "2023-11-16 18:15:50.9951690,396,109\n"
                                 "2023-11-16 18:16:00,879,31\n")
    reqs = load_trace(p)
    assert reqs[0] == Request(0, 0.0, 374, 44)
    assert reqs[1].arrival_us == pytest.approx(4_314_579.0, abs=1e-3)
    assert reqs[2].arrival_us == pytest.approx(13_319_410.0, abs=1e-3)
    assert (reqs[2].input_tokens, reqs[2].output_tokens) == (879, 31)


def test_iso_across_midnight_and_t_separator(tmp_path):
    p = write(tmp_path, HEADER + "2023-11-16T23:59:59.5,10,1\n2023-11-17T00:00:00.25,10,1\n")
    assert load_trace(p)[1].arrival_us == pytest.approx(750_000.0)


def test_seconds_timestamps_relative_to_first(tmp_path):
    p = write(tmp_path, HEADER + "100.5,10,2\n101,20,3\n101,30,4\n")
    assert [r.arrival_us for r in load_trace(p)] == [0.0, 500_000.0, 500_000.0]


def test_header_order_extra_columns_comments_and_blank_lines(tmp_path):
    p = write(tmp_path, "# a comment\n\nGeneratedTokens,Extra,ContextTokens,TIMESTAMP\n5,x,100,0\n\n6,y,200,1.5\n")
    assert load_trace(p) == [Request(0, 0.0, 100, 5), Request(1, 1.5e6, 200, 6)]


def test_limit_and_speedup(tmp_path):
    p = write(tmp_path, HEADER + "".join(f"{i},10,1\n" for i in range(10)))
    assert len(load_trace(p, limit=3)) == 3
    assert load_trace(p, speedup=2.0)[4].arrival_us == 2e6


@pytest.mark.parametrize("body, line, problem", [
    ("0,10,1\n1,10\n", 3, "expected 3 comma-separated fields, got 2"),
    ("0,10,1\n1,ten,1\n", 3, "ContextTokens 'ten' is not a whole number"),
    ("0,10,1\n1,10,1.5\n", 3, "GeneratedTokens '1.5' is not a whole number"),
    ("0,0,1\n", 2, "ContextTokens must be >= 1"),
    ("0,10,-3\n", 2, "GeneratedTokens must be >= 1"),
    ("0,10,1\nyesterday,10,1\n", 3, "TIMESTAMP 'yesterday' is neither"),
    ("2023-13-01 00:00:00,10,1\n", 2, "TIMESTAMP '2023-13-01 00:00:00' is neither"),
    ("0,10,1\n5,10,1\n4.9,10,1\n", 4, "goes back in time (earlier than line 3)"),
    ("2023-11-16 18:15:46.6,10,1\n2023-11-16 18:15:46.5,10,1\n", 3, "goes back in time"),
    ("2023-11-16 18:15:46,10,1\n5,10,1\n", 3, "seconds format but the first row uses iso"),
    ("0,10,1\nnan,10,1\n", 3, "TIMESTAMP 'nan' is neither"),
])
def test_bad_rows_name_the_line(tmp_path, body, line, problem):
    p = write(tmp_path, HEADER + body)
    with pytest.raises(WorkloadError) as e:
        load_trace(p)
    assert f"{p} line {line}: " in str(e.value)
    assert problem in str(e.value)


def test_bad_header_empty_and_header_only(tmp_path):
    with pytest.raises(WorkloadError, match=r"line 1: header lacks GeneratedTokens"):
        load_trace(write(tmp_path, "TIMESTAMP,ContextTokens\n0,1\n"))
    with pytest.raises(WorkloadError, match="empty trace"):
        load_trace(write(tmp_path, "# only a comment\n\n"))
    with pytest.raises(WorkloadError, match="no requests"):
        load_trace(write(tmp_path, HEADER))
    with pytest.raises(WorkloadError, match="cannot read trace"):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(WorkloadError, match="speedup"):
        load_trace(write(tmp_path, HEADER + "0,1,1\n"), speedup=0)


def test_write_then_load_round_trip(tmp_path):
    reqs = [Request(0, 0.0, 5, 6), Request(1, 1_234_567.0, 7, 8), Request(2, 86_400_000_001.0, 9, 10)]
    p = tmp_path / "rt.csv"
    write_trace(p, reqs, datetime(2023, 11, 16, 18, 15, 46, 680590), ("made in a test",))
    text = p.read_text().splitlines()
    assert text[0] == "# made in a test" and text[1] == HEADER.strip()
    assert text[2] == "2023-11-16 18:15:46.6805900,5,6"
    assert load_trace(p) == reqs


def test_shipped_sample_is_labelled_synthetic_and_conversation_like():
    head = SAMPLE.read_text().splitlines()[:2]
    assert "SYNTHETIC" in head[0] and "NOT the real Azure trace" in head[0]
    reqs = load_trace(SAMPLE)
    assert len(reqs) == 200
    ins = np.array([r.input_tokens for r in reqs])
    outs = np.array([r.output_tokens for r in reqs])
    assert ins.mean() == pytest.approx(1155, rel=0.05) and outs.mean() == pytest.approx(211, rel=0.05)
    g = np.diff([r.arrival_us for r in reqs])
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.15)    # near-Poisson


def test_sample_is_reproducible_from_its_documented_command(tmp_path, capsys):
    out = tmp_path / "sample.csv"
    make_sample(["--seed", "2023", "--requests", "200", "--out", str(out)])
    assert out.read_bytes() == SAMPLE.read_bytes()
    assert "200 requests" in capsys.readouterr().out
    assert load_trace(SAMPLE) == sample_requests(200, 2023)
