"""The model path never imports ``mpi4py.MPI`` (importing it initialises MPI).

A fresh interpreter, outside any MPI launcher, imports the four layers, times
collectives with the model executor (dense, sparse, with faults), and runs
``bench``/``serve --executor model``, ``info`` and ``schedule`` through the CLI's
``main``; afterwards ``mpi4py.MPI`` must not be in ``sys.modules``. A fresh
interpreter because this test session itself imports MPI elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nicemu.launch import LAUNCHER_ENV

SCRIPT = r'''
import contextlib
import io
import json
import sys

import numpy as np

import nicemu.collectives
import nicemu.nic
import nicemu.topologies
import nicemu.workloads
from nicemu.cli import main
from nicemu.collectives import build_schedule, model_sparse, model_time, sparse_config
from nicemu.nic.profile import load_profile
from nicemu.topologies import ring

seen = {"after imports": "mpi4py.MPI" in sys.modules}
profile = load_profile("directreduce-paper")
model_time("allreduce", "directreduce", ring(4), profile, 1024)
model_time("allreduce", "ring", "ring:4", "ideal", 1024, "float64", faults="drop=0.01,seed=1", stragglers="1:2")
build_schedule("reducescatter", "ring", ring(4), 64)
masks = np.random.default_rng(0).random((4, 16)) < 0.3
model_sparse(sparse_config("omniccl", 4), masks, profile, 4)
seen["after the API"] = "mpi4py.MPI" in sys.modules
statuses = {}
runs = {
    "bench": ["bench", "--executor", "model", "--topology", "ring:4", "--sizes", "1K,64K", "--iters", "1",
              "--algo", "ring,directreduce,omniccl"],
    "bench faults": ["bench", "--executor", "model", "--topology", "ring:4", "--sizes", "4K", "--iters", "2",
                     "--faults", "drop=0.01,seed=2", "--straggler", "1:2"],
    "serve": ["serve", "--executor", "model", "--model", "llama2-7b", "--tp", "2", "--requests", "2",
              "--input-len", "16", "--output-len", "2", "--jobs", "1"],
    "info": ["info"],
    "schedule": ["schedule", "--algo", "ring", "--topology", "torus:2x2"],
}
for name, argv in runs.items():
    with contextlib.redirect_stdout(io.StringIO()):
        statuses[name] = main(argv)
    seen[f"after {name}"] = "mpi4py.MPI" in sys.modules
print(json.dumps({"statuses": statuses, "seen": seen}))
'''


def test_model_path_never_imports_mpi(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_ENV and not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDI_", "HYDRA_", "MPIR_"))}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["statuses"] == {"bench": 0, "bench faults": 0, "serve": 0, "info": 0, "schedule": 0}, proc.stderr
    imported = [when for when, yes in out["seen"].items() if yes]
    assert not imported, f"mpi4py.MPI was imported ({', '.join(imported)})"
