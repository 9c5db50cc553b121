"""nicemu's one error family.

Every error a user can fix derives from :class:`NicemuError`; its message is
one line that names the problem and the fix, and the CLI prints it as
``nicemu: error: ...`` without a traceback. The subclasses exist where a caller
can react differently (a bad topology spec versus a bad profile, say). Any
other exception is a bug and keeps its traceback.

This module imports nothing, so every layer (``nicemu.topologies`` and
``nicemu.nic`` at the bottom included) can raise these.
"""

from __future__ import annotations


class NicemuError(Exception):
    """Base of every user-facing error: one line that names the problem and the fix."""


class UsageError(NicemuError, ValueError):
    """A bad command-line value."""


class TopologyError(NicemuError, ValueError):
    """A bad topology spec or ASTRA-sim network file."""


class ProfileError(NicemuError, ValueError):
    """A bad hardware profile or ``--set`` override."""


class FaultSpecError(ProfileError):
    """A bad ``--faults`` or ``--straggler`` value (they configure the emulated hardware)."""


class CollectiveError(NicemuError, ValueError):
    """Bad arguments to a collective or to the emulator."""


class WorkloadError(NicemuError, ValueError):
    """Bad model, deployment, trace or request settings for serving."""


class CollectiveStalled(NicemuError, RuntimeError):
    """A wait saw no progress for the watchdog limit; the message names who waited for whom.

    ``secondary`` is true when another rank reported the stall first (its
    message is the one to show), so this rank stays silent.
    """

    def __init__(self, message: str, secondary: bool = False) -> None:
        super().__init__(message)
        self.secondary = secondary


class ProtocolError(RuntimeError):
    """A data path saw something its own timing model cannot explain: a bug, not a user error.

    Not a :class:`NicemuError` on purpose: it keeps its traceback and aborts the job.
    """



def yaml_error_parts(exc: Exception) -> tuple[str, str]:
    """Where and what a YAML parse error is, for a one-line message: (`` at line L, column C`` or ``""`` when
    PyYAML does not know the position, the problem on one line)."""
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return at, " ".join(str(getattr(exc, "problem", None) or "bad syntax").split())
