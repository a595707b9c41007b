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
