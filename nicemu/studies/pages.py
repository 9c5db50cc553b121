"""The common shape of a result page under docs/results/: command, script, table, what it shows."""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def script_command(script: str, argv: Sequence[str]) -> str:
    """The command line that ran ``scripts/<script>.py`` with ``argv``, as typed from the repository root."""
    return shlex.join(["python", f"scripts/{script}.py", *argv])


def page(command: str, script: str, about: str, body: Sequence[str], shows: Sequence[str]) -> list[str]:
    """A result page's lines: the command that regenerates it and the script that writes it first,
    then the table (or figure), then what it shows."""
    return [f"Regenerate (from the repository root): `{command}`", "",
            f"Written by `scripts/{script}.py`: {about}", "",
            *body, "", "What it shows:", "", *(f"- {line}" for line in shows)]
