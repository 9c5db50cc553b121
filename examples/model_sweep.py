"""Timing-only sweeps with model_time: no data and no MPI, so any topology size fits.

    python examples/model_sweep.py

model_time takes the same topology and profile specs as the command line.
"""

from nicemu.collectives import model_time
from nicemu.nic import load_profile

SIZES = [1 << 10, 1 << 18, 1 << 26]                 # bytes per node: 1 KiB, 256 KiB, 64 MiB
TOPOLOGIES = ["ring:8", "torus:4x4", "torus:3^6"]

print(f"{'topology':>10} {'bytes':>10} {'ring(us)':>12} {'directreduce(us)':>17} {'gain':>7}")
for topology in TOPOLOGIES:
    for nbytes in SIZES:
        count = nbytes // 4                         # float32 elements
        ring = model_time("allreduce", "ring", topology, "directreduce-paper", count)
        dr = model_time("allreduce", "directreduce", topology, "directreduce-paper", count)
        gain = 1 - dr.emulated_us / ring.emulated_us
        print(f"{topology:>10} {nbytes:>10} {ring.emulated_us:12.3f} {dr.emulated_us:17.3f} {gain:7.1%}")

# a profile field changed the way --set does it: 4 KiB packets
profile = load_profile("directreduce-paper", ["nic.packet_bytes=4096"])
big = model_time("allreduce", "directreduce", "ring:8", profile, (1 << 26) // 4)
print(f"ring:8, 64 MiB, 4 KiB packets: directreduce {big.emulated_us:.3f} us")
