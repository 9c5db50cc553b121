"""Ranks of one node on an NVLink-class fabric (nic/intra_node.py, docs/model.md §19.5): closed forms.

With ``intra_node.nvlink`` the intra-node reduce-scatter and allgather of the hierarchical AllReduce
are P - 1 transfers each over the rank's own port (α_v + nβ_v per step, n = M/P), the reduce-scatter's
reductions stream behind the packets at γ_v, and the rails run as without it (no host DRAM, PCIe,
NIC or host CPU in the intra-node phases).
"""

import pytest

from nicemu.collectives import model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")


def nvlink(bandwidth=450.0, latency=1.9, reduce=".inf"):
    return IDEAL.with_overrides(["intra_node.nvlink=true", f"intra_node.bandwidth_GBps={bandwidth}",
                                 f"intra_node.latency_us={latency}", f"intra_node.reduce_GBps={reduce}"])


@pytest.mark.parametrize("algo", ["ring", "directreduce", "rabenseifner", "ring-pipelined", "tree"])
@pytest.mark.parametrize("spec,p", [("ring:4", 2), ("switch:3", 4), ("torus:2x3", 3), ("ring:2", 8)])
def test_nvlink_phases_plus_the_rails(algo, spec, p):
    profile = nvlink()
    count = 6 * 4096 * p
    n = count // p * 4
    beta = 1 / (1e3 * 450.0)
    nodes = parse_topology(spec)
    rail = model_time("allreduce", algo, nodes, profile, count // p)
    whole = model_time("allreduce", algo, nodes.with_ranks_per_node(p), profile, count)
    local = 2 * (p - 1) * (1.9 + n * beta)
    assert whole.emulated_us == pytest.approx(local + rail.emulated_us, rel=1e-12)
    assert whole.wire_bytes == p * rail.wire_bytes
    assert whole.host_busy_us == rail.host_busy_us      # the host takes no part in the intra-node phases


def test_streamed_reduction_adds_one_packet():
    """A reduction slower than nothing but faster than the port ends one last packet after the stream."""
    p, count = 4, 4096 * 64
    n = count // p * 4
    gamma = 1 / (1e3 * 900.0)
    profile = nvlink(reduce=900.0)
    pkt = IDEAL.nic.packet_bytes
    nodes = parse_topology("ring:4")
    rail = model_time("allreduce", "ring", nodes, profile, count // p).emulated_us
    whole = model_time("allreduce", "ring", nodes.with_ranks_per_node(p), profile, count).emulated_us
    beta = 1 / (1e3 * 450.0)
    rs = (p - 1) * (1.9 + n * beta + min(n, pkt) * gamma)
    ag = (p - 1) * (1.9 + n * beta)
    assert whole == pytest.approx(rs + rail + ag, rel=1e-12)


def test_nvlink_needs_several_ranks_and_changes_nothing_else():
    """One rank per node: the section is read but no step is local, so every time is as without it."""
    on = nvlink()
    for algo in ("ring", "directreduce", "host-best"):
        assert (model_time("allreduce", algo, "torus:2x3", on, 9000).emulated_us
                == model_time("allreduce", algo, "torus:2x3", IDEAL, 9000).emulated_us)


def test_profile_section_is_checked():
    from nicemu.errors import ProfileError
    with pytest.raises(ProfileError, match="intra_node.nvlink must be true or false"):
        IDEAL.with_overrides(["intra_node.nvlink=3"])
    with pytest.raises(ProfileError, match="intra_node.bandwidth_GBps"):
        IDEAL.with_overrides(["intra_node.bandwidth_GBps=0"])
    assert not load_profile("directreduce-paper").intra_node.nvlink


def test_nvlink_telemetry():
    """The NVLink ports' bytes: every rank sends P - 1 shards in each intra-node phase; busy at β_v."""
    p, count = 4, 4096 * 16
    n = count // p * 4
    t = model_time("allreduce", "ring", parse_topology("ring:3").with_ranks_per_node(p), nvlink(), count,
                   telemetry=True)
    from nicemu.nic.telemetry import NVLINK
    st = t.telemetry
    assert (st.resource_bytes[NVLINK] == 2 * (p - 1) * n).all()
    assert st.resource_busy_us[NVLINK] == pytest.approx(2 * (p - 1) * n / (1e3 * 450.0), rel=1e-12)
    assert int(st.link_bytes.sum()) == t.wire_bytes
