"""Model presets, HuggingFace config.json loading, and deployment checks."""

import json

import pytest

from nicemu.errors import WorkloadError
from nicemu.workloads.models import PRESETS, Model, find_preset, load_model, model_from_config
from nicemu.workloads.parallelism import Parallelism

# hidden / layers / heads / kv_heads / intermediate / vocab
TABLE = {
    "Llama-2-7B": (4096, 32, 32, 32, 11008, 32000),
    "Llama-3-8B": (4096, 32, 32, 8, 14336, 128256),
    "Llama-3-70B": (8192, 80, 64, 8, 28672, 128256),
    "Llama-3.1-405B": (16384, 126, 128, 8, 53248, 128256),
    "OPT-13B": (5120, 40, 40, 40, 20480, 50272),
    "Mixtral-8x7B": (4096, 32, 32, 8, 14336, 32000),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_presets_match_design_table(name):
    m = PRESETS[name]
    assert (m.hidden, m.layers, m.heads, m.kv_heads, m.intermediate, m.vocab) == TABLE[name]
    assert m.head_dim == m.hidden // m.heads == 128


def test_mixtral_has_eight_experts_top_two():
    m = PRESETS["Mixtral-8x7B"]
    assert (m.experts, m.top_k, m.is_moe) == (8, 2, True)
    assert all(not p.is_moe for n, p in PRESETS.items() if n != "Mixtral-8x7B")


@pytest.mark.parametrize("name, published_b", [
    ("Llama-2-7B", 6.74), ("Llama-3-8B", 8.03), ("Llama-3-70B", 70.6), ("Llama-3.1-405B", 405.9),
    ("OPT-13B", 12.85), ("Mixtral-8x7B", 46.7)])
def test_parameter_counts_match_published_sizes(name, published_b):
    assert PRESETS[name].params() / 1e9 == pytest.approx(published_b, rel=0.005)


def test_mixtral_active_parameters_count_only_top_k_experts():
    assert PRESETS["Mixtral-8x7B"].active_params() / 1e9 == pytest.approx(12.9, rel=0.005)


def test_kv_bytes_per_token_formula():
    m = PRESETS["Llama-3-8B"]
    assert m.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131072


@pytest.mark.parametrize("alias", ["llama3-70b", "LLAMA-3-70B", "llama_3_70b", "Llama-3-70B"])
def test_preset_aliases(alias):
    assert load_model(alias) is PRESETS["Llama-3-70B"]


def test_unknown_preset_lists_presets():
    with pytest.raises(WorkloadError) as e:
        load_model("gpt-5")
    for name in PRESETS:
        assert name in str(e.value)
    assert isinstance(e.value, ValueError)


def write_json(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


LLAMA_CFG = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
             "_name_or_path": "my-llama"}


def test_llama_config_json_equals_preset_shape(tmp_path):
    m = load_model(write_json(tmp_path, LLAMA_CFG))
    assert m.name == "my-llama"
    assert m.params() == PRESETS["Llama-3-8B"].params()
    assert m.gated_mlp and not m.is_moe


def test_directory_with_config_json(tmp_path):
    write_json(tmp_path, LLAMA_CFG)
    assert load_model(str(tmp_path)).hidden == 4096


def test_kv_heads_default_to_heads(tmp_path):
    cfg = {k: v for k, v in LLAMA_CFG.items() if k != "num_key_value_heads"}
    assert load_model(write_json(tmp_path, cfg)).kv_heads == 32


def test_opt_config_keys(tmp_path):
    # facebook/opt-13b config.json (the fields that matter)
    cfg = {"model_type": "opt", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
           "ffn_dim": 20480, "vocab_size": 50272, "word_embed_proj_dim": 5120, "activation_function": "relu"}
    m = load_model(write_json(tmp_path, cfg))
    p = PRESETS["OPT-13B"]
    assert (m.hidden, m.layers, m.heads, m.kv_heads, m.intermediate, m.vocab) == \
        (p.hidden, p.layers, p.heads, p.kv_heads, p.intermediate, p.vocab)
    assert not m.gated_mlp and m.tied_embeddings
    assert m.params() == p.params()


def test_mixtral_config_keys(tmp_path):
    cfg = {**LLAMA_CFG, "model_type": "mixtral", "vocab_size": 32000, "num_local_experts": 8,
           "num_experts_per_tok": 2}
    m = load_model(write_json(tmp_path, cfg))
    assert (m.experts, m.top_k) == (8, 2)
    assert m.params() == PRESETS["Mixtral-8x7B"].params()


def test_gpt2_style_keys(tmp_path):
    cfg = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "vocab_size": 50257}
    m = load_model(write_json(tmp_path, cfg))
    assert (m.hidden, m.layers, m.heads, m.kv_heads, m.intermediate) == (768, 12, 12, 12, 3072)


def test_missing_keys_named_with_file(tmp_path):
    cfg = {"hidden_size": 4096, "num_attention_heads": 32}
    path = write_json(tmp_path, cfg)
    with pytest.raises(WorkloadError) as e:
        load_model(path)
    msg = str(e.value)
    assert str(path) in msg
    for key in ("num_hidden_layers", "intermediate_size", "vocab_size"):
        assert key in msg
    assert "hidden_size (or" not in msg and "num_attention_heads (or" not in msg


def test_moe_without_top_k_is_an_error(tmp_path):
    cfg = {**LLAMA_CFG, "num_local_experts": 8}
    with pytest.raises(WorkloadError, match="num_experts_per_tok"):
        load_model(write_json(tmp_path, cfg))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_json(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(WorkloadError, match="config.json"):
        load_model(p)


def test_non_integer_value(tmp_path):
    with pytest.raises(WorkloadError, match="hidden.*integer"):
        load_model(write_json(tmp_path, {**LLAMA_CFG, "hidden_size": "4096"}))


def test_missing_file(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_model(tmp_path / "nope.json")


def test_model_validation():
    with pytest.raises(WorkloadError, match="kv_heads"):
        Model("bad", 4096, 32, 32, 7, 1, 1)
    with pytest.raises(WorkloadError, match="top_k"):
        Model("bad", 4096, 32, 32, 8, 1, 1, experts=2, top_k=3)
    with pytest.raises(WorkloadError, match="positive"):
        Model("bad", 0, 32, 32, 8, 1, 1)


def test_config_dict_with_text_config():
    m = model_from_config({"model_type": "llava", "text_config": LLAMA_CFG}, "vl")
    assert m.hidden == 4096 and m.kv_heads == 8


def test_find_preset_is_exact_after_normalising():
    assert find_preset("mixtral_8x7b").name == "Mixtral-8x7B"
    with pytest.raises(WorkloadError):
        find_preset("llama")


# ---------------------------------------------------------------- parallelism

def test_parallelism_nodes_and_groups():
    par = Parallelism(tp=4, pp=2)
    assert par.nodes == 8
    assert par.tp_group(0) == [0, 1, 2, 3] and par.tp_group(1) == [4, 5, 6, 7]
    par.check_nodes(8)
    with pytest.raises(WorkloadError, match="TP x PP = 4 x 2 = 8 does not match the topology's 16 nodes"):
        par.check_nodes(16)
    dis = Parallelism(tp=4, prefill_instances=1, decode_instances=1)
    assert dis.nodes == 8 and dis.tp_group(0, instance=1) == [4, 5, 6, 7] and dis.disaggregated
    with pytest.raises(WorkloadError, match="disaggregated"):
        dis.check_nodes(4)
    three = Parallelism(tp=2, pp=2, prefill_instances=2, decode_instances=1)
    assert three.instances == 3 and three.nodes == 12
    assert three.instance_nodes_of(2) == [8, 9, 10, 11] and three.tp_group(1, instance=1) == [6, 7]
    with pytest.raises(WorkloadError, match="no stage 0 / instance 3"):
        three.tp_group(0, instance=3)
    with pytest.raises(WorkloadError, match="at least one prefill and one decode instance"):
        Parallelism(tp=2, prefill_instances=1)
    with pytest.raises(WorkloadError, match="whole numbers"):
        Parallelism(tp=2, prefill_instances=-1, decode_instances=1)
    assert not Parallelism(tp=2).disaggregated and Parallelism(tp=2).instances == 1


def test_stage_layers_even_split_with_remainder_first():
    assert [len(r) for r in Parallelism(pp=4).stage_layers(126)] == [32, 32, 31, 31]
    assert [r.start for r in Parallelism(pp=2).stage_layers(32)] == [0, 16]


def test_parallelism_checks_against_model():
    Parallelism(tp=8).check_model(PRESETS["Llama-3-70B"])
    Parallelism(tp=16).check_model(PRESETS["Llama-3.1-405B"])   # KV heads replicated
    assert Parallelism(tp=16).kv_heads_per_rank(PRESETS["Llama-3.1-405B"]) == 1
    with pytest.raises(WorkloadError, match="heads"):
        Parallelism(tp=3).check_model(PRESETS["Llama-3-8B"])
    with pytest.raises(WorkloadError, match="layers"):
        Parallelism(pp=33).check_model(PRESETS["Llama-3-8B"])
    with pytest.raises(WorkloadError, match="no experts"):
        Parallelism(tp=8, ep=8).check_model(PRESETS["Llama-3-8B"])
    Parallelism(tp=8, ep=8).check_model(PRESETS["Mixtral-8x7B"])
    with pytest.raises(WorkloadError, match="--ep"):
        Parallelism(tp=8, ep=2)
    with pytest.raises(WorkloadError, match="--tp"):
        Parallelism(tp=0)
