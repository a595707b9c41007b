"""ModelConfig: validation and lossless round trips with HF config.json."""

from __future__ import annotations

import json

import pytest

from lmforge.config import ConfigError, ModelConfig, from_hf_config_dict, to_hf_config_dict

HF_CASES = [
    ("llama", dict(num_key_value_heads=1, head_dim=16, attention_bias=True, mlp_bias=True)),
    (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            tie_word_embeddings=True,
        ),
    ),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    ("qwen2", dict()),
    ("qwen3", dict(head_dim=16, rope_parameters={"rope_type": "yarn", "factor": 4.0})),
    ("mistral", dict(sliding_window=7)),
    ("mistral", dict(sliding_window=None, rope_parameters={"rope_type": "linear", "factor": 2.0})),
]


def _saved_hf_config(tmp_path, base, model_type, overrides):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type, **{**base, **overrides})
    cfg.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("model_type,overrides", HF_CASES)
def test_hf_config_round_trip_is_lossless(tmp_path, tiny_hf_kwargs, model_type, overrides):
    raw = _saved_hf_config(tmp_path, tiny_hf_kwargs(), model_type, overrides)
    ours = ModelConfig.from_pretrained(tmp_path)
    assert to_hf_config_dict(ours) == raw
    # And our own serialisation round-trips too.
    assert ModelConfig.from_dict(ours.to_dict()) == ours


@pytest.mark.parametrize("model_type,overrides", HF_CASES)
def test_transformers_reads_our_config_identically(tmp_path, tiny_hf_kwargs, model_type, overrides):
    from transformers import AutoConfig

    raw = _saved_hf_config(tmp_path, tiny_hf_kwargs(), model_type, overrides)
    ours = from_hf_config_dict(raw)
    out = tmp_path / "ours"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_hf_config_dict(ours)))
    theirs = AutoConfig.from_pretrained(tmp_path).to_dict()
    mine = AutoConfig.from_pretrained(out).to_dict()
    theirs.pop("_name_or_path"), mine.pop("_name_or_path")
    assert mine == theirs


def test_legacy_rope_fields_round_trip():
    raw = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
    }
    cfg = from_hf_config_dict(raw)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["rope_type"] == "llama3"
    assert cfg.eos_token_id == [2, 3]
    out = to_hf_config_dict(cfg)
    for key, value in raw.items():
        assert out[key] == value, key


def test_family_semantics():
    base = dict(
        vocab_size=10,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    qwen2 = from_hf_config_dict({"model_type": "qwen2", **base})
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.qk_norm
    qwen3 = from_hf_config_dict({"model_type": "qwen3", **base, "attention_bias": True})
    assert qwen3.qk_norm and qwen3.qkv_bias and qwen3.o_bias
    mistral = from_hf_config_dict({"model_type": "mistral", **base, "sliding_window": 8})
    assert [mistral.layer_window(i) for i in range(2)] == [8, 8]
    q2w = from_hf_config_dict(
        {"model_type": "qwen2", **base, "use_sliding_window": True, "sliding_window": 4,
         "max_window_layers": 1}
    )  # fmt: skip
    assert [q2w.layer_window(i) for i in range(2)] == [None, 4]
    # A window that HF ignores (use_sliding_window false) is not applied.
    q2off = from_hf_config_dict({"model_type": "qwen2", **base, "sliding_window": 4})
    assert q2off.sliding_window is None and to_hf_config_dict(q2off)["sliding_window"] == 4


def test_layer_window_of_mtp_blocks():
    """MTP blocks (indices N … N + D − 1) with ``layer_types``: full attention (they used to
    index past the list); without it: the window, like every layer; past them: an error."""
    kw = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, sliding_window=4)
    typed = ModelConfig(
        **kw, layer_types=["sliding_attention", "full_attention"], num_nextn_predict_layers=2
    )
    assert [typed.layer_window(i) for i in range(4)] == [4, None, None, None]
    uniform = ModelConfig(**kw, num_nextn_predict_layers=1)
    assert [uniform.layer_window(i) for i in range(3)] == [4, 4, 4]
    for bad in (-1, 4):
        with pytest.raises(IndexError, match="2 layers and 2 MTP blocks"):
            typed.layer_window(bad)


def test_defaults_and_derived():
    cfg = ModelConfig(hidden_size=64, num_attention_heads=8)
    assert cfg.head_dim == 8 and cfg.num_key_value_heads == 8 and cfg.num_kv_groups == 1
    gqa = ModelConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    assert gqa.num_kv_groups == 4 and gqa.head_dim == 32


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"frobnicate": 1, "wibble": 2}, "['frobnicate', 'wibble']"),
        ({"model_type": "gpt2"}, "gpt2"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"attention_dropout": 0.1}, "attention_dropout"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}, "low_freq_factor"),
    ],
)
def test_bad_hf_configs_name_the_field(change, needle):
    raw = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    raw.update(change)
    with pytest.raises(ConfigError, match=None) as info:
        from_hf_config_dict(raw, source="some/config.json")
    assert needle in str(info.value) and "some/config.json" in str(info.value)


def test_bad_model_configs():
    with pytest.raises(ConfigError, match="head_dim"):
        ModelConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="layer_types"):
        ModelConfig(num_hidden_layers=2, layer_types=["full_attention"])
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig(vocab_size=0)
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"hidden_sise": 3})
    with pytest.raises(ConfigError, match="qk_norm"):
        to_hf_config_dict(ModelConfig(model_type="llama", qk_norm=True))


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "vocab_size": }')
    with pytest.raises(ConfigError, match=r"config.json:2:\d+: invalid JSON"):
        ModelConfig.from_pretrained(tmp_path)


def test_num_parameters_matches_module():
    from lmforge.models.transformer import CausalLM

    for kw in (
        dict(qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True, head_dim=16),
        dict(tie_word_embeddings=True, num_key_value_heads=1),
    ):
        cfg = ModelConfig(
            vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, **kw,
        )  # fmt: skip
        assert CausalLM(cfg).num_parameters() == cfg.num_parameters()


# ---------------------------------------------------------------------- DeepSeek-V3
DEEPSEEK = dict(
    model_type="deepseek_v3", vocab_size=50, hidden_size=32, intermediate_size=48,
    num_hidden_layers=3, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=12,
    qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8,
    n_shared_experts=1, moe_intermediate_size=10, num_experts_per_tok=2, n_group=4,
    topk_group=2, first_k_dense_replace=1,
)  # fmt: skip
DEEPSEEK_HF_CASES = [
    dict(DEEPSEEK, num_key_value_heads=4, rope_parameters={"rope_type": "yarn", "factor": 4.0,
         "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 32}),
    dict(DEEPSEEK, q_lora_rank=None, num_nextn_predict_layers=0, attention_bias=True,
         tie_word_embeddings=True),
]  # fmt: skip


@pytest.mark.parametrize("case", DEEPSEEK_HF_CASES)
def test_deepseek_hf_config_round_trip_and_transformers_reads_it(tmp_path, case):
    from transformers import AutoConfig

    kwargs = {k: v for k, v in case.items() if k != "model_type"}
    raw = _saved_hf_config(tmp_path, {}, "deepseek_v3", kwargs)
    ours = ModelConfig.from_pretrained(tmp_path)
    assert ours.use_mla and ours.use_moe and [ours.is_moe_layer(i) for i in range(3)] == [
        False, True, True
    ]  # fmt: skip
    assert ours.num_key_value_heads == 1 and ours.head_dim == 12 + 4 and ours.rope_head_dim == 4
    assert to_hf_config_dict(ours) == raw
    assert ModelConfig.from_dict(ours.to_dict()) == ours
    out = tmp_path / "ours"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_hf_config_dict(ours)))
    theirs, mine = (
        AutoConfig.from_pretrained(tmp_path).to_dict(),
        AutoConfig.from_pretrained(out).to_dict(),
    )
    theirs.pop("_name_or_path"), mine.pop("_name_or_path")
    assert mine == theirs


def test_deepseek_legacy_rope_scaling_as_deepseek_ships_it():
    """DeepSeek-V3's own config.json: rope_theta + rope_scaling {"type": "yarn", …}, and its
    routing keys, whose values lmforge checks and keeps."""
    raw = {
        **DEEPSEEK,
        "num_key_value_heads": 4,
        "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1,
        "seq_aux": True, "aux_loss_alpha": 0.001, "routed_scaling_factor": 2.5,
    }  # fmt: skip
    cfg = from_hf_config_dict(raw)
    assert cfg.rope_scaling["type"] == "yarn" and cfg.aux_loss_alpha == 0.001
    out = to_hf_config_dict(cfg)
    for key, value in raw.items():
        assert out[key] == value, key
    with pytest.raises(ConfigError, match="scoring_func='softmax'"):
        from_hf_config_dict({**raw, "scoring_func": "softmax"})


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"topk_group": 5}, "topk_group=5 > n_group=4"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok=9 > n_routed_experts=8"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok=5 > the 4 experts"),
        ({"n_group": 3}, "n_routed_experts=8 is not divisible by n_group=3"),
        ({"n_group": 8, "topk_group": 4}, "n_group=8 leaves 1 expert"),
        ({"qk_rope_head_dim": 5}, "qk_rope_head_dim=5 must be even"),
        ({"head_dim": 6}, "head_dim=6 must equal qk_rope_head_dim=4"),
        ({"qk_head_dim": 11}, "qk_head_dim=11"),
        ({"first_k_dense_replace": 4}, "first_k_dense_replace=4 > num_hidden_layers=3"),
        ({"kv_lora_rank": 0}, "kv_lora_rank=0"),
        ({"architectures": ["LlamaForCausalLM"]}, "architectures=['LlamaForCausalLM'] contradicts"),
    ],
)
def test_bad_deepseek_configs_name_the_field(change, needle):
    with pytest.raises(ConfigError) as info:
        from_hf_config_dict({**DEEPSEEK, **change}, source="ds/config.json")
    assert needle in str(info.value) and "ds/config.json" in str(info.value)


def test_architectures_must_agree_with_model_type():
    raw = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip
    for ok in (["Qwen2ForCausalLM"], ["Qwen2ForSequenceClassification"]):
        from_hf_config_dict({**raw, "architectures": ok})
    for bad in (["MistralForCausalLM"], ["Qwen2MoeForCausalLM"], "Qwen2ForCausalLM"):
        with pytest.raises(ConfigError, match="architectures"):
            from_hf_config_dict({**raw, "architectures": bad})


def test_mla_moe_fields_outside_deepseek():
    with pytest.raises(ConfigError, match="set kv_lora_rank"):
        ModelConfig(qk_rope_head_dim=4)
    with pytest.raises(ConfigError, match="head_dim=8 with MLA"):
        ModelConfig(**{**DEEPSEEK, "head_dim": 8})
    llama_mla = ModelConfig(**{**DEEPSEEK, "model_type": "llama"})  # a configuration lmforge runs
    with pytest.raises(ConfigError, match="only as deepseek_v3"):
        to_hf_config_dict(llama_mla)
    with pytest.raises(ConfigError, match="needs kv_lora_rank"):
        ModelConfig(model_type="deepseek_v3")


def test_deepseek_num_parameters_matches_module():
    from lmforge.models.transformer import CausalLM

    for kw in (dict(), dict(q_lora_rank=None, qkv_bias=True, o_bias=True, tie_word_embeddings=True,
                            num_nextn_predict_layers=2, n_shared_experts=0)):  # fmt: skip
        cfg = ModelConfig(**{**DEEPSEEK, **kw})
        assert CausalLM(cfg).num_parameters() == cfg.num_parameters()
