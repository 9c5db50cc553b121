"""Packet faults and a straggler: the data stays exact, the emulated time grows, the model agrees.

    mpiexec -n 4 python examples/faults_stragglers.py

Drops and corruptions are drawn per packet from the seed; the emulated NIC detects them (timeout,
CRC32) and retransmits go-back-N. Node 3 runs its host, NIC and PCIe at half speed.
"""

import numpy as np
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time

TOPOLOGY, PROFILE, COUNT = "ring:8", "directreduce-paper", 1 << 16
FAULTS, STRAGGLERS = "drop=1e-3,corrupt=1e-3,seed=1", "3:2"

x_of = [np.random.default_rng(n).integers(-100, 100, COUNT).astype(np.int32) for n in range(8)]
expected = np.sum(x_of, axis=0)                    # integers: the result must be exact

clean = model_time("allreduce", "directreduce", TOPOLOGY, PROFILE, COUNT, dtype="int32")
with Emulator(MPI.COMM_WORLD, TOPOLOGY, PROFILE, faults=FAULTS, stragglers=STRAGGLERS) as emu:
    x = np.stack([x_of[n] for n in emu.node_range])
    res = emu.allreduce(x, algo="directreduce", call=0)
    assert np.array_equal(res.data, np.broadcast_to(expected, res.data.shape))

# the model executor, given the same call number, draws the same faults and gives the same time
model = model_time("allreduce", "directreduce", TOPOLOGY, PROFILE, COUNT, dtype="int32",
                   faults=FAULTS, call=0, stragglers=STRAGGLERS)
assert model.emulated_us == res.emulated_us

if MPI.COMM_WORLD.rank == 0:
    f = res.faults
    print(f"clean {clean.emulated_us:.3f} us; with faults and a straggler {res.emulated_us:.3f} us "
          f"({res.emulated_us / clean.emulated_us:.2f}x)")
    print(f"drops {f['drops']}, corruptions {f['corruptions']}, resent {f['retransmit_bytes']} bytes")
    print("model executor agrees: True")
