"""User-facing error types for the NIC emulator.

They are separate from ordinary exceptions so that the CLI can print them as
one plain line instead of a traceback.
"""


class ProfileError(ValueError):
    """One-line user-facing error about a hardware profile or a --set override; names the problem and the fix."""


class FaultSpecError(ProfileError):
    """A bad --faults or --straggler value; the message names the part and the fix.

    Faults and stragglers configure the emulated hardware, so this is a kind of
    ProfileError: every front end that reports those reports these too.
    """
