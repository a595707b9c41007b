"""`lmforge` itself: the entry points, usage errors, and clean one-line errors for bad paths
and broken checkpoints across commands."""

from __future__ import annotations

import subprocess
import sys

import pytest


# ---------------------------------------------------------------------- entry points
def test_python_dash_m_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("tokenizer", "info", "convert", "generate", "demo", "examples:"):
        assert command in result.stdout


def test_help_returns_zero_and_unknown_command_is_a_usage_error(run):
    assert run("convert", "--help")[0] == 0
    code, _, err = run("frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run()
    assert code == 2 and "required" in err


def test_every_command_is_registered_in_order():
    from lmforge.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert list(commands.choices) == ["tokenizer", "info", "convert", "generate", "demo",
                                      "serve", "chat", "pretrain", "sft", "merge", "dpo", "rm",
                                      "grpo", "ppo"]  # fmt: skip


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{path}"],
        ["info", "{path}", "--json"],
        ["convert", "{path}", "--out", "{tmp}/out"],
        ["generate", "--model", "{path}", "--prompt", "x"],
        ["tokenizer", "train", "--input", "{path}", "--vocab-size", "300", "--out", "{tmp}/t"],
    ],
)
def test_missing_path_is_a_clean_error(tmp_path, run, argv):
    missing = tmp_path / "does-not-exist"
    argv = [a.format(path=missing, tmp=tmp_path) for a in argv]
    code, out, err = run(*argv)
    assert code == 2
    assert str(missing) in err and "no such" in err and "Traceback" not in err


def test_folder_that_is_not_a_checkpoint(tmp_path, run):
    (tmp_path / "notes.txt").write_text("hello")
    for argv in (["info", str(tmp_path)], ["generate", "--model", str(tmp_path), "--prompt", "x"]):
        code, _, err = run(*argv)
        assert code == 2 and f"{tmp_path}: not a checkpoint folder" in err


def test_broken_checkpoints_report_the_offending_file(checkpoint, tmp_path, run):
    folder, _ = checkpoint
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "gpt9"}')
    code, _, err = run("info", str(bad_config))
    assert code == 2 and str(bad_config / "config.json") in err and "gpt9" in err

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((folder / "config.json").read_bytes())
    code, _, err = run("convert", str(no_weights), "--out", str(tmp_path / "o"))
    assert code == 2 and str(no_weights) in err and "model.safetensors" in err

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((folder / name).read_bytes())
    code, _, err = run("generate", "--model", str(no_tokenizer), "--prompt", "x")
    assert code == 2 and str(no_tokenizer / "tokenizer.json") in err and "Traceback" not in err
