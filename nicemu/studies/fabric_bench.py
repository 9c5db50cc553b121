"""Wall time of the shared-fabric model (nic/fabric.py) on flow patterns, optionally checked against SimGrid.

Patterns, each ``flows`` flows from every node in turn to a uniformly random other node (dimension-ordered
routes, route latencies paid once):

* ``burst``: all start at 0, all of ``size`` bytes;
* ``random-sizes``: all start at 0, sizes uniform in [1, 2 * size);
* ``random-arrivals``: sizes as above, Poisson arrivals at a rate that keeps about ``flows / 4`` flows in
  the fabric at once on average when each runs alone.

``compile_simgrid`` and ``run_simgrid`` build and run tests/simgrid/flows.cpp on the platform
``Fabric.simgrid_platform`` writes; tests/unit/test_fabric_simgrid.py uses them too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nicemu.collectives.model.fabric import Fabric, FlowSet
from nicemu.nic.fabric import simulate
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

PATTERNS = ("burst", "random-sizes", "random-arrivals")
SIMGRID_SOURCE = Path(__file__).resolve().parents[2] / "tests" / "simgrid" / "flows.cpp"
#: SimGrid's CM02 with its corrections off: plain max-min sharing after the route latency, except that a
#: flow of latency L > 0 is weighted 1/L (so our runs pass the same weights). ``network/optim:Full``
#: re-solves every variable at every event: with SimGrid 3.32's default (Lazy) some flows of larger runs
#: finished at times no max-min allocation gives (docs/model.md §21), while Full agrees with our model
#: and with the exact rational reference of tests/unit/test_fabric.py
SIMGRID_CFG = ("--cfg=network/model:CM02", "--cfg=network/optim:Full", "--cfg=network/crosstraffic:0",
               "--cfg=network/TCP-gamma:0", "--cfg=network/weight-S:0", "--cfg=network/latency-factor:1",
               "--cfg=network/bandwidth-factor:1", "--cfg=maxmin/precision:1e-12", "--cfg=surf/precision:1e-12",
               "--log=root.thres:critical")


@dataclass(frozen=True)
class Case:
    """One pattern's flows, ready to run."""

    pattern: str
    fabric: Fabric
    flows: FlowSet
    start_us: np.ndarray
    nbytes: np.ndarray

    def weights(self) -> np.ndarray:
        """SimGrid CM02's weights: 1 / route latency (1 where the latency is 0)."""
        lat = self.flows.latency_us
        return np.where(lat > 0, 1.0 / np.where(lat > 0, lat, 1.0), 1.0)


def make_case(pattern: str, topology: str = "torus:16^3", flows: int = 4096, size: int = 1 << 20,
              profile: str = "ideal", overrides: tuple[str, ...] = (), seed: int = 0) -> Case:
    """The flows of ``pattern`` (see the module docstring) on ``topology`` under ``profile``."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; use one of {', '.join(PATTERNS)}")
    fabric = Fabric(parse_topology(topology), load_profile(profile, overrides))
    n = fabric.topology.nodes
    rng = np.random.default_rng(seed)
    src = np.arange(flows) % n
    dst = (src + rng.integers(1, n, flows)) % n
    fs = fabric.flows(src, dst)
    if pattern == "burst":
        nbytes = np.full(flows, size, dtype=np.int64)
    else:
        nbytes = rng.integers(1, 2 * size, flows)
    start = np.zeros(flows)
    if pattern == "random-arrivals":
        alone_us = size / fabric.capacity.min()
        start = np.cumsum(rng.exponential(alone_us * 4 / flows, flows))
    return Case(pattern, fabric, fs, start, nbytes)


def run_model(case: Case, weighted: bool = False) -> tuple[np.ndarray, float]:
    """(finish times in µs, wall seconds) of the model on ``case``."""
    t0 = time.perf_counter()
    fin = simulate(case.fabric.capacity, case.start_us, case.nbytes, case.flows.routes, case.flows.latency_us,
                   case.weights() if weighted else None)
    return fin, time.perf_counter() - t0


def simgrid_flags() -> list[str] | None:
    """Compiler flags for SimGrid, or None when g++, pkg-config or SimGrid is missing."""
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        return None
    res = subprocess.run(["pkg-config", "--cflags", "--libs", "simgrid"], capture_output=True, text=True)
    return res.stdout.split() if res.returncode == 0 else None


def compile_simgrid(out: Path, flags: list[str]) -> Path:
    """Build tests/simgrid/flows.cpp into ``out``; raises RuntimeError with the compiler's last words."""
    res = subprocess.run(["g++", "-O1", "-std=c++17", "-o", str(out), str(SIMGRID_SOURCE), *flags],
                         capture_output=True, text=True, timeout=300)
    if res.returncode:
        raise RuntimeError(f"g++ failed on {SIMGRID_SOURCE}: {res.stderr.strip()[-500:]}")
    return out


def run_simgrid(exe: Path, workdir: Path, fabric: Fabric, fs: FlowSet, start_us, nbytes,
                latency: bool = True) -> tuple[np.ndarray, float]:
    """(finish times in µs, wall seconds) of SimGrid on the same flows (sizes are whole bytes)."""
    plat, flows = workdir / "platform.xml", workdir / "flows.txt"
    plat.write_text(fabric.simgrid_platform(fs, latency))
    start = np.broadcast_to(np.asarray(start_us, dtype=float), fs.src.shape)
    size = np.broadcast_to(np.asarray(nbytes, dtype=np.int64), fs.src.shape)
    flows.write_text("".join(f"n{a} n{b} {float(t)!r} {int(s)}\n"
                             for a, b, t, s in zip(fs.src.tolist(), fs.dst.tolist(), start, size)))
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), str(plat), str(flows), *SIMGRID_CFG], capture_output=True, text=True,
                         timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"SimGrid run failed: {res.stderr.strip()[-500:]}")
    out = np.array([float(line.split()[1]) for line in res.stdout.splitlines()])
    if len(out) != len(fs.src):
        raise RuntimeError(f"SimGrid reported {len(out)} flows of {len(fs.src)}")
    return out, wall
