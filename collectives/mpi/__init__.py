"""How real data moves over MPI: the step loop and its transports, the spot protocol's data path,
the watchdog, and MPI's own collectives. Only this layer and the API's ``Emulator`` import ``mpi4py``."""
