"""`lmforge grpo`: flags (--model, --out, --peft) → config → a GRPO run folder; errors."""

from __future__ import annotations

import json

import pytest
import torch

TINY = ["train.max_steps=1", "train.batch_size=8", "train.grad_accum=1", "grpo.group_size=4",
        "grpo.max_new_tokens=8", "grpo.eval_prompts=4", "grpo.num_prompts=50",
        "log.progress=false", "log.plot=false"]  # fmt: skip


def test_grpo_command_end_to_end(r1_model_dir, tmp_path):
    from lmforge.cli import main

    out = tmp_path / "run"
    code = main(["grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                 "--out", str(out), "train.max_steps=2", "train.batch_size=8",
                 "train.grad_accum=1", "grpo.group_size=4", "grpo.max_new_tokens=8",
                 "grpo.eval_prompts=4", "grpo.num_prompts=50", "log.progress=false",
                 "grpo.beta=0.04"])  # fmt: skip
    assert code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"reward", "accuracy", "kl", "clip_frac", "length", "entropy"} <= set(records[0])
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2]
    assert (out / "model" / "config.json").is_file()


def test_grpo_with_lora(r1_model_dir, tmp_path, run):
    out = tmp_path / "run"
    code, text, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                          "--out", str(out), "--peft", "lora", "--lora-r", "4", *TINY,
                          "grpo.beta=0.04")  # fmt: skip
    assert code == 0, err
    assert "held-out accuracy" in text
    assert json.loads((out / "model" / "adapter_config.json").read_text())["r"] == 4
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_grpo_errors_are_one_line(r1_model_dir, tmp_path, run):
    code, _, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--out", str(tmp_path))
    assert code == 2 and "grpo needs a model: --model DIR" in err
    code, _, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                       "--out", str(tmp_path), *TINY, "grpo.groupsize=4")  # fmt: skip
    assert code == 2 and "unknown key" in err and err.strip().count("\n") == 0


REWARDS = """
import json, os

def brevity(completion, target_len):
    return -abs(len(completion) - target_len) / 10

def logged(prompt, completion, **fields):
    with open(os.environ["REWARD_LOG"], "a") as f:
        f.write(json.dumps({"prompt": prompt, "completion": completion, "fields": fields}) + "\\n")
    return 1.0
"""


def _prompt_file(path, n=12):
    records = []
    for i in range(n):
        prompt = f"What is {i} + 1?"
        if i % 2:  # conversational prompts: rendered through the chat template
            prompt = [{"role": "user", "content": prompt}]
        records.append({"prompt": prompt, "answer": str(i + 1), "target_len": 5, "id": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_grpo_with_custom_rewards_from_a_module_in_the_working_directory(
    r1_model_dir, tmp_path, run, monkeypatch
):
    import sys

    (tmp_path / "task_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REWARD_LOG", str(tmp_path / "calls.jsonl"))
    data = _prompt_file(tmp_path / "tasks.jsonl")
    out = tmp_path / "run"
    try:
        code, text, err = run(
            "grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
            "--data", str(data), "--reward", "task_rewards:brevity:0.5",
            "--reward", "task_rewards:logged:2", "--out", str(out), *TINY,
            "data.val_fraction=0.25", "train.max_steps=2",
        )  # fmt: skip
    finally:
        sys.modules.pop("task_rewards", None)
    assert code == 0, err
    assert "held-out reward" in text
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # the logged reward is the weighted sum of the named ones
        assert r["reward"] == pytest.approx(0.5 * r["reward_brevity"] + 2 * r["reward_logged"])
        assert r["reward_logged"] == 1.0 and r["reward_brevity"] <= 0
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["count"] for e in evals] == [3, 3]  # a quarter of 12 held out, evaluated twice
    assert len(calls) == 2 * 8 + 2 * 3  # 2 steps × 8 completions + 2 × 3 held-out
    by_id = {c["fields"]["id"]: c for c in calls}
    assert set(by_id[1]["fields"]) == {"answer", "target_len", "id"}
    assert by_id[1]["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]
    assert any(isinstance(c["prompt"], str) for c in calls)


def test_grpo_reward_errors_name_the_function(r1_model_dir, tmp_path, run, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text("def oops(completion):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    data = _prompt_file(tmp_path / "tasks.jsonl")
    code, _, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                       "--data", str(data), "--reward", f"{tmp_path}/bad_rewards.py:oops",
                       "--out", str(tmp_path / "run"), *TINY)  # fmt: skip
    assert code == 2
    assert "bad_rewards.py:oops' returned NoneType" in err and "tasks.jsonl:" in err
    code, _, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                       "--reward", "nocolon", "--out", str(tmp_path / "r2"), *TINY)  # fmt: skip
    assert code == 2 and "MODULE:FUNCTION[:WEIGHT]" in err


def test_grpo_with_a_reward_model(r1_model_dir, tmp_path, run):
    from lmforge.align.preference_objective import reward_model_for_export
    from lmforge.align.reward_model import RewardModel
    from lmforge.models.hf import load_model, save_model
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(r1_model_dir)
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(load_model(r1_model_dir))
    torch.nn.init.normal_(rm.score.weight)
    save_model(reward_model_for_export(rm, tok.pad_token_id), tmp_path / "rm", tokenizer=tok)
    out = tmp_path / "run"
    code, text, err = run("grpo", "--config", "recipes/grpo-tiny.yaml", "--model", str(r1_model_dir),
                          "--reward-model", str(tmp_path / "rm"), "--out", str(out), *TINY,
                          "grpo.reward_model_weight=2")  # fmt: skip
    assert code == 0, err
    assert "2 × reward model" in text
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["reward"] == pytest.approx(2 * record["reward_model"])
    assert record["reward_model"] != 0
