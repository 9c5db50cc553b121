"""Unit tests for the topologies package (no MPI)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from nicemu.topologies import (
    LinkParams,
    TopologyError,
    Torus,
    load_astra_network,
    parse_topology,
    ring,
    topology_kinds,
)

SMALL_SHAPES = [(2,), (5,), (2, 2), (3, 4), (4, 4, 2), (2, 3, 5), (3, 3, 3, 3), (2, 2, 2, 2, 2)]


# --- brute-force references ---------------------------------------------------------------


def all_coords(shape):
    """Row-major enumeration of coordinates, independent of Torus arithmetic."""
    return list(itertools.product(*(range(k) for k in shape)))


def reference_neighbor(shape, node, dim, step):
    table = all_coords(shape)
    c = list(table[node])
    c[dim] = (c[dim] + step) % shape[dim]
    return table.index(tuple(c))


# --- construction -------------------------------------------------------------------------


def test_basic_attributes():
    t = Torus((4, 4, 2))
    assert t.shape == (4, 4, 2)
    assert t.name == "torus:4x4x2"
    assert t.nodes == 32
    assert t.ndim == 3
    assert t.strides == (8, 2, 1)
    assert t.dim_links == (None, None, None)
    assert t.describe() == "torus:4x4x2 (32 nodes, 3 dims)"


def test_default_name_of_1d_is_ring():
    t = Torus([8])
    assert t.name == "ring:8"
    assert t.describe() == "ring:8 (8 nodes, 1 dim)"


def test_shape_accepts_numpy_ints_and_stores_python_ints():
    t = Torus(np.array([3, 4]))
    assert t.shape == (3, 4)
    assert all(type(k) is int for k in t.shape)
    assert type(t.nodes) is int


def test_ring_constructor():
    r = ring(8)
    assert isinstance(r, Torus)
    assert r.shape == (8,) and r.name == "ring:8" and r.nodes == 8 and r.ndim == 1
    assert r == parse_topology("ring:8")
    with pytest.raises(TopologyError, match=r"ring:1: a ring needs at least 2 nodes"):
        ring(1)
    with pytest.raises(TopologyError, match="at least 2"):
        ring(0)


def test_size_one_dimension_rejected():
    with pytest.raises(TopologyError, match=r"^torus:4x1: every dimension needs at least 2 nodes; drop the size-1"):
        Torus((4, 1))
    with pytest.raises(TopologyError, match=r"dimension 1 has size 0"):
        Torus((4, 0))
    with pytest.raises(TopologyError, match=r"dimension 0 has size -3"):
        Torus((-3, 4))
    with pytest.raises(TopologyError, match="at least one dimension"):
        Torus(())


def test_non_integer_shape_rejected():
    with pytest.raises(TopologyError, match="whole numbers"):
        Torus((4.0, 2))


def test_node_count_limit():
    Torus((2,) * 24)  # exactly 2**24 is allowed
    with pytest.raises(TopologyError, match=r"33554432 nodes is over the limit of 16777216"):
        Torus((2,) * 25)
    with pytest.raises(TopologyError, match="over the limit"):
        Torus((2,) * 1000)
    with pytest.raises(TopologyError, match="over the limit"):
        Torus((4096, 4096, 2))


def test_dim_links_validation_and_link_params():
    fast = LinkParams(bandwidth_GBps=50.0, latency_us=0.5)
    default = LinkParams(bandwidth_GBps=12.5, latency_us=1.0)
    t = Torus((4, 4), dim_links=[fast, None])
    assert t.dim_links == (fast, None)
    assert t.link_params(0, default) is fast
    assert t.link_params(1, default) is default
    with pytest.raises(ValueError, match="out of range"):
        t.link_params(2, default)
    with pytest.raises(TopologyError, match="dim_links has 1 entries but the torus has 2 dimensions"):
        Torus((4, 4), dim_links=[fast])
    with pytest.raises(TopologyError, match=r"dim_links\[1\] must be LinkParams or None"):
        Torus((4, 4), dim_links=[fast, (1.0, 2.0)])


def test_link_params_is_frozen_and_validated():
    link = LinkParams(12.5, 1.0)
    with pytest.raises(AttributeError):
        link.bandwidth_GBps = 3.0  # type: ignore[misc]
    with pytest.raises(TopologyError, match="bandwidth_GBps must be positive"):
        LinkParams(0.0, 1.0)
    with pytest.raises(TopologyError, match="latency_us must not be negative"):
        LinkParams(1.0, -1.0)
    with pytest.raises(TopologyError, match="NaN"):
        LinkParams(float("nan"), 1.0)
    assert LinkParams(1.0, 0.0).latency_us == 0.0


def test_equality_and_hash():
    assert Torus((4, 4, 2)) == parse_topology("torus:4x4x2")
    assert hash(Torus((4, 4, 2))) == hash(parse_topology("torus:4x4x2"))
    assert Torus((4, 4, 2)) != Torus((4, 2, 4))
    assert Torus((4, 4, 2)) != Torus((4, 4, 2), name="other")


# --- coordinates --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_coords_match_row_major_reference(shape):
    t = Torus(shape)
    expected = np.array(all_coords(shape), dtype=np.int64)
    got = t.coords(np.arange(t.nodes))
    assert got.dtype == np.int64
    assert got.shape == (t.nodes, t.ndim)
    np.testing.assert_array_equal(got, expected)
    for node in range(t.nodes):
        c = t.coords(node)
        assert c.shape == (t.ndim,) and c.dtype == np.int64
        np.testing.assert_array_equal(c, expected[node])
        back = t.node_of(c)
        assert back == node and isinstance(back, int)
        assert t.node_of(list(expected[node])) == node


@pytest.mark.parametrize("spec", ["torus:8^6", "torus:3x3x3x3x3x3", "torus:4x4x2", "torus:16x2x8", "ring:1000"])
def test_vectorised_roundtrip(spec):
    t = parse_topology(spec)
    nodes = np.arange(t.nodes, dtype=np.int64)
    c = t.coords(nodes)
    back = t.node_of(c)
    assert c.shape == (t.nodes, t.ndim)
    assert np.all(c >= 0) and np.all(c < np.array(t.shape))
    np.testing.assert_array_equal(back, nodes)
    # Every coordinate tuple appears exactly once.
    assert len(np.unique(c, axis=0)) == t.nodes


def test_8_pow_6_structure():
    t = parse_topology("torus:8^6")
    assert t.nodes == 262_144 and t.shape == (8,) * 6
    assert t.strides == (8**5, 8**4, 8**3, 8**2, 8, 1)
    # Row-major: last dimension fastest.
    np.testing.assert_array_equal(t.coords(1), [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(t.coords(8), [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(t.coords(t.nodes - 1), [7] * 6)
    assert t.node_of([1, 2, 3, 4, 5, 6]) == 1 * 32768 + 2 * 4096 + 3 * 512 + 4 * 64 + 5 * 8 + 6


def test_node_of_over_leading_axes():
    t = Torus((3, 4))
    grid = t.coords(np.arange(12).reshape(3, 4))
    assert grid.shape == (3, 4, 2)
    ids = t.node_of(grid)
    assert ids.shape == (3, 4)
    np.testing.assert_array_equal(ids, np.arange(12).reshape(3, 4))


def test_coordinate_and_node_range_checks():
    t = Torus((3, 4))
    with pytest.raises(ValueError, match="out of range"):
        t.coords(12)
    with pytest.raises(ValueError, match="out of range"):
        t.coords(np.array([0, -1]))
    with pytest.raises(ValueError, match="out of range"):
        t.node_of([3, 0])
    with pytest.raises(ValueError, match="last axis of length 2"):
        t.node_of([1, 2, 3])
    with pytest.raises(TypeError, match="integers"):
        t.coords(np.array([1.0]))


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_ring_position(shape):
    t = Torus(shape)
    table = all_coords(shape)
    nodes = np.arange(t.nodes)
    for dim in range(t.ndim):
        expected = np.array([c[dim] for c in table])
        np.testing.assert_array_equal(t.ring_position(nodes, dim), expected)
        assert t.ring_position(t.nodes - 1, dim) == shape[dim] - 1
        assert isinstance(t.ring_position(0, dim), int)


# --- neighbours ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("step", [1, -1, 2, -3, 7])
def test_neighbor_matches_brute_force(shape, step):
    t = Torus(shape)
    nodes = np.arange(t.nodes)
    for dim in range(t.ndim):
        expected = np.array([reference_neighbor(shape, n, dim, step) for n in range(t.nodes)])
        got = t.neighbor(nodes, dim, step)
        np.testing.assert_array_equal(got, expected)
        for n in range(t.nodes):
            scalar = t.neighbor(n, dim, step)
            assert isinstance(scalar, int) and scalar == expected[n]


def test_neighbor_ring_wraps():
    r = ring(5)
    assert r.neighbor(4, 0) == 0
    assert r.neighbor(0, 0, -1) == 4
    assert r.neighbor(2, 0, 0) == 2
    assert r.neighbor(3, 0, 5) == 3


def test_neighbor_inverse_and_permutation_on_8_pow_6():
    t = parse_topology("torus:8^6")
    nodes = np.arange(t.nodes)
    for dim in range(t.ndim):
        fwd = t.neighbor(nodes, dim, 1)
        back = t.neighbor(fwd, dim, -1)
        np.testing.assert_array_equal(back, nodes)
        # A ring shift is a permutation that changes only coordinate `dim`.
        assert len(np.unique(fwd)) == t.nodes
        diff = t.coords(fwd) - t.coords(nodes)
        other = np.delete(diff, dim, axis=1)
        assert not other.any()
        np.testing.assert_array_equal(diff[:, dim] % 8, np.ones(t.nodes))


def test_neighbor_dim_checks():
    t = Torus((4, 4))
    with pytest.raises(ValueError, match="dimension 2 is out of range"):
        t.neighbor(0, 2)
    with pytest.raises(ValueError, match="out of range"):
        t.neighbor(0, -1)


def test_size_two_dimension_neighbours_coincide():
    t = Torus((2, 3))
    nodes = np.arange(t.nodes)
    np.testing.assert_array_equal(t.neighbor(nodes, 0, 1), t.neighbor(nodes, 0, -1))
    np.testing.assert_array_equal(t.neighbor(nodes, 0, 1), (nodes + 3) % 6)
    assert not np.array_equal(t.neighbor(nodes, 1, 1), t.neighbor(nodes, 1, -1))


# --- directed links -----------------------------------------------------------------------


def expected_link_count(shape):
    nodes = int(np.prod(shape))
    return sum(nodes * (1 if k == 2 else 2) for k in shape)


@pytest.mark.parametrize("shape", [(2,), (3,), (8,), (2, 2), (4, 4, 2), (2, 3, 5), (3, 3, 3)])
def test_directed_links(shape):
    t = Torus(shape)
    links = list(t.directed_links())
    assert len(links) == expected_link_count(shape)
    assert len(set(links)) == len(links)
    # Each (src, dst) pair appears once: no duplicate physical link.
    assert len({(s, d) for s, d, _, _ in links}) == len(links)
    for src, dst, dim, direction in links:
        assert all(type(v) is int for v in (src, dst, dim, direction))
        assert direction in (1, -1)
        if shape[dim] == 2:
            assert direction == 1
        assert dst == reference_neighbor(shape, src, dim, direction)
    # Every node has the same out- and in-degree.
    degree = sum(1 if k == 2 else 2 for k in shape)
    out_deg = Counter(s for s, _, _, _ in links)
    in_deg = Counter(d for _, d, _, _ in links)
    assert set(out_deg) == set(range(t.nodes)) and set(out_deg.values()) == {degree}
    assert set(in_deg.values()) == {degree}


def test_directed_links_concrete_counts():
    assert len(list(ring(8).directed_links())) == 16
    assert len(list(ring(2).directed_links())) == 2
    assert len(list(parse_topology("torus:4x4x2").directed_links())) == 32 * 5
    assert len(list(parse_topology("torus:2^4").directed_links())) == 16 * 4
    assert sorted(ring(3).directed_links()) == sorted(
        [(0, 1, 0, 1), (1, 2, 0, 1), (2, 0, 0, 1), (0, 2, 0, -1), (1, 0, 0, -1), (2, 1, 0, -1)]
    )


# --- spec parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, shape, name",
    [
        ("ring:8", (8,), "ring:8"),
        ("ring:2", (2,), "ring:2"),
        ("torus:4x4x2", (4, 4, 2), "torus:4x4x2"),
        ("torus:3x3x3x3x3x3", (3,) * 6, "torus:3x3x3x3x3x3"),
        ("torus:8^6", (8,) * 6, "torus:8^6"),
        ("torus:4^2x2", (4, 4, 2), "torus:4^2x2"),
        ("torus:2x3^2", (2, 3, 3), "torus:2x3^2"),
        ("torus:16", (16,), "torus:16"),
        ("  Torus:4X4 ", (4, 4), "torus:4x4"),
    ],
)
def test_parse_valid_specs(spec, shape, name):
    t = parse_topology(spec)
    assert t.shape == shape
    assert t.name == name
    assert t.nodes == int(np.prod(shape))
    assert t.dim_links == (None,) * len(shape)


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("mesh:4", r"^unknown topology 'mesh:4'; use ring:N, switch:N, torus:AxBxC, torus:K\^D or astra:FILE\.yml$"),
        ("ring8", r"unknown topology 'ring8'"),
        ("", r"empty topology spec; use ring:N"),
        ("   ", r"empty topology spec"),
        ("ring:", r"ring:: N must be a whole number"),
        ("ring:abc", r"ring:abc: N must be a whole number"),
        ("ring:-4", r"N must be a whole number"),
        ("ring:1", r"ring:1: a ring needs at least 2 nodes"),
        ("ring:99999999", r"over the limit of 16777216"),
        ("torus:", r"torus:: give the dimension sizes"),
        ("torus:4x1", r"^torus:4x1: every dimension needs at least 2 nodes; drop the size-1 dimension$"),
        ("torus:1^1000000000", r"drop the size-1 dimension"),
        ("torus:4xx4", r"part 2 \(''\) is not a size"),
        ("torus:4x2.5", r"part 2 \('2.5'\) is not a size"),
        ("torus:8^0", r"exponent in '8\^0' must be at least 1"),
        ("torus:8^", r"is not a size"),
        ("torus:2^25", r"33554432 nodes is over the limit"),
        ("torus:8^1000000000", r"over the limit of 16777216"),
        ("torus:4096^3", r"68719476736 nodes is over the limit"),
        ("astra:", r"give the network file after 'astra:'"),
    ],
)
def test_parse_invalid_specs(spec, pattern):
    with pytest.raises(TopologyError, match=pattern) as info:
        parse_topology(spec)
    assert "\n" not in str(info.value)


def test_parse_non_string():
    with pytest.raises(TopologyError, match="must be a string"):
        parse_topology(8)  # type: ignore[arg-type]


def test_topology_error_is_value_error():
    assert issubclass(TopologyError, ValueError)


def test_topology_kinds():
    kinds = topology_kinds()
    assert isinstance(kinds, list) and all(isinstance(k, str) and "\n" not in k for k in kinds)
    text = " ".join(kinds)
    for needle in ("ring:N", "torus:AxB", "torus:K^D", "astra:"):
        assert needle in text


# --- ASTRA-sim YAML -----------------------------------------------------------------------

GOOD_YAML = """\
topology: [ Ring, Ring, Ring ]
npus_count: [ 4, 4, 2 ]
bandwidth: [ 50.0, 25.0, 12.5 ]   # GB/s
latency: [ 500.0, 1000.0, 250 ]  # ns
"""


def write(tmp_path, text, name="network.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_astra_good_file(tmp_path):
    path = write(tmp_path, GOOD_YAML)
    t = load_astra_network(path)
    assert t.shape == (4, 4, 2)
    assert t.nodes == 32
    assert t.name == f"astra:{path}"
    assert t.dim_links == (
        LinkParams(bandwidth_GBps=50.0, latency_us=0.5),
        LinkParams(bandwidth_GBps=25.0, latency_us=1.0),
        LinkParams(bandwidth_GBps=12.5, latency_us=0.25),
    )
    default = LinkParams(1.0, 1.0)
    assert t.link_params(2, default) == LinkParams(12.5, 0.25)
    assert "32 nodes" in t.describe() and "4x4x2" in t.describe()
    # The spec parser routes astra: to the same loader.
    assert parse_topology(f"astra:{path}") == t


def test_astra_without_bandwidth_and_latency(tmp_path):
    path = write(tmp_path, "topology: [ Ring ]\nnpus_count: [ 8 ]\n")
    t = load_astra_network(path)
    assert t.shape == (8,)
    assert t.dim_links == (None,)
    default = LinkParams(12.5, 1.0)
    assert t.link_params(0, default) is default


def test_astra_block_style_lists(tmp_path):
    path = write(tmp_path, "topology:\n  - Ring\n  - Ring\nnpus_count:\n  - 2\n  - 3\n")
    assert load_astra_network(path).shape == (2, 3)


@pytest.mark.parametrize("kind", ["Switch", "FullyConnected"])
def test_astra_unsupported_dimension(tmp_path, kind):
    path = write(tmp_path, f"topology: [ Ring, Ring, {kind} ]\nnpus_count: [ 4, 4, 2 ]\n")
    with pytest.raises(
        TopologyError,
        match=rf"dimension 2 is {kind}; only Ring dimensions are supported yet "
        r"\(FullyConnected and Switch are not supported yet\)",
    ) as info:
        load_astra_network(path)
    assert path in str(info.value)


def test_astra_missing_file(tmp_path):
    path = str(tmp_path / "absent.yml")
    with pytest.raises(TopologyError, match="not found") as info:
        load_astra_network(path)
    assert path in str(info.value)
    with pytest.raises(TopologyError, match="not found"):
        parse_topology(f"astra:{path}")


def test_astra_directory(tmp_path):
    with pytest.raises(TopologyError, match="is a directory"):
        load_astra_network(str(tmp_path))


def test_astra_malformed_yaml(tmp_path):
    path = write(tmp_path, "topology: [ Ring, Ring\nnpus_count: [ 4, 4 ]\n")
    with pytest.raises(TopologyError, match=r"not valid YAML at line \d+, column \d+") as info:
        load_astra_network(path)
    message = str(info.value)
    assert path in message and "\n" not in message


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("", r"file is empty"),
        ("- Ring\n- Ring\n", r"expected a mapping"),
        ("npus_count: [ 4, 4 ]\n", r"missing key\(s\) 'topology'"),
        ("topology: [ Ring, Ring ]\n", r"missing key\(s\) 'npus_count'"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nlinks: 3\n", r"unknown key\(s\) 'links'; allowed keys are"),
        ("topology: Ring\nnpus_count: [ 4 ]\n", r"'topology' must be a list"),
        ("topology: []\nnpus_count: []\n", r"'topology' is empty"),
        ("topology: [ Ring, Ring ]\nnpus_count: [ 4, 4, 2 ]\n", r"different lengths \(topology has 2, npus_count has 3\)"),
        (
            "topology: [ Ring, Ring ]\nnpus_count: [ 4, 4 ]\nbandwidth: [ 50.0 ]\nlatency: [ 1, 1 ]\n",
            r"different lengths .*bandwidth has 1",
        ),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ -50.0 ]\nlatency: [ 500 ]\n", r"bandwidth\[0\] is -50\.0; it must be a positive"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50 ]\nlatency: [ 0 ]\n", r"latency\[0\] is 0; it must be a positive"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ fast ]\nlatency: [ 5 ]\n", r"bandwidth\[0\] is 'fast'; it must be a number"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ .inf ]\nlatency: [ 5 ]\n", r"positive finite"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ true ]\nlatency: [ 5 ]\n", r"must be a number"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50 ]\n", r"'bandwidth' is given without 'latency'"),
        ("topology: [ Ring, Ring ]\nnpus_count: [ 4, 1 ]\n", r"npus_count\[1\] is 1; every Ring dimension needs at least 2"),
        ("topology: [ Ring ]\nnpus_count: [ 4.5 ]\n", r"npus_count\[0\] is 4\.5; it must be a whole number"),
        ("topology: [ Ring ]\nnpus_count: [ '4' ]\n", r"npus_count\[0\] is '4'"),
        ("topology: [ 3 ]\nnpus_count: [ 4 ]\n", r"dimension 0 type is 3"),
        ("topology: [ Ring, Ring ]\nnpus_count: [ 8192, 8192 ]\n", r"67108864 NPUs is over the limit"),
        # the link ranges of a hardware profile: emulated times stay finite
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 1.0e-300 ]\nlatency: [ 5 ]\n",
         r"bandwidth\[0\] is 1e-300; it must be at least 1e-06 GB/s"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50 ]\nlatency: [ 1.0e+300 ]\n",
         r"latency\[0\] is 1e\+300; it must be at most 1e\+12 ns"),
        ("topology: [ Ring ]\nnpus_count: [ 1099511627776 ]\n", r"1099511627776 NPUs is over the limit"),
        ("topology: [ Ring ]\nnpus_count: [ true ]\n", r"npus_count\[0\] is True; it must be a whole number"),
    ],
)
def test_astra_bad_files(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError, match=pattern) as info:
        load_astra_network(path)
    message = str(info.value)
    assert message.startswith(path) and "\n" not in message


def test_astra_numbers_in_exponent_form(tmp_path):
    """YAML 1.1 reads 5e2 (no dot) as a string; it is a number in a network file, as in a profile."""
    plain = load_astra_network(write(tmp_path, "topology: [Ring]\nnpus_count: [4]\nbandwidth: [25.0]\n"
                                                "latency: [500.0]\n", "plain.yml"))
    exponent = load_astra_network(write(tmp_path, "topology: [Ring]\nnpus_count: [4]\nbandwidth: [2.5e1]\n"
                                                   "latency: [5e2]\n", "exp.yml"))
    assert exponent.dim_links == plain.dim_links == (LinkParams(25.0, 0.5),)
