"""What moves where: every algorithm compiled into plain-data steps (no timing, no MPI).

Modules here import only ``nicemu.nic`` and ``nicemu.topologies``. Both
executors consume what they build; neither knows which algorithm built it.
"""
