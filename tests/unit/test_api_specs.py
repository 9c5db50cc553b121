"""Every model-path entry point takes the same specs as the command line, and refuses bad ones in one line."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives import (
    CollectiveError,
    build_schedule,
    model_sparse,
    model_time,
    p2p_time,
    plan_sparse,
    segment_elems,
    sparse_config,
    time_sparse_plan,
)
from nicemu.collectives.api.checks import check_options
from nicemu.errors import FaultSpecError, NicemuError, ProfileError, TopologyError
from nicemu.nic import load_profile
from nicemu.topologies import parse_topology

MASKS = np.random.default_rng(0).random((4, 32)) < 0.3


def test_model_time_specs_equal_objects():
    by_spec = model_time("allreduce", "ring", "ring:8", "directreduce-paper", 4096)
    by_obj = model_time("allreduce", "ring", parse_topology("ring:8"), load_profile("directreduce-paper"), 4096)
    assert by_spec.emulated_us == by_obj.emulated_us


def test_build_schedule_takes_a_spec():
    assert build_schedule("allreduce", "ring", "ring:4", 16).describe() == \
        build_schedule("allreduce", "ring", parse_topology("ring:4"), 16).describe()


def test_sparse_entry_points_take_names_and_specs():
    prof = load_profile("omniccl-paper")
    cfg = sparse_config("omniccl", 4)
    ref = model_sparse(cfg, MASKS, prof, 4)
    assert model_sparse(cfg, MASKS, "omniccl-paper", 4).emulated_us == ref.emulated_us
    assert model_sparse("omniccl", MASKS, "omniccl-paper", 4).emulated_us == ref.emulated_us
    assert time_sparse_plan(plan_sparse("omniccl", MASKS), "omniccl-paper", 4).emulated_us == ref.emulated_us
    slow = model_sparse(cfg, MASKS, prof, 4, stragglers={1: 2.0})
    assert model_sparse(cfg, MASKS, prof, 4, stragglers="1:2").emulated_us == slow.emulated_us
    assert slow.emulated_us > ref.emulated_us


def test_p2p_and_segment_take_specs():
    ref = p2p_time(parse_topology("ring:4"), load_profile("ideal"), [(0, 2)], 1024, "nic")
    assert p2p_time("ring:4", "ideal", [(0, 2)], 1024, "nic").emulated_us == ref.emulated_us
    assert segment_elems("directreduce-paper", 4) == load_profile("directreduce-paper").host.segment_elems(4)


@pytest.mark.parametrize("call, error, words", [
    (lambda: model_time("allreduce", "ring", "ring:x", "ideal", 8), TopologyError, "e.g. ring:8"),
    (lambda: model_time("allreduce", "ring", "ring:4", "no-such-profile", 8), ProfileError, "use one of"),
    (lambda: model_time("allreduce", "ring", 8, "ideal", 8), CollectiveError, "spec such as 'ring:8'"),
    (lambda: model_sparse("omniccl", MASKS, 3.5, 4), CollectiveError, "profile must be"),
    (lambda: model_sparse("ring", MASKS, "ideal", 4), CollectiveError, "dense algorithm"),
    (lambda: model_sparse("omniccl", MASKS[0], "ideal", 4), CollectiveError, "(nodes >= 2, blocks)"),
    (lambda: model_sparse("omniccl", MASKS, "ideal", 0), CollectiveError, "itemsize"),
    (lambda: model_sparse("omniccl", MASKS, "ideal", 4, faults="drop=2"), FaultSpecError, "drop"),
    (lambda: time_sparse_plan("plan", "ideal", 4), CollectiveError, "plan_sparse"),
    (lambda: p2p_time("ring:4", "ideal", [(0, 9)], 8, "nic"), CollectiveError, "not between two nodes"),
    (lambda: p2p_time("ring:4", "ideal", [(0, "a")], 8, "nic"), CollectiveError, "whole numbers"),
    (lambda: p2p_time("ring:4", "ideal", [(0, 1)], -1, "nic"), CollectiveError, "negative"),
    (lambda: segment_elems("ideal", 0), CollectiveError, "itemsize"),
])
def test_bad_specs_are_one_line_project_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, NicemuError) and "\n" not in str(info.value) and words in str(info.value)


def test_options_are_checked_against_the_algorithm():
    assert check_options("omniccl", {"block_size": 64, "spots": None}) == {"block_size": 64}
    with pytest.raises(CollectiveError, match=r"block_size= is a sparse option and ring is dense; drop it"):
        check_options("ring", {"block_size": 64})
    with pytest.raises(CollectiveError, match=r"unknown option blocksize= for omniccl; it takes block_size"):
        check_options("omniccl", {"blocksize": 64})
    with pytest.raises(CollectiveError, match=r"block_size= must be a whole number"):
        check_options("omniccl", {"block_size": 64.0})
