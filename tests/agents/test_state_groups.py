"""Groups per state: the step reward (the expert's move in that state, + format) against
hand-made actions; the trunk executes each group's first response and every state reached
gets a group scored against the expert's move recomputed there; a state batch gives each
response its state's group-normalised reward (the packed gradient equals −Σ A ∇log π per
sample); a short ``rl.groups=state`` run through the Trainer with a pointer model."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from lmforge.agents.actions import Click, Drag, Hotkey, Scroll, Type, format_response
from lmforge.agents.expert import ExpertStep, expert_step
from lmforge.agents.policy import ExpertPolicy, PolicySample
from lmforge.agents.rl import AgentRollouts, train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection
from lmforge.agents.rl_objective import agent_pg_objective
from lmforge.agents.rollout import run_episodes
from lmforge.agents.state_groups import action_matches, play_state_groups, step_reward
from lmforge.agents.tasks import sample_task
from lmforge.config import ConfigError
from lmforge.train.config import load_config

SCREEN = (128, 128)


def test_action_matches_the_experts_move():
    box = (10.0, 20.0, 50.0, 32.0)
    click = ExpertStep("I press Save.", Click(30, 26), box)
    assert action_matches(Click(11, 21), click) and not action_matches(Click(60, 26), click)
    assert not action_matches(Scroll(30, 26, "down"), click)  # another kind, in the box
    typing = ExpertStep("I type bob.", Type("bob"))
    assert action_matches(Type("bob"), typing) and not action_matches(Type("bo"), typing)
    keys = ExpertStep("I press Enter.", Hotkey(("enter",)))
    assert action_matches(Hotkey(("enter",)), keys)
    assert not action_matches(Hotkey(("esc",)), keys)
    scroll = ExpertStep("I scroll the pane.", Scroll(30, 26, "down"), box)
    assert action_matches(Scroll(12, 30, "down"), scroll)
    assert not action_matches(Scroll(12, 30, "up"), scroll)


def test_action_matches_a_drag_by_its_thumb_and_how_far_it_moves():
    """The first point on the thumb; the release as far from it as the expert's drop range
    is from the expert's own first point (the environment moves the thumb by Δy)."""
    move = ExpertStep("I drag the scrollbar.", Drag(120, 30, 120, 60), (118, 20, 123, 40), "list",
                      drop_box=(118, 50, 123, 70))  # fmt: skip
    assert action_matches(Drag(121, 35, 121, 60), move)  # Δy 25 in [20, 40]
    assert action_matches(Drag(121, 22, 121, 42), move)  # Δy 20
    assert not action_matches(Drag(121, 35, 121, 40), move)  # Δy 5: too short
    assert not action_matches(Drag(121, 25, 121, 70), move)  # Δy 45: too far
    assert not action_matches(Drag(60, 35, 60, 60), move)  # not on the thumb
    assert not action_matches(Drag(121, 35, 121, 60), replace(move, drop_box=None))


def test_step_reward_is_match_plus_format():
    box = (10.0, 20.0, 50.0, 32.0)
    expert = ExpertStep("I press Save.", Click(30, 26), box)
    assert step_reward(format_response("Save it.", Click(12, 22)), expert, SCREEN) == 1.1
    assert step_reward(format_response("Save it.", Click(90, 90)), expert, SCREEN, 0.5) == 0.5
    assert step_reward("Thought: x\nAction: click(30,", expert, SCREEN) == 0.0
    assert step_reward(format_response("Off.", Click(300, 26)), expert, SCREEN) == 0.0  # off screen


class HalfExpert:
    """Even requests of a call answer as the expert would, odd ones write nothing valid."""

    def sample(self, contexts):
        out = []
        for i, c in enumerate(contexts):
            step = expert_step(c.env.task, c.env.window)
            text = format_response(step.thought, step.action) if i % 2 == 0 else "no action"
            out.append(PolicySample(text, [1], [2], [None], torch.zeros(0), torch.zeros(0)))
        return out


def test_play_state_groups_scores_every_state_the_trunk_reaches():
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1)]
    groups, runs = play_state_groups(HalfExpert(), tasks, group_size=4, max_steps=8)
    expert = run_episodes(ExpertPolicy(), tasks, max_steps=8)
    # the trunk executes each group's first response (the expert's): the expert's episodes
    assert all(r.record.success for r in runs)
    assert [r.responses for r in runs] == [r.responses for r in expert]
    assert len(groups) == sum(len(r.responses) for r in runs)
    for g in groups:
        assert len(g.samples) == 4 and g.rewards == pytest.approx([1.1, 0.0, 1.1, 0.0])
    assert [len(r.samples) for r in runs] == [len(r.responses) for r in runs]
    with pytest.raises(ValueError, match="group_size"):
        play_state_groups(HalfExpert(), tasks, group_size=1)


@pytest.fixture(scope="module")
def vlm(agent_vlm_factory, add_pointer_head):
    model, tok, processor, _ = agent_vlm_factory(4, 2)
    return add_pointer_head(model), tok, processor


SECTION = AgentRLSection(groups="state", tasks_per_rollout=2, group_size=3, max_steps=2,
                         max_new_tokens=100, constrained=True, temperature=1.0)  # fmt: skip


def test_state_batch_gradient_equals_per_sample_policy_gradient(vlm):
    model, tok, proc = vlm
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1)]
    rollouts = AgentRollouts(model, tok, proc, tasks, SECTION, seed=3)
    groups, runs = rollouts.play_states()
    assert len(groups) == sum(len(r.responses) for r in runs) >= 2
    for n, g in enumerate(groups):  # rewards that differ within every group
        g.rewards = [float((n + i) % 3 == 0) + 0.1 * i for i in range(3)]
    batch = rollouts.state_batch(groups, runs)
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    assert float(out.metrics["logprob_gap"] / out.count) < 1e-4
    out.loss_sum.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    count = 0
    for g in groups:
        r = torch.tensor(g.rewards)
        adv = ((r - r.mean()) / (r.std() + 1e-4)).tolist()
        for s, a in zip(g.samples, adv, strict=True):
            ids = torch.tensor([s.prompt_ids + s.token_ids])
            out_s = model(input_ids=ids, pixel_values=s.pixel_values,
                          image_grid_thw=s.image_grid_thw, output_hidden_states=True)  # fmt: skip
            logp = torch.log_softmax(out_s.logits[0, len(s.prompt_ids) - 1 : -1].float(), -1)
            picked = logp.gather(-1, torch.tensor(s.token_ids).unsqueeze(-1)).squeeze(-1)
            keep = torch.tensor(s.sampled)
            loss = -a * picked[keep].sum()
            count += int(keep.sum())
            hidden = out_s.hidden_states[0]
            image = (ids[0] == model.config.image_token_id).nonzero().flatten()
            for p in s.pointers:
                n = p.grid[0] * p.grid[1]
                logits = model.pointer_head(hidden[p.position : p.position + 1],
                                            hidden[image[-n:]][None])[0]  # fmt: skip
                loss = loss - a * torch.log_softmax(logits, -1)[p.index]
                count += 1
            loss.backward()
    assert int(out.count) == count
    for name, grad in packed.items():
        assert torch.allclose(grad, model.get_parameter(name).grad, atol=1e-5, rtol=1e-3), name


def test_state_group_rl_smoke_run(tmp_path, vlm):
    model, tok, _ = vlm
    overrides = [f"out_dir={tmp_path / 'rl'}", "rl.groups=state", "rl.pool_tasks=2", "rl.failed_only=false",
                 "rl.tasks_per_rollout=1", "rl.group_size=2", "rl.max_steps=2", "rl.constrained=true",
                 "rl.eval_tasks=1", "rl.eval_max_steps=1", "rl.max_new_tokens=100", "train.max_steps=2",
                 "train.batch_size=1", "train.eval_every=0", "train.save_every=0", "log.progress=false",
                 "log.plot=false", "optim.warmup_steps=1", "data.seq_len=256", "rl.kl_coef=0.1"]  # fmt: skip
    summary = train_agent_rl(load_config(None, overrides, AgentRLConfig), copy.deepcopy(model), tok)
    assert summary["step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "episode_reward" in x]
    assert len(logged) == 2 and all(0 <= x["episode_reward"] <= 1.1 for x in logged)
    # the KL to the SFT policy: 0 before the first update, ≥ 0 (k3) after it
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-5) and logged[1]["kl"] >= 0
    # μ = 2: two updates on one rollout — the same rollout's reward twice, and the second
    # update's ratio is off 1 (π moved, π_old is the sampling policy's)
    again = [o.replace("out_dir=" + str(tmp_path / "rl"), "out_dir=" + str(tmp_path / "mu"))
             for o in overrides] + ["rl.iterations=2"]  # fmt: skip
    train_agent_rl(load_config(None, again, AgentRLConfig), copy.deepcopy(model), tok)
    lines = [json.loads(x) for x in (tmp_path / "mu" / "metrics.jsonl").read_text().splitlines()]
    first, second = [x for x in lines if "episode_reward" in x]
    assert first["episode_reward"] == second["episode_reward"]
    assert first["logprob_gap"] < 1e-4 < second["logprob_gap"]
    with pytest.raises(ConfigError, match="rl.groups"):
        train_agent_rl(load_config(None, ["rl.groups=task"], AgentRLConfig))
