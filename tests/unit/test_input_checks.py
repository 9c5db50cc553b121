"""Bad arguments to the Python API and the workload builders: one-line NicemuErrors, never numpy tracebacks.

Each case here used to reach numpy, MPI or a loop unchecked (the comment says
what happened); the CLI cases live in tests/e2e/test_bad_inputs.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, build_schedule, model_time
from nicemu.collectives.api.checks import MAX_COUNT, check_count, check_dtype, schedule_transfers
from nicemu.collectives.schedules.sparse_patterns import check_pattern, pattern_mask
from nicemu.errors import CollectiveError, NicemuError, WorkloadError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology, ring
from nicemu.workloads.models import Model
from nicemu.workloads.requests import MAX_TOKENS, arrival_times_us, parse_lengths, synthetic_requests

PROFILE = load_profile("directreduce-paper")
RING4 = ring(4)


# --- dtypes and counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", np.float32, np.dtype("float32"), "f4", "<f4" if
                                   np.little_endian else ">f4"])
def test_dtype_accepted_forms(dtype):
    assert check_dtype(dtype) == np.dtype("float32")


@pytest.mark.parametrize("dtype, words", [
    ("nosuchtype", ["unknown dtype", "'nosuchtype'", "float32"]),   # TypeError from np.dtype
    ("", ["unknown dtype"]),                                        # TypeError
    (3, ["unknown dtype", "'3'"]),                                  # TypeError
    (None, ["None"]),                                               # np.dtype(None) is float64: silently
    (object, ["object"]),
    ("int16", ["int16", "bfloat16", "half (float16)"]),              # NCCL has no 16-bit integers
    ("float8_e4m3fnuz", ["float8_e4m3fnuz"]),                       # an ml-dtypes type NCCL does not reduce
    (complex, ["complex128"]),
    (">f4" if np.little_endian else "<f4", ["byte order"]),         # the mpi algorithm: TypeError
])
def test_dtype_refused(dtype, words):
    with pytest.raises(CollectiveError) as info:
        check_dtype(dtype)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(CollectiveError):
        model_time("allreduce", "ring", RING4, PROFILE, 8, dtype)


@pytest.mark.parametrize("count", [0, 1, np.int64(8), np.uint32(5), MAX_COUNT])
def test_count_accepted(count):
    assert check_count(count) == int(count)


@pytest.mark.parametrize("count, word", [
    (-8, "negative"),              # model_time gave 11.47 us for -8 elements
    (8.5, "whole number"),         # accepted as 8.5 elements
    (8.0, "whole number"),
    ("8", "whole number"),         # a string count was accepted
    (True, "whole number"),
    (2**62, "2**40"),              # ran, with absurd times
    (2**70, "2**40"),              # OverflowError
])
def test_count_refused(count, word):
    with pytest.raises(CollectiveError, match=word.replace("*", r"\*")):
        model_time("allreduce", "ring", RING4, PROFILE, count)
    with pytest.raises(CollectiveError, match=word.replace("*", r"\*")):
        build_schedule("allreduce", "directreduce", RING4, count)


def test_model_time_takes_names_for_topology_and_profile():
    """A spec string and a profile name used to end in AttributeError; they now mean what they say."""
    by_name = model_time("allreduce", "ring", "ring:4", "directreduce-paper", 64)
    by_object = model_time("allreduce", "ring", RING4, PROFILE, 64)
    assert by_name.emulated_us == by_object.emulated_us


@pytest.mark.parametrize("kwargs, word", [
    ({"topology": 5}, "topology must be"),                      # AttributeError
    ({"profile": 5}, "profile must be"),                        # AttributeError
    ({"faults": {"drop": 0.1}}, "faults must be"),              # AttributeError
    ({"stragglers": 3}, "stragglers must be"),                  # TypeError
    ({"stragglers": [3]}, "NODE:FACTOR"),                       # AttributeError
    ({"stragglers": {1: 0.5}}, "FACTOR must be"),               # slowed a node by 0.5
    ({"stragglers": {"a": 2.0}}, "whole node id"),
    ({"faults": "drop=0.1", "call": -1}, "call must be"),       # drew faults for call -1
    ({"faults": "drop=0.1", "call": 1.5}, "call must be"),
])
def test_model_time_argument_types(kwargs, word):
    args = {"topology": RING4, "profile": PROFILE} | kwargs
    topology, profile = args.pop("topology"), args.pop("profile")
    with pytest.raises(NicemuError, match=word):
        model_time("allreduce", "ring", topology, profile, 8, **args)


def test_stragglers_given_as_a_dict_match_the_text_form():
    text = model_time("allreduce", "ring", RING4, PROFILE, 64, stragglers="2:3.5")
    mapping = model_time("allreduce", "ring", RING4, PROFILE, 64, stragglers={2: 3.5})
    assert text.emulated_us == mapping.emulated_us


def test_build_schedule_bidirectional_must_be_a_bool():
    with pytest.raises(CollectiveError, match="bidirectional"):
        build_schedule("allreduce", "ring", RING4, 8, "yes")   # was taken as True


# --- schedule size ----------------------------------------------------------------------------------

def test_schedule_transfers_counts_ring_steps():
    # ring:8: 2 x 7 steps of 8 transfers; torus:4x4: 2 x (3 + 3) steps of 16
    assert schedule_transfers(ring(8), "allreduce") == 8 * 14
    assert schedule_transfers(parse_topology("torus:4x4"), "allreduce") == 16 * 12
    assert schedule_transfers(ring(8), "reducescatter") == 8 * 7
    assert sum(len(s.src) for s in build_schedule("allreduce", "ring", ring(8), 64).steps()) == 8 * 14


def test_a_ring_too_long_to_time_is_refused():
    """ring:65536 has 8.6e9 transfers (hours); the same nodes folded into torus:256x256 are fine."""
    with pytest.raises(CollectiveError, match=r"8\.59e\+09 transfers.*torus:256x256"):
        build_schedule("allreduce", "ring", ring(65536), 8)
    assert schedule_transfers(parse_topology("torus:256x256"), "allreduce") < 2**30


# --- the in-place buffer of Emulator.run_inplace ------------------------------------------------------

@pytest.fixture(scope="module")
def emu():
    with Emulator(MPI.COMM_SELF, "ring:4", "ideal") as e:
        yield e


def _readonly(shape):
    a = np.zeros(shape, np.float32)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("make, word", [
    (lambda: np.zeros(8, np.float32), "shape"),                                     # IndexError
    (lambda: np.zeros((3, 8), np.float32), "shape"),
    (lambda: np.zeros((4, 16), np.float32)[:, ::2], "C-contiguous"),                # ValueError
    (lambda: np.asfortranarray(np.zeros((4, 8), np.float32)), "C-contiguous"),      # ValueError
    (lambda: _readonly((4, 8)), "writeable"),                                       # ValueError
    (lambda: np.zeros((4, 8), np.int16), "int16"),                                  # ran on bytes
    (lambda: np.zeros((4, 8), object), "object"),                                   # TypeError
    (lambda: np.zeros((4, 8), np.float32).astype(">f4" if np.little_endian else "<f4"), "byte order"),
    (lambda: [[0.0] * 8] * 4, "numpy array"),
])
def test_run_inplace_refuses_bad_buffers(emu, make, word):
    with pytest.raises(CollectiveError, match=word):
        emu.run_inplace("allreduce", make(), "sum", "ring")


def test_run_inplace_refuses_an_unknown_op(emu):
    with pytest.raises(CollectiveError, match="unknown op 'mulsum'.*prod.*avg"):      # KeyError
        emu.run_inplace("allreduce", np.zeros((4, 8), np.float32), "mulsum", "ring")


def test_run_copies_any_layout_and_refuses_foreign_byte_order(emu):
    x = np.arange(64, dtype=np.float32).reshape(4, 16)[:, ::2]     # strided: run() copies it
    res = emu.allreduce(x, algo="ring")
    np.testing.assert_array_equal(res.data, np.tile(x.sum(axis=0), (4, 1)))
    with pytest.raises(CollectiveError, match="byte order"):
        emu.allreduce(x.astype(x.dtype.newbyteorder()), algo="mpi")


def test_sparse_algorithms_need_an_element(emu):
    with pytest.raises(CollectiveError, match="at least one element"):             # ValueError
        emu.allreduce(np.zeros((4, 0), np.float32), algo="omniccl")
    assert emu.allreduce(np.zeros((4, 0), np.float32), algo="ring").data.shape == (4, 0)


@pytest.mark.parametrize("kwargs, word", [
    ({"comm": "world"}, "comm must be"),           # AttributeError
    ({"topology": 5}, "topology must be"),         # AttributeError
    ({"profile": 5}, "profile must be"),           # AttributeError
])
def test_emulator_argument_types(kwargs, word):
    args = {"comm": MPI.COMM_SELF, "topology": "ring:4", "profile": "ideal"} | kwargs
    with pytest.raises(CollectiveError, match=word):
        Emulator(args["comm"], args["topology"], args["profile"])


# --- density 0 in the pattern generator ---------------------------------------------------------------

@pytest.mark.parametrize("overlap", ["random", "all", "none"])
def test_density_zero_is_an_all_zero_mask(overlap):
    for node in range(4):
        mask = pattern_mask(node, 4, 1000, 64, 0.0, overlap, seed=3)
        assert mask.shape == (16,) and not mask.any()


@pytest.mark.parametrize("density", [math.nan, -0.1, 1.5, math.inf])
def test_density_outside_zero_one_is_refused(density):
    with pytest.raises(CollectiveError, match=r"outside \[0, 1\]"):
        check_pattern(4, density, "random")


# --- workloads: lengths, arrivals, model shapes -----------------------------------------------------

@pytest.mark.parametrize("spec, word", [
    ("1000000000000", "2\\*\\*24"),                      # a prefill of 2e9 iterations: never ended
    ("uniform:1:99999999999999999999", "2\\*\\*24"),     # ValueError from numpy
    ("lognormal:1e300:0.8", "2\\*\\*24"),                # RuntimeWarning, then a confusing error
    ("lognormal:100:1e300", "sigma"),                    # OverflowError
    ("lognormal:100:0.8:99999999999", "2\\*\\*24"),
])
def test_length_caps(spec, word):
    with pytest.raises(WorkloadError, match=word):
        parse_lengths(spec)


def test_lognormal_tail_is_clipped_at_the_cap():
    """Without a MAX, a heavy tail stops at MAX_TOKENS (clipped before the cast to int64, which a huge
    mean used to overflow)."""
    draws = parse_lengths("lognormal:1000000:5").sample(20000, np.random.default_rng(0))
    assert draws.min() >= 1 and draws.max() == MAX_TOKENS


@pytest.mark.parametrize("n, rate, cv, word", [
    (10**12, 1.0, 1.0, "1,000,000"),      # MemoryError
    (10, 1e-300, 1.0, "below the limit"),  # NaN latencies
    (10, 1.0, 1e300, "--cv"),             # OverflowError
    (10, 1.0, 1e-300, "--cv"),            # ZeroDivisionError
])
def test_arrival_caps(n, rate, cv, word):
    with pytest.raises(WorkloadError, match=word):
        arrival_times_us(n, rate, cv)


def test_synthetic_requests_within_the_caps_are_unchanged():
    reqs = synthetic_requests(50, 2.0, "lognormal:1155:0.8:8192", "lognormal:211:0.8:2048", 1.5, seed=4)
    assert len(reqs) == 50 and all(1 <= r.input_tokens <= 8192 and 1 <= r.output_tokens <= 2048 for r in reqs)


@pytest.mark.parametrize("field, value", [("layers", 10**9), ("hidden", 10**22), ("experts", 10**8),
                                          ("vocab", 2**25)])
def test_model_shape_caps(field, value):
    shape = {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "intermediate": 11008, "vocab": 32000}
    shape[field] = value
    if field == "experts":
        shape["top_k"] = 2
    with pytest.raises(WorkloadError, match="over the limit"):
        Model("m", **shape)


# --- the sparse model and stragglers given through the API -------------------------------------------

def _sparse_calls():
    from nicemu.collectives import model_sparse, sparse_config
    cfg = sparse_config("omniccl", 4)
    prof = load_profile("ideal")
    return [
        ("1-D masks", lambda: model_sparse(cfg, np.ones(8, bool), prof, 4), "shape"),    # IndexError before
        ("int masks", lambda: model_sparse(cfg, np.ones((4, 8), int), prof, 4), "bool"),
        ("itemsize 0", lambda: model_sparse(cfg, np.ones((4, 8), bool), prof, 0), "itemsize"),
        ("float block", lambda: sparse_config("omniccl", 4, block_size=2.5), "whole number"),
        ("str block", lambda: sparse_config("omniccl", 4, block_size="8"), "whole number"),   # TypeError before
    ]


@pytest.mark.parametrize("index", range(5))
def test_sparse_model_arguments(index):
    _, call, word = _sparse_calls()[index]
    with pytest.raises(CollectiveError, match=word):
        call()


@pytest.mark.parametrize("stragglers", ["0:1e300", {0: 1e300}, {0: 0.5}, {-1: 2.0}, {"0": 2.0}])
def test_straggler_factors_are_bounded(stragglers):
    # 1e300 gave emulated times of 1e300 us; a dict skipped the text form's checks
    with pytest.raises(NicemuError, match="straggler"):
        model_time("allreduce", "ring", RING4, PROFILE, 1024, stragglers=stragglers)
