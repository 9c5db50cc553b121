"""Hardware profiles: the numbers that turn a schedule into emulated time.

A profile describes the link, the PCIe path between host and NIC, the host's
reduction speed and the NIC's own resources. Profiles are YAML files, either
shipped in ``nic/profiles/`` (loaded by name) or written by the user (loaded
by path), and single fields can be overridden with ``--set section.key=value``.

The schema is strict on purpose: a misspelt key would otherwise silently fall
back to a default and produce plausible but wrong timings. Every problem is
reported as a one-line :class:`ProfileError` that names the file or override,
the offending key and what would be accepted instead.

Units live in the key names. GB/s means 1e9 bytes per second; ``.inf`` on a
bandwidth or rate means "this cost term vanishes".
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from nicemu.errors import ProfileError, yaml_error_parts

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
_SUFFIX = ".yml"


@dataclass(frozen=True)
class LinkSpec:
    """One network link, per direction; ``header_bytes`` of framing travel with every packet."""

    bandwidth_GBps: float
    latency_us: float
    header_bytes: float = 0.0


@dataclass(frozen=True)
class PcieSpec:
    """DMA between host memory and the NIC, per direction."""

    bandwidth_GBps: float
    latency_us: float


#: ``host.segment_KiB`` when a profile leaves it out: Open MPI's segment for its pipelined ring
#: AllReduce (docs/model.md §7)
DEFAULT_SEGMENT_KiB = 1024.0


@dataclass(frozen=True)
class HostSpec:
    """Host CPU reduction: result bytes per second (1e9), a fixed cost per step it takes part in,
    the segment size of the pipelined host ring (``ring-pipelined``), the node's DRAM bandwidth
    (``memory_GBps``, shared by its ranks, NIC DMA and reducing cores; .inf: not charged) and the
    LLC share DMA writes land in (``ddio_KiB``, Intel DDIO; beyond it they spill to DRAM)."""

    reduce_GBps: float
    overhead_us: float
    segment_KiB: float = DEFAULT_SEGMENT_KiB
    memory_GBps: float = math.inf
    ddio_KiB: float = 0.0

    def segment_elems(self, itemsize: int) -> int:
        """Elements of ``itemsize`` bytes in one pipeline segment (at least 1)."""
        return max(1, int(self.segment_KiB * 1024) // itemsize)


@dataclass(frozen=True)
class NicSpec:
    """NIC-side reduction rate, processing latency, packet size and on-NIC memory."""

    reduce_GBps: float
    latency_us: float
    packet_bytes: int
    memory_KiB: float
    #: go-back-N retransmission timeout (only used with --faults); IB's Local ACK Timeout
    #: encoding 4.096 us * 2^k at k = 5 (docs/model.md §11)
    retransmit_timeout_us: float = 131.072
    #: whether serve's point-to-point transfers (KV cache, PP activations) use GPUDirect RDMA: true, the NIC
    #: path; false, the host path; None (key absent), the path of the algorithm under test (docs/model.md §14)
    gpudirect: bool | None = None


@dataclass(frozen=True)
class SwitchSpec:
    """The switch of a ``switch:N`` topology: port-to-port latency added once to every message."""

    latency_us: float = 0.3


#: ``intra_node`` defaults (docs/model.md §7): NVLink 4 on an H100 SXM, 18 links of 25 GB/s per direction;
#: the per-hop latency of NCCL's tuning model for NVLink rings with its LL128 protocol; the result rate of a
#: reduction from HBM3 at 3.35 TB/s (two reads and a write per result byte)
NVLINK_GBps = 450.0
NVLINK_LATENCY_us = 1.9
HBM_REDUCE_GBps = 1116.7


@dataclass(frozen=True)
class IntraNodeSpec:
    """How the ranks of one node talk (``--ranks-per-node``): through host memory (``nvlink: false``, the
    default) or over an NVLink-class fabric, each rank with its own port of ``bandwidth_GBps`` per
    direction and ``latency_us`` per transfer, reducing in its own memory at ``reduce_GBps``."""

    nvlink: bool = False
    bandwidth_GBps: float = NVLINK_GBps
    latency_us: float = NVLINK_LATENCY_us
    reduce_GBps: float = HBM_REDUCE_GBps


@dataclass(frozen=True)
class TopologySpec:
    """Optional topology-wide switches (e.g. whether links carry both directions at once)."""

    bidirectional: bool = False


@dataclass(frozen=True)
class Profile:
    """A complete, validated hardware profile: ``link``, ``pcie``, ``host``, ``nic`` and ``topology``
    sections whose field names carry their units (``bandwidth_GBps``: 1e9 bytes/s, ``latency_us``,
    ``packet_bytes``, ``memory_KiB``). Built by ``load_profile``; ``profile.with_overrides(["nic.packet_bytes=4096"])``
    returns a changed copy and raises :class:`ProfileError` for an unknown key or a bad value."""

    name: str
    link: LinkSpec
    pcie: PcieSpec
    host: HostSpec
    nic: NicSpec
    topology: TopologySpec = TopologySpec()
    switch: SwitchSpec = SwitchSpec()
    intra_node: IntraNodeSpec = IntraNodeSpec()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict for JSON output; accepted back by :func:`profile_from_dict`."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for section in _SECTIONS:
            spec = getattr(self, section)
            # an absent tri-state key (None) stays absent, so the dict reads back and old fingerprints hold
            out[section] = {f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) is not None}
        return out

    def with_overrides(self, overrides: Sequence[str]) -> Profile:
        """Return a copy with ``section.key=value`` overrides applied, each validated like the file."""
        if isinstance(overrides, str):
            overrides = (overrides,)
        profile = self
        for text in overrides:
            section, key, value = _parse_override(text)
            new_section = replace(getattr(profile, section), **{key: value})
            profile = replace(profile, **{section: new_section})
        return profile


# --------------------------------------------------------------------------
# Schema

# Kinds of field, each with its own type and range check. The bounds keep every emulated time finite:
# 1 TiB at 1 kB/s over 2**24 nodes' steps is still far below the largest float.
MIN_RATE = 1e-6  # GB/s: 1 kB/s
MAX_TIME = 1e9  # us: 1000 s per step
MAX_COUNT = 1 << 40  # e.g. packet_bytes: the largest message
_RATE = "rate"  # number >= MIN_RATE, .inf allowed
_TIME = "time"  # finite number in [0, MAX_TIME]
_SIZE = "size"  # finite number >= 0
_POSITIVE = "positive"  # number > 0 and <= MAX_COUNT
_COUNT = "count"  # integer in [1, MAX_COUNT]
_FLAG = "flag"  # boolean

_EXPECT = {
    _RATE: f"must be a number >= {MIN_RATE:g} (.inf allowed, meaning the term vanishes)",
    _TIME: f"must be a finite number from 0 to {MAX_TIME:g}",
    _SIZE: "must be a finite number >= 0",
    _POSITIVE: "must be a number > 0 and at most 2**40",
    _COUNT: "must be an integer from 1 to 2**40",
    _FLAG: "must be true or false",
}

_SECTIONS: dict[str, tuple[type, dict[str, str]]] = {
    "link": (LinkSpec, {"bandwidth_GBps": _RATE, "latency_us": _TIME, "header_bytes": _SIZE}),
    "pcie": (PcieSpec, {"bandwidth_GBps": _RATE, "latency_us": _TIME}),
    "host": (HostSpec, {"reduce_GBps": _RATE, "overhead_us": _TIME, "segment_KiB": _POSITIVE,
                        "memory_GBps": _RATE, "ddio_KiB": _SIZE}),
    "nic": (
        NicSpec,
        {"reduce_GBps": _RATE, "latency_us": _TIME, "packet_bytes": _COUNT, "memory_KiB": _SIZE,
         "retransmit_timeout_us": _TIME, "gpudirect": _FLAG},
    ),
    "topology": (TopologySpec, {"bidirectional": _FLAG}),
    "switch": (SwitchSpec, {"latency_us": _TIME}),
    "intra_node": (IntraNodeSpec, {"nvlink": _FLAG, "bandwidth_GBps": _RATE, "latency_us": _TIME,
                                   "reduce_GBps": _RATE}),
}
_OPTIONAL_SECTIONS = frozenset({"topology", "switch", "intra_node"})
_OPTIONAL_KEYS = frozenset({("nic", "retransmit_timeout_us"), ("nic", "gpudirect"),   # defaults in their spec
                            ("host", "segment_KiB"), ("link", "header_bytes"),
                            ("host", "memory_GBps"), ("host", "ddio_KiB")})
_TEXT_KEYS = ("description", "name")  # optional top-level strings
_TOP_LEVEL = (*_SECTIONS, *_TEXT_KEYS)

# PyYAML follows YAML 1.1, which reads "1e-3" or "2.5e3" as strings. Accept
# those spellings as numbers so that ``--set nic.latency_us=1e-3`` works.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _BadValue(Exception):
    """Internal: a field value failed its check; the caller adds where it came from."""


def _error(message: str) -> ProfileError:
    """Build a ProfileError, folding any line breaks so the message stays on one line."""
    return ProfileError(re.sub(r"\s*[\r\n]+\s*", " ", message).strip())


def _show(value: Any) -> str:
    """Render a user's value the way they would write it in YAML, briefly."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "nothing (empty value)"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, (list, tuple)):
        text = f"a list {value!r}"
    elif isinstance(value, Mapping):
        text = f"a mapping {dict(value)!r}"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_float(value: Any) -> float | None:
    """Interpret a YAML scalar as a float, or None if it is not a number (bools are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _check_value(kind: str, value: Any) -> float | int | bool:
    """Type- and range-check one field value; return it in its canonical Python type."""
    if kind == _FLAG:
        if isinstance(value, bool):
            return value
        raise _BadValue
    if kind == _COUNT:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value <= MAX_COUNT:
            return int(value)
        raise _BadValue
    number = _as_float(value)
    if number is None or math.isnan(number):
        raise _BadValue
    if kind == _RATE:
        if number >= MIN_RATE:
            return number
        raise _BadValue
    if kind == _POSITIVE:
        if 0 < number <= MAX_COUNT:
            return number
        raise _BadValue
    if math.isfinite(number) and number >= 0 and (kind != _TIME or number <= MAX_TIME):  # _TIME, _SIZE
        return number
    raise _BadValue


def _check_field(section: str, key: str, value: Any) -> float | int | bool:
    """Check ``section.key`` and describe the failure in terms the user can act on."""
    kind = _SECTIONS[section][1][key]
    try:
        return _check_value(kind, value)
    except _BadValue:
        hint = ""
        if kind == _COUNT and isinstance(value, float) and value.is_integer():
            hint = " (write it without a decimal point)"
        elif kind in (_TIME, _SIZE, _POSITIVE) and isinstance(value, float) and math.isinf(value):
            hint = " (.inf is only allowed for bandwidths and rates)"
        raise _BadValue(f"{section}.{key} {_EXPECT[kind]}, got {_show(value)}{hint}") from None


def _valid_keys(section: str) -> str:
    return ", ".join(_SECTIONS[section][1])


# --------------------------------------------------------------------------
# Building profiles


def profile_from_dict(data: dict, name: str) -> Profile:
    """Validate a parsed profile mapping and build a Profile; ``name`` is used unless the data has one.

    Raises :class:`ProfileError` for a missing or unknown key, a wrong type, or a value out of range."""
    return _build(data, name, source=name)


def _build(data: Any, name: str, source: str) -> Profile:
    """Strictly validate ``data``; ``source`` labels the errors (a file path or profile name)."""
    where = f"profile {source}"
    if data is None:
        raise _error(
            f"{where}: the profile is empty; it needs the sections {', '.join(_required_sections())}"
        )
    if not isinstance(data, Mapping):
        raise _error(
            f"{where}: the top level must be a mapping of sections "
            f"({', '.join(_TOP_LEVEL)}), got {_show(data)}"
        )

    unknown = [k for k in data if k not in _TOP_LEVEL]
    if unknown:
        raise _error(
            f"{where}: unknown section {', '.join(repr(str(k)) for k in unknown)}; "
            f"valid top-level keys: {', '.join(_TOP_LEVEL)}"
        )
    missing = [s for s in _required_sections() if s not in data]
    if missing:
        raise _error(
            f"{where}: missing section {', '.join(repr(s) for s in missing)}; "
            f"add it with the keys: "
            + "; ".join(f"{s}: {_valid_keys(s)}" for s in missing)
        )

    text: dict[str, str] = {}
    for key in _TEXT_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _error(f"{where}: '{key}' must be a text string, got {_show(value)}")
        text[key] = value

    specs: dict[str, Any] = {}
    for section, (cls, kinds) in _SECTIONS.items():
        body = data.get(section)
        if body is None and section in _OPTIONAL_SECTIONS:
            body = {}
        if body is None:
            raise _error(
                f"{where}: section '{section}' is empty; it needs the keys: {_valid_keys(section)}"
            )
        if not isinstance(body, Mapping):
            raise _error(
                f"{where}: section '{section}' must be a mapping of key: value "
                f"(keys: {_valid_keys(section)}), got {_show(body)}"
            )
        unknown = [k for k in body if k not in kinds]
        if unknown:
            names = ", ".join(repr(f"{section}.{k}") for k in unknown)
            raise _error(
                f"{where}: unknown key {names}; valid keys in {section}: {_valid_keys(section)}"
            )
        if section not in _OPTIONAL_SECTIONS:
            missing = [k for k in kinds if k not in body and (section, k) not in _OPTIONAL_KEYS]
            if missing:
                names = ", ".join(repr(f"{section}.{k}") for k in missing)
                raise _error(
                    f"{where}: missing key {names}; the {section} section needs: "
                    f"{', '.join(k for k in kinds if (section, k) not in _OPTIONAL_KEYS)}"
                )
        values = {}
        for key, value in body.items():
            try:
                values[key] = _check_field(section, key, value)
            except _BadValue as exc:
                raise _error(f"{where}: {exc}") from None
        specs[section] = cls(**values)

    return Profile(
        name=text.get("name", name),
        description=text.get("description", ""),
        **specs,
    )


def _required_sections() -> list[str]:
    return [s for s in _SECTIONS if s not in _OPTIONAL_SECTIONS]


def _parse_override(text: str) -> tuple[str, str, float | int | bool]:
    """Split and check one ``section.key=value`` override; the value is read as YAML."""
    where = f"--set {text}"
    if not isinstance(text, str):
        raise _error(f"--set {_show(text)}: an override must be a string 'section.key=value'")
    if "=" not in text:
        raise _error(
            f"{where}: missing '='; write section.key=value, e.g. nic.packet_bytes=4096"
        )
    lhs, raw = text.split("=", 1)
    lhs = lhs.strip()
    if "." not in lhs:
        raise _error(
            f"{where}: expected section.key=value, e.g. nic.packet_bytes=4096; "
            f"valid sections: {', '.join(_SECTIONS)}"
        )
    section, key = (part.strip() for part in lhs.split(".", 1))
    if section not in _SECTIONS:
        raise _error(
            f"{where}: no such section '{section}'; valid sections: {', '.join(_SECTIONS)}"
        )
    if key not in _SECTIONS[section][1]:
        raise _error(f"{where}: no such key; valid keys in {section}: {_valid_keys(section)}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise _error(
            f"{where}: cannot read the value {raw.strip()!r}; give a plain number, "
            f".inf, true or false"
        ) from None
    try:
        return section, key, _check_field(section, key, value)
    except _BadValue as exc:
        raise _error(f"{where}: {exc}") from None


# --------------------------------------------------------------------------
# Loading


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with nicemu, sorted, so the CLI can list and resolve them (raises nothing)."""
    if not PROFILE_DIR.is_dir():
        return []
    return sorted(p.stem for p in PROFILE_DIR.glob(f"*{_SUFFIX}") if p.is_file())


def load_profile(name_or_path: str, overrides: Sequence[str] = ()) -> Profile:
    """Load a shipped profile by name, or a user's YAML file by path, then apply overrides.

    A shipped name wins over a file of the same name in the working directory;
    write ``./ideal`` to force the file. ``overrides`` are ``--set`` strings (``"nic.packet_bytes=4096"``).
    Raises :class:`ProfileError` for an unknown name, an unreadable or malformed file, an unknown key or
    a value out of range.
    """
    shipped = shipped_profiles()
    if name_or_path in shipped:
        path = PROFILE_DIR / f"{name_or_path}{_SUFFIX}"
        name, source = name_or_path, name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            if path.exists():
                raise _error(
                    f"profile {name_or_path}: is not a file; give a path to a YAML file "
                    f"or one of {', '.join(shipped)}"
                )
            raise _error(
                f"unknown profile '{name_or_path}'; use one of {', '.join(shipped)} "
                f"or a path to a YAML file"
            )
        name, source = path.stem, name_or_path
    profile = _build(_read_yaml(path, source), name, source)
    return profile.with_overrides(overrides) if overrides else profile


def _read_yaml(path: Path, source: str) -> Any:
    """Read and parse one YAML file, turning every failure into a one-line ProfileError."""
    where = f"profile {source}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _error(f"{where}: the file is not UTF-8 text; save it as a plain YAML file") from None
    except OSError as exc:
        raise _error(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        at, problem = yaml_error_parts(exc)
        raise _error(f"{where}: invalid YAML{at}: {problem}; fix the syntax there") from None
    if data is None:
        raise _error(
            f"{where}: the file is empty; it needs the sections "
            f"{', '.join(_required_sections())}"
        )
    return data
