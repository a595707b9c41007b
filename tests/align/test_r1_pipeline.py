"""The R1-style pipeline (`lmforge.align.r1_pipeline`): its data, held-out pass@1, and the
fast setting end to end (``lmforge demo``: tests/commands/test_demo.py)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from lmforge.align.r1_pipeline import r1_solution, run_demo, worked_reasoning
from lmforge.align.rewards import format_reward, task_reward
from lmforge.data.tasks.arithmetic import ArithmeticProblem, arithmetic_problems, split_of


def test_worked_reasoning_is_column_addition_with_carries():
    assert worked_reasoning(ArithmeticProblem(347, "+", 258)) == "7+8=15, 4+5+1=10, 3+2+1=6"
    assert worked_reasoning(ArithmeticProblem(95, "+", 7)) == "5+7=12, 9+0+1=10"
    with pytest.raises(ValueError, match="addition"):
        worked_reasoning(ArithmeticProblem(9, "-", 7))


def test_r1_solutions_get_full_rule_reward():
    for p in arithmetic_problems(50, seed=0, digits=3, ops=("+",)):
        text = r1_solution(p)
        assert format_reward(text).score == 1.0
        assert task_reward(text, p).score == 1.0
        # every column's digit sum is right (the reasoning is a correct derivation)
        for step in text.split("<think>")[1].split("</think>")[0].split(", "):
            lhs, rhs = step.split("=")
            assert sum(map(int, lhs.split("+"))) == int(rhs)


def test_sampled_pass_at_1_averages_k_seeded_samples_per_problem():
    """R1's pass@1: k completions per problem, each seeded by (seed, problem, sample), every
    metric averaged over all of them — the same as sampling each request alone."""
    import torch

    from lmforge.align.rl_tasks import evaluate_accuracy, r1_prompt_ids
    from lmforge.align.rollout import request_seed, sample_completions
    from lmforge.infer import SamplingParams
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    problems = arithmetic_problems(3, seed=0, digits=2, ops=("+",))
    tok = Tokenizer.train([f"{p.prompt} {r1_solution(p)}" for p in problems * 20], vocab_size=300)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    model = CausalLM(cfg).eval()
    encode = lambda p: r1_prompt_ids(tok, p)  # noqa: E731
    sampling = SamplingParams(n=1, max_tokens=12, temperature=1.5, top_p=0.95, stop=("</answer>",))
    out = evaluate_accuracy(model, tok, problems, encode, sampling, samples=3, seed=5)
    alone = [
        sample_completions(model, tok, [encode(p)], sampling, [request_seed(5, i, j)])[0]
        for i, p in enumerate(problems)
        for j in range(3)
    ]
    assert out["length"] == pytest.approx(sum(len(c.completion_ids) for c in alone) / 9)
    assert len({c.text for c in alone}) > 3  # the k samples of a problem differ
    assert out == evaluate_accuracy(model, tok, problems, encode, sampling, samples=3, seed=5)
    greedy = evaluate_accuracy(model, tok, problems, encode, sampling)
    expected = sample_completions(model, tok, [encode(p) for p in problems], sampling, [0] * 3,
                                  greedy=True)  # fmt: skip
    assert greedy["length"] == pytest.approx(sum(len(c.completion_ids) for c in expected) / 3)
    with pytest.raises(ValueError, match="samples"):
        evaluate_accuracy(model, tok, problems, encode, sampling, samples=-1)


@pytest.mark.slow
def test_fast_demo_runs_every_stage_and_reports(tmp_path):
    console = Console(file=io.StringIO(), width=120)
    summary = run_demo(tmp_path / "demo", fast=True, console=console)
    out = tmp_path / "demo"
    for stage in ("pretrain", "sft", "grpo"):
        assert (out / stage / "model" / "config.json").is_file()
        assert 0 <= summary["accuracy"][stage]["accuracy"] <= 1
    assert (out / "model" / "tokenizer.json").is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| sft |" in report and "lmforge grpo" in report and "curves.png" in report
    grpo = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "accuracy", "length", "entropy"} <= set(grpo[0])
    # SFT chats and pretraining text come from the train split only
    sft = [json.loads(x) for x in (out / "data" / "sft.jsonl").read_text().splitlines()]
    questions = [c["messages"][0]["content"].removeprefix("What is ").rstrip("?") for c in sft]
    assert all(split_of(q) == "train" for q in questions)
    last = console.file.getvalue().strip().splitlines()[-1]
    assert last == (
        f"RESULT demo sft_acc={summary['sft_acc']:.1f} grpo_acc={summary['grpo_acc']:.1f}"
    )


def test_parse_seeds():
    from lmforge.align.r1_pipeline import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 7 ") == [7]
    with pytest.raises(ValueError, match="'a' is not an integer"):
        parse_seeds("0,a")
    with pytest.raises(ValueError, match="repeated"):
        parse_seeds("1,1")


def test_machine_info_names_the_cpu():
    from pathlib import Path

    from lmforge.align.r1_pipeline import machine_info

    info = machine_info()
    assert info["cpu"] and info["cores"] >= 1 and info["torch"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        line = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("model name"))
        assert info["cpu"] == line.split(":", 1)[1].strip()


def test_seeds_run_once_each_into_their_folders_and_report_the_mean(monkeypatch, tmp_path):
    import lmforge.align.r1_pipeline as pipeline

    calls, gates = [], []

    def fake_run_demo(out, *, seed, fast, cold_start_acc, console):
        calls.append((out, seed, fast))
        gates.append(cold_start_acc)
        sft, grpo = 30.0 + seed, 50.0 + 2 * seed
        stage = lambda a: {"accuracy": a / 100, "greedy": a / 100}  # noqa: E731
        return {"seed": seed, "sft_acc": sft, "grpo_acc": grpo, "total_s": 1.0, "cpu_s": 1.0,
                "accuracy": {"sft": stage(sft), "grpo": stage(grpo)}}  # fmt: skip

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    console = Console(file=io.StringIO(), width=200)
    result = pipeline.run_demo_seeds(tmp_path / "s", [0, 2], fast=True, console=console)
    assert calls == [(str(tmp_path / "s" / "seed-0"), 0, True),
                     (str(tmp_path / "s" / "seed-2"), 2, True)]  # fmt: skip
    assert result["mean"] == pytest.approx({"sft_acc": 31.0, "grpo_acc": 52.0, "gain": 21.0})
    assert (tmp_path / "s" / "seeds.md").is_file() and result["machine"]["cpu"]
    last = console.file.getvalue().strip().splitlines()[-1]
    assert last == "RESULT demo sft_acc=31.0 grpo_acc=52.0"
    # one seed is the plain demo, in the folder itself
    assert pipeline.run_demo_seeds(tmp_path / "one", [5], console=console)["seed"] == 5
    assert calls[-1] == (tmp_path / "one", 5, False)
    with pytest.raises(ValueError, match="jobs"):
        pipeline.run_demo_seeds(tmp_path / "s", [0, 1], jobs=0, console=console)
    # the cold-start gate reaches every seed's run (None: the fixed-step cold start)
    pipeline.run_demo_seeds(tmp_path / "g", [0, 1], cold_start_acc=0.5, console=console)
    assert gates == [None, None, None, 0.5, 0.5]


# ---------------------------------------------------------------- gated cold start
def test_the_full_demo_gates_its_cold_start_and_the_smoke_run_does_not():
    from lmforge.align.r1_pipeline import FAST, FULL

    assert FULL.cold_start_acc == 0.5 and FAST.cold_start_acc == 0.0


def test_gated_cold_start_stops_at_the_target_or_the_step_cap():
    """The gate trains chunk by chunk, measures after each, and stops at the first chunk whose
    accuracy reaches the target, else at the cap (the last chunk shortened to land on it)."""
    from lmforge.align.r1_pipeline import gated_cold_start

    def fake(accuracies):
        trained: list[int] = []
        it = iter(accuracies)
        return trained, trained.append, lambda: next(it)

    trained, train_to, measure = fake([0.1, 0.3, 0.5, 0.9])
    chunks = gated_cold_start(train_to, measure, target=0.5, chunk=20, max_steps=400)
    assert trained == [20, 40, 60]  # 0.5 ≥ 0.5: stops there, never measures the 0.9
    assert chunks == [{"steps": 20, "accuracy": 0.1}, {"steps": 40, "accuracy": 0.3},
                      {"steps": 60, "accuracy": 0.5}]  # fmt: skip
    trained, train_to, measure = fake([0.0, 0.2, 0.4, 0.9])
    chunks = gated_cold_start(train_to, measure, target=0.5, chunk=20, max_steps=50)
    assert trained == [20, 40, 50] and chunks[-1] == {"steps": 50, "accuracy": 0.4}
    trained, train_to, measure = fake([0.7])
    assert gated_cold_start(train_to, measure, target=0.5, chunk=30, max_steps=20) == [
        {"steps": 20, "accuracy": 0.7}
    ]
    with pytest.raises(ValueError, match="chunk=0"):
        gated_cold_start(train_to, measure, target=0.5, chunk=0, max_steps=20)


def test_gated_sft_resumes_one_run_exactly(tmp_path):
    """SFT in gated chunks (3 + 3 steps, each resuming the run) trains exactly as one 6-step
    run at the same constant lr would, measures on train-split problems only, and its stage
    command names where it stopped."""
    from dataclasses import replace

    import torch

    from lmforge.align.grpo_trainer import GRPOSection, eval_rollout_sampling
    from lmforge.align.r1_pipeline import FAST, gated_sft, stages, write_demo_data
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.sft import train_sft

    s = replace(FAST, sft_examples=40, task_docs=40, corpus_docs=10, cold_start_acc=2.0,
                cold_start_chunk=3, cold_start_max_steps=6, cold_start_problems=4,
                sft_batch=4, seq_len=64)  # fmt: skip
    data = write_demo_data(tmp_path / "data", s, 0)
    texts = [json.loads(x)["text"] for x in data["pretrain"].read_text().splitlines()]
    tok = Tokenizer.train(texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)  # fmt: skip
    save_model(CausalLM(cfg), tmp_path / "pretrain" / "model")
    tok.save(tmp_path / "pretrain" / "model")
    plan = stages(tmp_path, s, 0, data)
    assert "optim.schedule=constant" in plan["sft"].overrides
    base = plan["sft"]
    sampling = eval_rollout_sampling(GRPOSection(digits=s.digits, ops=["+"], max_new_tokens=8))
    console = Console(file=io.StringIO(), width=120)
    chunks = gated_sft(plan, s, 0, sampling, console)
    assert [c["steps"] for c in chunks] == [3, 6]  # target 2.0: never reached, capped at 6
    assert (
        plan["sft"].config().train.max_steps == 6 and "train.max_steps=6" in plan["sft"].command()
    )
    assert "on 4 train problems" in console.file.getvalue()
    one = replace(base, out=tmp_path / "one", overrides=(*base.overrides, "train.max_steps=6"))
    train_sft(one.config(), console=Console(file=io.StringIO()))

    def losses(folder):
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"]) for r in rows if "loss" in r]

    assert losses(tmp_path / "sft") == losses(tmp_path / "one")
    assert [step for step, _, _ in losses(tmp_path / "one")] == [1, 2, 3, 4, 5, 6]
