"""Entry point of the ``nicemu`` console script.

Every subcommand is a module with ``add_arguments`` and ``run``. Errors a user
can fix (bad flags, topologies, profiles, sizes) are printed once, by rank 0,
as one line, and every rank exits with status 2: the arguments are the same on
every rank, so every rank reaches the same verdict without talking. Anything
unexpected aborts the whole MPI job so no rank is left waiting: the failing
rank prints ``nicemu: internal error on rank R:`` and a short traceback, gives
the launcher :data:`ABORT_GRACE_S` to forward it, then calls ``Abort(1)``.

A collective that stalls (a peer hangs or is gone) is turned into
:class:`~nicemu.errors.CollectiveStalled` by the watchdog after
``$NICEMU_WATCHDOG_S`` seconds (default 60; 0 disables it). The first rank to
notice prints the one-line ``nicemu: error: ...`` that names the waiting node,
the peer and the step, and aborts the job (status 1); ranks that learn of the
stall from it stay silent and only abort themselves if the first one's abort
has not ended them within a few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from nicemu import bench, info, jobs, schedule_cmd, serve, sweep, train
from nicemu.errors import CollectiveStalled, NicemuError, UsageError
from nicemu.launch import world

COMMANDS = {
    "bench": (bench, "sweep sizes and algorithms, nccl-tests style"),
    "info": (info, "list topologies, algorithms, profiles"),
    "jobs": (jobs, "run collective, training and serving jobs together on one fabric; slowdowns, hot links"),
    "schedule": (schedule_cmd, "print an algorithm's chunk-level schedule"),
    "serve": (serve, "replay LLM-serving traffic; TTFT, TPOT and throughput per algorithm"),
    "train": (train, "training: DP gradient buckets overlapping backward, Megatron TP and 1F1B pipelines"),
    "sweep": (sweep, "run a YAML grid of sizes, topologies, algorithms and profile values (model executor)"),
}


class _Parser(argparse.ArgumentParser):
    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # argparse would print on every rank and exit
        option, _, problem = message.partition(": ")
        if problem == "expected one argument" and option.startswith("argument -"):
            # e.g. --sizes -1K:1M: argparse takes "-1K:1M" for an option and says only this
            flags = option.split()[1].split("/")
            argv = self._argv
            for i, word in enumerate(argv[:-1]):
                value = argv[i + 1]
                if word in flags and value.startswith("-") and \
                        value.split("=")[0] not in self._option_string_actions:
                    message += f"; a value that starts with '-' must be attached with '=': {word}={value}"
                    break
        prog = self.prog
        if message.startswith("argument command: invalid choice: "):
            word = message.removeprefix("argument command: invalid choice: ").split(" (choose")[0]
            message = f"unknown command {word}; use one of {', '.join(COMMANDS)}"
        if message.startswith("unrecognized arguments") and prog == "nicemu":
            # argparse reports a subcommand's unknown flags from the top-level parser: name the subcommand
            command = next((w for w in self._argv if not w.startswith("-")), None)
            if command in COMMANDS:
                prog = f"nicemu {command}"
        # the CLI prefixes "nicemu: error: "; name the subcommand only (not "nicemu" twice)
        where = prog.removeprefix("nicemu").strip()
        raise UsageError(f"{where + ': ' if where else ''}{message} (see {prog} --help)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nicemu", description="Collective-communication emulator with SmartNIC "
                     "in-network reduction, on MPI.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, (module, text) in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=text, description=module.__doc__))
    return parser


#: before MPI_Abort: the launcher forwards a rank's output asynchronously and may drop what it has not
#: read yet when the abort kills the job (more likely on a loaded machine); well below the 3 s a rank
#: that learnt of a stall from another one waits before aborting itself
ABORT_GRACE_S = 0.5


def _let_the_launcher_forward(comm) -> None:
    """Give ``mpiexec`` time to forward the lines just written before ``Abort`` ends every rank."""
    if comm.size > 1:
        time.sleep(ABORT_GRACE_S)


def _needs_mpi(args: argparse.Namespace | None) -> bool:
    """Data really moves (``--executor mpi``): MPI must be initialised even without a launcher."""
    return args is not None and getattr(args, "executor", None) == "mpi"


def main(argv: list[str] | None = None) -> int:
    comm = world(False)        # MPI.COMM_WORLD under a launcher; parse errors are reported by rank 0
    try:
        args = make_parser().parse_args(argv)
        comm = world(_needs_mpi(args))
        if args.command is None:
            if comm.rank == 0:
                make_parser().print_help()
            return 2
        return COMMANDS[args.command][0].run(args, comm)
    except CollectiveStalled as exc:
        if exc.secondary and comm.size > 1:
            from nicemu.collectives.mpi.watchdog import SECONDARY_GRACE_S  # MPI is up: a stall needs it
            time.sleep(SECONDARY_GRACE_S)   # the first reporter's Abort normally ends us first
        else:
            print(f"nicemu: error: {exc}", file=sys.stderr, flush=True)
            _let_the_launcher_forward(comm)
        if comm.size > 1:
            comm.Abort(1)
        return 1
    except NicemuError as exc:     # the same verdict on every rank: rank 0 says it once
        if comm.rank == 0:
            print(f"nicemu: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:       # `nicemu info | head`: the reader has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit
        return 0
    except KeyboardInterrupt:
        if comm.size > 1:
            comm.Abort(130)
        return 130
    except Exception:
        sys.stderr.write(f"nicemu: internal error on rank {comm.rank}:\n{traceback.format_exc(limit=-4)}")
        sys.stderr.flush()
        _let_the_launcher_forward(comm)
        if comm.size > 1:
            comm.Abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
