"""DirectReduce: ring reduce-scatter/allgather with the reduction inside the NIC.

The data path of one reduce-scatter step at the receiving node (see
``nic/agent.py`` for the code that times it):

1. Packets of the partial result arrive from the previous node. The
   **DataDirector** sees they are intermediate data and steers them to the
   ComputeEnhancer instead of writing them to host memory.
2. The **GateKeeper** has already started fetching this node's own chunk
   (operand B) from host memory over PCIe when the step began.
3. The **ComputeEnhancer** reduces incoming and local packets as they stream
   in ("stream aggregation"); the result stays in the NIC buffer and is what
   the GateKeeper packetises for the next step. The host never takes part.
4. Once the last ring (the last torus dimension) has reduced a chunk it is
   final: the DataDirector DMA-writes it to host memory. Between torus
   dimensions it stays in the NIC. In the allgather every received chunk is
   final: it is written to the host and forwarded from the NIC buffer in the
   next step.

The NIC buffer holds the chunk of one step (one per direction) up to
``nic.memory_KiB``; the rest goes to host memory and is read back when sent
(nic/gatekeeper.py; docs/model.md, "DirectReduce buffering and NIC memory").

Compared with the host ring, each step saves a PCIe write, a host
notification, a host reduction pass and a PCIe read; the reduction overlaps
the link transfer instead of following it.
"""

from __future__ import annotations

from nicemu.collectives.schedules.dimension_rings import dimension_ring_steps
from nicemu.collectives.schedules.steps import Schedule, final_segments
from nicemu.topologies import Torus


def nic_policy(phase: str, index: int, ring_size: int, first_ring: bool, last_ring: bool,
               follows_rs: bool) -> dict:
    last_step = index == ring_size - 2
    if phase == "rs":
        # Only the first step of the first ring sends host-resident input; every later
        # step forwards the ComputeEnhancer's output from the NIC buffer. Data is final
        # (and goes to the host) only once the last ring has reduced it.
        # The local operand is host input in the first ring and the NIC-resident
        # result of the previous ring after that.
        return {"engine": "nic", "reduce": True, "from_host": first_ring and index == 0,
                "to_host": last_ring and last_step, "operand_from_host": first_ring}
    # Allgather chunks are final: written to the host and forwarded from the NIC
    # buffer. Only a standalone allgather starts from host memory.
    return {"engine": "nic", "reduce": False,
            "from_host": first_ring and index == 0 and not follows_rs, "to_host": True}


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False) -> Schedule:
    off, cnt = final_segments(topology, count)
    return Schedule(collective, "directreduce", topology, count,
                    lambda: dimension_ring_steps(topology, count, collective, nic_policy, bidirectional),
                    off, cnt, bidirectional)
