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
