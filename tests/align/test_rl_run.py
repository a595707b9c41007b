"""`run_grpo` / `run_ppo`: RL runs from a config alone — the checkpoint and tokenizer loaded,
PEFT applied, the trainer run into ``out_dir`` and the summary printed (``lmforge grpo`` /
``lmforge ppo``: tests/commands/test_grpo.py, test_ppo.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.ppo_config import PPOConfig
from lmforge.align.rl_run import run_grpo, run_ppo
from lmforge.config import ConfigError
from lmforge.peft.settings import PeftSettings
from lmforge.train.config import load_config

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "grpo-tiny.yaml"
TINY = ["train.max_steps=2", "train.batch_size=8", "train.grad_accum=1", "grpo.group_size=4",
        "grpo.max_new_tokens=8", "grpo.eval_prompts=4", "grpo.num_prompts=50",
        "log.progress=false", "log.plot=false"]  # fmt: skip


def _config(r1_model_dir, out, *overrides) -> GRPOConfig:
    extra = [f"model.init_from={json.dumps(str(r1_model_dir))}", f"out_dir={json.dumps(str(out))}"]
    return load_config(RECIPE, [*TINY, *overrides, *extra], GRPOConfig)


def test_run_grpo_trains_and_prints_the_summary(r1_model_dir, tmp_path):
    out = tmp_path / "run"
    console = Console(file=io.StringIO(), width=200)
    summary = run_grpo(_config(r1_model_dir, out), console=console)
    assert summary["model_dir"] == str(out / "model") and summary["step"] == 2
    assert {"accuracy", "format"} <= summary["eval_after"].keys()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert [json.loads(x)["step"] for x in (out / "eval.jsonl").read_text().splitlines()] == [0, 2]
    text = console.file.getvalue()
    assert "held-out accuracy" in text and f"model      {out / 'model'}" in text


def test_run_grpo_with_lora_saves_the_adapter(r1_model_dir, tmp_path):
    out = tmp_path / "lora"
    console = Console(file=io.StringIO(), width=200)
    run_grpo(_config(r1_model_dir, out, "train.max_steps=1", "grpo.beta=0.04"),
             peft=PeftSettings(method="lora", lora_r=4), console=console)  # fmt: skip
    assert (out / "model" / "adapter_config.json").is_file()


def test_run_grpo_needs_a_model(tmp_path):
    config = load_config(RECIPE, [*TINY, f"out_dir={json.dumps(str(tmp_path))}"], GRPOConfig)
    with pytest.raises(ConfigError, match="model.init_from"):
        run_grpo(config, console=Console(file=io.StringIO()))


PPO_RECIPE = RECIPE.parent / "ppo-tiny.yaml"
PPO_TINY = ["ppo.rollout_batch_size=8", "ppo.max_new_tokens=6", "ppo.num_prompts=40",
            "train.batch_size=4", "train.max_steps=2", "train.max_time_s=0",
            "train.save_every=0", "log.progress=false", "log.plot=false"]  # fmt: skip


def _ppo_config(model_dir, out, *overrides) -> PPOConfig:
    extra = [f"model.init_from={json.dumps(str(model_dir))}", f"out_dir={json.dumps(str(out))}"]
    return load_config(PPO_RECIPE, [*PPO_TINY, *overrides, *extra], PPOConfig)


def test_run_ppo_writes_policy_and_critic(r1_model_dir, tmp_path):
    out = tmp_path / "ppo"
    console = Console(file=io.StringIO(), width=200)
    summary = run_ppo(_ppo_config(r1_model_dir, out), console=console)
    assert summary["model_dir"] == str(out / "model") and summary["step"] == 2
    assert (out / "critic" / "config.json").is_file()
    assert f"critic     {out / 'critic'}" in console.file.getvalue()


def test_run_ppo_checks_its_config(r1_model_dir, tmp_path):
    quiet = Console(file=io.StringIO())
    with pytest.raises(ConfigError, match="ppo.reward=model needs"):
        run_ppo(_ppo_config(r1_model_dir, tmp_path, "ppo.reward=model"), console=quiet)
    empty = load_config(PPO_RECIPE, [*PPO_TINY, f"out_dir={json.dumps(str(tmp_path))}"],
                        PPOConfig)  # fmt: skip
    with pytest.raises(ConfigError, match="model.init_from"):
        run_ppo(empty, console=quiet)
