"""How a model is split over nodes: tensor (TP), pipeline (PP) and expert (EP) parallelism.

Node numbering follows Megatron/vLLM: TP is innermost, so pipeline stage ``s``
owns nodes ``s*tp .. s*tp + tp - 1`` and its TP group is that contiguous block.
With disaggregated prefill/decode (``--disaggregated P:D``), P prefill instances
and then D decode instances of the same shape follow one another: instance ``i``
owns nodes ``i*tp*pp .. (i+1)*tp*pp - 1``. With ``--replicas R`` as well, R such
P + D groups follow one another (replica ``k``'s instance ``i`` is ``k*(P+D) + i``).

Expert parallelism reuses each stage's TP group (EP = TP, as vLLM's
``--enable-expert-parallel`` with one data-parallel replica): attention stays
TP-sharded, each rank holds ``experts / ep`` whole experts, and tokens reach
their experts by all-to-all.
"""

from __future__ import annotations

from dataclasses import dataclass

from nicemu.errors import WorkloadError
from nicemu.workloads.models import Model


@dataclass(frozen=True)
class Parallelism:
    tp: int = 1
    pp: int = 1
    ep: int = 1                  # 1, or equal to tp (MoE models only)
    prefill_instances: int = 0   # disaggregated prefill/decode: P prefill and D decode instances (0, 0: colocated)
    decode_instances: int = 0
    replicas: int = 1            # colocated data-parallel copies of the instance (requests shared round-robin)

    def __post_init__(self) -> None:
        for key in ("tp", "pp", "ep"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkloadError(f"--{key} must be a positive integer, got {value!r}")
        if self.ep not in (1, self.tp):
            raise WorkloadError(f"--ep {self.ep} must be 1 or equal to --tp {self.tp}: experts are "
                                f"spread over each pipeline stage's TP group")
        p, d = self.prefill_instances, self.decode_instances
        for value in (p, d):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise WorkloadError(f"--disaggregated P:D needs whole numbers, got {p}:{d}")
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or self.replicas < 1:
            raise WorkloadError(f"--replicas must be a positive integer, got {self.replicas!r}")
        if (p == 0) != (d == 0):
            raise WorkloadError(f"--disaggregated {p}:{d} needs at least one prefill and one decode instance; "
                                "e.g. --disaggregated 1:1")

    @property
    def disaggregated(self) -> bool:
        """Separate prefill and decode instances, the KV cache moved from one to the other."""
        return self.prefill_instances > 0

    @property
    def instances(self) -> int:
        """Model instances in the deployment: the replicas times P + D when disaggregated, else the replicas."""
        return self.replicas * (self.prefill_instances + self.decode_instances if self.disaggregated else 1)

    @property
    def instance_nodes(self) -> int:
        """Nodes of one model instance: tp * pp."""
        return self.tp * self.pp

    @property
    def nodes(self) -> int:
        """Nodes the deployment needs: every instance's (R replicas of one, or of P + D when disaggregated)."""
        return self.instance_nodes * self.instances

    def check_model(self, model: Model) -> None:
        """Refuse splits the model's shape does not allow (as Megatron and vLLM do)."""
        if model.heads % self.tp:
            raise WorkloadError(f"{model.name}: {model.heads} attention heads cannot be split over "
                                f"TP={self.tp}; use a TP that divides {model.heads}")
        if model.kv_heads % self.tp and self.tp % model.kv_heads:
            raise WorkloadError(f"{model.name}: {model.kv_heads} KV heads and TP={self.tp}: one must "
                                f"divide the other")
        if self.pp > model.layers:
            raise WorkloadError(f"{model.name}: PP={self.pp} exceeds its {model.layers} layers")
        if self.ep > 1 and not model.is_moe:
            raise WorkloadError(f"{model.name} has no experts; --ep needs a mixture-of-experts model")
        if self.ep > 1 and model.experts % self.ep:
            raise WorkloadError(f"{model.name}: {model.experts} experts cannot be split over EP={self.ep}")

    def check_nodes(self, nodes: int) -> None:
        """The topology must hold exactly the deployment."""
        if nodes != self.nodes:
            what = f"TP x PP = {self.tp} x {self.pp} = {self.instance_nodes}"
            if self.disaggregated:
                reps = f" x {self.replicas} replicas" if self.replicas > 1 else ""
                what += (f", times {self.instances} instances for disaggregated prefill/decode "
                         f"{self.prefill_instances}:{self.decode_instances}{reps} = {self.nodes}")
            elif self.replicas > 1:
                what += f", times {self.replicas} replicas = {self.nodes}"
            raise WorkloadError(f"{what} does not match the topology's {nodes} nodes; "
                                f"change --tp/--pp or --topology")

    def kv_heads_per_rank(self, model: Model) -> int:
        """KV heads a TP rank stores; replicated (1 per rank) when TP exceeds the KV heads."""
        return max(1, model.kv_heads // self.tp)

    def stage_layers(self, layers: int) -> list[range]:
        """Layers of each pipeline stage: as even as possible, earlier stages take the remainder."""
        base, extra = divmod(layers, self.pp)
        out, start = [], 0
        for s in range(self.pp):
            n = base + (1 if s < extra else 0)
            out.append(range(start, start + n))
            start += n
        return out

    def tp_group(self, stage: int, instance: int = 0) -> list[int]:
        """Node ids of a stage's TP group in one instance (disaggregated: prefill instances first)."""
        if not 0 <= stage < self.pp or not 0 <= instance < self.instances:
            raise WorkloadError(f"no stage {stage} / instance {instance} in {self}")
        first = instance * self.instance_nodes + stage * self.tp
        return list(range(first, first + self.tp))

    def instance_nodes_of(self, instance: int) -> list[int]:
        """Every node of one instance, stage-major (the order of ``tp_group`` over the stages)."""
        return [n for stage in range(self.pp) for n in self.tp_group(stage, instance)]

    def kv_shard_bytes(self, model: Model, tokens: int, stage: int, dtype_bytes: int = 2) -> int:
        """K and V of ``tokens`` tokens that one TP rank of ``stage`` holds: its layers, its KV heads."""
        layers = len(self.stage_layers(model.layers)[stage])
        return 2 * layers * self.kv_heads_per_rank(model) * model.head_dim * tokens * dtype_bytes
