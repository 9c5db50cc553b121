"""argparse ``type=`` converters shared by the subcommands: bad values fail at parse time.

A converter runs on every rank with the same text, so every rank reaches the
same verdict, and the CLI prints the one-line error once (nicemu/cli.py).
"""

from __future__ import annotations

import argparse
import os


def seed(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's generators refuse negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not a whole number; e.g. --seed 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed {value} is negative; use a whole number >= 0, e.g. --seed 0")
    return value


def output_file(text: str) -> str:
    """A file to write at the end of a run: its directory must exist now, not after the run's work."""
    if not text or text.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file name; e.g. out.json")
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {folder} does not exist; create it "
                                         "or write elsewhere")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"cannot write {text}: it is a directory; give a file name")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {folder} is not writable")
    return text


class ScriptParser(argparse.ArgumentParser):
    """argparse for the MPI scripts in scripts/: a bad option raises UsageError (printed once by the
    script's error handler) instead of printing usage on every rank; help is printed by rank 0 only."""

    rank = 0

    def error(self, message: str):
        from nicemu.errors import UsageError
        raise UsageError(f"{message} (see {self.prog} --help)")

    def _print_message(self, message: str, file=None) -> None:
        if self.rank == 0:
            super()._print_message(message, file)
