"""Agent RL: rewards and group advantages per episode, the steps' prompts rebuilt exactly as
the policy saw them, the packed surrogate's gradient equal to −Σ A ∇log π computed example
by example, and a short online GRPO smoke run through the Trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.agents.agent_data import make_agent_dataset
from lmforge.agents.policy import ExpertPolicy
from lmforge.agents.rl import (
    AgentRLConfig,
    AgentRLSection,
    AgentRollouts,
    agent_pg_objective,
    episode_reward,
    step_prompts,
    train_agent_rl,
)
from lmforge.agents.rollout import run_episodes
from lmforge.agents.tasks import sample_task
from lmforge.config import ConfigError
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import load_config
from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS, encode_chat


@pytest.fixture(scope="module")
def vlm():
    data = make_agent_dataset("train", num_tasks=4, seed=2)
    texts = [ex.question + " " + ex.answer for k in data for ex in data[k]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, vision_depth=1, hidden_size=32,
                         num_layers=1, num_heads=2, num_kv_heads=1, vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(section, tok)
    return model, tok, image_processor_for(model, 128)


def expert_runs():
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1) for _ in range(2)]
    runs = run_episodes(ExpertPolicy(), tasks, max_steps=5)
    runs[1].record.success = False  # group 0: rewards differ; group 1: both succeed
    return runs


def test_episode_reward():
    runs = expert_runs()
    assert episode_reward(runs[0], 0.1) == pytest.approx(1.1)
    assert episode_reward(runs[1], 0.1) == pytest.approx(0.1)
    runs[2].record.steps[0] = type(runs[2].record.steps[0])(False)
    n = len(runs[2].record.steps)
    assert episode_reward(runs[2], 0.5) == pytest.approx(1 + 0.5 * (n - 1) / n)


def test_step_prompts_are_what_the_policy_saw():
    run = expert_runs()[0]
    prompts = step_prompts(run, history=2)
    assert len(prompts) == len(run.responses)
    for t, (messages, images, text) in enumerate(prompts):
        assert (
            messages[-1] == {"role": "assistant", "content": run.responses[t]}
            and text == run.responses[t]
        )
        assert np.array_equal(images[-1], run.frames[t]) and len(images) == min(t + 1, 2)
        assert (
            f"Previous actions: {'; '.join(run.history[:t]) or 'none'}\n"
            in messages[0]["content"][-1]["text"]
        )


def test_packed_surrogate_gradient_equals_per_example_policy_gradient(vlm):
    model, tok, proc = vlm
    section = AgentRLSection(group_size=2, history=2)
    rollouts = AgentRollouts(model, tok, proc, [], section, seq_len=64)
    runs = expert_runs()
    batch = rollouts.batch(runs)
    assert batch["rollout_success"] == 0.75
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    out.loss_sum.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # brute force: −Σ_episodes A_e Σ_steps Σ_tokens log π, one example at a time
    rewards = torch.tensor([episode_reward(r, section.format_weight) for r in runs])
    groups = rewards.view(-1, 2)
    adv = ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-4)).view(
        -1
    )
    assert adv[2] == adv[3] == 0 and adv[0] > 0 > adv[1]
    model.zero_grad()
    count = 0
    for run, a in zip(runs, adv.tolist(), strict=True):
        for messages, images, _ in step_prompts(run, 2):
            ex = encode_chat(tok, proc, messages, images)
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
            logits = model(
                input_ids=ids, pixel_values=ex.pixel_values, image_grid_thw=ex.image_grid_thw
            ).logits
            logp = torch.log_softmax(logits[0, :-1].float(), -1)
            target = labels[0, 1:]
            keep = target != IGNORE_INDEX
            (-a * logp[keep].gather(-1, target[keep].unsqueeze(-1)).sum()).backward()
            count += int(keep.sum())
    assert int(out.count) == count
    for name, g in packed.items():
        assert torch.allclose(g, model.get_parameter(name).grad, atol=1e-5, rtol=1e-4), name


def test_rollout_state_and_task_order(vlm):
    model, tok, proc = vlm
    tasks = [sample_task(s) for s in range(5)]
    r = AgentRollouts(model, tok, proc, tasks, AgentRLSection(tasks_per_rollout=2), seed=1)
    seen = []
    for n in range(5):
        r.rollouts = n
        seen += [t.instruction for t in r.rollout_tasks()]
    assert sorted(seen) == sorted([t.instruction for t in tasks] * 2)  # every task, twice
    r.load_state_dict({"rollouts": 3})
    assert r.state_dict() == {"rollouts": 3}


def test_online_grpo_smoke_run(tmp_path, vlm):
    model, tok, _ = vlm
    overrides = [f"out_dir={tmp_path / 'rl'}", "rl.pool_tasks=2", "rl.tasks_per_rollout=1", "rl.group_size=2",
                 "rl.max_steps=2", "rl.eval_tasks=1", "rl.eval_max_steps=1", "rl.max_new_tokens=48", "train.max_steps=2", "train.batch_size=1",
                 "train.eval_every=0", "train.save_every=0", "log.progress=false", "log.plot=false",
                 "optim.warmup_steps=1", "data.seq_len=256"]  # fmt: skip
    summary = train_agent_rl(load_config(None, overrides, AgentRLConfig), model, tok)
    assert summary["step"] == 2 and summary["rl_tasks"] >= 1
    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "episode_reward" in x]
    assert len(logged) == 2 and all(0 <= x["episode_reward"] <= 1.1 for x in logged)
    assert (
        json.loads((tmp_path / "rl" / "agent_eval.json").read_text())["episodes"]["episodes"] == 1
    )


def test_bad_rl_sections():
    for override, message in [("rl.group_size=1", "group_size"), ("rl.split=dev", "rl.split")]:
        with pytest.raises(ConfigError, match=message):
            train_agent_rl(load_config(None, [override], AgentRLConfig))
    with pytest.raises(ConfigError, match="model.init_from"):
        train_agent_rl(load_config(None, [], AgentRLConfig))
