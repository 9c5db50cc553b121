"""The common shape of a result page under docs/results/: command, script, table, what it shows."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nicemu.errors import NicemuError


def script_command(script: str, argv: Sequence[str]) -> str:
    """The command line that ran ``scripts/<script>.py`` with ``argv``, as typed from the repository root."""
    return shlex.join(["python", f"scripts/{script}.py", *argv])


def page(command: str, script: str, about: str, body: Sequence[str], shows: Sequence[str]) -> list[str]:
    """A result page's lines: the command that regenerates it and the script that writes it first,
    then the table (or figure), then what it shows."""
    return [f"Regenerate (from the repository root): `{command}`", "",
            f"Written by `scripts/{script}.py`: {about}", "",
            *body, "", "What it shows:", "", *(f"- {line}" for line in shows)]


def guarded(script: str, body: Callable[[], object]) -> int:
    """Run a study script's ``body``; a bad grid, profile or option is one line on stderr and exit status 2."""
    try:
        body()
    except NicemuError as exc:
        print(f"{script}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


@contextmanager
def scratch_dir(out: str) -> Iterator[Path]:
    """A hidden folder beside ``out`` for the JSON files of a study's runs, emptied and removed afterwards
    (also when a run fails)."""
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    scratch = stem.parent / f".{stem.name}_runs"
    scratch.mkdir(exist_ok=True)
    try:
        yield scratch
    finally:
        for f in scratch.glob("*.json"):
            f.unlink()
        scratch.rmdir()
