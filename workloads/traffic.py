"""The collectives and transfers one forward pass issues, as plain records (docs/model.md, serving).

Per forward pass of T tokens, h hidden, b bytes per element, in issue order:

- ``embedding``: with TP > 1, one AllReduce of ``T h b`` bytes on the first
  stage's TP group, layer -1. Its rows are block-sparse by construction
  (:mod:`nicemu.workloads.embedding_shards`), so it may use a sparse algorithm.
- per layer, on its stage's TP group, with TP > 1 (Megatron/vLLM):
  ``attn_out`` AllReduce after the attention output projection and
  ``mlp_out`` AllReduce after the MLP down projection, each ``T h b`` bytes.
- MoE layers with EP > 1 (EP = TP, see :mod:`nicemu.workloads.parallelism`): the
  ``mlp_out`` AllReduce is replaced by an all-to-all ``dispatch`` before the
  experts and an all-to-all ``combine`` after them. Each moves
  ``T top_k h b`` bytes in total over the EP group (each rank sends
  ``T top_k h b / ep``); the ``bytes`` field holds the total.
- PP > 1: after the last layer of each stage but the last, a point-to-point
  ``activations`` transfer of ``T h b`` bytes to the next stage. Every TP
  rank sends its (replicated) copy to the same TP rank of the next stage, so
  the tp transfers run in parallel; ``bytes`` is one of them.
- Disaggregated prefill/decode: no record in the pass itself. Once a prompt is
  prefilled, :func:`kv_transfer_records` moves its KV cache from the prefill
  instance to the decode instance, shard to shard, off the prefill instance's
  critical path.

For AllReduce, ``bytes`` is each node's contribution (as in ``nicemu bench``).
``nodes`` lists the participating node ids; for transfers, the first half
sends to the second half position by position.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from nicemu.workloads.batch import Batch
from nicemu.workloads.models import Model
from nicemu.workloads.parallelism import Parallelism

TRAFFIC_COLUMNS = ("iteration", "phase", "layer", "collective", "bytes", "algo")
PHASES = ("prefill", "decode", "mixed", "embedding")
#: the kind of communication each record's ``what`` belongs to (serve's time split and trace names)
COMM_KINDS = {"attn_out": "TP allreduce", "mlp_out": "TP allreduce", "embedding": "embedding allreduce",
              "dispatch": "MoE all-to-all", "combine": "MoE all-to-all", "activations": "pipeline p2p",
              "kv_cache": "KV transfer", "kv_restore": "KV restore"}


class TrafficRecord(NamedTuple):
    """One collective or transfer (a NamedTuple: cheap to make by the hundred per iteration)."""

    iteration: int
    phase: str          # prefill | decode | mixed | embedding
    layer: int          # -1 for per-forward collectives (embedding, KV cache)
    collective: str     # allreduce | alltoall | p2p
    bytes: int
    algo: str
    what: str = ""      # embedding | attn_out | mlp_out | dispatch | combine | activations | kv_cache
    nodes: tuple[int, ...] = ()

    def as_row(self) -> tuple:
        """The fields of TRAFFIC_COLUMNS, in that order."""
        return self[:len(TRAFFIC_COLUMNS)]


def activation_bytes(tokens: int, model: Model, dtype_bytes: int = 2) -> int:
    """One activation tensor: tokens * hidden * bytes (each TP AllReduce, each PP transfer)."""
    return tokens * model.hidden * dtype_bytes


def alltoall_bytes(tokens: int, model: Model, dtype_bytes: int = 2) -> int:
    """MoE dispatch (or combine) over the whole EP group: tokens * top_k * hidden * bytes."""
    return tokens * model.top_k * model.hidden * dtype_bytes


def kv_transfer_bytes(tokens: int, model: Model, dtype_bytes: int = 2) -> int:
    """KV cache of ``tokens`` tokens: 2 * layers * kv_heads * head_dim * tokens * bytes."""
    return model.kv_bytes_per_token(dtype_bytes) * tokens


def iteration_traffic(iteration: int, batch: Batch, model: Model, par: Parallelism, algo: str = "ring",
                      embedding_algo: str | None = None, alltoall_algo: str | None = None,
                      p2p_algo: str = "direct", dtype_bytes: int = 2, instance: int = 0) -> list[TrafficRecord]:
    """Every collective and transfer of one forward pass, in issue order (see the module docstring).

    ``algo`` runs the per-layer AllReduces; ``embedding_algo`` (default ``algo``)
    the embedding AllReduce, where a sparse algorithm pays off; ``alltoall_algo``
    (default ``algo``) the MoE all-to-alls. ``instance`` numbers the model
    instance of a disaggregated deployment (prefill instances first).
    """
    tokens = batch.tokens
    if not tokens:
        return []
    phase = batch.phase
    act = activation_bytes(tokens, model, dtype_bytes)
    moe_a2a = model.is_moe and par.ep > 1
    out: list[TrafficRecord] = []

    def add(ph: str, layer: int, coll: str, nbytes: int, alg: str, what: str, nodes: list[int]) -> None:
        out.append(TrafficRecord(iteration, ph, layer, coll, nbytes, alg, what, tuple(nodes)))

    if par.tp > 1:
        add("embedding", -1, "allreduce", act, embedding_algo or algo, "embedding", par.tp_group(0, instance))
    for stage, layers in enumerate(par.stage_layers(model.layers)):
        group = par.tp_group(stage, instance)
        for layer in layers:
            if par.tp > 1:
                add(phase, layer, "allreduce", act, algo, "attn_out", group)
            if moe_a2a:
                a2a = alltoall_bytes(tokens, model, dtype_bytes)
                add(phase, layer, "alltoall", a2a, alltoall_algo or algo, "dispatch", group)
                add(phase, layer, "alltoall", a2a, alltoall_algo or algo, "combine", group)
            elif par.tp > 1:
                add(phase, layer, "allreduce", act, algo, "mlp_out", group)
        if stage < par.pp - 1:
            add(phase, layers[-1], "p2p", act, p2p_algo, "activations", group + par.tp_group(stage + 1, instance))
    return out


def kv_transfer_records(prompt: int, model: Model, par: Parallelism, source: int, target: int,
                        p2p_algo: str = "direct", dtype_bytes: int = 2) -> list[TrafficRecord]:
    """The KV cache of one ``prompt``-token request, from prefill instance ``source`` to decode instance
    ``target``: both instances share a layout, so every rank sends its shard (its stage's layers, its
    KV heads) to the rank in the same position, all at once. Stages with the same number of layers
    share one record (``nodes``: senders, then receivers); with PP not dividing the layers there are two."""
    by_bytes: dict[int, list[int]] = {}
    for stage in range(par.pp):
        by_bytes.setdefault(par.kv_shard_bytes(model, prompt, stage, dtype_bytes), []).append(stage)
    out = []
    for nbytes, stages in by_bytes.items():
        src = [n for s in stages for n in par.tp_group(s, source)]
        dst = [n for s in stages for n in par.tp_group(s, target)]
        out.append(TrafficRecord(-1, "prefill", -1, "p2p", nbytes, p2p_algo, "kv_cache", tuple(src + dst)))
    return out


def count_by(records: list[TrafficRecord], *keys: str) -> dict[tuple, int]:
    """How many records share each combination of ``keys`` (e.g. ``count_by(r, "collective", "what")``)."""
    counts: dict[tuple, int] = {}
    for r in records:
        k = tuple(getattr(r, key) for key in keys)
        counts[k] = counts.get(k, 0) + 1
    return counts


class TrafficCsv:
    """Streams records to the ``--traffic`` CSV as iterations run, so long runs need no memory for them."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(TRAFFIC_COLUMNS)

    def write(self, records: list[TrafficRecord]) -> None:
        self._writer.writerows(r.as_row() for r in records)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TrafficCsv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_traffic_csv(path: str | Path, records: list[TrafficRecord]) -> None:
    """The ``--traffic`` file in one go: a header of TRAFFIC_COLUMNS, one row per record."""
    with TrafficCsv(path) as out:
        out.write(records)
