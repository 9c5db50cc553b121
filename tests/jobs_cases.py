"""Jobs files written and run in-process, for the jobs tests."""

from __future__ import annotations

import argparse
import json

import pytest

from nicemu.errors import UsageError
from nicemu.jobs import add_arguments, run


class Comm:
    """A one-rank stand-in for the world communicator (the model executor needs no MPI)."""

    size, rank = 1, 0


def coll_job(name, nodes, algo="ring", size="1M", iterations=1):
    return f"  - name: {name}\n    nodes: {nodes}\n    algo: {algo}\n    size: {size}\n    iterations: {iterations}\n"


def run_jobs(tmp_path, text, *options: str) -> list[dict]:
    """``nicemu jobs`` on ``text`` under the model executor, with ``options``; the jobs' records."""
    (tmp_path / "jobs.yml").write_text(text)
    out = tmp_path / "out.json"
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(tmp_path / "jobs.yml"), "--hot-links", "3", "--json", str(out), *options])
    assert run(args, Comm()) == 0
    return json.loads(out.read_text())["jobs"]


def refused(tmp_path, text, words) -> None:
    """``nicemu jobs`` on ``text`` stops with one line that holds every one of ``words``."""
    with pytest.raises(UsageError) as err:
        run_jobs(tmp_path, text)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
