"""Models whose gradient is mostly embedding tables: the sparse workloads of zero-block sparse AllReduce.

A recommendation or recurrent language model spends most of its parameters in embedding tables, and one
iteration touches only the rows its batch looks up, so most blocks of those gradients are zero. These are
the models that OmniReduce's end-to-end evaluation trains; the presets take their shapes and per-worker
batches from that evaluation's public training scripts (docs/model.md §22.3 gives file and line for each
value). The block density is not a parameter: it follows from the batch and the ids' popularity law
(workloads/sparse_gradients.py).

Compute is the same roofline as the transformers' (workloads/compute.py): every dense operator is a GEMM,
the lookups read and write their rows once, and backward costs twice the forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.compute import gemm, roofline
from nicemu.workloads.sparse_gradients import Table
from nicemu.workloads.training import BACKWARD_FACTOR, BUCKET_BYTES, FIRST_BUCKET_BYTES, Tensor, TrainPlan, make_buckets

#: operand bytes of the roofline (bf16, as the transformer presets' compute)
COMPUTE_BYTES = 2


@dataclass(frozen=True)
class Dense:
    """A dense operator: ``rows`` rows per sample through ``[inputs x outputs]``, ``steps`` times in sequence
    (a recurrence); ``weights=False``: it multiplies rows gathered from an output table, no tensor of its own."""

    name: str
    inputs: int
    outputs: int
    rows: int = 1
    steps: int = 1
    bias: bool = True
    weights: bool = True

    @property
    def elems(self) -> int:
        if not self.weights:
            return 0
        return self.inputs * self.outputs + (self.outputs if self.bias else 0)


@dataclass(frozen=True)
class EmbeddingModel:
    """Tables and dense operators (forward order), and the per-worker batch of the source's runs."""

    name: str
    tables: tuple[Table, ...]
    dense: tuple[Dense, ...]
    batch: int            # samples per data-parallel worker in the source's training scripts
    sample: str           # what one sample is
    seq_len: int = 1      # tokens per sample (the recurrent models' unrolled length)

    def __post_init__(self) -> None:
        if not self.tables or not self.dense or self.batch < 1:
            raise WorkloadError(f"model {self.name}: needs tables, dense operators and a batch >= 1")

    @property
    def embedding_elems(self) -> int:
        return sum(t.elems for t in self.tables)

    def params(self) -> int:
        return self.embedding_elems + sum(d.elems for d in self.dense)

    def tensors(self) -> list[Tensor]:
        """Registration order: input tables, dense operators, output tables. The layer of a tensor says when
        backward produces it: dense operator i is layer i, output tables -1 (first), input tables last."""
        last = len(self.dense)
        out = [Tensor(t.name, t.elems, last) for t in self.tables if not t.output]
        out += [Tensor(d.name, d.elems, i) for i, d in enumerate(self.dense) if d.weights]
        return out + [Tensor(t.name, t.elems, -1) for t in self.tables if t.output]


def plan(model: EmbeddingModel, acc: Accelerator, samples: int, itemsize: int, bucket_bytes: int = BUCKET_BYTES,
         first_bucket_bytes: int = FIRST_BUCKET_BYTES, exclude: tuple[str, ...] = ()) -> TrainPlan:
    """Compute and DDP's gradient buckets of one iteration on one worker (as workloads/training.py's ``plan``);
    ``exclude``: tables reduced on their own by a sparse algorithm."""
    if samples < 1:
        raise WorkloadError(f"a worker needs at least one sample, got {samples}")
    if bucket_bytes < itemsize:
        raise WorkloadError(f"the bucket size must hold at least one element, got {bucket_bytes} B")
    ops = [d.steps * gemm(d.name, samples * d.rows, d.inputs, d.outputs, COMPUTE_BYTES, acc).time_us
           for d in model.dense]
    looked = sum(samples * t.lookups * t.dim + t.sampled * t.dim for t in model.tables)
    gather = roofline("lookups", 0.0, 2.0 * COMPUTE_BYTES * looked, acc).time_us
    forward = gather + sum(ops)
    backward = BACKWARD_FACTOR * forward

    def ready(layer: int) -> float:
        """Backward runs the dense operators from the last to the first; the input tables' rows come last."""
        if layer < 0:
            layer = len(ops) - 1
        if layer >= len(ops):
            return forward + backward
        return forward + BACKWARD_FACTOR * sum(ops[layer:])

    kept = [t for t in model.tensors() if t.name not in exclude]
    buckets = make_buckets(kept, ready, itemsize, bucket_bytes, first_bucket_bytes)
    return TrainPlan(forward, backward, sum(ops) / len(ops), 0.0, tuple(buckets), samples)


def _ncf() -> EmbeddingModel:
    """NeuMF as OmniReduce's NCF run trains it on MovieLens-20M expanded 4x16 (the MLPerf reference model)."""
    users, items = 498_975, 427_888
    tables = (Table("mf_user_embed", users, 64, zipf=0.0, key="user"),
              Table("mf_item_embed", items, 64, zipf=0.0, key="item"),
              Table("mlp_user_embed", users, 128, zipf=0.0, key="user"),
              Table("mlp_item_embed", items, 128, zipf=0.0, key="item"))
    dense = (Dense("mlp.0", 256, 256), Dense("mlp.1", 256, 128), Dense("mlp.2", 128, 64), Dense("final", 128, 1))
    return EmbeddingModel("NCF", tables, dense, batch=1 << 20, sample="user-item pair")


#: the best-fitting Zipf exponent of the One Billion Word benchmark's word counts for 10,240 draws
#: (scripts/word_zipf.py; docs/model.md §22.3)
GBW_ZIPF = 1.117
GBW_VOCAB = 793_471


def _lstm() -> EmbeddingModel:
    """The One Billion Word LSTM language model of OmniReduce's LSTM run: 256-wide embedding, one 2048-wide
    LSTM layer projected to 256, sampled softmax over 8,192 log-uniform candidates; 512 sequences of 20."""
    v, steps = GBW_VOCAB, 20
    tables = (Table("encoder", v, 256, lookups=steps, zipf=GBW_ZIPF, key="tokens"),
              Table("softmax.weight", v, 256, lookups=steps, zipf=GBW_ZIPF, key="tokens", sampled=8192, output=True),
              Table("softmax.bias", v, 1, lookups=steps, zipf=GBW_ZIPF, key="tokens", sampled=8192, output=True))
    dense = (Dense("rnn.weight_ih", 256, 4 * 2048, rows=steps), Dense("rnn.weight_hh", 2048, 4 * 2048, steps=steps),
             Dense("proj", 2048, 256, rows=steps), Dense("sampled_softmax", 256, 8192 + 1, rows=steps, weights=False))
    return EmbeddingModel("LSTM-GBW", tables, dense, batch=512, sample="sequence of 20 tokens", seq_len=steps)


#: rows of Criteo's 39 fields as OmniReduce's DeepLight run reads them (13 numerical fields of one row each)
CRITEO_FIELDS = (1,) * 13 + (15040574, 35017, 17195, 7374, 20127, 4, 7111, 1397, 63, 10260959, 939647, 285463, 11,
                             2210, 10874, 117, 5, 971, 15, 15604226, 4668632, 13476290, 357276, 12277, 100, 35)


def _deeplight() -> EmbeddingModel:
    """DeepLight (a DeepFwFM) on Criteo's click logs as OmniReduce's DeepLight run trains it: one 10-wide
    embedding per field, the field-weighted FM terms, a 3 x 400 deep network; 2,048 samples per worker."""
    fields = len(CRITEO_FIELDS)
    tables = tuple(Table(f"fm_2nd_embeddings.{i}", rows, 10, zipf=0.0) for i, rows in enumerate(CRITEO_FIELDS))
    dense = (Dense("fm_1st", fields, 1, bias=False), Dense("fwfm_linear", 10, fields, bias=False),
             Dense("field_cov", fields, fields, bias=False), Dense("net_1_linear_1", fields * 10, 400),
             Dense("net_1_linear_2", 400, 400), Dense("net_1_linear_3", 400, 400),
             Dense("net_1_fc", 400, 1, bias=False))
    return EmbeddingModel("DeepLight", tables, dense, batch=2048, sample="click-log line")


PRESETS: dict[str, EmbeddingModel] = {m.name: m for m in (_ncf(), _lstm(), _deeplight())}


def _norm(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _fields(cls, spec, where: str) -> dict:
    """The keyword arguments of ``cls`` in ``spec`` (a JSON object), each error one line."""
    if not isinstance(spec, dict):
        raise WorkloadError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise WorkloadError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    for key, value in spec.items():
        want = cls.__dataclass_fields__[key].type
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}.get(want, True)
        if not ok:
            raise WorkloadError(f"{where}: {key} must be of type {want}, got {value!r}")
    return spec


def from_dict(cfg: dict, source: str) -> EmbeddingModel:
    """An embedding model from a JSON object: ``name``, ``batch``, ``sample``, ``seq_len`` (optional),
    ``tables`` (objects with Table's fields) and ``dense`` (objects with Dense's fields)."""
    top = {k: v for k, v in _fields(EmbeddingModel, cfg, source).items() if k not in ("tables", "dense")}
    for key in ("name", "batch", "sample", "tables", "dense"):
        if key not in cfg:
            raise WorkloadError(f"{source}: missing key '{key}'")
    if not isinstance(cfg["tables"], list) or not isinstance(cfg["dense"], list):
        raise WorkloadError(f"{source}: 'tables' and 'dense' must be lists of objects")
    try:
        tables = tuple(Table(**_fields(Table, t, f"{source}: tables[{i}]")) for i, t in enumerate(cfg["tables"]))
        dense = tuple(Dense(**_fields(Dense, d, f"{source}: dense[{i}]")) for i, d in enumerate(cfg["dense"]))
        for d in dense:
            if min(d.inputs, d.outputs, d.rows, d.steps) < 1:
                raise WorkloadError(f"dense {d.name}: inputs, outputs, rows and steps must be >= 1")
        return EmbeddingModel(tables=tables, dense=dense, **top)
    except TypeError as exc:   # a missing required field
        raise WorkloadError(f"{source}: {exc}") from None
    except WorkloadError as exc:
        raise WorkloadError(f"{source}: {exc}") from None


def find(name: str) -> EmbeddingModel | None:
    """A preset by name (case, dashes and dots ignored), or a JSON file describing one (an object with a
    ``tables`` key); None for anything else (a transformer preset or config.json)."""
    preset = next((m for m in PRESETS.values() if _norm(m.name) == _norm(str(name))), None)
    if preset is not None or not str(name).endswith(".json"):
        return preset
    path = Path(name)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None            # the transformer loader says what is wrong with it
    if not isinstance(cfg, dict) or "tables" not in cfg:
        return None
    return from_dict(cfg, str(path))
