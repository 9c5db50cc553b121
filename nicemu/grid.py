"""Sweep grids: a YAML file of axes whose cartesian product ``nicemu sweep`` runs.

Each axis is a list (a scalar is a one-element list); ``set`` maps profile keys to
lists of values, each one more axis. ``exclude`` lists mappings; a point matching
every key of one of them is skipped. Points are enumerated in :data:`AXES` order,
then the ``set`` axes in file order, with ``algo`` innermost so the algorithms of
one configuration sit side by side as in ``nicemu bench``.

A file may also hold a YAML list of such mappings: the union of their products, in
file order (a study whose parts are not one product, e.g. a size sweep on one
topology plus a node sweep at one size). A point that two parts share runs once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import yaml

from nicemu.errors import UsageError, yaml_error_parts
from nicemu.sizes import format_size, parse_sizes

#: the grid keys, outermost first (``algo`` last: innermost); ``sizes`` becomes the ``bytes`` column
AXES = ("tag", "topology", "ranks_per_node", "collective", "root", "dtype", "op", "overlap", "density", "block_size",
        "seed", "aggregators", "spot_blocks", "tx_spots", "profile", "sizes", "algo")
#: each axis' YAML value types, as users are told in errors
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "tag": ((str,), "a string (a label copied to the records, e.g. the part of a study)"),
    "topology": ((str,), "a string such as ring:8"),
    "ranks_per_node": ((int,), "a whole number >= 1"),
    "collective": ((str,), "a string such as allreduce"),
    "root": ((int,), "a whole number (broadcast and reduce: the root node)"),
    "dtype": ((str,), "a string such as float32"),
    "op": ((str,), "a string such as sum"),
    "density": ((int, float), "a number in [0, 1]"),
    "block_size": ((int,), "a whole number"),
    "overlap": ((str,), "random, all or none (the sparse block pattern)"),
    "seed": ((int,), "a whole number (the seed of the sparse block pattern)"),
    "aggregators": ((int,), "a whole number (sparse algorithms)"),
    "spot_blocks": ((int,), "a whole number (sparse algorithms)"),
    "tx_spots": ((int,), "1 or 2 (omniccl)"),
    "profile": ((str,), "a profile name or YAML path"),
    "sizes": ((str, int), "a size such as 64K or a range such as 1K:1M"),
    "algo": ((str,), "a string such as ring"),
}
KNOWN = (*AXES, "set", "exclude")
#: the sizes of a grid without ``sizes``: those of ``nicemu bench`` without ``--sizes``
DEFAULT_SIZES = "1K:16M"
#: the algorithms of a grid without ``algo``: those of ``nicemu bench`` without ``--algo``
DEFAULT_ALGOS = ["ring", "directreduce"]


@dataclass
class GridPart:
    """One product: the axes (column name -> values, enumeration order) and its exclusions."""

    axes: dict[str, list]
    exclude: list[dict]

    def points(self) -> list[dict]:
        """Every point not excluded, in grid order; each maps column name -> value."""
        names = list(self.axes)
        out = []
        for values in itertools.product(*(self.axes[n] for n in names)):
            point = dict(zip(names, values))
            if not any(_matches(point, ex) for ex in self.exclude):
                out.append(point)
        return out


@dataclass
class Grid:
    """A sweep: the union of one or more products, in file order."""

    parts: list[GridPart]

    def points(self) -> list[dict]:
        """Every point of every part, in order; a point already listed by an earlier part is left out."""
        seen: set[str] = set()
        out = []
        for part in self.parts:
            for point in part.points():
                label = point_label(point)
                if label not in seen:
                    seen.add(label)
                    out.append(point)
        return out


def _matches(point: dict, ex: dict) -> bool:
    return all(k in point and point[k] in v for k, v in ex.items())


def _as_list(key: str, value) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UsageError(f"grid key '{key}' is an empty list; give at least one value or drop the key")
    return values


def _check_type(key: str, value, types: tuple[type, ...], hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        raise UsageError(f"grid key '{key}' has {value!r} ({type(value).__name__}); each value must be {hint}")


def _column(key: str) -> str:
    return "bytes" if key == "sizes" else key


def _size_values(values: list) -> list[int]:
    out: list[int] = []
    for v in values:
        out += parse_sizes(str(v))
    return list(dict.fromkeys(out))


def parse_grid(text: str, where: str = "grid") -> Grid:
    """Read a grid from YAML text; every problem is a one-line :class:`UsageError` naming its fix."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        at, problem = yaml_error_parts(exc)
        raise UsageError(f"{where} is malformed YAML{at}: {problem}; fix the syntax") from None
    if isinstance(doc, list):
        if not doc:
            raise UsageError(f"{where} is an empty list; give at least one mapping of axes")
        return Grid([_parse_part(part, f"{where} (part {i})") for i, part in enumerate(doc, 1)])
    return Grid([_parse_part(doc, where)])


def _parse_part(doc, where: str) -> GridPart:
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{where} must be a YAML mapping of axes, e.g. 'algo: [ring, directreduce]', "
                         "or a list of such mappings")
    unknown = [str(k) for k in doc if k not in KNOWN]
    if unknown:
        raise UsageError(f"unknown grid key '{unknown[0]}' in {where}; the known keys are {', '.join(KNOWN)}")
    axes: dict[str, list] = {}
    for key in AXES:
        if key == "sizes" or key not in doc:
            continue
        values = _as_list(key, doc[key])
        for v in values:
            _check_type(key, v, *_TYPES[key])
            if key == "algo" and "," in v:
                raise UsageError(f"grid key 'algo' has '{v}'; write a YAML list, e.g. algo: [ring, directreduce]")
        axes[key] = values
    sets: dict[str, list] = {}
    if "set" in doc:
        if not isinstance(doc["set"], dict) or not doc["set"]:
            raise UsageError("grid key 'set' must map profile keys to values, e.g. 'set: {nic.packet_bytes: "
                             "[1024, 4096]}'")
        for k, v in doc["set"].items():
            if not isinstance(k, str) or not k or k in KNOWN or k == "bytes":
                raise UsageError(f"'set' key {k!r} is not a profile key such as nic.packet_bytes")
            values = _as_list(f"set.{k}", v)
            for x in values:
                if not isinstance(x, (str, int, float, bool)):
                    raise UsageError(f"grid key 'set.{k}' has {x!r} ({type(x).__name__}); each value must be "
                                     "a scalar (number, string or true/false)")
            sets[k] = values
    ordered: dict[str, list] = {}
    for key in AXES[:-2]:
        if key in axes:
            ordered[key] = axes[key]
    ordered.update(sets)
    values = _as_list("sizes", doc.get("sizes", DEFAULT_SIZES))
    for v in values:
        _check_type("sizes", v, *_TYPES["sizes"])
    ordered["bytes"] = _size_values(values)
    ordered["algo"] = axes.get("algo", DEFAULT_ALGOS)
    return GridPart(ordered, _parse_exclude(doc.get("exclude", []), ordered, where))


def _parse_exclude(raw, axes: dict[str, list], where: str) -> list[dict]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise UsageError(f"grid key 'exclude' in {where} must be a list of mappings, e.g. "
                         "'exclude: [{algo: omniccl, collective: alltoall}]'")
    out = []
    for ex in raw:
        if not isinstance(ex, dict) or not ex:
            raise UsageError(f"each 'exclude' entry must be a non-empty mapping of grid keys, got {ex!r}")
        entry = {}
        for k, v in ex.items():
            col = _column(str(k))
            if col not in axes:
                raise UsageError(f"'exclude' names unknown key '{k}'; use the grid's own keys: "
                                 f"{', '.join('sizes' if a == 'bytes' else a for a in axes)}")
            values = v if isinstance(v, list) else [v]
            entry[col] = _size_values(values) if col == "bytes" else values
        out.append(entry)
    return out


def load_grid(path: str) -> Grid:
    """Read the grid file ``path``."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read grid {path}: {exc.strerror}; give an existing YAML file") from None
    return parse_grid(text, path)


def point_label(point: dict) -> str:
    """A point as its grid values, e.g. ``topology=ring:8 bytes=1K algo=ring`` (used in errors)."""
    return " ".join(f"{k}={format_size(v) if k == 'bytes' else v}" for k, v in point.items())

