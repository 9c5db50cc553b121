"""Facts about the machine this process runs on (no MPI)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fork_writer(write: Callable[[TextIO], None]) -> tuple[int, int]:
    """Run ``write(pipe)`` in a forked child and return (pid, read end of the pipe).

    The child leaves with ``os._exit`` whatever happens, so MPI's and the interpreter's exit handlers
    run in the parent only; the model executor's workers (serve and sweep ``--jobs``) never call MPI.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            with os.fdopen(write_fd, "w") as out:
                write(out)
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd
