"""``nicemu info``: what the emulator knows (topologies, algorithms, profiles)."""

from __future__ import annotations

import argparse

from nicemu.collectives import COLLECTIVES, REGISTRY
from nicemu.collectives.registry import ROOTED_COLLECTIVES
from nicemu.nic.ops import ALIASES, DTYPES, OPS
from nicemu.nic.profile import load_profile, shipped_profiles
from nicemu.topologies import topology_kinds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="print every field of this profile")


def run(args: argparse.Namespace, comm) -> int:
    if args.profile:
        prof = load_profile(args.profile)
        if comm.rank == 0:
            print(f"profile {prof.name}: {prof.description}")
            for section, fields in prof.to_dict().items():
                if isinstance(fields, dict):
                    for key, value in fields.items():
                        print(f"  {section}.{key} = {value}")
        return 0
    if comm.rank != 0:
        return 0
    print("topologies:")
    for line in topology_kinds():
        print(f"  {line}")
    print("algorithms:")
    for a in REGISTRY.values():
        what = f"{a.kind}, {a.engine}" if a.emulated else "reference"
        print(f"  {a.name:<14} [{what}; {', '.join(a.collectives)}] {a.summary}")
    print(f"collectives:  {', '.join(COLLECTIVES)}")
    print(f"              rooted: {', '.join(ROOTED_COLLECTIVES)} (bench --root N, root= in the API; default 0)")
    print(f"dtypes:       {', '.join(DTYPES)}")
    print(f"              aliases (nccl-tests): {', '.join(f'{a}={n}' for a, n in ALIASES.items())}")
    print(f"ops:          {', '.join(OPS)}")
    print("profiles:")
    for name in shipped_profiles():
        print(f"  {name:<20} {load_profile(name).description}")
    print("executors:    mpi (real data over MPI ranks), model (timing only, vectorised)")
    from nicemu.workloads import ACCELERATORS, PRESETS
    print("models (nicemu serve --model, or a config.json path):")
    for m in PRESETS.values():
        moe = f", {m.experts} experts top-{m.top_k}" if m.is_moe else ""
        print(f"  {m.name:<16} hidden {m.hidden}, {m.layers} layers, {m.heads} heads ({m.kv_heads} KV), "
              f"MLP {m.intermediate}, vocab {m.vocab}{moe}")
    from nicemu.workloads.embedding_models import PRESETS as EMBEDDING_PRESETS
    print("embedding models (nicemu train --model, or a JSON file with 'tables'):")
    for e in EMBEDDING_PRESETS.values():
        print(f"  {e.name:<16} {len(e.tables)} tables ({e.embedding_elems:,} of {e.params():,} parameters), "
              f"{e.batch:,} samples per worker (a sample: one {e.sample})")
    print("accelerators: " + ", ".join(f"{a.name} ({a.peak_bf16_flops / 1e12:g} TFLOP/s bf16, {a.hbm_GBps:g} GB/s, "
                                       f"{a.memory_GB:g} GB HBM)"
                                       for a in ACCELERATORS.values()))
    return 0
