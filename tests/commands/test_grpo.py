"""`lmforge grpo`: flags (--model, --out, --peft) → config → a GRPO run folder; errors."""

from __future__ import annotations

import json

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
