"""The public API: argument checks and model-only timing (no MPI), and the ``Emulator`` (MPI)."""
