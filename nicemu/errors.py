"""Command-line usage errors."""


class UsageError(ValueError):
    """A bad command-line value; the message names the fix."""
