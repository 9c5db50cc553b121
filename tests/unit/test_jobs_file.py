"""Jobs files (workloads/jobs.py): what a valid file gives, and a one-line error for each malformed one."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.errors import UsageError
from nicemu.workloads.jobs import parse_jobs

GOOD = """
topology: torus:4x4x2
profile: 400g-gen5
jobs:
  - name: a
    nodes: {block: "0-1,0-3,0-1"}
    algo: directreduce
    size: 64M
    iterations: 3
    gap_us: 2.5
  - name: b
    nodes: "16-19,24"
    algo: ring
    start_us: 10
  - nodes: [20, 21, 22]
    algo: host-best
    collective: allgather
    topology: ring:3
  - nodes: {random: 4, seed: 7}
    algo: ring
"""


def test_a_valid_file():
    jf = parse_jobs(GOOD.replace("nodes: {random: 4, seed: 7}", "nodes: [28, 29]"))
    assert jf.topology.name == "torus:4x4x2" and jf.profile == "400g-gen5"
    a, b, c, d = jf.jobs
    assert a.nodes.tolist() == [v for v in range(16)] and a.topology.shape == (2, 4, 2)
    assert (a.iterations, a.gap_us, a.size, a.collective) == (3, 2.5, 64 << 20, "allreduce")
    assert b.nodes.tolist() == [16, 17, 18, 19, 24] and b.topology.name == "ring:5" and b.start_us == 10.0
    assert c.name == "job3" and c.topology.name == "ring:3" and c.collective == "allgather"
    assert d.nodes.tolist() == [28, 29] and d.size == 1 << 20 and d.iterations == 1


def test_random_nodes_follow_the_seed():
    jf = parse_jobs("topology: ring:64\njobs:\n  - nodes: {random: 8, seed: 3}\n    algo: ring\n")
    again = parse_jobs("topology: ring:64\njobs:\n  - nodes: {random: 8, seed: 3}\n    algo: ring\n")
    other = parse_jobs("topology: ring:64\njobs:\n  - nodes: {random: 8, seed: 4}\n    algo: ring\n")
    assert np.array_equal(jf.jobs[0].nodes, again.jobs[0].nodes)
    assert not np.array_equal(jf.jobs[0].nodes, other.jobs[0].nodes)
    assert len(np.unique(jf.jobs[0].nodes)) == 8


ONE = "topology: ring:8\njobs:\n  - nodes: \"0-3\"\n    algo: ring\n"


@pytest.mark.parametrize("text,words", [
    ("topology: ring:8\njobs: [\n", ["malformed YAML", "line"]),
    ("- 1\n- 2\n", ["mapping"]),
    (ONE + "extra: 1\n", ["unknown key 'extra'", "topology, profile, jobs"]),
    ("jobs: []\n", ["no 'topology'"]),
    ("topology: ring:8\njobs: []\n", ["non-empty list"]),
    (ONE.replace("algo: ring", "algo: ring\n    colour: red"), ["unknown key 'colour'"]),
    (ONE.replace("    algo: ring\n", ""), ["has no 'algo'"]),
    (ONE + "  - nodes: \"3-5\"\n    algo: ring\n", ["node 3", "disjoint"]),
    (ONE.replace("0-3", "6-9"), ["node 8", "larger than the fabric"]),
    (ONE.replace("0-3", "3"), ["at least 2 nodes"]),
    (ONE.replace("0-3", "3-1"), ["upwards"]),
    (ONE.replace("algo: ring", "algo: ring\n    iterations: 0"), ["'iterations'", "100,000"]),
    (ONE.replace("algo: ring", "algo: ring\n    start_us: -1"), ["'start_us'"]),
    (ONE.replace("algo: ring", "algo: ring\n    size: 1K,2K"), ["one size"]),
    (ONE.replace("algo: ring", "algo: ring\n    collective: reduce"), ["collective 'reduce'"]),
    (ONE.replace("algo: ring", "algo: ring\n    topology: ring:5"), ["ring:5 has 5 nodes", "job has 4"]),
    ("topology: torus:4x4\njobs:\n  - nodes: {block: \"0-1\"}\n    algo: ring\n", ["one range per dimension"]),
    ("topology: torus:4x4\njobs:\n  - nodes: {block: \"0-1,2-5\"}\n    algo: ring\n", ["lie in 0-3"]),
    (ONE.replace("\"0-3\"", "{random: 9}"), ["'random' picks 2 to 8"]),
    (ONE + "  - name: job1\n    nodes: \"4-5\"\n    algo: ring\n", ["'job1' is used twice"]),
    ("topology: ring:0\njobs:\n  - nodes: \"0-1\"\n    algo: ring\n", ["topology"]),
])
def test_malformed_files_fail_in_one_line(text, words):
    with pytest.raises(UsageError) as info:
        parse_jobs(text, "f.yml")
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


class _Rank:
    """A stand-in communicator for one rank of a job: rank 0's status reaches every rank by Ibcast."""

    def __init__(self, rank: int, root_status: int) -> None:
        self.rank, self.size, self.root_status = rank, 4, root_status

    def Ibcast(self, buf, root=0):
        if self.rank != root:
            buf[0] = self.root_status

        class _Done:
            @staticmethod
            def Test():
                return True
        return _Done()


def test_the_model_runs_on_rank_0_alone_and_its_error_ends_every_rank():
    from nicemu.errors import NicemuError, UsageError
    from nicemu.rank0 import on_rank0 as _on_rank0
    ran = []
    _on_rank0(_Rank(0, 0), lambda: ran.append(0))
    _on_rank0(_Rank(2, 0), lambda: ran.append(2))
    assert ran == [0]                               # the other ranks only wait

    def fails():
        raise UsageError("jobs a, b make 9,000,000 flows")
    with pytest.raises(UsageError, match="9,000,000 flows"):
        _on_rank0(_Rank(0, 1), fails)               # rank 0 reports the error itself
    with pytest.raises(NicemuError, match="stopped on rank 0"):
        _on_rank0(_Rank(3, 1), fails)               # the others end with it, quietly (rank 0 prints)
