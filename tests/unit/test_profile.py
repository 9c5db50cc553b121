"""Unit tests for hardware profiles (nic/profile.py): loading, strict schema, overrides, errors."""

import json
import math
from dataclasses import FrozenInstanceError

import pytest

from nicemu.errors import ProfileError
from nicemu.nic.profile import (
    HostSpec,
    LinkSpec,
    NicSpec,
    PcieSpec,
    Profile,
    TopologySpec,
    load_profile,
    profile_from_dict,
    shipped_profiles,
)

GOOD_YAML = """\
link: {bandwidth_GBps: 12.5, latency_us: 1.0}
pcie: {bandwidth_GBps: 25.0, latency_us: 0.5}
host: {reduce_GBps: 20.0, overhead_us: 1.0}
nic:  {reduce_GBps: 50.0, latency_us: 0.2, packet_bytes: 1024, memory_KiB: 4096}
"""


def good_dict() -> dict:
    return {
        "link": {"bandwidth_GBps": 12.5, "latency_us": 1.0},
        "pcie": {"bandwidth_GBps": 25.0, "latency_us": 0.5},
        "host": {"reduce_GBps": 20.0, "overhead_us": 1.0},
        "nic": {"reduce_GBps": 50.0, "latency_us": 0.2, "packet_bytes": 1024, "memory_KiB": 4096},
    }


def write(tmp_path, text: str, name: str = "mine.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(fn, *args) -> str:
    with pytest.raises(ProfileError) as info:
        fn(*args)
    return str(info.value)


# --------------------------------------------------------------------------
# Shipped profiles


def test_shipped_profiles_are_listed_sorted():
    names = shipped_profiles()
    assert names == sorted(names)
    assert {"ideal", "directreduce-paper"} <= set(names)
    assert not any(n.endswith(".yml") for n in names)


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.description  # each shipped file explains itself


def test_ideal_values_make_extra_terms_vanish():
    p = load_profile("ideal")
    assert p.link == LinkSpec(bandwidth_GBps=12.5, latency_us=1.0)
    assert p.pcie.bandwidth_GBps == math.inf and p.pcie.latency_us == 0.0
    assert p.host == HostSpec(reduce_GBps=20.0, overhead_us=0.0)
    assert p.nic.reduce_GBps == math.inf
    assert p.nic.latency_us == 0.0
    assert p.nic.packet_bytes == 4096 and isinstance(p.nic.packet_bytes, int)
    assert p.nic.memory_KiB == 4096.0 and isinstance(p.nic.memory_KiB, float)
    assert p.topology == TopologySpec(bidirectional=False)
    assert "alpha" in p.description


def test_directreduce_paper_values_are_consistent():
    """The paper profile's argument needs PCIe and the NIC engine to keep up with the link."""
    p = load_profile("directreduce-paper")
    assert p.pcie.bandwidth_GBps >= p.link.bandwidth_GBps
    assert p.nic.reduce_GBps >= p.link.bandwidth_GBps
    assert p.nic.packet_bytes == 1024
    assert all(math.isfinite(v) for v in (p.pcie.latency_us, p.host.overhead_us, p.nic.latency_us))


def test_shipped_files_have_comment_headers():
    from nicemu.nic.profile import PROFILE_DIR

    for name in shipped_profiles():
        first = (PROFILE_DIR / f"{name}.yml").read_text().splitlines()[0]
        assert first.startswith("# "), name
    assert "docs/model.md" in (PROFILE_DIR / "directreduce-paper.yml").read_text()


def test_profile_is_frozen():
    p = load_profile("ideal")
    with pytest.raises(FrozenInstanceError):
        p.nic.packet_bytes = 1  # type: ignore[misc]


# --------------------------------------------------------------------------
# User files and dicts


def test_user_yaml_file_by_path(tmp_path):
    path = write(tmp_path, GOOD_YAML)
    p = load_profile(path)
    assert p.name == "mine"
    assert p.description == ""
    assert p.link.bandwidth_GBps == 12.5
    assert p.pcie == PcieSpec(25.0, 0.5)
    assert p.host.overhead_us == 1.0
    assert p.nic == NicSpec(50.0, 0.2, 1024, 4096.0)
    assert p.topology.bidirectional is False


def test_user_file_optional_sections_and_name(tmp_path):
    text = GOOD_YAML + "topology: {bidirectional: true}\ndescription: my cluster\nname: lab\n"
    p = load_profile(write(tmp_path, text))
    assert p.topology.bidirectional is True
    assert p.description == "my cluster"
    assert p.name == "lab"


def test_empty_topology_section_uses_defaults(tmp_path):
    p = load_profile(write(tmp_path, GOOD_YAML + "topology:\n"))
    assert p.topology == TopologySpec()


def test_ints_are_accepted_for_floats_and_converted():
    data = good_dict()
    data["link"] = {"bandwidth_GBps": 10, "latency_us": 0}
    p = profile_from_dict(data, "x")
    assert p.link == LinkSpec(10.0, 0.0)
    assert type(p.link.bandwidth_GBps) is float and type(p.link.latency_us) is float


def test_exponent_numbers_in_file(tmp_path):
    # PyYAML reads 1e-3 as a string (YAML 1.1); profiles accept it as a number.
    text = GOOD_YAML.replace("latency_us: 0.2", "latency_us: 1e-3")
    assert load_profile(write(tmp_path, text)).nic.latency_us == pytest.approx(1e-3)


def test_inf_allowed_for_every_rate_field():
    data = good_dict()
    data["link"]["bandwidth_GBps"] = math.inf
    data["pcie"]["bandwidth_GBps"] = math.inf
    data["host"]["reduce_GBps"] = math.inf
    data["nic"]["reduce_GBps"] = math.inf
    p = profile_from_dict(data, "fast")
    assert p.link.bandwidth_GBps == p.pcie.bandwidth_GBps == math.inf
    assert p.host.reduce_GBps == p.nic.reduce_GBps == math.inf


def test_zero_memory_and_latency_allowed():
    data = good_dict()
    data["nic"]["memory_KiB"] = 0
    data["pcie"]["latency_us"] = 0
    p = profile_from_dict(data, "x")
    assert p.nic.memory_KiB == 0.0 and p.pcie.latency_us == 0.0


@pytest.mark.parametrize("name", shipped_profiles())
def test_to_dict_roundtrip(name):
    p = load_profile(name)
    d = p.to_dict()
    assert d["name"] == name
    assert set(d) == {"name", "description", "link", "pcie", "host", "nic", "topology", "switch", "intra_node"}
    assert all(isinstance(d[s], dict) for s in ("link", "pcie", "host", "nic", "topology"))
    assert profile_from_dict(d, "other") == p
    # Also survives JSON (Python's json writes Infinity for inf).
    assert profile_from_dict(json.loads(json.dumps(d)), "other") == p


def test_to_dict_keeps_inf_as_float():
    d = load_profile("ideal").to_dict()
    assert d["pcie"]["bandwidth_GBps"] == float("inf")
    assert d["nic"]["packet_bytes"] == 4096
    assert d["topology"] == {"bidirectional": False}


def test_profile_from_dict_uses_given_name():
    assert profile_from_dict(good_dict(), "given").name == "given"


def test_shipped_name_wins_over_local_file(tmp_path, monkeypatch):
    (tmp_path / "ideal").write_text(GOOD_YAML)
    monkeypatch.chdir(tmp_path)
    assert load_profile("ideal").pcie.bandwidth_GBps == math.inf
    assert load_profile("./ideal").pcie.bandwidth_GBps == 25.0


# --------------------------------------------------------------------------
# Overrides


def test_override_int():
    p = load_profile("ideal", ["nic.packet_bytes=1024"])
    assert p.nic.packet_bytes == 1024 and isinstance(p.nic.packet_bytes, int)


def test_override_float_exponent_and_int_as_float():
    p = load_profile("ideal", ["nic.latency_us=1e-3", "link.bandwidth_GBps=25", "host.overhead_us=0.5"])
    assert p.nic.latency_us == pytest.approx(1e-3)
    assert p.link.bandwidth_GBps == 25.0 and isinstance(p.link.bandwidth_GBps, float)
    assert p.host.overhead_us == 0.5


def test_override_inf():
    p = load_profile("directreduce-paper", ["pcie.bandwidth_GBps=.inf"])
    assert p.pcie.bandwidth_GBps == math.inf


def test_override_bool():
    p = load_profile("ideal", ["topology.bidirectional=true"])
    assert p.topology.bidirectional is True
    assert p.with_overrides(["topology.bidirectional=false"]).topology.bidirectional is False


def test_override_leaves_original_and_other_fields_untouched():
    base = load_profile("directreduce-paper")
    new = base.with_overrides(["nic.memory_KiB=512"])
    assert base.nic.memory_KiB == 4096.0
    assert new.nic.memory_KiB == 512.0
    assert new.nic.packet_bytes == base.nic.packet_bytes
    assert new.link == base.link and new.name == base.name


def test_later_override_wins_and_spaces_are_tolerated():
    p = load_profile("ideal", ["nic.packet_bytes=512", " nic.packet_bytes = 2048"])
    assert p.nic.packet_bytes == 2048


def test_no_overrides_is_identity():
    p = load_profile("ideal")
    assert p.with_overrides([]) == p
    assert load_profile("ideal", ()) == p


# --------------------------------------------------------------------------
# Error paths


def test_unknown_profile_name():
    msg = error_of(load_profile, "foo")
    assert msg.startswith("unknown profile 'foo'; use one of ")
    assert "ideal" in msg and "directreduce-paper" in msg and "path to a YAML file" in msg


def test_missing_file_path(tmp_path):
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ProfileError, match=r"unknown profile '.*nope\.yml'.*use one of"):
        load_profile(missing)


def test_directory_is_not_a_profile(tmp_path):
    with pytest.raises(ProfileError, match="is not a file"):
        load_profile(str(tmp_path))


def test_unknown_key_names_key_and_lists_valid_ones(tmp_path):
    path = write(tmp_path, GOOD_YAML.replace("packet_bytes", "packet_size"), "x.yml")
    msg = error_of(load_profile, path)
    assert msg == (
        f"profile {path}: unknown key 'nic.packet_size'; valid keys in nic: "
        "reduce_GBps, latency_us, packet_bytes, memory_KiB, retransmit_timeout_us, gpudirect"
    )


def test_unknown_section(tmp_path):
    path = write(tmp_path, GOOD_YAML + "fabric: {ports: 8}\n")
    with pytest.raises(ProfileError, match=r"unknown section 'fabric'; valid top-level keys: link, pcie"):
        load_profile(path)


def test_unknown_topology_key():
    data = good_dict()
    data["topology"] = {"bidirectinal": True}
    with pytest.raises(ProfileError, match=r"unknown key 'topology.bidirectinal'; valid keys in topology: bidirectional"):
        profile_from_dict(data, "x")


def test_missing_key():
    data = good_dict()
    del data["host"]["overhead_us"]
    with pytest.raises(ProfileError, match=r"profile x: missing key 'host.overhead_us'; the host section needs"):
        profile_from_dict(data, "x")


def test_missing_section():
    data = good_dict()
    del data["pcie"]
    with pytest.raises(ProfileError, match=r"missing section 'pcie'.*bandwidth_GBps, latency_us"):
        profile_from_dict(data, "x")


def test_empty_required_section(tmp_path):
    path = write(tmp_path, GOOD_YAML.replace("pcie: {bandwidth_GBps: 25.0, latency_us: 0.5}", "pcie:"))
    with pytest.raises(ProfileError, match=r"section 'pcie' is empty"):
        load_profile(path)


def test_section_not_a_mapping():
    data = good_dict()
    data["link"] = [12.5, 1.0]
    with pytest.raises(ProfileError, match=r"section 'link' must be a mapping.*got a list"):
        profile_from_dict(data, "x")


@pytest.mark.parametrize(
    ("section", "key", "value", "pattern"),
    [
        ("link", "bandwidth_GBps", True, r"link\.bandwidth_GBps must be a number >= 1e-06.*got true \(a boolean\)"),
        ("link", "bandwidth_GBps", "fast", r"link\.bandwidth_GBps must be a number >= 1e-06.*got 'fast'"),
        ("link", "bandwidth_GBps", "12.5", r"link\.bandwidth_GBps must be a number >= 1e-06.*got '12\.5'"),
        ("link", "bandwidth_GBps", 0, r"link\.bandwidth_GBps must be a number >= 1e-06"),
        ("pcie", "bandwidth_GBps", -1.0, r"pcie\.bandwidth_GBps must be a number >= 1e-06"),
        ("host", "reduce_GBps", -math.inf, r"host\.reduce_GBps must be a number >= 1e-06.*got -\.inf"),
        ("nic", "reduce_GBps", math.nan, r"nic\.reduce_GBps must be a number >= 1e-06.*got \.nan"),
        ("link", "latency_us", -0.1, r"link\.latency_us must be a finite number from 0 to 1e\+09, got -0\.1"),
        ("pcie", "latency_us", math.inf, r"pcie\.latency_us must be a finite number from 0 to 1e\+09.*only allowed for bandwidths"),
        ("host", "overhead_us", None, r"host\.overhead_us must be a finite number from 0 to 1e\+09, got nothing"),
        ("nic", "memory_KiB", -1, r"nic\.memory_KiB must be a finite number >= 0"),
        ("nic", "memory_KiB", math.inf, r"nic\.memory_KiB must be a finite number >= 0"),
        ("nic", "packet_bytes", 0, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40, got 0"),
        ("nic", "packet_bytes", 1.5, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40, got 1\.5"),
        ("nic", "packet_bytes", 1024.0, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40, got 1024\.0 \(write it without a decimal point\)"),
        ("nic", "packet_bytes", True, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40, got true"),
        ("nic", "latency_us", [1], r"nic\.latency_us must be a finite number from 0 to 1e\+09, got a list"),
        ("topology", "bidirectional", 1, r"topology\.bidirectional must be true or false, got 1"),
        ("topology", "bidirectional", "yes please", r"topology\.bidirectional must be true or false"),
        # bounds that keep every emulated time finite (these gave inf or NaN times, or an OverflowError)
        ("link", "bandwidth_GBps", 1e-320, r"link\.bandwidth_GBps must be a number >= 1e-06"),
        ("nic", "reduce_GBps", 1e-7, r"nic\.reduce_GBps must be a number >= 1e-06.*got 1e-07"),
        ("link", "latency_us", 1e308, r"link\.latency_us must be a finite number from 0 to 1e\+09, got 1e\+308"),
        ("nic", "retransmit_timeout_us", 2e9, r"nic\.retransmit_timeout_us must be a finite number from 0 to 1e\+09"),
        ("nic", "packet_bytes", 10**23, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40, got 10{23}"),
        ("nic", "packet_bytes", 2**40 + 1, r"nic\.packet_bytes must be an integer from 1 to 2\*\*40"),
    ],
)
def test_bad_values(section, key, value, pattern):
    data = good_dict()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ProfileError, match=r"^profile x: " + pattern):
        profile_from_dict(data, "x")


def test_description_must_be_text():
    data = good_dict()
    data["description"] = 42
    with pytest.raises(ProfileError, match=r"'description' must be a text string, got 42"):
        profile_from_dict(data, "x")


def test_malformed_yaml_names_file_and_line(tmp_path):
    text = "link: {bandwidth_GBps: 12.5, latency_us: 1.0}\npcie: [unclosed\nhost: {}\n"
    path = write(tmp_path, text, "broken.yml")
    with pytest.raises(ProfileError, match=rf"^profile {path}: invalid YAML at line \d+, column \d+: "):
        load_profile(path)


def test_malformed_yaml_tab_indentation(tmp_path):
    path = write(tmp_path, "nic:\n\tpacket_bytes: 1024\n", "tabs.yml")
    with pytest.raises(ProfileError, match=r"tabs\.yml: invalid YAML at line 2"):
        load_profile(path)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text, "empty.yml")
    with pytest.raises(ProfileError, match=rf"^profile {path}: the file is empty; it needs the sections link, pcie, host, nic"):
        load_profile(path)


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "a list"), ("just words\n", "'just words'"), ("42\n", "42")])
def test_non_mapping_document(tmp_path, text, got):
    path = write(tmp_path, text, "flat.yml")
    with pytest.raises(ProfileError, match=rf"the top level must be a mapping of sections .*got {got}"):
        load_profile(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.yml"
    path.write_bytes(b"description: caf\xe9\n")
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(str(path))


def test_profile_from_dict_rejects_non_mapping():
    with pytest.raises(ProfileError, match="top level must be a mapping"):
        profile_from_dict([1, 2], "x")  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="profile is empty"):
        profile_from_dict(None, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("nic.foo=1", r"^--set nic\.foo=1: no such key; valid keys in nic: reduce_GBps, latency_us, packet_bytes, memory_KiB, retransmit_timeout_us, gpudirect$"),
        ("fabric.ports=8", r"^--set fabric\.ports=8: no such section 'fabric'; valid sections: link, pcie, host, nic, topology, switch, intra_node$"),
        ("nic.packet_bytes", r"^--set nic\.packet_bytes: missing '='"),
        ("packet_bytes=4096", r"expected section\.key=value"),
        ("nic.packet_bytes=1.5", r"^--set nic\.packet_bytes=1\.5: nic\.packet_bytes must be an integer from 1 to 2\*\*40, got 1\.5"),
        ("nic.packet_bytes=0", r"must be an integer from 1 to 2\*\*40, got 0"),
        ("link.latency_us=-1", r"^--set link\.latency_us=-1: link\.latency_us must be a finite number from 0 to 1e\+09"),
        ("link.latency_us=.inf", r"only allowed for bandwidths"),
        ("link.bandwidth_GBps=0", r"link\.bandwidth_GBps must be a number >= 1e-06"),
        ("link.bandwidth_GBps=true", r"got true \(a boolean\)"),
        ("link.bandwidth_GBps=fast", r"got 'fast'"),
        ("host.overhead_us=", r"got nothing"),
        ("nic.memory_KiB=[1, 2]", r"got a list"),
        ("nic.memory_KiB=[1,", r"cannot read the value '\[1,'"),
        ("topology.bidirectional=1", r"topology\.bidirectional must be true or false, got 1"),
    ],
)
def test_bad_overrides(override, pattern):
    with pytest.raises(ProfileError, match=pattern):
        load_profile("ideal", [override])


def test_bad_override_via_method():
    with pytest.raises(ProfileError, match=r"^--set pcie\.bandwidth=3: no such key; valid keys in pcie"):
        load_profile("ideal").with_overrides(["pcie.bandwidth=3"])


# --------------------------------------------------------------------------
# Every error is one line


def _error_cases(tmp_path):
    bad_key = write(tmp_path, GOOD_YAML.replace("packet_bytes", "packet_size"), "k.yml")
    broken = write(tmp_path, "link: {a: [\n\n  b\n", "b.yml")
    multi = write(tmp_path, "nic:\n  x: 1\n  y: 2\n nic2: 3\n", "m.yml")
    empty = write(tmp_path, "", "e.yml")
    weird_name = tmp_path / "two\nlines.yml"
    weird_name.write_text("[1")
    value = good_dict()
    value["nic"]["packet_bytes"] = "line one\nline two"
    return [
        lambda: load_profile("no-such-profile"),
        lambda: load_profile(bad_key),
        lambda: load_profile(broken),
        lambda: load_profile(multi),
        lambda: load_profile(empty),
        lambda: load_profile(str(weird_name)),
        lambda: profile_from_dict(value, "x"),
        lambda: load_profile("ideal", ["nic.packet_bytes=a\nb"]),
        lambda: load_profile("ideal", ["nic.memory_KiB={a: [1,"]),
    ]


def test_error_messages_are_single_line(tmp_path):
    for case in _error_cases(tmp_path):
        with pytest.raises(ProfileError) as info:
            case()
        msg = str(info.value)
        assert msg and "\n" not in msg and "\r" not in msg, msg
        assert "Traceback" not in msg


def test_profile_error_is_value_error():
    assert issubclass(ProfileError, ValueError)


def test_dataclass_defaults():
    p = Profile(
        name="d",
        link=LinkSpec(1.0, 0.0),
        pcie=PcieSpec(1.0, 0.0),
        host=HostSpec(1.0, 0.0),
        nic=NicSpec(1.0, 0.0, 1, 0.0),
    )
    assert p.topology == TopologySpec(bidirectional=False)
    assert p.description == ""


def test_bounds_are_inclusive():
    """The bounds themselves are valid values."""
    data = good_dict()
    data["link"]["bandwidth_GBps"] = 1e-6
    data["link"]["latency_us"] = 1e9
    data["nic"]["packet_bytes"] = 2**40
    p = profile_from_dict(data, "x")
    assert (p.link.bandwidth_GBps, p.link.latency_us, p.nic.packet_bytes) == (1e-6, 1e9, 2**40)
