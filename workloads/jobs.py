"""Jobs sharing one fabric (``nicemu jobs FILE.yml``): what each job runs, on which nodes, from when.

A jobs file names the fabric and a list of jobs::

    topology: torus:4x4x4
    profile: 400g-gen5            # optional (--profile overrides it)
    jobs:
      - name: a
        nodes: "0-31"             # a list [0, 1, 5], ranges "0-31,40", {block: "0-1,0-3,0-3"},
                                  # or {random: 32, seed: 1}
        topology: torus:2x4x4     # optional: the job's own topology (default: a block's box, else a ring)
        collective: allreduce     # allreduce, reducescatter, allgather or alltoall
        algo: directreduce
        size: 64M                 # bytes per node, as --sizes takes one
        dtype: float32
        iterations: 10            # each after the last has ended on every node of the job
        gap_us: 0                 # idle time between iterations (compute)
        start_us: 0
      - name: t
        nodes: "32-63"
        workload: train           # collective (default), train (data parallel) or serve (refused, not yet)
        model: llama3-8b          # a preset or a config.json path; the keys below mirror nicemu train's flags
        accelerator: H100-SXM
        global_batch: 64          # sequences per iteration over the job's nodes
        seq_len: 2048
        grad_dtype: float32
        bucket_mb: 25
        algo: directreduce
        iterations: 2
      - name: s
        nodes: "0-7"
        workload: serve           # one instance, tensor parallel over the job's nodes (nicemu serve's flags)
        model: llama3-8b
        requests: 20
        rate: 4
        algo: directreduce

Every problem is one :class:`UsageError` line that names the job, the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import yaml

from nicemu.errors import NicemuError, UsageError, yaml_error_parts
from nicemu.sizes import parse_sizes
from nicemu.topologies import Torus, parse_topology, ring

TOP_KEYS = ("topology", "profile", "jobs")
JOB_KEYS = ("name", "nodes", "topology", "workload", "collective", "algo", "size", "dtype", "iterations", "gap_us",
            "start_us")
TRAIN_KEYS = ("name", "nodes", "topology", "workload", "model", "accelerator", "global_batch", "seq_len", "grad_dtype",
              "algo", "bucket_mb", "iterations", "gap_us", "start_us")
SERVE_KEYS = ("name", "nodes", "topology", "workload", "model", "accelerator", "algo", "requests", "rate", "cv",
              "input_len", "output_len", "seed", "token_budget", "chunk", "max_running", "start_us")
#: a serve job's keys with the types they take (nicemu serve checks the values)
_SERVE_TYPES = {"model": (str,), "accelerator": (str,), "requests": (int,), "rate": (int, float), "cv": (int, float),
                "input_len": (str, int), "output_len": (str, int), "seed": (int,), "token_budget": (int,),
                "chunk": (int,), "max_running": (int,)}
WORKLOADS = ("collective", "train", "serve")
COLLECTIVES = ("allreduce", "reducescatter", "allgather", "alltoall")
#: caps stated in the error messages: far beyond a study, small enough that a typo cannot run for days
MAX_JOBS = 1024
MAX_ITERATIONS = 100_000


@dataclass(frozen=True)
class TrainSpec:
    """A data-parallel training job's settings (``nicemu train``'s flags of the same names)."""

    model: str
    accelerator: str
    global_batch: int
    seq_len: int
    grad_dtype: str
    bucket_mb: float


@dataclass(frozen=True)
class Job:
    name: str
    nodes: np.ndarray        # physical nodes, in the job's logical order
    topology: Torus          # the job's own topology (its logical nodes 0..len(nodes)-1)
    collective: str
    algo: str
    size: int                # bytes per node
    dtype: str
    iterations: int
    gap_us: float
    start_us: float
    train: TrainSpec | None = None    # set for ``workload: train`` (collective is then allreduce)
    serve: tuple[tuple[str, object], ...] | None = None   # ``workload: serve``: nicemu serve's options given

    @property
    def workload(self) -> str:
        return "train" if self.train is not None else "serve" if self.serve is not None else "collective"


@dataclass(frozen=True)
class JobsFile:
    topology: Torus
    profile: str | None
    jobs: list[Job]


def load_jobs(path: str) -> JobsFile:
    """Read and check a jobs file (one-line :class:`UsageError` for every problem)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read jobs file {path}: {exc.strerror or exc}; give the path of a YAML file") \
            from None
    return parse_jobs(text, path)


def parse_jobs(text: str, where: str = "jobs file") -> JobsFile:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        at, problem = yaml_error_parts(exc)
        raise UsageError(f"{where} is malformed YAML{at}: {problem}; fix the syntax") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where} must be a YAML mapping with 'topology' and 'jobs'")
    unknown = [str(k) for k in doc if k not in TOP_KEYS]
    if unknown:
        raise UsageError(f"unknown key '{unknown[0]}' in {where}; the known keys are {', '.join(TOP_KEYS)}")
    if "topology" not in doc:
        raise UsageError(f"{where} has no 'topology'; e.g. 'topology: torus:4x4x4'")
    fabric = _topology(doc["topology"], f"{where}: topology")
    if fabric.ranks_per_node > 1:
        raise UsageError(f"{where}: jobs run with one rank per node")
    profile = doc.get("profile")
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise UsageError(f"{where}: 'profile' must be a profile name or path, e.g. 400g-gen5")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise UsageError(f"{where}: 'jobs' must be a non-empty list of jobs, each a mapping with 'nodes' and 'algo'")
    if len(jobs) > MAX_JOBS:
        raise UsageError(f"{where}: {len(jobs)} jobs is over the limit of {MAX_JOBS}")
    out = [_job(j, i, fabric, where) for i, j in enumerate(jobs)]
    names = [j.name for j in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{where}: job name '{twice[0]}' is used twice; give each job its own name")
    owner: dict[int, str] = {}
    for j in out:
        for v in j.nodes.tolist():
            if v in owner:
                raise UsageError(f"{where}: node {v} is in job '{owner[v]}' and job '{j.name}'; jobs need "
                                 "disjoint node sets")
            owner[v] = j.name
    return JobsFile(fabric, profile, out)


def _topology(value, what: str) -> Torus:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{what} must be a topology spec such as ring:8 or torus:4x4x4")
    try:
        return parse_topology(value.strip())
    except NicemuError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _job(doc, i: int, fabric: Torus, where: str) -> Job:
    label = f"{where}: job {i + 1}"
    if not isinstance(doc, dict):
        raise UsageError(f"{label} must be a mapping with 'nodes' and 'algo'")
    name = doc.get("name", f"job{i + 1}")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{label}: 'name' must be a non-empty string")
    label = f"{where}: job '{name}'"
    workload = doc.get("workload", "collective")
    if workload not in WORKLOADS:
        raise UsageError(f"{label}: 'workload' {workload!r} is not one of {', '.join(WORKLOADS)}")
    keys = {"train": TRAIN_KEYS, "serve": SERVE_KEYS}.get(workload, JOB_KEYS)
    unknown = [str(k) for k in doc if k not in keys]
    if unknown:
        raise UsageError(f"{label}: unknown key '{unknown[0]}' for a {workload} job; the known keys are "
                         f"{', '.join(keys)}")
    for key in ("nodes", "algo"):
        if key not in doc:
            raise UsageError(f"{label} has no '{key}'")
    nodes, box = _nodes(doc["nodes"], fabric, label)
    if "topology" in doc:
        topo = _topology(doc["topology"], f"{label}: topology")
        if topo.nodes != len(nodes):
            raise UsageError(f"{label}: topology {topo.name} has {topo.nodes} nodes but the job has {len(nodes)}; "
                             "make them match")
    else:
        topo = box if box is not None else ring(len(nodes))
    times = {}
    for key in ("gap_us", "start_us"):
        v = doc.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1e12:
            raise UsageError(f"{label}: '{key}' must be a time in µs from 0 to 1e12, got {v!r}")
        times[key] = float(v)
    algo = doc["algo"]
    if not isinstance(algo, str) or not algo:
        raise UsageError(f"{label}: 'algo' must be an algorithm name such as directreduce")
    iterations = doc.get("iterations", 1)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise UsageError(f"{label}: 'iterations' must be a whole number from 1 to {MAX_ITERATIONS:,}, got "
                         f"{iterations!r}")
    if workload == "serve":
        given = []
        for key, types in _SERVE_TYPES.items():
            if key in doc:
                v = doc[key]
                if isinstance(v, bool) or not isinstance(v, types):
                    raise UsageError(f"{label}: '{key}' must be {' or '.join(t.__name__ for t in types)}, got {v!r}")
                given.append((key, v))
        return Job(name.strip(), nodes, topo, "serve", algo, 0, "bfloat16", 1, 0.0, times["start_us"], None,
                   tuple(given))
    if workload == "train":
        spec = _train(doc, label)
        return Job(name.strip(), nodes, topo, "allreduce", algo, 0, spec.grad_dtype, iterations, times["gap_us"],
                   times["start_us"], spec)
    collective = doc.get("collective", "allreduce")
    if collective not in COLLECTIVES:
        raise UsageError(f"{label}: collective {collective!r} is not one of {', '.join(COLLECTIVES)}")
    size = doc.get("size", "1M")
    try:
        sizes = parse_sizes(str(size))
    except NicemuError as exc:
        raise UsageError(f"{label}: size: {exc}") from None
    if len(sizes) != 1:
        raise UsageError(f"{label}: 'size' is one size such as 64M, got {size!r}")
    dtype = doc.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise UsageError(f"{label}: 'dtype' must be a type name such as float32")
    return Job(name.strip(), nodes, topo, collective, algo, sizes[0], dtype, iterations, times["gap_us"],
               times["start_us"])


def _train(doc: dict, label: str) -> TrainSpec:
    """A train job's settings, each in nicemu train's range (the model and types are checked on loading)."""
    text = {}
    for key, default in (("model", "llama3-8b"), ("accelerator", "H100-SXM"), ("grad_dtype", "float32")):
        v = doc.get(key, default)
        if not isinstance(v, str) or not v.strip():
            raise UsageError(f"{label}: '{key}' must be a name such as {default}, got {v!r}")
        text[key] = v.strip()
    ints = {}
    for key, default in (("global_batch", 64), ("seq_len", 2048)):
        v = doc.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 24:
            raise UsageError(f"{label}: '{key}' must be a whole number from 1 to {1 << 24:,}, got {v!r}")
        ints[key] = v
    mb = doc.get("bucket_mb", 25)
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 1 / 1024 <= mb <= 1 << 20:
        raise UsageError(f"{label}: 'bucket_mb' must be a bucket cap in MiB from 1/1024 to 1,048,576, got {mb!r}")
    return TrainSpec(text["model"], text["accelerator"], ints["global_batch"], ints["seq_len"], text["grad_dtype"],
                     float(mb))


def _nodes(spec, fabric: Torus, label: str) -> tuple[np.ndarray, Torus | None]:
    """The job's physical nodes in logical order, and the torus of a block (None otherwise)."""
    n = fabric.nodes
    box = None
    if isinstance(spec, list):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in spec):
            raise UsageError(f"{label}: 'nodes' lists whole node ids, e.g. [0, 1, 2, 3]")
        nodes = np.asarray(spec, dtype=np.int64)
    elif isinstance(spec, (str, int)) and not isinstance(spec, bool):
        nodes = _ranges(str(spec), label)
    elif isinstance(spec, dict) and set(spec) <= {"random", "seed"} and "random" in spec:
        k, seed = spec["random"], spec.get("seed", 0)
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
            raise UsageError(f"{label}: 'random' picks 2 to {n} nodes of {fabric.name}, got {k!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"{label}: 'seed' must be a whole number >= 0, got {seed!r}")
        nodes = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)
    elif isinstance(spec, dict) and set(spec) == {"block"}:
        nodes, box = _block(spec["block"], fabric, label)
    else:
        raise UsageError(f"{label}: 'nodes' is a list, ranges such as \"0-31\", {{block: \"0-1,0-3\"}} or "
                         "{random: K, seed: S}")
    if len(nodes) < 2:
        raise UsageError(f"{label}: a job needs at least 2 nodes, got {len(nodes)}")
    bad = nodes[(nodes < 0) | (nodes >= n)]
    if bad.size:
        raise UsageError(f"{label}: node {int(bad[0])} is not in {fabric.name} (nodes 0..{n - 1}); the job is larger "
                         "than the fabric or names a node outside it")
    if len(np.unique(nodes)) != len(nodes):
        raise UsageError(f"{label}: 'nodes' names a node twice")
    return nodes, box


def _ranges(text: str, label: str) -> np.ndarray:
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise UsageError(f"{label}: 'nodes' range {part.strip()!r} is not N or A-B, e.g. \"0-31,40\"") from None
        if b < a or b - a > 1 << 24:
            raise UsageError(f"{label}: 'nodes' range {part.strip()!r} must go upwards, e.g. 0-31")
        out.extend(range(a, b + 1))
    return np.asarray(out, dtype=np.int64)


def _block(spec, fabric: Torus, label: str) -> tuple[np.ndarray, Torus]:
    """``"A-B,C-D,..."``: a box of the torus, one inclusive range per dimension, row-major."""
    if not isinstance(spec, str):
        raise UsageError(f"{label}: 'block' is one inclusive range per dimension, e.g. \"0-1,0-3,0-3\"")
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != fabric.ndim or fabric.switched:
        raise UsageError(f"{label}: 'block' needs one range per dimension of the torus {fabric.name} "
                         f"({fabric.ndim}), e.g. \"{','.join(f'0-{k - 1}' for k in fabric.shape)}\"")
    ranges = []
    for d, p in enumerate(parts):
        r = _ranges(p, label)
        if r[-1] >= fabric.shape[d] or np.any(np.diff(r) != 1):
            raise UsageError(f"{label}: 'block' range {p!r} of dimension {d} must lie in 0-{fabric.shape[d] - 1}")
        ranges.append(r)
    grids = np.meshgrid(*ranges, indexing="ij")
    coords = np.stack([g.ravel() for g in grids], axis=1)
    nodes = (coords @ np.asarray(fabric.strides, dtype=np.int64)).astype(np.int64)
    keep = [d for d, r in enumerate(ranges) if len(r) > 1]
    if not keep:
        raise UsageError(f"{label}: 'block' {spec!r} is a single node")
    return nodes, Torus([len(ranges[d]) for d in keep], dim_links=[fabric.dim_links[d] for d in keep])
