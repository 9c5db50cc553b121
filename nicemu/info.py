"""``nicemu info``: what the emulator knows (topologies, algorithms, profiles)."""

from __future__ import annotations

import argparse

from mpi4py import MPI

from collectives import ALGORITHM_HELP, COLLECTIVES
from nic.ops import DTYPES, OPS
from nic.profile import load_profile, shipped_profiles
from topologies import topology_kinds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="print every field of this profile")


def run(args: argparse.Namespace, comm: MPI.Comm) -> int:
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
    for name, text in ALGORITHM_HELP.items():
        print(f"  {name:<14} {text}")
    print(f"collectives:  {', '.join(COLLECTIVES)}")
    print(f"dtypes:       {', '.join(DTYPES)}")
    print(f"ops:          {', '.join(OPS)}")
    print("profiles:")
    for name in shipped_profiles():
        print(f"  {name:<20} {load_profile(name).description}")
    print("executors:    mpi (real data over MPI ranks), model (timing only, vectorised)")
    return 0
