"""Collective algorithms, their schedules, the two executors and the public API."""

from collectives.algorithms import ALGORITHM_HELP, ALGORITHMS, COLLECTIVES
from collectives.api import Emulator, Result, build_schedule, model_time
from collectives.errors import CollectiveError

__all__ = ["ALGORITHMS", "ALGORITHM_HELP", "COLLECTIVES", "CollectiveError", "Emulator",
           "Result", "build_schedule", "model_time"]
