"""Agent SFT smoke run: a tiny VLM from scratch trains on agent data through the one Trainer
(loss falls), exports a folder that reloads, and reports held-out grounding and episode
figures; bad sections are refused by name."""

from __future__ import annotations

import json

import pytest

import lmforge
from lmforge.agents.sft import AgentRunConfig, train_agent_sft
from lmforge.config import ConfigError
from lmforge.models.vlm import VisionLanguageModel
from lmforge.train.config import load_config

SMALL = [
    "agent.train_tasks=4", "agent.eval_tasks=2", "agent.eval_grounding=6", "agent.max_steps=2",
    "agent.vision_hidden=32", "agent.hidden_size=32",
    "agent.num_layers=1", "agent.vocab_size=400", "agent.num_heads=2", "agent.num_kv_heads=1",
    "agent.vision_heads=2", "agent.vision_depth=1", "data.seq_len=256", "train.batch_size=2",
    "train.max_steps=8", "train.eval_every=0", "train.save_every=0", "log.progress=false",
    "log.plot=false", "optim.warmup_steps=1", "optim.lr=3e-3", "train.cpu_threads=1",
]  # fmt: skip


def test_tiny_agent_sft_run(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path / 'run'}", *SMALL], AgentRunConfig)
    summary = train_agent_sft(config)
    report = json.loads((tmp_path / "run" / "agent_eval.json").read_text())
    assert report == summary["agent_eval"]
    assert 0 <= report["grounding_accuracy"] <= 1
    episodes = report["episodes"]
    assert episodes["episodes"] == 2 and episodes["invalid_action_rate"] == 0.0  # constrained
    assert isinstance(lmforge.load_model(tmp_path / "run" / "model"), VisionLanguageModel)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [x for x in (json.loads(line).get("loss") for line in lines) if x is not None]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.kinds=[dancing]", "agent.kinds"),
        ("agent.eval_split=test", "agent.eval_split"),
        ("agent.screen=100", "agent.screen"),
        ("agent.mistake_rate=2", "agent.mistake_rate"),
        ("agent.vision_init=xavier", "agent.vision_init"),
        ("agent.lm_init_std=0", "agent.lm_init_std"),
    ],
)
def test_bad_sections_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        train_agent_sft(load_config(None, [*SMALL, override], AgentRunConfig))


def test_coordinate_tokens_merge_size_and_rope_theta(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from lmforge.agents.agent_data import make_agent_dataset
    from lmforge.agents.sft import agent_model, train_agent_tokenizer
    from lmforge.models.hf import save_model
    from lmforge.train.vlm_sft import image_processor_for

    data = make_agent_dataset("train", 3, seed=0, grounding_count=0, grounding_turns=4)
    examples = [ex for k in data for ex in data[k]]
    tok = train_agent_tokenizer(examples, 500, coordinates=128)
    assert tok.vocab_size <= 500
    ids = tok.encode("click(103,32)")
    assert [tok.id_to_token(i) for i in ids] == ["click", "(", "103", ",", "32", ")"]
    tok.save(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the reference tokenizer agrees
    for text in ["click(0,127)", "drag(5,6,120,99)", "Find 'invoice 17' and open it", "x1280y"]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert tok.decode(tok.encode(text)) == text
    overrides = [
        *SMALL,
        "agent.coordinate_tokens=true",
        "agent.merge_size=1",
        "agent.rope_theta=100",
    ]
    config = load_config(None, overrides, AgentRunConfig)
    model, tok = agent_model(config, examples)
    assert tok.token_to_id("103") is not None
    assert model.config.vision.spatial_merge_size == 1 and model.config.text.rope_theta == 100
    processor = image_processor_for(model, 128)
    _, grid = processor([examples[0].images[0]])
    assert processor.tokens_per_image(grid) == [256]  # 8-px image tokens: 16 × 16
    save_model(model, tmp_path / "model")
    hf_config = AutoConfig.from_pretrained(tmp_path / "model")
    assert hf_config.vision_config.spatial_merge_size == 1
    assert hf_config.text_config.rope_parameters["rope_theta"] == 100


def test_fan_in_init_survives_the_merge_size_rebuild():
    """``agent.merge_size`` ≠ 2 rebuilds the model; the encoder still gets N(0, 1/fan_in)."""
    from lmforge.agents.agent_data import make_agent_dataset
    from lmforge.agents.sft import agent_model

    data = make_agent_dataset("train", 2, seed=0, grounding_count=0, grounding_turns=4)
    examples = [ex for k in data for ex in data[k]]
    stds = {}
    for init in ("fan_in", "config"):
        overrides = [*SMALL, "agent.merge_size=1", f"agent.vision_init={init}"]
        model, _ = agent_model(load_config(None, overrides, AgentRunConfig), examples)
        assert model.config.vision.spatial_merge_size == 1
        stds[init] = model.visual.merger.mlp[0].weight.std().item()
    fan_in = 32  # agent.vision_hidden=32 in SMALL, merge 1
    assert abs(stds["fan_in"] - fan_in**-0.5) < 0.03, stds
    assert abs(stds["config"] - 0.02) < 0.005, stds


def test_random_screens_are_refused_below_zero():
    with pytest.raises(ConfigError, match="agent.random_screens"):
        train_agent_sft(load_config(None, [*SMALL, "agent.random_screens=-1"], AgentRunConfig))


def test_random_screens_and_question_first_run(tmp_path):
    overrides = [f"out_dir={tmp_path / 'run'}", *SMALL, "agent.random_screens=6",
                 "agent.question_first=true", "agent.grounding_turns=1", "agent.eval_tasks=0",
                 "agent.kinds=[grounding]", "train.max_steps=3"]  # fmt: skip
    summary = train_agent_sft(load_config(None, overrides, AgentRunConfig))
    assert 0 <= summary["agent_eval"]["grounding_accuracy"] <= 1
