"""Which communicator a command runs on, importing ``mpi4py.MPI`` only when something needs it.

Importing ``mpi4py.MPI`` initialises MPI. A command that runs alone on the
model executor (``bench``/``serve --executor model``, ``info``, ``schedule``)
gets :class:`SoloComm`, a one-process stand-in, so it works on a login node or
in a notebook without MPI. Under an MPI launcher, or when data really moves,
the command gets ``MPI.COMM_WORLD``.
"""

from __future__ import annotations

import os
import sys

#: environment variables that MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI) set in every rank
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def under_mpi_launcher() -> bool:
    """True when this process is one rank of an ``mpiexec``/``srun`` job (or MPI is already up)."""
    return "mpi4py.MPI" in sys.modules or any(name in os.environ for name in LAUNCHER_ENV)


class SoloComm:
    """The parts of ``MPI.COMM_WORLD`` a one-process model run uses: rank 0 of 1."""

    rank = 0
    size = 1

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Barrier(self) -> None:
        pass

    def Abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def world(needs_mpi: bool):
    """``MPI.COMM_WORLD`` if ``needs_mpi`` or under a launcher, else a :class:`SoloComm`."""
    if needs_mpi or under_mpi_launcher():
        from mpi4py import MPI
        return MPI.COMM_WORLD
    return SoloComm()
