"""DeepSeek-R1-Zero on the demo's base (`lmforge.align.r1_zero`): the prompt template, the GRPO
stage's config, the emergence verdicts, and a fast run end to end (slow)."""

from __future__ import annotations

import io
import json
import shlex

import pytest
from rich.console import Console

from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.r1_pipeline import FULL, r1_solution
from lmforge.align.r1_zero import (
    EMERGED_GAIN,
    R1_ZERO_TEMPLATE,
    ZERO_EASY,
    ZERO_FAST,
    ZERO_FULL,
    emergence,
    run_zero,
    transcript_docs,
    zero_stage,
)
from lmforge.cli import build_parser
from lmforge.commands.common import run_config
from lmforge.data.tasks import synthetic_corpus
from lmforge.data.tasks.arithmetic import arithmetic_problems
from lmforge.tokenizer import Tokenizer


def test_template_is_plain_text_user_then_assistant():
    tok = Tokenizer.train(synthetic_corpus(50, seed=0), vocab_size=300)
    tok.chat_template = R1_ZERO_TEMPLATE
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == (
        "User: What is 1 + 2?\nAssistant:"
    )
    system = [{"role": "system", "content": "Think, then answer."}, *messages]
    assert tok.apply_chat_template(system) == "Think, then answer.\nUser: What is 1 + 2?\n"


def test_zero_stage_is_grpo_from_the_base_with_the_template(tmp_path):
    data = {
        "pretrain": tmp_path / "data" / "pretrain.jsonl",
        "sft": tmp_path / "data" / "sft.jsonl",
    }
    stage = zero_stage(tmp_path, ZERO_FAST, 4, data)
    config = stage.config(GRPOConfig)
    assert config.model.init_from == str(tmp_path / "pretrain" / "model")  # no SFT
    assert config.data.tokenizer == str(tmp_path / "tokenizer-r1zero")
    assert config.grpo.format_weight == ZERO_FAST.format_weight == 1.0  # accuracy + format
    assert config.train.seed == 4 and config.grpo.temperature == 1.0
    args = build_parser().parse_args(shlex.split(stage.command())[1:])
    assert run_config(args, GRPOConfig) == config  # the listed command builds the same run
    assert ZERO_FULL.format_weight == 1.0 and ZERO_FULL.grpo_steps > ZERO_FAST.grpo_steps


def test_transcripts_are_train_problems_in_the_prompts_shape():
    tok = Tokenizer.train(synthetic_corpus(50, seed=0), vocab_size=300)
    tok.chat_template = R1_ZERO_TEMPLATE
    docs = transcript_docs(30, seed=2, digits=2)
    problems = arithmetic_problems(30, 5, "train", 2, ("+",))  # seed + 3
    for doc, p in zip(docs, problems, strict=True):
        prompt = tok.apply_chat_template([{"role": "user", "content": p.prompt}],
                                         add_generation_prompt=True)  # fmt: skip
        assert doc == f"{prompt} {r1_solution(p)}"
    held_out = {p.prompt for p in arithmetic_problems(200, 2, "test", 2, ("+",))}
    assert not held_out & {p.prompt for p in problems}
    assert transcript_docs(30, seed=2, digits=2) == docs
    # --easy changes only the zero run's base and task, never the main demo's settings
    assert ZERO_EASY.pretrain_steps != FULL.pretrain_steps == 250 and FULL.digits == 3
    assert ZERO_EASY.grpo_steps == ZERO_FULL.grpo_steps and ZERO_EASY.digits == FULL.digits


def test_emergence_compares_the_end_with_the_start():
    history = [
        {"step": 0, "accuracy": 0.0, "format": 0.05, "length": 20.0},
        {"step": 10, "accuracy": 0.02, "format": 0.9, "length": 30.0},
        {"step": 20, "accuracy": 0.01, "format": 0.95, "length": 36.5},
    ]
    e = emergence(history)
    assert e["format"] == {"start": 0.05, "end": 0.95, "best": 0.95, "emerged": True}
    assert e["accuracy"]["emerged"] is False and e["accuracy"]["best"] == 0.02
    assert e["length"] == {"start": 20.0, "end": 36.5, "change": 16.5}
    edge = [dict(history[0], accuracy=0.1), dict(history[0], accuracy=0.1 + EMERGED_GAIN)]
    assert emergence(edge)["accuracy"]["emerged"] is True
    with pytest.raises(ValueError, match="no held-out"):
        emergence([])


@pytest.mark.slow
def test_fast_zero_run_reports(tmp_path):
    console = Console(file=io.StringIO(), width=160)
    summary = run_zero(tmp_path / "z", fast=True, console=console)
    out = tmp_path / "z"
    assert (out / "zero.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "zero.json").read_text())
    assert saved["emergence"] == summary["emergence"]
    assert [e["step"] for e in saved["evaluations"]][0] == 0
    assert (out / "grpo" / "model" / "chat_template.jinja").read_text() == R1_ZERO_TEMPLATE
    assert "| GRPO step |" in (out / "zero.md").read_text()
    assert console.file.getvalue().strip().splitlines()[-1].startswith("RESULT demo_zero format=")
