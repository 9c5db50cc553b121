"""Import of ASTRA-sim network YAML files, so published ASTRA-sim setups run unchanged.

Only the analytical-network format is read::

    topology: [ Ring, Ring, Ring ]
    npus_count: [ 4, 4, 2 ]
    bandwidth: [ 50.0, 50.0, 50.0 ]   # GB/s
    latency: [ 500.0, 500.0, 500.0 ]  # ns

A list of Ring dimensions is a torus. Dimensions are numbered from 0 in
messages, like the ``dim`` arguments of :class:`Torus`.
"""

from __future__ import annotations

import math
import os
import re

import yaml

from nicemu.errors import TopologyError, yaml_error_parts

from .torus import MAX_NODES, LinkParams, Torus

_REQUIRED = ("topology", "npus_count")
_OPTIONAL = ("bandwidth", "latency")
_KNOWN = _REQUIRED + _OPTIONAL
_UNSUPPORTED = "only Ring dimensions are supported yet (FullyConnected and Switch are not supported yet)"
#: the ranges a hardware profile accepts for its links (nic/profile.py), so every emulated time stays finite
_RANGE = {"bandwidth": (1e-6, math.inf), "latency": (0.0, 1e12)}   # GB/s; ns (1e12 ns = 1000 s)
# PyYAML follows YAML 1.1, which reads "5e2" (no dot) as a string: accept that spelling as a number
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _read(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise TopologyError(f"{path}: ASTRA-sim network file not found; check the path") from None
    except IsADirectoryError:
        raise TopologyError(f"{path}: is a directory; give the ASTRA-sim network .yml file") from None
    except UnicodeDecodeError:
        raise TopologyError(f"{path}: not a UTF-8 text file; give an ASTRA-sim network .yml file") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read file ({_one_line(exc.strerror or str(exc))})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        at, problem = yaml_error_parts(exc)
        raise TopologyError(f"{path}: not valid YAML{at} ({problem}); fix the syntax") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list(path: str, data: dict, key: str) -> list:
    value = data[key]
    if not isinstance(value, list):
        raise TopologyError(f"{path}: '{key}' must be a list with one entry per dimension, e.g. {key}: [ ... ]")
    if not value:
        raise TopologyError(f"{path}: '{key}' is empty; give one entry per dimension")
    return value


def _positive_numbers(path: str, key: str, values: list, unit: str) -> list[float]:
    low, high = _RANGE[key]
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)
        if not _is_number(value):
            raise TopologyError(f"{path}: {key}[{i}] is {value!r}; it must be a number ({unit})")
        if not math.isfinite(value) or value <= 0:
            raise TopologyError(f"{path}: {key}[{i}] is {value!r}; it must be a positive finite number ({unit})")
        if not low <= value <= high:
            bound = f"at least {low:g}" if value < low else f"at most {high:g}"
            raise TopologyError(f"{path}: {key}[{i}] is {value!r}; it must be {bound} {unit}")
        out.append(float(value))
    return out


def load_astra_network(path: str) -> Torus:
    """Read an ASTRA-sim network YAML into a :class:`Torus` with per-dimension link overrides.

    ``bandwidth`` is read in GB/s and ``latency`` in ns (converted to microseconds). Raises
    :class:`TopologyError` for a missing or unreadable file, malformed YAML, or a dimension type other
    than Ring."""
    path = os.fspath(path)
    data = _read(path)
    if data is None:
        raise TopologyError(f"{path}: file is empty; it needs at least 'topology' and 'npus_count'")
    if not isinstance(data, dict):
        raise TopologyError(
            f"{path}: expected a mapping with keys {', '.join(_KNOWN)}, got a {type(data).__name__}"
        )
    unknown = [str(k) for k in data if k not in _KNOWN]
    if unknown:
        raise TopologyError(
            f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed keys are {', '.join(_KNOWN)}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise TopologyError(
            f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}; "
            "e.g. topology: [ Ring, Ring ] and npus_count: [ 4, 4 ]"
        )

    kinds = _list(path, data, "topology")
    counts = _list(path, data, "npus_count")
    lists = {"topology": kinds, "npus_count": counts}
    for key in _OPTIONAL:
        if key in data:
            lists[key] = _list(path, data, key)
    lengths = {key: len(values) for key, values in lists.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise TopologyError(f"{path}: lists have different lengths ({detail}); give one entry per dimension")

    for i, kind in enumerate(kinds):
        if not isinstance(kind, str):
            raise TopologyError(f"{path}: dimension {i} type is {kind!r}; it must be a name such as Ring")
        if kind.strip().lower() != "ring":
            raise TopologyError(f"{path}: dimension {i} is {kind}; {_UNSUPPORTED}")

    shape = []
    for i, count in enumerate(counts):
        if not isinstance(count, int) or isinstance(count, bool):
            raise TopologyError(f"{path}: npus_count[{i}] is {count!r}; it must be a whole number of NPUs")
        if count < 2:
            raise TopologyError(
                f"{path}: npus_count[{i}] is {count}; every Ring dimension needs at least 2 NPUs"
            )
        shape.append(count)
    if math.prod(shape) > MAX_NODES:
        raise TopologyError(
            f"{path}: {math.prod(shape)} NPUs is over the limit of {MAX_NODES} (2**24); use smaller npus_count"
        )

    ndim = len(shape)
    bandwidth = _positive_numbers(path, "bandwidth", lists["bandwidth"], "GB/s") if "bandwidth" in lists else None
    latency = _positive_numbers(path, "latency", lists["latency"], "ns") if "latency" in lists else None
    if (bandwidth is None) != (latency is None):
        given, absent = ("bandwidth", "latency") if bandwidth is not None else ("latency", "bandwidth")
        raise TopologyError(
            f"{path}: '{given}' is given without '{absent}'; give both or neither "
            "(neither means the hardware profile's link is used)"
        )
    links: list[LinkParams | None] = [None] * ndim
    if bandwidth is not None and latency is not None:
        links = [LinkParams(bandwidth_GBps=bw, latency_us=lat / 1000.0) for bw, lat in zip(bandwidth, latency)]
    return Torus(shape, name=f"astra:{path}", dim_links=links)
