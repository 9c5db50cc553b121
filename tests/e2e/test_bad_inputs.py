"""Bad inputs across ``nicemu bench``, ``serve`` and ``schedule``: input hardening.

The categories of bad input, each with several cases: dtype/op combinations;
sizes of 0, negative and overflowing; tori that do not match; profile YAML
with unknown keys or wrong types; ``--set`` on keys that do not exist; traces
with a timestamp that goes back; config.json files with missing fields; plus
seeds and output paths that used to fail only after the run's work (with a
traceback). The section "values that reached numpy, yaml or MPI unchecked"
lists what a systematic pass over every option and file field found: each
of those cases used to end in a traceback, a MemoryError, a run that would
not end, or inf/NaN results. "Absurd but valid-looking values" are refused at
the caps stated in each option's ``--help``. tests/e2e/test_cli_errors.py
holds the first table (flags, sizes, topologies, sparse options) run under
``mpiexec``.

Every case must end with status 2, exactly one line ``nicemu: error: ...`` that
names the problem (the keywords), no traceback, before the hang guard
``ERROR_TIMEOUT_S``. The
table runs in-process through ``nicemu.cli.main`` (what the console script
calls), which keeps 50+ cases cheap; ``MPI_CASES`` run again under
``mpiexec -n 2`` in a subprocess, where each rank records its own exit status,
to prove that the line is printed once and that every rank exits non-zero.

The last tests check that YAML is only ever read with ``yaml.safe_load`` and that
nothing unpickles or evaluates user input.
"""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _child_env, mpiexec_path

from nicemu.cli import main

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: hang guard only: an error is found before any work, but a loaded machine may be slow to start
ERROR_TIMEOUT_S = 300
USAGE_STATUS = 2
BENCH = ["bench", "--iters", "1", "--warmup", "0", "--sizes", "1K"]
SERVE = ["serve", "--tp", "2", "--requests", "4"]

_PROFILE = (
    "link: {bandwidth_GBps: 12.5, latency_us: 1.0}\n"
    "pcie: {bandwidth_GBps: 25.0, latency_us: 0.5}\n"
    "host: {reduce_GBps: 20.0, overhead_us: 1.0}\n"
    "nic:  {reduce_GBps: 50.0, latency_us: 0.2, packet_bytes: 1024, memory_KiB: 4096}\n"
)
_TRACE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
_CONFIG_OK = ('"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, '
              '"intermediate_size": 11008, "vocab_size": 32000')

#: files the cases name; written to the working directory of each run
FILES = {
    "type_str.yml": _PROFILE.replace("bandwidth_GBps: 12.5", "bandwidth_GBps: fast"),
    "type_float.yml": _PROFILE.replace("packet_bytes: 1024", "packet_bytes: 1.5"),
    "type_bool.yml": _PROFILE.replace("packet_bytes: 1024", "packet_bytes: true"),
    "negative.yml": _PROFILE.replace("latency_us: 1.0}", "latency_us: -1.0}"),
    "nested_unknown.yml": _PROFILE.replace("memory_KiB: 4096}", "memory_KiB: 4096, turbo: 1}"),
    "section_list.yml": _PROFILE.replace("link: {bandwidth_GBps: 12.5, latency_us: 1.0}", "link: [12.5, 1.0]"),
    "empty.yml": "",
    "no_nic.yml": "".join(ln + "\n" for ln in _PROFILE.splitlines() if not ln.startswith("nic:")),
    "python_tag.yml": '!!python/object/apply:os.system ["touch PWNED"]\n',
    "astra_lengths.yml": "topology: [Ring, Ring]\nnpus_count: [4]\nbandwidth: [25.0, 25.0]\nlatency: [500.0, 500.0]\n",
    "astra_unknown.yml": "topology: [Ring]\nnpus_count: [4]\nbandwidth: [25.0]\nlatency: [500.0]\nextra_key: 3\n",
    "astra_type.yml": "topology: [Ring]\nnpus_count: [4]\nbandwidth: [fast]\nlatency: [500.0]\n",
    "astra_tag.yml": '!!python/object/apply:os.system ["touch PWNED"]\n',
    "back_in_time.csv": _TRACE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:45.0000000,100,10\n",
    "no_column.csv": "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,374\n",
    "negative_tokens.csv": _TRACE_HEADER + "2023-11-16 18:15:46.6805900,-3,44\n",
    "header_only.csv": _TRACE_HEADER,
    "config_missing.json": '{"hidden_size": 4096, "num_hidden_layers": 32}\n',
    "config_type.json": "{" + _CONFIG_OK.replace('"hidden_size": 4096', '"hidden_size": "big"') + "}\n",
    "config_broken.json": '{"hidden_size": 4096,',
    "config_list.json": "[1, 2]\n",
    # values that reached numpy or the run unchecked
    "packet_huge.yml": _PROFILE.replace("packet_bytes: 1024", "packet_bytes: 100000000000000000000000"),
    "bandwidth_tiny.yml": _PROFILE.replace("bandwidth_GBps: 12.5", "bandwidth_GBps: 1.0e-320"),
    "astra_latency_huge.yml": "topology: [Ring]\nnpus_count: [4]\nbandwidth: [25.0]\nlatency: [1.0e+300]\n",
    "astra_bandwidth_tiny.yml": "topology: [Ring]\nnpus_count: [4]\nbandwidth: [1.0e-300]\nlatency: [500.0]\n",
    "huge_tokens.csv": _TRACE_HEADER + "2023-11-16 18:15:46.6805900,1000000000000000000000000000000,44\n",
    "far_future.csv": _TRACE_HEADER + "0,374,44\n1e300,100,10\n",
    "config_layers_huge.json": "{" + _CONFIG_OK.replace('"num_hidden_layers": 32', '"num_hidden_layers": 1000000000')
                               + "}\n",
    "config_hidden_huge.json": "{" + _CONFIG_OK.replace('"hidden_size": 4096', '"hidden_size": 10000000000000000000000')
                               + "}\n",
    "config_head_dim.json": "{" + _CONFIG_OK + ', "head_dim": -4}\n',
    # one layer, but an embedding (and LM head) of 8e9 elements: a 30 GiB gradient bucket each
    "config_vocab_huge.json": "{" + _CONFIG_OK.replace('"num_hidden_layers": 32', '"num_hidden_layers": 1')
    .replace('"vocab_size": 32000', '"vocab_size": 2000000') + "}\n",
}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    keywords: tuple[str, ...]    # each must appear (case-insensitively) in the error line

    def __str__(self) -> str:
        return self.id


def case(id: str, args: list[str], *keywords: str) -> Case:
    return Case(id, tuple(args), keywords)


CASES = [
    # dtype / op combinations
    case("bench-dtype-int16", [*BENCH, "--dtype", "int16"], "int16", "bfloat16", "half (float16)"),  # not NCCL's
    case("bench-dtype-bf16-spelling", [*BENCH, "--dtype", "bf16"], "'bf16'", "bfloat16"),
    case("bench-dtype-fp8-no-fn", [*BENCH, "--dtype", "float8_e4m3"], "float8_e4m3", "float8_e4m3fn"),
    case("bench-op-mulsum", [*BENCH, "--op", "mulsum"], "'mulsum'", "prod", "avg"),
    case("bench-sparse-prod", [*BENCH, "--algo", "omniccl", "--op", "prod", "--dtype", "bfloat16"],
         "prod", "identity", "avg"),
    case("bench-dtype-complex64", [*BENCH, "--dtype", "complex64"], "complex64"),
    case("bench-op-uppercase", [*BENCH, "--op", "SUM"], "'SUM'", "sum"),
    case("bench-sparse-min-int32", [*BENCH, "--algo", "omnireduce", "--op", "min", "--dtype", "int32"],
         "min", "identity"),
    case("bench-sparse-max-float16", [*BENCH, "--algo", "ring,omniccl", "--op", "max", "--dtype", "float16"],
         "max", "--op sum"),
    # sizes: zero, negative, overflowing
    case("bench-size-zero-in-range", ["bench", "--sizes", "0:1K"], "positive"),
    case("bench-size-negative-range", ["bench", "--sizes=-1K:1M"], "-1K"),
    case("bench-size-negative-unattached", ["bench", "--sizes", "-1K:1M"], "--sizes", "--sizes=-1K:1M"),
    case("bench-size-missing-value", ["bench", "--sizes"], "--sizes", "expected one argument"),
    case("bench-size-overflow-bytes", ["bench", "--sizes", "99999999999999999999999"], "larger than"),
    case("bench-size-overflow-suffix", ["bench", "--sizes", "16777216G", "--executor", "model"], "16777216G"),
    case("bench-size-empty-item", ["bench", "--sizes", "1K,"], "bad size"),
    case("bench-size-fraction", ["bench", "--sizes", "1.5K"], "1.5K"),
    case("bench-range-factor-zero", ["bench", "--sizes", "1K:1M:0"], "factor"),
    # tori that do not match
    case("bench-torus-zero-dim", [*BENCH, "--topology", "torus:0x4"], "torus:0x4", "size 0"),
    case("bench-torus-trailing-x", [*BENCH, "--topology", "torus:3x3x"], "torus:3x3x"),
    case("bench-torus-over-limit", [*BENCH, "--topology", "torus:2^30"], "limit"),
    case("bench-astra-lengths", [*BENCH, "--topology", "astra:astra_lengths.yml"], "different lengths"),
    case("bench-astra-unknown-key", [*BENCH, "--topology", "astra:astra_unknown.yml"], "extra_key"),
    case("bench-astra-wrong-type", [*BENCH, "--topology", "astra:astra_type.yml"], "bandwidth", "fast"),
    case("bench-astra-python-tag", [*BENCH, "--topology", "astra:astra_tag.yml"], "astra_tag.yml"),
    # concurrent calls on a shared fabric
    case("bench-concurrent-not-dividing", [*BENCH, "--topology", "ring:8", "--concurrent", "3",
                                           "--concurrent-groups", "interleaved"], "3 must divide 8"),
    case("bench-concurrent-sparse-aggregators", [*BENCH, "--topology", "ring:8", "--concurrent", "2",
                                                 "--concurrent-groups", "interleaved", "--algo", "omniccl",
                                                 "--aggregators", "8"], "omniccl on 4 nodes per call", "aggregators 8"),
    case("bench-concurrent-sparse-straggler", [*BENCH, "--concurrent", "2", "--algo", "omnireduce", "--straggler",
                                               "1:2"], "--concurrent does not cover", "--straggler"),
    case("bench-concurrent-disjoint-ring", [*BENCH, "--topology", "ring:8", "--concurrent", "2",
                                            "--concurrent-groups", "disjoint"], "no disjoint sub-rings"),
    case("bench-concurrent-groups-alone", [*BENCH, "--concurrent-groups", "disjoint"], "--concurrent K"),
    case("bench-concurrent-zero", [*BENCH, "--concurrent", "0"], "--concurrent 0", "1..4096"),
    case("bench-concurrent-mpi-ranks", [*BENCH, "--topology", "ring:4", "--concurrent", "2"],
         "one rank per node", "mpiexec -n 4"),
    # profile YAML: unknown keys and wrong types
    case("profile-type-string", [*BENCH, "--profile", "type_str.yml"], "link.bandwidth_GBps", "fast"),
    case("profile-type-float-for-int", [*BENCH, "--profile", "type_float.yml"], "nic.packet_bytes", "1.5"),
    case("profile-type-bool", [*BENCH, "--profile", "type_bool.yml"], "packet_bytes", "boolean"),
    case("profile-negative-latency", [*BENCH, "--profile", "negative.yml"], "latency_us", "-1"),
    case("profile-nested-unknown-key", [*BENCH, "--profile", "nested_unknown.yml"], "nic.turbo"),
    case("profile-section-is-list", [*BENCH, "--profile", "section_list.yml"], "link", "mapping"),
    case("profile-empty", [*BENCH, "--profile", "empty.yml"], "empty"),
    case("profile-missing-section", [*BENCH, "--profile", "no_nic.yml"], "missing section", "nic"),
    case("profile-python-tag", [*BENCH, "--profile", "python_tag.yml"], "python_tag.yml", "yaml"),
    # --set on keys that do not exist, and bad --set values
    case("set-unknown-section", [*BENCH, "--set", "nosection.x=1"], "nosection"),
    case("set-section-only", [*BENCH, "--set", "nic=5"], "nic=5", "section.key=value"),
    case("set-missing-equals", [*BENCH, "--set", "nic.packet_bytes"], "missing '='"),
    case("set-negative-bandwidth", [*BENCH, "--set", "link.bandwidth_GBps=-1"], "link.bandwidth_GBps", "-1"),
    # found by this table: these failed after the run's work, with a traceback
    case("bench-seed-negative", [*BENCH, "--density", "0.5", "--seed", "-1"], "--seed", "negative"),
    case("bench-json-no-directory", [*BENCH, "--json", "no/such/dir/out.json"], "--json", "no/such/dir"),
    case("bench-csv-is-directory", [*BENCH, "--csv", "."], "--csv", "directory"),
    # serve: traces with a timestamp that goes back, and other broken traces
    case("serve-trace-back-in-time", [*SERVE, "--arrivals", "back_in_time.csv"], "back in time", "line 3"),
    case("serve-trace-missing-column", [*SERVE, "--arrivals", "no_column.csv"], "GeneratedTokens"),
    case("serve-trace-negative-tokens", [*SERVE, "--arrivals", "negative_tokens.csv"], "ContextTokens", "-3"),
    case("serve-trace-header-only", [*SERVE, "--arrivals", "header_only.csv"], "no requests"),
    case("serve-trace-missing-file", [*SERVE, "--arrivals", "missing.csv"], "missing.csv"),
    case("serve-jobs-zero", [*SERVE, "--executor", "model", "--jobs", "0"], "--jobs", ">= 1"),
    # serve: config.json with missing fields, wrong types, broken JSON
    case("serve-config-missing-fields", [*SERVE, "--model", "config_missing.json"], "missing key",
         "num_attention_heads", "vocab_size"),
    case("serve-config-wrong-type", [*SERVE, "--model", "config_type.json"], "hidden", "big"),
    case("serve-config-broken-json", [*SERVE, "--model", "config_broken.json"], "json"),
    case("serve-config-not-object", [*SERVE, "--model", "config_list.json"], "json object"),
    case("serve-unknown-model", [*SERVE, "--model", "gpt-9"], "gpt-9"),
    # serve: profiles, --set, topologies, algorithms, numbers
    case("serve-set-unknown-key", [*SERVE, "--set", "nic.nothing=1"], "nic.nothing"),
    case("serve-profile-unknown-key", [*SERVE, "--profile", "nested_unknown.yml"], "nic.turbo"),
    case("serve-profile-wrong-type", [*SERVE, "--profile", "type_float.yml"], "nic.packet_bytes"),
    case("serve-topology-mismatch", [*SERVE, "--topology", "ring:8"], "does not match", "8 nodes"),
    case("serve-torus-mismatch", [*SERVE, "--topology", "torus:2x2"], "does not match", "4 nodes"),
    case("serve-tp-zero", ["serve", "--tp", "0"], "--tp"),
    case("serve-tp-not-dividing-heads", [*SERVE, "--tp", "3", "--topology", "ring:3"], "heads", "tp=3"),
    case("serve-algo-mpi", [*SERVE, "--algo", "mpi"], "--algo mpi"),
    case("serve-algo-unknown", [*SERVE, "--algo", "ring,foo"], "foo"),
    case("serve-rate-zero", [*SERVE, "--rate", "0"], "rate"),
    case("serve-requests-zero", ["serve", "--tp", "2", "--requests", "0"], "--requests"),
    case("serve-length-range-reversed", [*SERVE, "--input-len", "uniform:5:1"], "uniform:5:1"),
    case("serve-seed-negative", [*SERVE, "--seed", "-1"], "--seed", "negative"),
    case("serve-json-no-directory", [*SERVE, "--json", "no/such/dir/out.json"], "--json", "no/such/dir"),
    # values that reached numpy, yaml or MPI unchecked (what each did before is in the comment)
    case("bench-dtype-unknown-name", [*BENCH, "--dtype", "nosuchtype"], "nosuchtype", "float32"),  # TypeError
    case("bench-dtype-empty", [*BENCH, "--dtype", ""], "--dtype", "float32"),                     # TypeError
    case("bench-dtype-byte-order", [*BENCH, "--dtype", ">f4"], "'>f4'", "float32"),   # ran; Emulator: TypeError
    case("bench-dtype-numpy-alias", [*BENCH, "--dtype", "f4"], "'f4'", "float32"),     # ran as float32
    case("bench-density-nan", [*BENCH, "--density", "nan"], "--density", "[0, 1]"),
    case("bench-density-negative", [*BENCH, "--density=-0.1"], "-0.1", "[0, 1]"),
    case("bench-topology-empty", [*BENCH, "--topology", ""], "empty topology"),        # ran on the default ring
    case("bench-block-size-huge", [*BENCH, "--algo", "omniccl", "--block-size", "1000000000000"],
         "--block-size", "1,048,576"),                                          # 4e13 wire bytes for 1 KiB
    case("bench-spots-huge", [*BENCH, "--algo", "omniccl", "--spots", "1000000000000"],
         "--spots", "65,536"),                                                  # MemoryError (7 TiB)
    case("bench-spot-blocks-huge", [*BENCH, "--algo", "omniccl", "--spot-blocks", "1000000000000"],
         "--spot-blocks", "1,048,576"),                                          # MPI window of terabytes
    case("bench-iters-huge", [*BENCH, "--executor", "model", "--iters", "100000000000", "--faults", "drop=0.01"],
         "--iters", "100,000"),                                                  # never ended
    case("bench-warmup-huge", [*BENCH, "--warmup", "100000000000"], "--warmup", "100,000"),  # never ended (mpi)
    case("bench-iters-not-int", [*BENCH, "--iters", "1e23"], "--iters", "invalid int value"),
    case("bench-size-exabyte-suffix", ["bench", "--executor", "model", "--sizes", "1E"], "bad size", "1T"),
    case("bench-size-over-limit", ["bench", "--executor", "model", "--sizes", "1099511627776G"], "limit of 1T"),
    case("bench-model-sparse-memory", ["bench", "--executor", "model", "--sizes", "1T", "--algo", "omniccl",
                                       "--density", "0.01", "--topology", "ring:4096"],
         "omniccl", "GiB", "--block-size"),                                     # MemoryError
    case("bench-ring-too-long", [*BENCH, "--executor", "model", "--topology", "ring:65536"],
         "transfers", "2**30", "torus:256x256"),                                # hours of work
    case("bench-mpi-spot-window-memory", [*BENCH, "--algo", "omniccl", "--topology", "ring:4", "--spot-blocks",
                                          "1048576", "--block-size", "1048576"], "GiB", "--spot-blocks"),
    case("set-packet-bytes-huge", [*BENCH, "--set", "nic.packet_bytes=100000000000000000000000"],
         "nic.packet_bytes", "2**40"),                                          # OverflowError
    case("set-bandwidth-tiny", [*BENCH, "--set", "link.bandwidth_GBps=1e-320"], "bandwidth_GBps", "1e-06"),  # NaN
    case("set-latency-huge", [*BENCH, "--set", "link.latency_us=1e308"], "latency_us", "1e+09"),      # inf
    case("profile-packet-bytes-huge", [*BENCH, "--profile", "packet_huge.yml"], "packet_bytes", "2**40"),
    case("profile-bandwidth-tiny", [*BENCH, "--profile", "bandwidth_tiny.yml"], "bandwidth_GBps", "1e-06"),
    case("astra-latency-huge", [*BENCH, "--topology", "astra:astra_latency_huge.yml"], "latency[0]", "1e+12"),
    case("astra-bandwidth-tiny", [*BENCH, "--topology", "astra:astra_bandwidth_tiny.yml"], "bandwidth[0]",
         "1e-06"),
    case("schedule-count-huge", ["schedule", "--count", "1000000000000000000000"], "--count", "2**40"),  # Overflow
    case("schedule-limit-negative", ["schedule", "--limit", "-1"], "--limit"),   # showed all but the last
    case("schedule-ring-too-long", ["schedule", "--topology", "ring:16777216"], "transfers", "2**30"),  # hours
    case("serve-requests-huge", [*SERVE, "--executor", "model", "--requests", "1000000000000"],
         "1,000,000"),                                                          # MemoryError
    case("serve-cv-huge", [*SERVE, "--cv", "1e300"], "--cv", "1000"),           # OverflowError
    case("serve-cv-tiny", [*SERVE, "--cv", "1e-300"], "--cv", "0.001"),         # ZeroDivisionError
    case("serve-rate-tiny", [*SERVE, "--rate", "1e-300"], "rate", "0.001"),     # NaN latencies
    case("serve-input-len-huge", [*SERVE, "--input-len", "1000000000000"], "16,777,216"),      # never ended
    case("serve-output-len-huge", [*SERVE, "--output-len", "1000000000000"], "16,777,216"),    # never ended
    case("serve-uniform-huge", [*SERVE, "--input-len", "uniform:1:99999999999999999999"], "16,777,216"),  # ValueError
    case("serve-lognormal-mean-huge", [*SERVE, "--input-len", "lognormal:1e300:0.8"], "16,777,216"),  # warning
    case("serve-lognormal-sigma-huge", [*SERVE, "--input-len", "lognormal:100:1e300"], "sigma"),  # OverflowError
    case("serve-trace-empty-path", [*SERVE, "--arrivals", ""], "--arrivals"),          # ran synthetic requests
    case("serve-trace-huge-tokens", [*SERVE, "--arrivals", "huge_tokens.csv"], "ContextTokens", "line 2"),
    case("serve-trace-far-future", [*SERVE, "--arrivals", "far_future.csv"], "line 3", "31 years"),  # precision lost
    case("serve-model-empty", [*SERVE, "--model", ""], "model name is empty"),   # read ./config.json
    case("serve-config-layers-huge", [*SERVE, "--model", "config_layers_huge.json"], "layers", "4,096"),
    case("serve-config-hidden-huge", [*SERVE, "--model", "config_hidden_huge.json"], "hidden", "1,048,576"),
    case("serve-config-head-dim-negative", [*SERVE, "--model", "config_head_dim.json"], "head_dim", "-4"),
    case("serve-topology-empty", [*SERVE, "--topology", ""], "empty topology"),  # used the default ring
    case("bench-algo-twice", [*BENCH, "--algo", "ring,directreduce,ring"], "ring more than once"),  # 2 records
    case("serve-algo-twice", [*SERVE, "--algo", "omniccl,omniccl"], "omniccl more than once"),  # 2 records
    # disaggregated prefill/decode
    case("serve-disaggregated-no-decode", [*SERVE, "--disaggregated", "1:0"], "--disaggregated '1:0'", "P:D"),
    case("serve-disaggregated-not-numbers", [*SERVE, "--disaggregated", "two"], "--disaggregated 'two'", "1:1"),
    case("serve-disaggregated-topology", [*SERVE, "--disaggregated", "2:1", "--topology", "ring:4"],
         "times 3 instances", "= 6", "4 nodes"),
    case("serve-disaggregated-shared-node", [*SERVE, "--disaggregated", "1:1", "--ranks-per-node", "4"],
         "does not fill whole nodes of 4 ranks"),
    case("serve-slo-negative", [*SERVE, "--slo-ttft=-5"], "--slo-ttft", "> 0"),
    case("serve-replicas-zero", [*SERVE, "--replicas", "0"], "--replicas", "positive"),
    case("serve-replicas-disaggregated-topology", [*SERVE, "--replicas", "2", "--disaggregated", "1:1", "--topology",
                                                   "ring:4"], "1:1 x 2 replicas = 8", "4 nodes"),
    case("serve-replicas-topology", [*SERVE, "--replicas", "2", "--topology", "ring:2"], "times 2 replicas = 4"),
    case("serve-prefix-reuse-whole", [*SERVE, "--prefix-reuse", "1"], "--prefix-reuse 1", "0 <= F < 1"),
    case("serve-kv-restore-unknown", [*SERVE, "--kv-restore", "fetch"], "--kv-restore", "fetch"),
    case("train-mpi-memory", ["train", "--executor", "mpi", "--model", "config_vocab_huge.json", "--global-batch",
                              "8", "--seq-len", "8", "--algo", "ring"],
         "largest gradient bucket", "GiB", "--executor model"),                 # killed for lack of memory
]

BY_ID = {c.id: c for c in CASES}
#: also run under mpiexec -n 2: one or two per category, bench and serve
MPI_CASES = ["bench-dtype-int16", "profile-type-string", "set-unknown-section", "bench-seed-negative",
             "serve-trace-back-in-time", "serve-config-missing-fields", "bench-dtype-unknown-name",
             "bench-mpi-spot-window-memory", "serve-requests-huge", "serve-disaggregated-topology",
             "bench-concurrent-mpi-ranks", "train-mpi-memory"]


def _write_files(where: Path) -> None:
    for name, text in FILES.items():
        (where / name).write_text(text)


def _check_output(c: Case, status: int, stdout: str, stderr: str, where: str) -> None:
    assert status == USAGE_STATUS, f"{c}: status {status}, expected {USAGE_STATUS} ({where})\n{stdout}\n{stderr}"
    for stream in (stdout, stderr):
        assert "Traceback" not in stream, f"{c}: traceback printed ({where})\n{stderr}"
    assert "internal error" not in stderr, f"{c} ({where})\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "UCX" not in ln]
    assert len(lines) == 1, f"{c}: expected one error line, got {len(lines)} ({where})\n{stderr}"
    assert lines[0].startswith("nicemu: error: "), f"{c}: {lines[0]!r}"
    for word in c.keywords:
        assert word.lower() in lines[0].lower(), f"{c}: the error does not mention {word!r}: {lines[0]}"
    assert "nicemu: error:" not in stdout, f"{c}: error on stdout ({where})"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no error within {ERROR_TIMEOUT_S} s")


def test_the_table_covers_every_category():
    """At least 25 cases, bench and serve both, every category of bad input present."""
    assert len(CASES) >= 25 and len(BY_ID) == len(CASES)
    ids = " ".join(BY_ID)
    for needle in ("dtype", "op", "size-zero", "size-negative", "size-overflow", "torus", "profile-nested-unknown",
                   "profile-type", "set-unknown", "trace-back-in-time", "config-missing-fields"):
        assert needle in ids, needle
    assert any(c.args[0] == "serve" for c in CASES) and any(c.args[0] == "bench" for c in CASES)


@pytest.mark.parametrize("c", CASES, ids=str)
def test_bad_input_in_process(c: Case, tmp_path: Path, monkeypatch, capsys):
    _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ERROR_TIMEOUT_S)
    try:
        status = main(list(c.args))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    _check_output(c, status, out.out, out.err, "in-process")
    assert not (tmp_path / "PWNED").exists(), "a YAML tag ran a command"


_RECORD_STATUS = (
    "import sys\n"
    "from mpi4py import MPI\n"
    "from nicemu.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "open(f'status.{MPI.COMM_WORLD.rank}', 'w').write(str(status))\n"
    "sys.exit(status)\n"
)


@pytest.mark.parametrize("case_id", MPI_CASES)
def test_bad_input_under_mpiexec(case_id: str, tmp_path: Path):
    """Printed once (by rank 0), status 2 on every rank: each rank writes its own status."""
    c = BY_ID[case_id]
    mpiexec = mpiexec_path()
    if mpiexec is None:
        pytest.skip("mpiexec not found next to python or on PATH")
    _write_files(tmp_path)
    cmd = [mpiexec, "-n", "2", sys.executable, "-c", _RECORD_STATUS, *c.args]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=_child_env(), capture_output=True, text=True,
                              timeout=ERROR_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{c}: no error within {ERROR_TIMEOUT_S} s under mpiexec -n 2 (hang?)", pytrace=False)
    _check_output(c, proc.returncode, proc.stdout, proc.stderr, "mpiexec -n 2")
    statuses = {r: (tmp_path / f"status.{r}").read_text() for r in range(2)}
    assert statuses == {0: "2", 1: "2"}, f"{c}: per-rank exit statuses {statuses}"


# --------------------------------------------------------------------------- no unsafe loaders

PACKAGES = ["collectives", "nic", "nicemu", "topologies", "workloads", "scripts"]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 30, "the source scan found too few files"
    return files


def _attr_chain(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_yaml_is_read_only_with_safe_load_and_nothing_is_unpickled():
    """Scan every module: YAML only via yaml.safe_load, no pickle-family imports, no eval/exec,
    no numpy load with allow_pickle=True."""
    problems, safe_loads = [], 0
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                        and node.module else [])
                for name in names:
                    if name.split(".")[0] in UNSAFE_MODULES:
                        problems.append(f"{rel}:{node.lineno}: imports {name}")
                if isinstance(node, ast.ImportFrom) and node.module == "yaml":
                    problems += [f"{rel}:{node.lineno}: from yaml import {a.name}" for a in node.names
                                 if a.name != "YAMLError"]
            elif isinstance(node, ast.Call):
                name = _attr_chain(node.func)
                if name.startswith("yaml."):
                    if name == "yaml.safe_load":
                        safe_loads += 1
                    elif name not in ("yaml.safe_dump", "yaml.dump"):
                        problems.append(f"{rel}:{node.lineno}: calls {name}")
                if name in ("eval", "exec"):
                    problems.append(f"{rel}:{node.lineno}: calls {name}")
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        problems.append(f"{rel}:{node.lineno}: allow_pickle is not False")
    assert not problems, "\n".join(problems)
    assert safe_loads >= 2, "expected the profile and ASTRA loaders to use yaml.safe_load"
