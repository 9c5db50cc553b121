"""N-dimensional tori (rings included) with vectorised coordinate arithmetic.

Node ids are row-major over ``shape`` (last dimension fastest), so a node's
coordinate in a dimension and its neighbours are pure integer arithmetic on
strides. Everything that takes a node accepts an int or a numpy array, so the
model executor can work on all 262,144 nodes of ``torus:8^6`` at once.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.errors import TopologyError

#: Largest node count a topology may have; keeps int64 ids and numpy arrays sane.
MAX_NODES = 2**24


@dataclass(frozen=True)
class LinkParams:
    """Bandwidth (1e9 bytes/s, per direction) and latency (microseconds) of one directed link, so
    per-dimension overrides travel as one value. Raises :class:`TopologyError` for a non-number, NaN, a
    bandwidth <= 0 or a negative latency."""

    bandwidth_GBps: float  # per direction, 1e9 bytes/s
    latency_us: float

    def __post_init__(self) -> None:
        bw, lat = self.bandwidth_GBps, self.latency_us
        for field, value in (("bandwidth_GBps", bw), ("latency_us", lat)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TopologyError(f"link {field} must be a number, got {value!r}")
            if math.isnan(value):
                raise TopologyError(f"link {field} is NaN; give a number")
        if bw <= 0:
            raise TopologyError(f"link bandwidth_GBps must be positive, got {bw!r}")
        if lat < 0:
            raise TopologyError(f"link latency_us must not be negative, got {lat!r}")


def _default_name(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"ring:{shape[0]}"
    return "torus:" + "x".join(str(k) for k in shape)


class Torus:
    """N-dimensional torus; a ring is a 1-D torus. Node ids are row-major over `shape` (last dim fastest).

    ``Torus(shape, name=None, dim_links=None, switched=False)``: ``shape`` gives the nodes per dimension
    (each >= 2, at most 2**24 nodes in all), ``dim_links`` optional per-dimension ``LinkParams``. Usually
    built by ``parse_topology``, ``ring`` or ``switch``. Raises :class:`TopologyError` for a bad shape.
    """

    __slots__ = ("_shape_arr", "_strides_arr", "dim_links", "name", "ndim", "nodes", "ranks_per_node", "shape",
                 "strides", "switched")

    def __init__(
        self,
        shape: Sequence[int],
        name: str | None = None,
        dim_links: Sequence[LinkParams | None] | None = None,
        switched: bool = False,
        ranks_per_node: int = 1,
    ) -> None:
        """``switched``: the nodes hang off one non-blocking switch (``switch:N``), one full-duplex port
        each; the ring structure is then only the order ring algorithms use (see topologies/switch.py).

        ``ranks_per_node`` > 1: the last dimension, of that size, numbers the ranks of one node (they
        share its host memory and talk through it; each has its own NIC on the dimensions before). The
        ids are then ranks, node-major (rank ``r`` of node ``v`` is ``v * P + r``), and ``nodes`` counts
        ranks; build it with :meth:`with_ranks_per_node`."""
        label = name if name is not None else "torus"
        try:
            dims = tuple(operator.index(k) for k in shape)
        except TypeError:
            raise TopologyError(
                f"{label}: dimension sizes must be whole numbers, got {shape!r}; e.g. torus:4x4x2"
            ) from None
        if not dims:
            raise TopologyError(f"{label}: a torus needs at least one dimension; e.g. ring:8 or torus:4x4x2")
        if name is None:
            name = _default_name(dims)
            label = name
        one_node = operator.index(ranks_per_node) > 1 and dims[:-1] == (1,)   # see single_node
        for i, k in enumerate(dims):
            if k == 1 and one_node and i == 0:
                continue
            if k == 1:
                raise TopologyError(
                    f"{label}: every dimension needs at least 2 nodes; drop the size-1 dimension"
                )
            if k < 2:
                raise TopologyError(
                    f"{label}: dimension {i} has size {k}; every dimension needs at least 2 nodes"
                )
        # Each dimension has >= 2 nodes, so more than log2(MAX_NODES) dims is over the limit;
        # checking that first avoids multiplying absurdly long shapes.
        too_many_dims = len(dims) > MAX_NODES.bit_length()
        total = 0 if too_many_dims else math.prod(dims)
        if too_many_dims or total > MAX_NODES:
            count = f"2**{len(dims)} or more" if too_many_dims else str(total)
            raise TopologyError(
                f"{label}: {count} nodes is over the limit of {MAX_NODES} (2**24); use a smaller shape"
            )

        if dim_links is None:
            links: tuple[LinkParams | None, ...] = (None,) * len(dims)
        else:
            links = tuple(dim_links)
            if len(links) != len(dims):
                raise TopologyError(
                    f"{label}: dim_links has {len(links)} entries but the torus has {len(dims)} dimensions; "
                    "give one entry (or None) per dimension"
                )
            for i, link in enumerate(links):
                if link is not None and not isinstance(link, LinkParams):
                    raise TopologyError(
                        f"{label}: dim_links[{i}] must be LinkParams or None, got {type(link).__name__}"
                    )

        strides = [1] * len(dims)
        for i in range(len(dims) - 2, -1, -1):
            strides[i] = strides[i + 1] * dims[i + 1]

        self.shape: tuple[int, ...] = dims
        self.name: str = name
        self.nodes: int = total
        self.ndim: int = len(dims)
        self.dim_links: tuple[LinkParams | None, ...] = links
        self.strides: tuple[int, ...] = tuple(strides)
        self._shape_arr = np.asarray(dims, dtype=np.int64)
        self._strides_arr = np.asarray(strides, dtype=np.int64)
        self.switched: bool = bool(switched)
        self.ranks_per_node: int = operator.index(ranks_per_node)
        local = self.ranks_per_node > 1
        if local and dims[-1] != self.ranks_per_node:
            raise TopologyError(f"{label}: the last dimension must number the {self.ranks_per_node} ranks of a node")
        if self.switched and len(dims) != 1 + local:
            raise TopologyError(f"{label}: a switch has one dimension (its node order)")

    # --- value semantics -------------------------------------------------------------------

    def __repr__(self) -> str:
        extra = ", switched=True" if self.switched else ""
        if self.ranks_per_node > 1:
            extra += f", ranks_per_node={self.ranks_per_node}"
        return f"Torus(shape={self.shape!r}, name={self.name!r}, dim_links={self.dim_links!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Torus):
            return NotImplemented
        return ((self.shape, self.name, self.dim_links, self.switched, self.ranks_per_node)
                == (other.shape, other.name, other.dim_links, other.switched, other.ranks_per_node))

    def __hash__(self) -> int:
        return hash((self.shape, self.name, self.dim_links, self.switched, self.ranks_per_node))

    # --- ranks per node ----------------------------------------------------------------------

    def with_ranks_per_node(self, ranks_per_node: int) -> Torus:
        """The ranks of this topology's nodes, ``ranks_per_node`` per node (``--ranks-per-node``); 1: itself.

        Raises :class:`TopologyError` for a count below 1, or when ranks would exceed 2**24."""
        p = operator.index(ranks_per_node)
        if p < 1:
            raise TopologyError(f"ranks per node must be at least 1, got {p}")
        if self.ranks_per_node > 1:
            raise TopologyError(f"{self.name} already has {self.ranks_per_node} ranks per node")
        if p == 1:
            return self
        local = LinkParams(math.inf, 0.0)   # never used: ranks of a node talk through host memory
        return Torus((*self.shape, p), name=self.name, dim_links=(*self.dim_links, local),
                     switched=self.switched, ranks_per_node=p)

    @staticmethod
    def single_node(ranks: int, name: str | None = None) -> Torus:
        """One node of ``ranks`` ranks and no network (a tensor-parallel group inside one node): a size-1
        node dimension, then the ranks. Its AllReduce is the intra-node phases alone."""
        p = operator.index(ranks)
        if p < 2:
            raise TopologyError(f"a single node needs at least 2 ranks, got {p}")
        return Torus((1, p), name=name or "node", dim_links=(None, LinkParams(math.inf, 0.0)), ranks_per_node=p)

    @property
    def single(self) -> bool:
        """One node and its ranks (:meth:`single_node`)."""
        return self.ranks_per_node > 1 and self.shape[:-1] == (1,)

    @property
    def node_topology(self) -> Torus:
        """The topology of the nodes (without the ranks-per-node dimension)."""
        if self.ranks_per_node == 1:
            return self
        return Torus(self.shape[:-1], name=self.name, dim_links=self.dim_links[:-1], switched=self.switched)

    @property
    def network_ndim(self) -> int:
        """Dimensions made of network links (all but the ranks-per-node one)."""
        return self.ndim - (self.ranks_per_node > 1)

    # --- argument checks -------------------------------------------------------------------

    def _check_dim(self, dim: int) -> int:
        dim = operator.index(dim)
        if not 0 <= dim < self.ndim:
            raise ValueError(f"{self.name}: dimension {dim} is out of range 0..{self.ndim - 1}")
        return dim

    def _as_nodes(self, node: int | np.ndarray) -> np.ndarray:
        arr = np.asarray(node)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: node ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.nodes):
            raise ValueError(f"{self.name}: node id out of range 0..{self.nodes - 1}")
        return arr

    # --- coordinates -----------------------------------------------------------------------

    def coords(self, node: int | np.ndarray) -> np.ndarray:
        """Coordinates of node(s): int -> shape (ndim,), array (m,) -> (m, ndim), int64."""
        arr = self._as_nodes(node)
        return (arr[..., None] // self._strides_arr) % self._shape_arr

    def node_of(self, coords: np.ndarray | Sequence[int]) -> int | np.ndarray:
        """Node id(s) of coordinates (last axis = dims); the inverse of :meth:`coords`."""
        arr = np.asarray(coords)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: coordinates must be integers, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[-1] != self.ndim:
            raise ValueError(
                f"{self.name}: coordinates need a last axis of length {self.ndim}, got shape {arr.shape}"
            )
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (np.any(arr < 0) or np.any(arr >= self._shape_arr)):
            raise ValueError(f"{self.name}: coordinate out of range for shape {self.shape}")
        ids = arr @ self._strides_arr
        return int(ids) if arr.ndim == 1 else ids

    def ring_position(self, node: int | np.ndarray, dim: int) -> int | np.ndarray:
        """Coordinate of node(s) in ``dim``: the position on that dimension's ring."""
        dim = self._check_dim(dim)
        arr = self._as_nodes(node)
        pos = (arr // self.strides[dim]) % self.shape[dim]
        return int(pos) if pos.ndim == 0 else pos

    def neighbor(self, node: int | np.ndarray, dim: int, step: int = 1) -> int | np.ndarray:
        """Node(s) whose coordinate in ``dim`` is (c + step) mod k, computed with strides only."""
        dim = self._check_dim(dim)
        arr = self._as_nodes(node)
        k, stride = self.shape[dim], self.strides[dim]
        c = (arr // stride) % k
        out = arr + (((c + step) % k) - c) * stride
        return int(out) if out.ndim == 0 else out

    # --- links -----------------------------------------------------------------------------

    def directed_links(self) -> Iterator[tuple[int, int, int, int]]:
        """Yield every directed link as (src, dst, dim, direction).

        Ordered by dimension, then direction (+1 before -1), then source node; the ranks of a node
        (``ranks_per_node``) have no links between them.
        In a dimension of size 2 both neighbours are the same node, so only
        direction +1 is yielded there (one link per node and direction pair).
        """
        src = np.arange(self.nodes, dtype=np.int64)
        src_list = src.tolist()
        for dim, k in enumerate(self.shape[:self.network_ndim]):
            for direction in ((1,) if k == 2 else (1, -1)):
                dst_list = self.neighbor(src, dim, direction).tolist()
                for s, d in zip(src_list, dst_list):
                    yield s, d, dim, direction

    def link_params(self, dim: int, default: LinkParams) -> LinkParams:
        """Link of ``dim``: the per-dimension override if the topology has one, else ``default``."""
        link = self.dim_links[self._check_dim(dim)]
        return default if link is None else link

    def describe(self) -> str:
        """One-line summary for logs and ``nicemu info``."""
        if self.single:
            return f"{self.name} (one node of {self.ranks_per_node} ranks)"
        if self.ranks_per_node > 1:
            return f"{self.node_topology.describe()} x {self.ranks_per_node} ranks per node"
        dims = f"{self.ndim} dim" + ("" if self.ndim == 1 else "s")
        extra = ""
        if self.switched:
            return f"{self.name} ({self.nodes} nodes on one non-blocking switch)"
        if self.name != _default_name(self.shape) and not self.name.startswith("torus:"):
            extra = ", shape " + "x".join(str(k) for k in self.shape)
        return f"{self.name} ({self.nodes} nodes, {dims}{extra})"
