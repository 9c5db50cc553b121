"""User-facing errors of the serving workloads.

A separate type lets the CLI print them as one plain line (``nicemu: error: ...``)
instead of a traceback.
"""


class WorkloadError(ValueError):
    """Bad model, deployment, trace or request settings; the message names the problem and the fix."""
