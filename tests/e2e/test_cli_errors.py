"""Bad inputs to the ``nicemu`` CLI, under ``mpiexec`` and alone.

The contract (nicemu/cli.py): a user error exits non-zero (status 2)
promptly on every rank, with exactly one ``nicemu: error: ...`` line on stderr
(printed by rank 0 only) that names the problem, and never a Python traceback.

The cases of one launch (``mpiexec -n 2``, ``-n 4`` or alone) run in one job, case after case, each
rank recording its own status and output (``run_cli_batch`` in conftest.py); the plain ``[mpiexec -n 2] python -m
nicemu`` path is checked by ``test_real_entry_point`` and
``test_unknown_flag_exact_line_from_the_real_entry_point``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import Outcome, run_cli_batch

pytestmark = pytest.mark.e2e

#: errors are found before any data moves: a run that takes longer than this has hung (generous: a
#: loaded machine may be slow to start the ranks)
ERROR_TIMEOUT_S = 300
USAGE_STATUS = 2
BENCH = ["bench", "--iters", "1", "--warmup", "0"]
SERVE = ["serve", "--executor", "model", "--requests", "2"]

#: files the cases refer to by name; written to the run's working directory
FILES = {
    "bad_syntax.yml": "link: {bandwidth_GBps: [\n",
    "unknown_key.yml": (
        "link: {bandwidth_GBps: 12.5, latency_us: 1.0}\n"
        "pcie: {bandwidth_GBps: 25.0, latency_us: 0.5}\n"
        "host: {reduce_GBps: 20.0, overhead_us: 1.0}\n"
        "nic:  {reduce_GBps: 50.0, latency_us: 0.2, packet_bytes: 1024, memory_KiB: 4096}\n"
        "turbo_mode: {enabled: true}\n"
    ),
    "astra_switch.yml": (
        "topology: [Ring, Switch]\nnpus_count: [4, 2]\nbandwidth: [25.0, 25.0]\nlatency: [500.0, 500.0]\n"
    ),
    "astra_bad_syntax.yml": "topology: [Ring, Ring\nnpus_count: [4, 2]\n",
    "bad_trace.csv": "TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,100,10\n0.5,lots,10\n",
    "bad_config.json": '{"hidden_size": 4096, "num_hidden_layers": 32,\n',
    "config_missing.json": '{"hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 11008, '
                           '"vocab_size": 32000}\n',
}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    keywords: tuple[str, ...]  # each must appear (case-insensitively) in the error line
    nprocs: int = 2
    standalone: bool = False  # also run without mpiexec

    def __str__(self) -> str:
        return self.id


def case(id: str, args: list[str], *keywords: str, nprocs: int = 2, standalone: bool = False) -> Case:
    return Case(id, tuple(args), keywords, nprocs, standalone)


CASES = [
    case("unknown-algo", [*BENCH, "--sizes", "1K", "--algo", "foo"], "foo", standalone=True),
    case("unknown-algo-in-list", [*BENCH, "--sizes", "1K", "--algo", "ring,foo"], "foo"),
    case("unknown-topology", [*BENCH, "--sizes", "1K", "--topology", "mesh:4"], "mesh", standalone=True),
    case("bad-torus", [*BENCH, "--sizes", "1K", "--topology", "torus:4x1"], "torus:4x1"),
    case("more-ranks-than-nodes", [*BENCH, "--sizes", "1K", "--topology", "ring:2"], "ring:2", "ranks", nprocs=4),
    case("ranks-per-node-zero", [*BENCH, "--sizes", "1K", "--ranks-per-node", "0"], "--ranks-per-node",
         standalone=True),
    case("ranks-per-node-sparse", [*BENCH, "--sizes", "1K", "--ranks-per-node", "2", "--algo", "ring,omniccl"],
         "omniccl", "one rank per node"),
    case("ranks-per-node-alltoall-not-divisible", [*BENCH, "--sizes", "1K", "--ranks-per-node", "2", "--collective",
                                                   "alltoall", "--topology", "ring:3"],
         "one equal block per rank", "6 ranks", "multiples of 24 B", standalone=True),
    case("ranks-per-node-allgather", [*BENCH, "--sizes", "1K", "--ranks-per-node", "2", "--collective",
                                      "allgather"], "allgather", "allreduce"),
    case("ranks-per-node-too-many-ranks", [*BENCH, "--sizes", "1K", "--topology", "ring:2", "--ranks-per-node",
                                           "2"], "ring:2", "ranks per node", nprocs=8),
    case("size-zero", [*BENCH, "--sizes", "0"], "positive", standalone=True),
    case("size-negative", [*BENCH, "--sizes", "-5"], "-5"),
    case("size-not-multiple-of-dtype", [*BENCH, "--sizes", "1001", "--dtype", "float32"], "multiple", "float32",
         standalone=True),
    case("size-overflow", [*BENCH, "--sizes", "99999T"], "99999T"),
    case("size-garbage", [*BENCH, "--sizes", "12Q"], "12Q"),
    case("size-range-reversed", [*BENCH, "--sizes", "1M:1K"], "1M:1K"),
    case("size-range-bad-factor", [*BENCH, "--sizes", "1K:1M:1"], "factor"),
    case("unknown-dtype", [*BENCH, "--sizes", "1K", "--dtype", "float128"], "float128"),
    case("unknown-op", [*BENCH, "--sizes", "1K", "--op", "mulsum"], "mulsum", "avg"),
    case("unknown-collective", [*BENCH, "--sizes", "1K", "--collective", "gather"], "gather"),
    case("density-nan", [*BENCH, "--sizes", "1K", "--density", "nan"], "--density", "[0, 1]"),
    case("density-above-one", [*BENCH, "--sizes", "1K", "--density", "1.5"], "--density", "1.5"),
    case("block-size-zero", [*BENCH, "--sizes", "1K", "--block-size", "0"], "--block-size"),
    case("iters-zero", ["bench", "--iters", "0", "--sizes", "1K"], "--iters"),
    case("warmup-negative", ["bench", "--iters", "1", "--warmup", "-1", "--sizes", "1K"], "--warmup"),
    case("set-unknown-key", [*BENCH, "--sizes", "1K", "--set", "nic.nonexistent=1"], "nonexistent"),
    case("set-bad-value", [*BENCH, "--sizes", "1K", "--set", "nic.packet_bytes=abc"], "packet_bytes", "abc"),
    case("profile-bad-yaml", [*BENCH, "--sizes", "1K", "--profile", "bad_syntax.yml"], "bad_syntax.yml", "yaml",
         standalone=True),
    case("profile-unknown-key", [*BENCH, "--sizes", "1K", "--profile", "unknown_key.yml"], "turbo_mode"),
    case("profile-missing-file", [*BENCH, "--sizes", "1K", "--profile", "no/such/profile.yml"],
         "no/such/profile.yml"),
    case("astra-switch", [*BENCH, "--sizes", "1K", "--topology", "astra:astra_switch.yml"], "switch",
         standalone=True),
    case("astra-bad-yaml", [*BENCH, "--sizes", "1K", "--topology", "astra:astra_bad_syntax.yml"], "yaml"),
    case("astra-missing-file", [*BENCH, "--sizes", "1K", "--topology", "astra:missing.yml"], "missing.yml"),
    case("model-executor-mpi-algo", [*BENCH, "--sizes", "1K", "--executor", "model", "--algo", "mpi"],
         "--executor mpi", standalone=True),
    case("unknown-executor", [*BENCH, "--sizes", "1K", "--executor", "gpu"], "gpu"),
    case("unknown-flag", [*BENCH, "--sizes", "1K", "--bogus"], "--bogus", standalone=True),
    case("unknown-command", ["frobnicate"], "frobnicate"),
    case("too-large-for-memory", [*BENCH, "--sizes", "256G"], "--executor model", standalone=True),
    case("schedule-unknown-algo", ["schedule", "--algo", "foo"], "foo"),
    case("schedule-count-zero", ["schedule", "--count", "0"], "--count"),
    case("info-unknown-profile", ["info", "--profile", "nope"], "nope"),
    case("sparse-max", [*BENCH, "--sizes", "1K", "--algo", "omniccl", "--op", "max"], "identity",
         standalone=True),
    case("sparse-reducescatter", [*BENCH, "--sizes", "1K", "--algo", "omnireduce",
                                  "--collective", "reducescatter"], "allreduce only"),
    case("sparse-tx-spots", [*BENCH, "--sizes", "1K", "--algo", "omniccl", "--tx-spots", "3"], "--tx-spots"),
    case("sparse-aggregators", [*BENCH, "--sizes", "1K", "--algo", "omniccl", "--aggregators", "99"],
         "aggregators"),
    case("sparse-spots-zero", [*BENCH, "--sizes", "1K", "--algo", "omniccl", "--spots", "0"], "spots"),
    case("overlap-none-too-dense", [*BENCH, "--sizes", "1K", "--density", "0.6", "--overlap", "none"],
         "overlap none"),
    case("faults-probability-too-high", [*BENCH, "--sizes", "1K", "--faults", "drop=0.9"], "drop=0.9", "0.5",
         standalone=True),
    case("faults-not-key-value", [*BENCH, "--sizes", "1K", "--faults", "1e-3"], "key=value"),
    case("faults-unknown-key", [*BENCH, "--sizes", "1K", "--faults", "drop=1e-3,loss=1"], "loss"),
    case("faults-bad-link", [*BENCH, "--sizes", "1K", "--faults", "drop=1e-3,link=3-4"], "SRC->DST"),
    case("faults-link-not-in-topology", [*BENCH, "--sizes", "1K", "--topology", "ring:8", "--faults",
                                         "drop=1e-3,link=3->9"], "link=3->9", "0..7"),
    case("straggler-no-factor", [*BENCH, "--sizes", "1K", "--straggler", "3"], "NODE:FACTOR"),
    case("straggler-factor-below-one", [*BENCH, "--sizes", "1K", "--straggler", "3:0.5"], "FACTOR", ">= 1"),
    case("straggler-sparse-node-not-in-topology", [*BENCH, "--sizes", "1K", "--algo", "omniccl", "--topology",
                                                   "ring:8", "--straggler", "8:2"], "--straggler 8", "0..7"),
    case("faults-alltoall", [*BENCH, "--sizes", "1K", "--collective", "alltoall", "--faults", "drop=1e-3"],
         "alltoall"),
    case("alltoall-not-divisible", [*BENCH, "--sizes", "1000", "--collective", "alltoall", "--topology", "ring:8"],
         "alltoall", "multiple", "8 nodes", standalone=True),
    case("alltoall-sparse", [*BENCH, "--sizes", "1K", "--algo", "omnireduce", "--collective", "alltoall"],
         "allreduce only", "alltoall", standalone=True),
    case("alltoall-faults", [*BENCH, "--sizes", "1K", "--collective", "alltoall", "--faults", "drop=1e-3"],
         "alltoall", "--faults"),
    case("schedule-alltoall-not-divisible", ["schedule", "--collective", "alltoall", "--topology", "ring:4",
                                             "--count", "6"], "divisible", "multiple of 4"),
    case("serve-unknown-model", [*SERVE, "--model", "gpt-5"], "gpt-5", "config.json", standalone=True),
    case("serve-tp-pp-vs-topology", [*SERVE, "--model", "llama2-7b", "--tp", "4", "--pp", "2", "--topology",
                                     "ring:4"], "TP x PP", "4 nodes", standalone=True),
    case("serve-tp-not-dividing-heads", [*SERVE, "--model", "llama2-7b", "--tp", "3"], "32 attention heads", "TP=3"),
    case("serve-trace-bad-line", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--arrivals", "bad_trace.csv"],
         "bad_trace.csv line 3", "lots", standalone=True),
    case("serve-trace-missing", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--arrivals", "nope.csv"], "nope.csv"),
    case("serve-config-malformed", [*SERVE, "--model", "bad_config.json", "--tp", "2"], "bad_config.json", "JSON",
         standalone=True),
    case("serve-config-missing-field", [*SERVE, "--model", "config_missing.json", "--tp", "2"],
         "num_hidden_layers"),
    case("serve-negative-rate", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--rate", "-1"], "rate", "-1",
         standalone=True),
    case("serve-bad-lengths", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--input-len", "normal:5"],
         "normal:5"),
    case("serve-mpi-algo", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--algo", "ring,mpi"], "mpi"),
    case("serve-ep-dense-model", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--ep", "2"], "experts"),
    case("serve-memory-utilization-zero", [*SERVE, "--model", "llama2-7b", "--tp", "2",
                                           "--gpu-memory-utilization", "0"], "--gpu-memory-utilization", "(0, 1]",
         standalone=True),
    case("serve-memory-utilization-above-one", [*SERVE, "--model", "llama2-7b", "--tp", "2",
                                                "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    case("serve-kv-block-zero", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--kv-block-tokens", "0"],
         "--kv-block-tokens 0", standalone=True),
    case("serve-weights-do-not-fit", [*SERVE, "--model", "llama3.1-405b", "--tp", "2"], "weights take",
         "raise --tp or --pp", standalone=True),
    case("serve-unknown-preempt", [*SERVE, "--model", "llama2-7b", "--tp", "2", "--preempt", "drop"], "drop"),
    case("serve-more-ranks-than-nodes", ["serve", "--model", "llama2-7b", "--tp", "2", "--requests", "2"],
         "4 ranks", "2 nodes", nprocs=4),
]

PARAMS = [pytest.param(c, c.nprocs, id=f"{c.id}-np{c.nprocs}") for c in CASES]
PARAMS += [pytest.param(c, None, id=f"{c.id}-alone") for c in CASES if c.standalone]


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int | None], dict[str, Outcome]]:
    """``batches(nprocs)``: every case of this module launched with ``nprocs``, run in one job (once)."""
    made: dict[int | None, dict[str, Outcome]] = {}

    def get(nprocs: int | None) -> dict[str, Outcome]:
        if nprocs not in made:
            cases = [(f"{c.id}", list(c.args)) for c, n in (p.values for p in PARAMS) if n == nprocs]
            cases += [(f"exact-{i}", list(argv)) for i, argv in enumerate(EXACT) if nprocs in (None, 2)]
            made[nprocs] = run_cli_batch(tmp_path_factory.mktemp(f"batch{nprocs}"), cases, nprocs, FILES,
                                         ERROR_TIMEOUT_S)
        return made[nprocs]

    return get


def _check_bad_input(c: Case, proc) -> None:
    if isinstance(proc, Outcome):
        assert proc.statuses == [USAGE_STATUS] * len(proc.statuses), f"expected status {USAGE_STATUS} on every rank\n{proc}"
    else:
        assert proc.returncode != 0, f"a bad input exited 0\n{proc}"
        assert proc.returncode == USAGE_STATUS, f"expected the usage-error status {USAGE_STATUS}\n{proc}"
    for stream in (proc.stderr, proc.stdout):
        assert "Traceback" not in stream, f"traceback printed\n{proc}"
    assert "internal error" not in proc.stderr, str(proc)
    assert "MPI_Abort" not in proc.stderr, f"a usage error must not abort the MPI job\n{proc}"
    assert proc.stderr.count("nicemu: error:") == 1, f"the error must be printed exactly once\n{proc}"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nicemu: error:")]
    assert len(lines) == 1, f"the error must be one line starting with 'nicemu: error:'\n{proc}"
    message = lines[0].lower()
    for word in c.keywords:
        assert word.lower() in message, f"the error does not mention {word!r}\n{proc}"
    assert "nicemu: error:" not in proc.stdout, str(proc)


@pytest.mark.parametrize("c, nprocs", PARAMS)
def test_bad_input(batches, c: Case, nprocs: int | None):
    _check_bad_input(c, batches(nprocs)[c.id])


@pytest.mark.parametrize("nprocs", [None, 2], ids=["alone", "np2"])
def test_real_entry_point(nicemu, tmp_path, nprocs):
    """One case the way a user runs it, ``[mpiexec -n 2] python -m nicemu ...``: the process's status."""
    c = next(c for c in CASES if c.id == "unknown-algo")
    _check_bad_input(c, nicemu(list(c.args), n=nprocs, timeout=ERROR_TIMEOUT_S))


# --- unknown flags and commands: the exact one-line shape --------------------------------------------

#: argv -> the whole of stderr: the subcommand is named once, "nicemu" is not repeated after the prefix
EXACT = {
    ("--bogus",): "nicemu: error: unrecognized arguments: --bogus (see nicemu --help)\n",
    ("bench", "--bogus"): "nicemu: error: bench: unrecognized arguments: --bogus (see nicemu bench --help)\n",
    ("serve", "--bogus=1"): "nicemu: error: serve: unrecognized arguments: --bogus=1 (see nicemu serve --help)\n",
    ("bench", "--iters", "x"): "nicemu: error: bench: argument --iters: invalid int value: 'x' "
                               "(see nicemu bench --help)\n",
    ("frobnicate",): "nicemu: error: unknown command 'frobnicate'; use one of bench, info, jobs, schedule, serve, "
                     "train, sweep (see nicemu --help)\n",
}


@pytest.mark.parametrize("nprocs", [None, 2], ids=["alone", "np2"])
@pytest.mark.parametrize("argv", list(EXACT), ids=" ".join)
def test_unknown_flag_exact_line(batches, argv, nprocs):
    proc = batches(nprocs)[f"exact-{list(EXACT).index(argv)}"]
    assert proc.statuses == [USAGE_STATUS] * (nprocs or 1), str(proc)
    assert proc.stderr == EXACT[argv], str(proc)
    assert proc.stdout == "", str(proc)


def test_unknown_flag_exact_line_from_the_real_entry_point(nicemu):
    """``python -m nicemu bench --bogus`` under ``mpiexec -n 2``: the exact line, once, and status 2."""
    proc = nicemu(["bench", "--bogus"], n=2, timeout=ERROR_TIMEOUT_S)
    assert proc.returncode == USAGE_STATUS, str(proc)
    assert proc.stderr == EXACT[("bench", "--bogus")], str(proc)
    assert proc.stdout == "", str(proc)


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path):
    """``nicemu schedule ... | head -1``: the closed pipe ends the output quietly with status 0."""
    import subprocess
    import sys

    from tests.e2e.conftest import _child_env
    cmd = [sys.executable, "-m", "nicemu", "schedule", "--topology", "torus:16x16", "--count", "100000",
           "--limit", "256"]      # about 340 KB: more than a pipe holds, so the writer meets the closed end
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.readline()
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        status = proc.wait(timeout=300)
    finally:
        proc.kill()
    assert first.startswith(b"allreduce directreduce on torus:16x16")
    assert status == 0 and "Traceback" not in err and "internal error" not in err, err
