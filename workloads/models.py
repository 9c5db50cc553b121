"""Transformer model shapes: the shipped presets and HuggingFace-style ``config.json`` files.

Only the shapes that set compute time and traffic are kept (hidden size,
layers, attention and KV heads, MLP width, vocabulary, experts). Parameter
counts leave out norms, biases and position embeddings, which are < 0.1% of
any preset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from nicemu.errors import WorkloadError

#: largest accepted shape values: 10-100x the largest published models (e.g. 126 layers, hidden 16,384,
#: 256 experts), so a typo in a config.json is an error instead of a run that never ends (every
#: iteration issues two AllReduces per layer)
MAX_SHAPE = {"hidden": 1 << 20, "layers": 4096, "heads": 1 << 16, "kv_heads": 1 << 16, "intermediate": 1 << 22,
             "vocab": 1 << 24, "experts": 1 << 16, "top_k": 1 << 16, "head_dim": 1 << 16}


@dataclass(frozen=True)
class Model:
    """Shape of a decoder-only transformer (dense or mixture-of-experts)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int       # MLP width (per expert for MoE)
    vocab: int
    experts: int = 1        # 1 = dense MLP
    top_k: int = 1          # experts each token is routed to
    gated_mlp: bool = True  # SwiGLU (gate, up, down: 3 matrices) vs. fc1/fc2 (2 matrices, OPT)
    tied_embeddings: bool = False
    head_dim: int = field(default=0)  # 0: hidden / heads

    def __post_init__(self) -> None:
        for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "experts", "top_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkloadError(f"model {self.name}: {key} must be a positive integer, got {value!r}")
            if value > MAX_SHAPE[key]:
                raise WorkloadError(f"model {self.name}: {key} {value} is over the limit of {MAX_SHAPE[key]:,}")
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or \
                not 0 <= self.head_dim <= MAX_SHAPE["head_dim"]:
            raise WorkloadError(f"model {self.name}: head_dim must be an integer in 0..{MAX_SHAPE['head_dim']:,} "
                                f"(0: hidden / heads), got {self.head_dim!r}")
        if self.head_dim == 0:
            if self.hidden % self.heads:
                raise WorkloadError(f"model {self.name}: hidden {self.hidden} is not a multiple of "
                                    f"heads {self.heads}; give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.heads % self.kv_heads:
            raise WorkloadError(f"model {self.name}: heads {self.heads} is not a multiple of "
                                f"kv_heads {self.kv_heads}")
        if self.top_k > self.experts:
            raise WorkloadError(f"model {self.name}: top_k {self.top_k} exceeds experts {self.experts}")

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def q_width(self) -> int:
        """Columns of the query projection (= hidden for every preset)."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Columns of the K (or V) projection: fewer than hidden under GQA."""
        return self.kv_heads * self.head_dim

    @property
    def attention_params(self) -> int:
        """Q, K, V and output projections of one layer."""
        return 2 * self.hidden * self.q_width + 2 * self.hidden * self.kv_width

    @property
    def expert_params(self) -> int:
        """One MLP (one expert for MoE): 3 matrices if gated (SwiGLU), else 2."""
        return (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts if self.is_moe else 0

    @property
    def layer_params(self) -> int:
        """Weights stored per layer (every expert counted)."""
        return self.attention_params + self.experts * self.expert_params + self.router_params

    @property
    def active_layer_params(self) -> int:
        """Weights one token multiplies with in a layer (only its top_k experts)."""
        return self.attention_params + self.top_k * self.expert_params + self.router_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        """The output projection; it shares storage with the embedding when tied, but is always computed."""
        return self.vocab * self.hidden

    def params(self) -> int:
        """Total stored parameters (tied embeddings counted once)."""
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.layers * self.layer_params + self.embedding_params + head

    def active_params(self) -> int:
        """Parameters one token touches in a forward pass."""
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.layers * self.active_layer_params + self.embedding_params + head

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V of every layer for one token: 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


#: hidden / layers / heads / kv_heads / intermediate / vocab (Mixtral: 8 experts, top-2)
PRESETS: dict[str, Model] = {m.name: m for m in (
    Model("Llama-2-7B", 4096, 32, 32, 32, 11008, 32000),
    Model("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256),
    Model("Llama-3-70B", 8192, 80, 64, 8, 28672, 128256),
    Model("Llama-3.1-405B", 16384, 126, 128, 8, 53248, 128256),
    Model("OPT-6.7B", 4096, 32, 32, 32, 16384, 50272, gated_mlp=False, tied_embeddings=True),
    Model("OPT-13B", 5120, 40, 40, 40, 20480, 50272, gated_mlp=False, tied_embeddings=True),
    Model("OPT-30B", 7168, 48, 56, 56, 28672, 50272, gated_mlp=False, tied_embeddings=True),
    Model("Mixtral-8x7B", 4096, 32, 32, 8, 14336, 32000, experts=8, top_k=2),
)}

# config.json key variants, first match wins (Llama/Mistral/Qwen, OPT, GPT-2, Falcon, MPT-style)
_KEYS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "d_model", "n_embd"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_head", "n_heads"),
    "intermediate": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"),
    "vocab": ("vocab_size", "padded_vocab_size"),
}
_KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "num_experts_per_token")
_UNGATED_TYPES = {"opt", "gpt2", "gpt_neox", "gptj", "falcon", "bloom", "mpt", "starcoder2", "phi"}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def preset_names() -> list[str]:
    return list(PRESETS)


def find_preset(name: str) -> Model:
    """A preset by name; case, dashes, dots and underscores are ignored (``llama3-70b`` works)."""
    wanted = _norm(name)
    for preset in PRESETS.values():
        if _norm(preset.name) == wanted:
            return preset
    raise WorkloadError(f"unknown model '{name}'; use one of {', '.join(PRESETS)} "
                        f"or the path of a HuggingFace config.json")


def _first(cfg: dict, keys: tuple[str, ...]):
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def model_from_config(cfg: dict, name: str, source: str = "config") -> Model:
    """Build a Model from a parsed HuggingFace config dict; ``source`` names it in errors."""
    if not isinstance(cfg, dict):
        raise WorkloadError(f"{source}: expected a JSON object at the top level")
    if _first(cfg, _KEYS["hidden"]) is None and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    model_type = str(cfg.get("model_type", "")).lower()
    values = {key: _first(cfg, names) for key, names in _KEYS.items()}
    if values["intermediate"] is None and model_type == "gpt2" and values["hidden"] is not None:
        values["intermediate"] = 4 * values["hidden"]   # GPT-2 writes n_inner: null for 4 * n_embd
    missing = [f"{names[0]} (or {', '.join(names[1:])})" for key, names in _KEYS.items() if values[key] is None]
    if missing:
        raise WorkloadError(f"{source}: missing key(s) {'; '.join(missing)}")
    kv = _first(cfg, _KV_KEYS)
    if kv is None:
        kv = 1 if cfg.get("multi_query") else values["heads"]
    experts = _first(cfg, _EXPERT_KEYS) or 1
    top_k = _first(cfg, _TOP_K_KEYS)
    fields = {**values, "kv_heads": kv, "experts": experts, "top_k": 1 if experts == 1 else top_k,
              "head_dim": cfg.get("head_dim") or 0}
    if experts != 1 and top_k is None:
        raise WorkloadError(f"{source}: {experts} experts but no num_experts_per_tok (top-k) key")
    for key, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise WorkloadError(f"{source}: {key} must be an integer, got {value!r}")
    tied = bool(cfg.get("tie_word_embeddings", model_type in {"opt", "gpt2"}))
    try:
        return Model(name=name, gated_mlp=model_type not in _UNGATED_TYPES, tied_embeddings=tied, **fields)
    except WorkloadError as exc:
        raise WorkloadError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> Model:
    """Read a HuggingFace-style config.json (a file, or a directory holding one); never downloads."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if p.exists() and not p.is_file():
        raise WorkloadError(f"model config {p} is not a regular file; give a preset name "
                            f"({', '.join(PRESETS)}) or the path of a config.json")
    if not p.is_file():
        raise WorkloadError(f"model config {p} does not exist; give a preset name "
                            f"({', '.join(PRESETS)}) or the path of a config.json")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"{p}: not a readable JSON file ({exc})") from None
    name = cfg.get("_name_or_path") if isinstance(cfg, dict) else None
    return model_from_config(cfg, str(name or p.parent.name or p.stem), source=str(p))


def load_model(name_or_path: str | Path) -> Model:
    """A preset name, or the path of a config.json (or of the directory that holds it)."""
    text = str(name_or_path)
    if not text.strip():
        raise WorkloadError(f"the model name is empty; give a preset name ({', '.join(PRESETS)}) "
                            f"or the path of a config.json")
    if isinstance(name_or_path, Path) or text.endswith(".json") or Path(text).exists():
        return load_config(text)
    return find_preset(text)
