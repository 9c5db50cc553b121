"""All-to-all on rings and tori: the host variant (``ring``) and the NIC variant (``directreduce``).

Node ``i`` cuts its row of ``count`` elements into ``p`` blocks; block ``j`` ends
up as block ``i`` of node ``j``'s row (Mixtral's expert-parallel dispatch and
combine). Only neighbour links exist, so blocks travel store-and-forward
around rings, one torus dimension after the other.

**One ring of k nodes.** In step ``s = 0 .. k-2`` every node sends its
successor one *bundle*: the blocks it holds that still have to travel. A
bundle starts with ``k-1`` blocks and sheds, at every hop, the block that has
arrived, so step ``s`` carries ``k-1-s`` blocks: ``k(k-1)/2`` blocks per link in
all, ``((k-1)/2)·M`` bytes for a row of ``M`` bytes.

**A torus** runs one such ring all-to-all per dimension, dimension 0 first:
in dimension ``d`` every block moves to its destination's coordinate in ``d``,
so the "blocks" of dimension ``d`` are super-blocks of ``p/k_d`` blocks.

**The two variants differ only in where a transit bundle waits** (see
docs/model.md, "The all-to-all"):

* ``ring`` (host): every bundle is DMA-written into the receiving host's
  memory, the host takes note (``host.overhead_us``), and the NIC DMA-reads the
  next bundle back: store-and-forward through PCIe and the host at every hop.
* ``directreduce`` (NIC): the DataDirector keeps transit blocks in the NIC and
  forwards them cut-through, as their packets arrive. Only the node's own
  blocks are DMA-read from host memory (the first bundle, and the own blocks of
  a later dimension's first bundle), and only blocks that have reached their
  destination are DMA-written.

**Memory layout (emulator bookkeeping, no emulated time).** Every node works on
a staging row of ``2p`` blocks: two areas of ``p`` blocks, used alternately, so
that a node never receives into the range it is sending in the same step.
A block's *label* is its destination's offset from the node that holds it
(``(dst - here) mod k`` per coordinate); after it has moved in dimension ``d``
the same number reads as its offset from the source. Labels never change, so
in dimension ``d`` a block sits at super-slot ``label[d]``: step ``s`` sends
super-slots ``s+1 .. k-1`` of area ``s mod 2`` and the receiver places them at
the same super-slots of the other area. The block that arrives stays in its
super-slot (``label[d] = s+1``) and is never overwritten. Between dimensions
every node regroups its blocks by the next label coordinate (``make_relayouts``).
:func:`pack_index` and :func:`unpack_index` translate from and to the user's rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from nicemu.collectives.schedules.steps import Schedule, Step
from nicemu.errors import CollectiveError
from nicemu.topologies import Torus


def check_count(topology: Torus, count: int) -> int:
    """Elements per block; the count must split into one equal block per node."""
    p = topology.nodes
    if count < 1 or count % p:
        what, where = ("node", topology.name) if topology.ranks_per_node == 1 else ("rank", topology.describe())
        raise CollectiveError(
            f"alltoall needs a count divisible by the {p} {what}s of {where} (one equal block "
            f"per {what}), got {count} elements; use a multiple of {p} elements")
    return count // p


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    """Every label (one coordinate per dimension), in row-major order: shape (p, D)."""
    return np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), axis=1).astype(np.int64)


def _positions(shape: tuple[int, ...], d: int) -> np.ndarray:
    """Block position of every label within an area during dimension ``d``.

    Label coordinate ``d`` picks the super-slot; the other coordinates, row-major,
    the block inside it.
    """
    lab = _labels(shape)
    rest = [j for j in range(len(shape)) if j != d]
    inner = np.zeros(len(lab), dtype=np.int64)
    for j in rest:
        inner = inner * shape[j] + lab[:, j]
    return lab[:, d] * (math.prod(shape) // shape[d]) + inner


def final_locations(shape: tuple[int, ...]) -> np.ndarray:
    """Staging block of every label after the last dimension (area = label parity there)."""
    last = len(shape) - 1
    return (_labels(shape)[:, last] % 2) * math.prod(shape) + _positions(shape, last)


def relayouts(shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    """{step index: staging-block gather} that regroups the blocks before every dimension d > 0."""
    p = math.prod(shape)
    lab = _labels(shape)
    out = {}
    step = 0
    for d in range(len(shape) - 1):
        step += shape[d] - 1
        perm = np.arange(2 * p, dtype=np.int64)
        perm[_positions(shape, d + 1)] = (lab[:, d] % 2) * p + _positions(shape, d)
        out[step] = perm
    return out


def pack_index(topology: Torus, nodes: np.ndarray) -> np.ndarray:
    """For each node, the input block that goes to each staging block of area 0: (len(nodes), p)."""
    shape = np.array(topology.shape)
    lab = _labels(topology.shape)
    idx = np.empty((len(nodes), topology.nodes), dtype=np.int64)
    for row, x in enumerate(nodes):
        dest = (topology.coords(int(x)) + lab) % shape
        idx[row, _positions(topology.shape, 0)] = topology.node_of(dest)
    return idx


def unpack_index(topology: Torus, nodes: np.ndarray) -> np.ndarray:
    """For each node, the staging block that holds each source's block at the end: (len(nodes), p)."""
    shape = np.array(topology.shape)
    lab = _labels(topology.shape)
    where = final_locations(topology.shape)
    idx = np.empty((len(nodes), topology.nodes), dtype=np.int64)
    for row, x in enumerate(nodes):
        src = (topology.coords(int(x)) - lab) % shape
        idx[row, topology.node_of(src)] = where
    return idx


def _flags(engine: str, d: int, s: int, shape: tuple[int, ...], block: int, p: int) -> dict:
    if engine == "host":
        return {"engine": "host", "reduce": False, "from_host": True, "to_host": True}
    k = shape[d]
    full = np.full(p, 1, dtype=np.int64)
    # own blocks (never moved yet) in the first bundle of a later dimension: label 0 in dims < d
    own = (k - 1) * math.prod(shape[d + 1:]) * block
    return {"engine": "nic", "reduce": False, "from_host": d == 0 and s == 0, "to_host": True,
            "cut_through": s > 0,
            "host_count": full * own if d > 0 and s == 0 else None,
            # blocks of the arriving super-slot with label 0 in every later dimension are home; the
            # rest of it waits in the NIC for a later dimension (docs/model.md §13.7)
            "final_count": full * (math.prod(shape[:d]) * block),
            "hold_count": full * ((p // k - math.prod(shape[:d])) * block)}


def alltoall_steps(topology: Torus, count: int, engine: str) -> Iterator[Step]:
    p = topology.nodes
    block = check_count(topology, count)
    nodes = np.arange(p, dtype=np.int64)
    ones = np.ones(p, dtype=np.int64)
    for d, k in enumerate(topology.shape):
        nxt = topology.neighbor(nodes, d, 1)
        slot = (p // k) * block                 # elements per super-slot
        for s in range(k - 1):
            first = (s + 1) * slot
            yield Step("a2a", d, 1, s, nodes, nxt,
                       ones * ((s % 2) * p * block + first), ones * ((k - 1 - s) * slot),
                       dst_offset=ones * (((s + 1) % 2) * p * block + first),
                       **_flags(engine, d, s, topology.shape, block, p))


def build(algo: str, engine: str, topology: Torus, count: int) -> Schedule:
    """The all-to-all schedule of ``algo``: engine ``host`` (store-and-forward through every host)
    or ``nic`` (the NIC forwards transit blocks cut-through)."""
    check_count(topology, count)
    return Schedule("alltoall", algo, topology, count,
                    lambda: alltoall_steps(topology, count, engine), width=2 * count,
                    make_relayouts=lambda: relayouts(topology.shape))
