"""docs/api.md is generated from the docstrings (nicemu/api_docs.py) and cannot drift from them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from nicemu import api_docs

ROOT = Path(__file__).resolve().parents[2]


def test_committed_page_matches_the_code():
    committed = (ROOT / api_docs.PAGE).read_text(encoding="utf-8")
    assert committed == api_docs.render(), "docs/api.md is stale: run python scripts/api_docs.py"


def test_every_public_name_has_a_docstring():
    missing = [name for _, name, obj in api_docs.public_names() if not api_docs.docstring(obj, name)]
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_function_says_what_it_raises():
    """A callable's docstring names its errors (or says it raises nothing)."""
    silent = []
    for _, name, obj in api_docs.public_names():
        if inspect.isroutine(obj) or isinstance(obj, property):
            if not re.search(r"rais|error", api_docs.docstring(obj, name), re.I):
                silent.append(name)
    assert not silent, f"docstrings that do not name their errors: {silent}"


def test_the_page_covers_the_api():
    page = api_docs.render()
    import nicemu.collectives as c
    for name in c.__all__:
        assert f"### `nicemu.collectives.{name}`" in page
    for member in ("allreduce", "reduce_scatter", "allgather", "alltoall", "segments", "free", "local_nodes"):
        assert f"### `Emulator.{member}`" in page
    assert "### `nicemu.topologies.parse_topology`" in page and "### `nicemu.nic.load_profile`" in page
    assert "(no docstring)" not in page
