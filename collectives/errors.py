"""Errors a user can fix, reported as one line."""


class CollectiveError(ValueError):
    """Bad arguments to a collective or to the emulator; the message names the fix."""
