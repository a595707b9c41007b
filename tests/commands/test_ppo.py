"""`lmforge ppo` end to end on tiny settings (in-process CLI): rule and reward-model rewards,
resume, LoRA policy, the command's checks and errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmforge.cli import main

TINY = ["ppo.rollout_batch_size=8", "ppo.max_new_tokens=6", "ppo.num_prompts=40",
        "train.batch_size=4", "train.max_steps=4", "train.max_time_s=0", "train.save_every=2",
        "log.progress=false", "log.plot=false", "optim.lr=1e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lmforge.data.tasks.arithmetic import arithmetic_problems
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    texts = [f"{p.prompt} {p.answer}" for p in arithmetic_problems(100, 0, digits=1)]
    tok = Tokenizer.train(texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("policy") / "model"
    save_model(CausalLM(cfg), out, tokenizer=tok)
    return out


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_rule_reward_end_to_end_and_resume(model_dir, tmp_path, capsys):
    from lmforge.align.preference_objective import load_reward_model
    from lmforge.models.hf import load_model

    out = tmp_path / "ppo"
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                   "--out", str(out), *TINY])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    logged = {"reward", "kl_ref", "clip_frac", "value_loss", "explained_variance",
              "response_length", "entropy", "approx_kl", "policy_loss"}  # fmt: skip
    assert logged <= set(records[0]), set(records[0])
    assert all(0 < r["response_length"] <= 6 for r in records)
    trained = load_model(out / "model")
    base = load_model(model_dir)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight,
                           base.model.layers[0].mlp.up_proj.weight)  # fmt: skip
    critic = load_reward_model(out / "critic")
    assert critic(torch.tensor([[5, 6, 7]])).shape == (1,)
    # running the same command with more steps resumes from the last checkpoint
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                   "--out", str(out), *TINY, "train.max_steps=6"])  # fmt: skip
    assert status == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5, 6]


def test_ppo_with_a_reward_model_and_lora(model_dir, tmp_path, capsys):
    from lmforge.align.preference_objective import reward_model_for_export
    from lmforge.align.reward_model import RewardModel
    from lmforge.models.hf import load_model, save_model
    from lmforge.peft import is_adapter_dir
    from lmforge.tokenizer import load_tokenizer

    torch.manual_seed(1)
    rm = RewardModel.from_causal_lm(copy.deepcopy(load_model(model_dir)))
    tok = load_tokenizer(model_dir)
    save_model(reward_model_for_export(rm, tok.pad_token_id), tmp_path / "rm", tokenizer=tok)
    out = tmp_path / "ppo"
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                   "--reward-model", str(tmp_path / "rm"), "--out", str(out), "--peft", "lora",
                   "--lora-r", "4", *TINY, "train.max_steps=2"])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert str(tmp_path / "rm") in text  # the reward named in the header
    assert [r["step"] for r in _records(out)] == [1, 2]
    assert is_adapter_dir(out / "model")


def test_ppo_errors_are_one_line(model_dir, tmp_path, capsys):
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                   "--out", str(tmp_path / "x"), *TINY, "ppo.reward=model"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and "needs --reward-model" in err and "\n" not in err
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                   "--out", str(tmp_path / "y"), *TINY, "ppo.rollout_batch_size=6"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and "ppo.rollout_batch_size=6 must be a multiple" in err


def test_ppo_needs_a_policy(tmp_path, capsys):
    status = main(["ppo", "--config", "recipes/ppo-tiny.yaml", "--out", str(tmp_path)])
    assert status == 2 and "ppo needs a policy: --model DIR" in capsys.readouterr().err


def test_ppo_with_custom_rewards_on_the_users_prompts(model_dir, tmp_path, run, monkeypatch):
    import sys

    (tmp_path / "ppo_rewards.py").write_text(
        "calls = []\n"
        "def short(prompt, completion, answer, **fields):\n"
        "    calls.append((prompt, answer, fields))\n"
        "    return -len(completion) / 10\n"
    )
    monkeypatch.chdir(tmp_path)
    records = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}] if i % 2
                else f"What is {i} + 1?", "answer": str(i + 1), "level": i % 3}
               for i in range(10)]  # fmt: skip
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"
    try:
        code, _, err = run("ppo", "--config", "recipes/ppo-tiny.yaml", "--model", str(model_dir),
                           "--data", "tasks.jsonl", "--reward", "ppo_rewards:short:2", "--out",
                           str(out), *TINY, "train.max_steps=2")  # fmt: skip
        calls = sys.modules["ppo_rewards"].calls
    finally:
        sys.modules.pop("ppo_rewards", None)
    assert code == 0, err
    assert len(calls) == 8 and all(c[2].keys() == {"level"} for c in calls)
    assert {c[1] for c in calls} <= {r["answer"] for r in records}
    assert any(isinstance(c[0], list) for c in calls)  # the conversation as written
    first = _records(out)[0]
    assert first["reward"] < 0  # 2 × −length / 10
