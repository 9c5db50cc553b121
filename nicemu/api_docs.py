"""docs/api.md, generated from the docstrings of every public name, so the page cannot drift.

``python scripts/api_docs.py`` rewrites the page; tests/unit/test_api_docs.py regenerates it in memory
and compares. The public names are ``nicemu.collectives.__all__``, the members of ``Emulator``,
``Result`` and ``Timing``, ``nicemu.topologies.__all__``, ``nicemu.nic.__all__`` with the public
functions of ``nicemu.nic.profile``, and the error classes of ``nicemu.errors``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

#: where the page lives, relative to the repository
PAGE = Path("docs") / "api.md"

HEADER = """# Python API reference

Every public name, with its docstring: what it does, its units and its errors.
Generated from the code by `python scripts/api_docs.py`; a unit test
(`tests/unit/test_api_docs.py`) regenerates it and fails if this page differs.
How to use the API is in [usage.md](usage.md#python-api); runnable programs are
in [examples/](../examples/).

Units are in the names (`_us`: microseconds, `_bytes`: bytes, `_GBps`: 1e9
bytes/s, `count`: elements). Every error a user can fix is a
`nicemu.errors.NicemuError` with a one-line message naming the problem and the
fix.
"""


def public_names() -> list[tuple[str, str, object]]:
    """(section, qualified name, object) of every documented public name, in page order."""
    from nicemu import errors
    from nicemu.collectives import Emulator, Result, Timing

    out: list[tuple[str, str, object]] = []
    collectives = importlib.import_module("nicemu.collectives")
    for name in collectives.__all__:
        out.append(("nicemu.collectives", f"nicemu.collectives.{name}", getattr(collectives, name)))
    for cls in (Emulator, Result, Timing):
        for name, member in _members(cls):
            out.append((f"{cls.__name__} members", f"{cls.__name__}.{name}", member))
    topologies = importlib.import_module("nicemu.topologies")
    for name in topologies.__all__:
        out.append(("nicemu.topologies", f"nicemu.topologies.{name}", getattr(topologies, name)))
    nic = importlib.import_module("nicemu.nic")
    profile = importlib.import_module("nicemu.nic.profile")
    for name in nic.__all__:
        out.append(("nicemu.nic", f"nicemu.nic.{name}", getattr(nic, name)))
    for name, obj in vars(profile).items():
        if inspect.isfunction(obj) and obj.__module__ == profile.__name__ and not name.startswith("_") \
                and name not in nic.__all__:
            out.append(("nicemu.nic", f"nicemu.nic.profile.{name}", obj))
    for name, obj in vars(errors).items():
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__:
            out.append(("nicemu.errors", f"nicemu.errors.{name}", obj))
    return out


def _members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties defined on ``cls``, then its dataclass fields (which have no docstring
    of their own: the class's docstring describes them)."""
    out = [(name, obj) for name, obj in vars(cls).items()
           if not name.startswith("_") and (inspect.isfunction(obj) or isinstance(obj, property))]
    if not dataclasses.is_dataclass(cls):
        return out
    fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls))
    return [*out, ("fields", _Fields(f"{cls.__name__} fields: {fields} (see the class's docstring).", cls))]


class _Fields:
    """The fields of a dataclass, documented by its own docstring."""

    def __init__(self, text: str, cls: type) -> None:
        self.__doc__ = text
        self.cls = cls


def docstring(obj: object, qualname: str) -> str | None:
    """The object's docstring, or for a constant the ``#:`` comment above its definition."""
    if isinstance(obj, _Fields):
        return obj.__doc__
    if inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, property):
        doc = obj.__doc__ if isinstance(obj, property) else inspect.getdoc(obj)
        return inspect.cleandoc(doc) if doc else None
    return constant_comment(qualname.rsplit(".", 1)[-1])


def constant_comment(name: str) -> str | None:
    """The ``#: ...`` comment above ``NAME =`` in the module that defines a public constant."""
    from nicemu.collectives import registry
    source = inspect.getsource(registry)
    m = re.search(rf"^#: (.*)\n{re.escape(name)}\b", source, re.M)
    return m.group(1)[0].upper() + m.group(1)[1:] + "." if m else None


def signature(obj: object, name: str) -> str:
    """``name(args)`` for a callable, ``name`` for anything else."""
    short = name.rsplit(".", 1)[-1]
    if isinstance(obj, property):
        return f"{short}  (property)"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return f"{short}({', '.join(b.__name__ for b in obj.__bases__)})"
    if inspect.isroutine(obj) or inspect.isclass(obj):
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            return short
        sig = sig.replace("(self, ", "(").replace("(self)", "()")
        sig = re.sub(r"(: |-> )'([^']*)'", r"\1\2", sig)          # string annotations without quotes
        return f"{short}{sig}"
    return short


def render() -> str:
    """The page, as ``docs/api.md`` must hold it."""
    lines = [HEADER]
    section = None
    for sec, name, obj in public_names():
        if sec != section:
            section = sec
            lines.append(f"## {sec}\n")
        doc = docstring(obj, name) or "(no docstring)"
        lines.append(f"### `{name}`\n")
        lines.append(f"```\n{signature(obj, name)}\n```\n")
        lines.append(_markdown(doc) + "\n")
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown(doc: str) -> str:
    """A docstring as Markdown: reST double backquotes become code spans, ``:class:`X``` becomes `X`,
    and indented blocks (``Args:``) keep their lines."""
    doc = re.sub(r":(?:class|func|mod|data|meth|attr):`~?([^`]+)`", r"`\1`", doc)
    doc = doc.replace("``", "`")
    out = []
    for line in doc.splitlines():
        if line.startswith("    "):                    # an argument's description: a list item
            out.append(("- " + line.strip()) if not line.startswith("        ") else "  " + line.strip())
        else:
            out.append(line)
    return "\n".join(out)


def write(root: Path) -> Path:
    """Rewrite ``docs/api.md`` under ``root``; returns its path."""
    path = root / PAGE
    path.write_text(render(), encoding="utf-8")
    return path
