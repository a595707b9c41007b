"""lmforge/commands/eval.py: ``lmforge eval`` on tiny checkpoints — perplexity, a task with
pass@k / maj@k, two models side by side, the written results, and clean errors."""

from __future__ import annotations

import json

import pytest

from lmforge.commands.common import CommandError
from lmforge.commands.eval import parse_ks


def test_eval_two_models_side_by_side(checkpoint, chat_model_dir, tmp_path, run):
    folder, _ = checkpoint
    (tmp_path / "notes.txt").write_text("the quick brown fox jumps over the lazy dog. " * 5)
    code, out, err = run("eval", "--model", str(folder), "--model", str(chat_model_dir),
                         "--text", str(tmp_path / "notes.txt"), "--task", "arithmetic",
                         "--problems", "3", "--samples", "2", "--max-new-tokens", "4",
                         "--out", str(tmp_path / "eval"))  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"| metric | `{folder}` | `{chat_model_dir}` |"
    labels = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:] if line.startswith("|")]
    assert labels == ["perplexity (all files)", "arithmetic pass@1",
                      "arithmetic pass@2", "arithmetic maj@2"]  # fmt: skip
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {str(folder), str(chat_model_dir)}
    task = results[str(folder)]["tasks"]["arithmetic"]
    assert task["settings"]["samples"] == 2 and len(task["problems"]) == 3
    assert (tmp_path / "eval" / "results.md").read_text() == out.split("results: ")[0]


def test_eval_jsonl_with_a_verifier_and_greedy(checkpoint, tmp_path, run):
    folder, _ = checkpoint
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "say anything", "answer": "(?s).*"}) + "\n")
    code, out, err = run("eval", "--model", str(folder), "--task", str(path),
                         "--verifier", "regex", "--greedy", "--max-new-tokens", "3")  # fmt: skip
    assert code == 0, err
    assert f"| {path} pass@1 | 1.000 [1.000, 1.000] |" in out


def test_clean_errors(checkpoint, tmp_path, run):
    folder, _ = checkpoint
    code, _, err = run("eval", "--model", str(folder))
    assert code == 2 and "nothing to evaluate" in err
    code, _, err = run("eval", "--model", str(folder), "--task", "chess")
    assert code == 2 and "chess" in err and "Traceback" not in err
    code, _, err = run("eval", "--model", str(tmp_path / "nope"), "--task", "arithmetic")
    assert code == 2 and "no such" in err
    code, _, err = run("eval", "--model", str(folder), "--task", "arithmetic", "--greedy",
                       "--samples", "3")  # fmt: skip
    assert code == 2 and "--greedy" in err


def test_parse_ks():
    assert parse_ks(None, 1) == (1,) and parse_ks(None, 8) == (1, 8)
    assert parse_ks("4,1,4", 4) == (1, 4)
    with pytest.raises(CommandError, match="each k must be in"):
        parse_ks("1,16", 8)
    with pytest.raises(CommandError, match="comma-separated integers"):
        parse_ks("one", 8)


def test_eval_with_an_adapter_on_its_recorded_base(chat_model_dir, tmp_path, run):
    """``--adapter`` end to end: the column is the base + adapter, the results those of
    the base with the LoRA folded in (`evaluate_checkpoint(adapter=…)`, checked against a
    hand merge in tests/eval/test_checkpoint.py) and not the base's own."""
    import torch

    from lmforge.eval.checkpoint import evaluate_checkpoint
    from lmforge.models.hf import load_model
    from lmforge.peft import apply_lora, save_adapter

    torch.manual_seed(1)
    lora = apply_lora(load_model(chat_model_dir), r=2, alpha=4, target_modules=["v_proj"])
    for module in lora.modules():
        if hasattr(module, "lora_B"):
            with torch.no_grad():
                module.lora_B["default"].weight.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    save_adapter(lora, adapter, base_model_name_or_path=str(chat_model_dir))
    args = ["--task", "arithmetic", "--problems", "2", "--greedy", "--max-new-tokens", "4"]
    code, out, err = run("eval", "--adapter", str(adapter), *args, "--out", str(tmp_path / "e"))
    assert code == 0, err
    assert out.splitlines()[0] == f"| metric | `{chat_model_dir} + {adapter}` |"
    (result,) = json.loads((tmp_path / "e" / "results.json").read_text()).values()
    settings = dict(samples=1, ks=(1,), temperature=0.0, max_tokens=4, seed=0, problems=2)
    again = evaluate_checkpoint(chat_model_dir, adapter=adapter, tasks=["arithmetic"], **settings)
    base = evaluate_checkpoint(chat_model_dir, tasks=["arithmetic"], **settings)
    problems = result["tasks"]["arithmetic"]["problems"]
    assert problems == again["tasks"]["arithmetic"]["problems"]
    assert problems != base["tasks"]["arithmetic"]["problems"]
    code, _, err = run("eval", "--adapter", str(tmp_path), *args)
    assert code == 2 and "no adapter_config.json" in err
    code, _, err = run("eval", *args)
    assert code == 2 and "name the model" in err
