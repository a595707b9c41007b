"""Expert-guided groups: the token in the expert's box nearest its point (closed form on a
grid); the expert's move written as a text policy and as a pointer policy would write it
(parses under the grammar, earns the step reward, the pointer's query and log-prob, spliced
tokens unlabelled, no old log-probs); guided state groups replace the last response only where
none matched; one guided update raises the expert response's log-probability; the RL config."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace

import pytest
import torch

from lmforge.agents.action_grammar import response_regex
from lmforge.agents.actions import Click, Drag, parse_response
from lmforge.agents.expert import ExpertStep, expert_step
from lmforge.agents.guidance import box_token, expert_sample
from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rl import AgentRollouts, train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection
from lmforge.agents.rl_objective import agent_pg_objective, batch_scores
from lmforge.agents.rollout import open_episode
from lmforge.agents.state_groups import play_state_groups, step_reward
from lmforge.agents.tasks import sample_task
from lmforge.config import ConfigError
from lmforge.train.config import load_config

# the plain grammar (a test's own `policy.regex` applies) and clicks pointed in the
# episode's context — not `VLMPolicy`'s defaults (typing and thoughts held, grounded clicks)
PLAIN = {"typing": "free", "thoughts": "free", "clicks": "pointer"}

SCREEN = (128, 128)


def test_box_token_is_the_nearest_centre_inside_the_box():
    # a 16 × 16 grid of 8-px tokens: token (r, c) has its centre at (8c + 4, 8r + 4)
    k, centre = box_token((10, 20, 50, 32), (30, 26), (16, 16), SCREEN)
    assert centre == (28, 28) and k == 3 * 16 + 3
    # the nearest centre to a corner point is still inside the box
    k, centre = box_token((10, 20, 50, 32), (49, 31), (16, 16), SCREEN)
    assert centre == (44, 28) and k == 3 * 16 + 5
    assert box_token((1, 1, 3, 3), (2, 2), (16, 16), SCREEN) is None  # no centre inside


@pytest.fixture(scope="module")
def models(agent_vlm_factory, add_pointer_head):
    model, tok, processor, _ = agent_vlm_factory(4, 2)
    return model, add_pointer_head(model), tok, processor


def policy_for(model, tok, processor, temperature=1.0):
    return VLMPolicy(
        model, tok, processor, SCREEN, 2, 100, temperature, True, logprobs=True, **PLAIN
    )


def first_state(seed, template="radio_apply"):
    task = sample_task(seed, template=template)
    env, _, context = open_episode(task, 8)
    return context, expert_step(task, env.window)


def test_text_policy_writes_the_experts_response(models):
    model, _, tok, processor = models
    policy = policy_for(model, tok, processor)
    context, step = first_state(0)
    sample = expert_sample(policy, context, step)
    assert parse_response(sample.text, SCREEN).action == step.action
    assert sample.token_ids == tok.encode(sample.text) + [policy.end_of_turn]
    assert all(sample.sampled) and sample.logprobs == [None] * len(sample.token_ids)
    assert re.fullmatch(response_regex(SCREEN), sample.text)
    assert step_reward(sample.text, step, SCREEN) == pytest.approx(1.1)


def test_pointer_policy_points_into_the_experts_box(models):
    _, model, tok, processor = models
    policy = policy_for(model, tok, processor)
    for seed in (0, 1, 2):
        context, step = first_state(seed)
        sample = expert_sample(policy, context, step)
        assert re.fullmatch(response_regex(SCREEN), sample.text)
        assert step_reward(sample.text, step, SCREEN) == pytest.approx(1.1)
        (choice,) = sample.pointers
        ids = sample.prompt_ids + sample.token_ids
        assert tok.decode([ids[choice.position]]).endswith("(")  # the query token
        logits, grid = policy.pointer_logits(ids[: choice.position + 1], sample.pixel_values,
                                             sample.image_grid_thw, choice.image)  # fmt: skip
        assert grid == choice.grid
        assert choice.logprob == pytest.approx(float(logits.log_softmax(-1)[choice.index]))
        # labelled: the text up to the query; not: the spliced "x,y)" and the end of turn
        n = choice.position + 1 - len(sample.prompt_ids)
        assert sample.sampled == [True] * n + [False] * (len(sample.token_ids) - n)
        assert tok.decode(sample.token_ids[n:-1]) == "{},{})".format(*choice.point)
    context, step = first_state(0)
    drag = ExpertStep("I drag it.", Drag(1, 2, 3, 4), (0, 0, 9, 9))
    assert expert_sample(policy, context, drag) is None  # two points, one box
    tiny_box = ExpertStep("I click.", Click(2, 2), (1, 1, 3, 3))
    assert expert_sample(policy, context, tiny_box) is None  # no token centre in the box


def test_guided_groups_replace_the_last_response_where_none_matched(models):
    _, model, tok, processor = models
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1, 2)]
    plain, _ = play_state_groups(policy_for(model, tok, processor), tasks, 3, 2)
    guided, runs = play_state_groups(policy_for(model, tok, processor), tasks, 3, 2, guide=True)
    assert [g.rewards[:2] for g in plain] == [g.rewards[:2] for g in guided]  # same samples
    assert any(g.guided for g in guided)
    for p, g in zip(plain, guided, strict=True):
        assert g.guided == (max(p.rewards) < 1)
        assert g.rewards == (p.rewards[:2] + [pytest.approx(1.1)] if g.guided else p.rewards)
        assert g.samples[0].text == p.samples[0].text  # the executed response is the policy's
    assert [len(r.responses) for r in runs] == [2, 2, 2]


def test_a_guided_update_raises_the_experts_log_probability(models):
    _, model, tok, processor = models
    model = copy.deepcopy(model)
    section = AgentRLSection(groups="state", tasks_per_rollout=2, group_size=3, max_steps=1,
                             max_new_tokens=100, constrained=True, guide=True,
                             clicks="pointer")  # fmt: skip
    rollouts = AgentRollouts(model, tok, processor, [sample_task(s, template="radio_apply")
                                                     for s in (0, 1)], section, seed=3)  # fmt: skip
    groups, runs = rollouts.play_states()
    assert all(g.guided for g in groups)  # a random model misses every radio button
    batch = rollouts.state_batch(groups, runs)
    assert float(batch["rollout_guided"]) == 1.0
    demos = rollouts.state_batch([replace(g, samples=g.samples[-1:] * 3, rewards=[1.0, 0.0, 0.5])
                                  for g in groups], runs)  # fmt: skip

    def demo_logprob() -> float:  # Σ log π over the demonstrations' labelled tokens and points
        with torch.no_grad():
            logps, pointer = batch_scores(model, demos)
        mask = demos["labels"][:, 1:] != -100
        return float((logps * mask).sum() / 3 + pointer.sum() / 3)

    before = demo_logprob()
    out = agent_pg_objective(model, batch)
    assert float(out.metrics["guided"] / out.count) == 1.0
    model.zero_grad()
    (out.loss_sum / out.count).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert demo_logprob() > before + 0.1


def test_guided_rl_run_and_config(tmp_path, models):
    _, model, tok, _ = models
    overrides = [f"out_dir={tmp_path / 'rl'}", "rl.groups=state", "rl.guide=true", "rl.pool_tasks=2",
                 "rl.failed_only=false", "rl.tasks_per_rollout=1", "rl.group_size=2", "rl.max_steps=2",
                 "rl.constrained=true", "rl.eval_tasks=1", "rl.eval_max_steps=1",
                 "rl.max_new_tokens=100", "train.max_steps=2", "train.batch_size=1",
                 "train.eval_every=0", "train.save_every=0", "log.progress=false", "log.plot=false",
                 "optim.warmup_steps=1", "data.seq_len=256"]  # fmt: skip
    summary = train_agent_rl(load_config(None, overrides, AgentRLConfig), copy.deepcopy(model), tok)
    assert summary["step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "guided" in x]
    assert len(logged) == 2 and all(0 <= x["guided"] <= 1 for x in logged)
    with pytest.raises(ConfigError, match="rl.guide"):
        train_agent_rl(load_config(None, ["rl.guide=true"], AgentRLConfig))


def test_a_drag_is_written_with_both_pointer_choices(models):
    """The expert's drag (``drag=True``): the thumb token at ``(``, the release token at the
    ``,`` after the first point, inside the drop range moved with the first point as
    written — so the written drag earns the step reward."""
    _, model, tok, processor = models
    policy = policy_for(model, tok, processor)
    written = 0
    for seed in range(40):
        task = sample_task(seed, template="list_open")
        env, _, context = open_episode(task, 8)
        step = expert_step(task, env.window, drag=True)
        if not isinstance(step.action, Drag):
            continue
        sample = expert_sample(policy, context, step)
        if sample is None:
            continue
        assert re.fullmatch(response_regex(SCREEN), sample.text)
        assert step_reward(sample.text, step, SCREEN) == pytest.approx(1.1)
        first, second = sample.pointers
        ids = sample.prompt_ids + sample.token_ids
        assert tok.decode([ids[first.position]]).endswith("(")
        assert tok.decode(ids[: second.position + 1]).endswith("{},{},".format(*first.point))
        written += 1
    assert written >= 1
