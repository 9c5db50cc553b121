"""How long it takes: the timing of schedules and of the sparse spot protocol, without data.

Modules here never import ``mpi4py``: the model executor runs on a laptop or a
login node without MPI, and it is the reference the MPI layer must match.
"""
