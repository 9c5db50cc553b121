"""Checks of a call's arguments, shared by the API, the CLI and serving (no MPI).

Every value a user passes is checked here before it reaches numpy or MPI, so
a wrong type or an absurd size is a one-line :class:`CollectiveError` instead
of a numpy traceback, a MemoryError or a run that never ends.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from nicemu.collectives.registry import COLLECTIVES, ROOTED_COLLECTIVES, SPARSE_OPTIONS, get, names
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec, parse_faults
from nicemu.nic.ops import ALIASES, DTYPES, OPS
from nicemu.nic.profile import Profile, load_profile
from nicemu.nic.stragglers import check_stragglers, parse_stragglers
from nicemu.topologies import Torus, parse_topology

#: elements per node (1 TiB of bytes): byte counts and offsets stay far inside int64
MAX_COUNT = 1 << 40
#: transfers in one dense schedule (nodes x ring steps); the model executor times 10**6 to 10**7
#: transfers per second (fewer on more nodes), so this bound is minutes of work, not days
MAX_TRANSFERS = 1 << 30


def check_algo(algo: str) -> None:
    """Refuse a name that is not in the registry: :class:`CollectiveError` listing the known names."""
    if not isinstance(algo, str):
        raise CollectiveError(f"algo must be an algorithm name such as 'directreduce', got {type(algo).__name__}")
    get(algo)


def check_options(algo: str, options: dict) -> dict:
    """The keyword options of a call, checked against what ``algo`` declares (``Algorithm.options``).

    A dense algorithm takes none; the sparse ones take the spot options (``block_size``, ``aggregators``,
    ``spots``, ``spot_blocks``, ``tx_spots``; None keeps the default). Returns the options without the
    None values. Raises :class:`CollectiveError` naming the option and the algorithms that take it.
    """
    accepted = get(algo).options
    for key in options:
        if key in accepted:
            continue
        if key in SPARSE_OPTIONS:
            raise CollectiveError(f"{key}= is a sparse option and {algo} is dense; drop it, or use one of "
                                  f"{', '.join(names(kind='sparse'))}")
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise CollectiveError(f"unknown option {key}= for {algo}; {takes}")
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CollectiveError(f"{key}= must be a whole number, got {value!r}")
    return given


def check_algo_collective(algo: str, collective: str) -> None:
    """A dense algorithm that does not implement ``collective`` (e.g. ring-pipelined's all-to-all)."""
    entry = get(algo)
    if entry.sparse is None and collective not in entry.collectives:
        others = ", ".join(names(kind="dense", emulated=True, collective=collective))
        raise CollectiveError(f"{algo} does not implement {collective}; use one of {others}")


def check_collective(collective: str) -> None:
    """Refuse a collective the emulator does not implement (:class:`CollectiveError` listing them)."""
    if collective not in COLLECTIVES:
        raise CollectiveError(
            f"unknown collective '{collective}'; use one of {', '.join(COLLECTIVES)}")


def accepted_dtypes() -> str:
    """The names ``--dtype`` and ``check_dtype`` accept, for error messages and help."""
    return ", ".join([*DTYPES, *(f"{a} ({n})" for a, n in ALIASES.items())])


def check_dtype(dtype: str | np.dtype | type) -> np.dtype:
    """A supported element type in native byte order: a name (``"float32"``, ``"bfloat16"``), an
    nccl-tests alias (``"half"``, ``"float"``, ``"double"``, ``"f8e4m3"``, ``"f8e5m2"``), a numpy dtype
    or a scalar type (``np.float32``, ``ml_dtypes.bfloat16``). Anything else is refused before numpy is
    asked to interpret it. Returns the canonical dtype (its ``name`` is what records report)."""
    if dtype is None or isinstance(dtype, bool):
        raise CollectiveError(f"dtype {dtype!r} is not an element type; use one of {accepted_dtypes()}")
    if isinstance(dtype, str) and dtype in ALIASES:
        dtype = ALIASES[dtype]
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):
        raise CollectiveError(f"unknown dtype {str(dtype)[:40]!r}; use one of {accepted_dtypes()}") from None
    if dt.name not in DTYPES:
        raise CollectiveError(f"unsupported dtype '{dt.name}'; use one of {accepted_dtypes()}")
    if not dt.isnative:
        raise CollectiveError(f"dtype {dt.str!r} ({dt.name}) is not in this machine's byte order; convert "
                              f"with x.astype(x.dtype.newbyteorder('='))")
    return DTYPES[dt.name]


def check_dtype_op(dtype: str | np.dtype | type, op: str) -> np.dtype:
    """Check an element type (a name, an nccl-tests alias, a numpy dtype or scalar type) and a reduction
    (sum, prod, max, min, avg); returns the canonical dtype. Raises :class:`CollectiveError` naming the
    accepted values."""
    dt = check_dtype(dtype)
    check_op(op)
    return dt


def check_op(op: str) -> None:
    """Refuse a reduction that is not sum, prod, max, min or avg (:class:`CollectiveError`)."""
    if not isinstance(op, str) or op not in OPS:
        raise CollectiveError(f"unknown op {op!r}; use one of {', '.join(OPS)}")


def check_count(count: int, what: str = "count") -> int:
    """Elements per node: a whole number in [0, MAX_COUNT] (numpy integers too; not floats or bools)."""
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        raise CollectiveError(f"{what} must be a whole number of elements, got {count!r}")
    count = operator.index(count)
    if count < 0:
        raise CollectiveError(f"{what} {count} is negative; give the number of elements per node")
    if count > MAX_COUNT:
        raise CollectiveError(f"{what} {count} is over the limit of 2**40 elements per node")
    return count


def check_root(root: int, topology: Torus, collective: str) -> int:
    """The root of a rooted collective: a node id of ``topology``; other collectives take root 0 only."""
    if isinstance(root, bool) or not isinstance(root, numbers.Integral):
        raise CollectiveError(f"root must be a whole node number, got {root!r}")
    root = operator.index(root)
    if collective not in ROOTED_COLLECTIVES:
        if root != 0:
            raise CollectiveError(f"root {root} applies to {' and '.join(ROOTED_COLLECTIVES)} only; drop it for "
                                  f"{collective}")
        return 0
    if not 0 <= root < topology.nodes:
        raise CollectiveError(f"root {root} is not a node of {topology.name}; use a root from 0 to "
                              f"{topology.nodes - 1}")
    return root


def schedule_transfers(topology: Torus, collective: str) -> int:
    """Transfers of a dense schedule (a bound): every node sends once per ring step of every dimension,
    reduce-scatter and allgather each take k-1 steps in a dimension of k nodes (allreduce both; broadcast
    and reduce: a scatter or gather besides the ring phase, counted as a second phase)."""
    steps = sum(k - 1 for k in topology.shape)
    return topology.nodes * steps * (1 if collective in ("reducescatter", "allgather", "alltoall") else 2)


def check_schedule_size(topology: Torus, collective: str, algo: str) -> None:
    """Refuse a dense schedule too large to time: a ring of N nodes has about 2N**2 transfers."""
    transfers = schedule_transfers(topology, collective)
    if transfers > MAX_TRANSFERS:
        raise CollectiveError(
            f"{algo} {collective} on {topology.name} has {transfers:.3g} transfers ({topology.nodes} nodes x "
            f"{transfers // topology.nodes} ring steps), over the limit of 2**30 (an hour of work); fold the "
            f"nodes into a torus with short rings (e.g. torus:{_torus_hint(topology.nodes)}) or use fewer nodes")


def _torus_hint(nodes: int) -> str:
    side = max(2, round(nodes ** 0.5))
    return f"{side}x{max(2, nodes // side)}"


def as_topology(topology: str | Torus, ranks_per_node: int = 1) -> Torus:
    """A :class:`Torus`, or a spec string parsed into one; with ``ranks_per_node`` ranks on each node."""
    if isinstance(topology, str):
        topology = parse_topology(topology)
    elif not isinstance(topology, Torus):
        raise CollectiveError(f"topology must be a spec such as 'ring:8' or a Torus, got {type(topology).__name__}")
    ranks_per_node = check_per_node(ranks_per_node)
    if ranks_per_node == 1 or topology.ranks_per_node == ranks_per_node:
        return topology
    return topology.with_ranks_per_node(ranks_per_node)


def check_per_node(ranks_per_node: int) -> int:
    """A ranks-per-node count: a whole number >= 1 (:class:`CollectiveError` otherwise)."""
    if isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, (int, np.integer)) or ranks_per_node < 1:
        raise CollectiveError(f"ranks_per_node must be a whole number >= 1, got {ranks_per_node!r}")
    return int(ranks_per_node)


def check_ranks_per_node(topology: Torus, algo: str, collective: str) -> None:
    """Several ranks per node run the dense AllReduce (collectives/schedules/hierarchical.py), the dense
    all-to-all (collectives/schedules/hierarchical_alltoall.py) and MPI's own."""
    p = topology.ranks_per_node
    if p == 1:
        return
    if collective not in ("allreduce", "alltoall"):
        raise CollectiveError(f"{collective} runs with one rank per node; with --ranks-per-node {p} use "
                              f"--collective allreduce or alltoall")
    if get(algo).sparse is not None:
        raise CollectiveError(f"{algo} runs with one rank per node (its aggregation is per node); with "
                              f"--ranks-per-node {p} use a dense algorithm "
                              f"({', '.join(names(kind='dense', emulated=True, collective=collective))})")


def as_profile(profile: str | Profile, overrides: tuple[str, ...] | list[str] | str = ()) -> Profile:
    """A :class:`Profile`, or a shipped name / YAML path loaded into one, with ``overrides`` applied."""
    if isinstance(profile, Profile):
        return profile.with_overrides(overrides) if overrides else profile
    if isinstance(profile, str):
        return load_profile(profile, overrides)
    raise CollectiveError(f"profile must be a shipped profile name, a YAML path or a Profile, got "
                          f"{type(profile).__name__}")


def check_work(work: np.ndarray, local_nodes: int) -> None:
    """An in-place buffer: writeable, C-contiguous, (local nodes, count), a supported dtype."""
    if not isinstance(work, np.ndarray):
        raise CollectiveError(f"work must be a numpy array, got {type(work).__name__}")
    if work.ndim != 2 or work.shape[0] != local_nodes:
        raise CollectiveError(f"this rank hosts {local_nodes} nodes: work must have shape ({local_nodes}, count), "
                              f"got {work.shape}")
    if work.dtype.name not in DTYPES or not work.dtype.isnative:
        check_dtype(work.dtype)
    if not work.flags.c_contiguous:
        raise CollectiveError("work must be C-contiguous (np.ascontiguousarray), got a strided or Fortran-"
                              "ordered array")
    if not work.flags.writeable:
        raise CollectiveError("work must be writeable: the result is written into it; pass a copy")


def check_sparse_call(algo: str, collective: str, op: str) -> None:
    """A sparse algorithm implements AllReduce with sum (and avg, a sum divided at the end) only."""
    if collective not in get(algo).collectives:
        dense = " or ".join(names(kind="dense", emulated=True, collective=collective))
        raise CollectiveError(f"{algo} implements AllReduce only; use {dense} for {collective}")
    if op not in ("sum", "avg"):
        raise CollectiveError(f"{algo} cannot compute '{op}': blocks that are zero are skipped, and "
                              f"zero is not the identity of {op}; use --op sum or avg, or a dense algorithm")


def check_call_number(call: int) -> int:
    """``call`` numbers the fault draws: a whole number >= 0."""
    if isinstance(call, bool) or not isinstance(call, numbers.Integral) or call < 0:
        raise CollectiveError(f"call must be a whole number >= 0 (it numbers the fault draws), got {call!r}")
    return operator.index(call)


def fault_options(faults: str | FaultSpec | None, stragglers: str | list | dict | None,
                  topology: Torus | int) -> tuple[FaultSpec | None, dict[int, float]]:
    """Parse and check ``--faults`` / ``--straggler`` values (strings or already parsed) for a topology
    (or a node count)."""
    nodes = topology if isinstance(topology, int) else topology.nodes
    if faults is not None and not isinstance(faults, (str, FaultSpec)):
        raise CollectiveError(f"faults must be a string such as 'drop=1e-3,seed=1' or a FaultSpec, got "
                              f"{type(faults).__name__}")
    if stragglers is not None and not isinstance(stragglers, (str, list, tuple, dict)):
        raise CollectiveError(f"stragglers must be 'NODE:FACTOR,...', a list of those or {{node: factor}}, got "
                              f"{type(stragglers).__name__}")
    spec = parse_faults(faults) if isinstance(faults, str) or faults is None else faults
    if isinstance(stragglers, dict):   # checked like the text form: whole node ids, finite factors >= 1
        stragglers = [_straggler_text(node, factor) for node, factor in stragglers.items()]
    elif isinstance(stragglers, (list, tuple)):
        bad = [item for item in stragglers if not isinstance(item, str)]
        if bad:
            raise CollectiveError(f"stragglers: {bad[0]!r} is not a 'NODE:FACTOR' string")
        stragglers = list(stragglers)
    slow = parse_stragglers(stragglers)
    if spec is not None:
        spec.check_nodes(nodes)
    check_stragglers(slow, nodes)
    return (spec if spec is not None and spec.active else None), slow


def _straggler_text(node: object, factor: object) -> str:
    """``{node: factor}`` entry as ``NODE:FACTOR`` text (exact: a float's repr reads back unchanged)."""
    if isinstance(node, bool) or not isinstance(node, numbers.Integral) or \
            isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise CollectiveError(f"stragglers {{node: factor}} needs a whole node id and a number, got "
                              f"{node!r}: {factor!r}")
    return f"{int(node)}:{float(factor)!r}"


#: nodes traced when no list is given: the first ones (a 262,144-node trace would be unreadable)
DEFAULT_TRACE_NODES = 8


def trace_mask(spec: str | list | tuple | np.ndarray | None, nodes: int) -> np.ndarray:
    """Which nodes' stream events a trace keeps: ``"0-7,12"``, ``"all"``, a list of node ids, or None
    (the first :data:`DEFAULT_TRACE_NODES`). Raises :class:`CollectiveError` naming a bad entry."""
    mask = np.zeros(nodes, dtype=bool)
    if spec is None:
        mask[:DEFAULT_TRACE_NODES] = True
        return mask
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            mask[:] = True
            return mask
        ids: list[int] = []
        for part in text.split(","):
            part = part.strip()
            lo_s, dash, hi_s = part.partition("-")
            try:
                lo, hi = int(lo_s), int(hi_s) if dash else int(lo_s)
            except ValueError:
                raise CollectiveError(f"trace nodes {spec!r}: {part!r} is not a node or a range; "
                                      "use e.g. 0-7,12 or all") from None
            if hi < lo:
                raise CollectiveError(f"trace nodes {spec!r}: the range {part!r} runs backwards; write {hi}-{lo}")
            ids.extend(range(lo, hi + 1) if hi < nodes else [hi])
    else:
        ids = [operator.index(n) for n in spec]
    bad = [n for n in ids if not 0 <= n < nodes]
    if bad:
        raise CollectiveError(f"trace node {bad[0]} is outside 0..{nodes - 1}; use e.g. 0-{min(nodes, 8) - 1}")
    if not ids:
        raise CollectiveError("the trace node list is empty; use e.g. 0-7 or all")
    mask[ids] = True
    return mask
