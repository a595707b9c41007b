"""Agent RL: rewards and group advantages per episode; training batches hold exactly the
token ids the engine sampled (not the text re-tokenized) with the engine's log-probs, equal
to the trainer's (ratio 1); the packed surrogate's gradient equals −Σ A ∇log π computed
sample by sample; ratio clipping; a short online GRPO smoke run through the Trainer. With a
pointer model: the LM term skips spliced tokens, the pointer choices' clipped ratio terms
equal a hand computation and their gradient reaches the pointer head; a pointer GRPO run.
Dynamic sampling (``rl.max_draws``): groups whose rewards all agree are drawn again, each
rollout's draws take their own places in the task order."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from lmforge.agents.env import GUIEnv
from lmforge.agents.grounded import response_target
from lmforge.agents.policy import ExpertPolicy
from lmforge.agents.rl import AgentRollouts, episode_reward, train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection
from lmforge.agents.rl_examples import step_examples
from lmforge.agents.rl_objective import agent_pg_objective
from lmforge.agents.rollout import run_episodes
from lmforge.agents.tasks import goal_progress, sample_task
from lmforge.config import ConfigError
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.vlm import VisionLanguageModel
from lmforge.train.config import load_config


@pytest.fixture(scope="module")
def vlm(agent_vlm_factory):
    model, tok, processor, _ = agent_vlm_factory(4, 2)
    return model, tok, processor


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


def test_progress_weight_credits_the_goal_values_right_at_the_end():
    """radio_apply's goal is one value: the expert's episode ends with it (progress 1); an
    episode cut after no step holds the initial value (progress 0, the task asks a change)."""
    runs = expert_runs()
    assert runs[0].record.progress == 1.0
    assert episode_reward(runs[0], 0.1, progress_weight=0.5) == pytest.approx(1.1 + 0.5)
    (cut,) = run_episodes(ExpertPolicy(), [runs[0].task], max_steps=1)  # one step: a click
    task = runs[0].task
    assert goal_progress(task, task.window) == 0.0
    assert cut.record.progress == goal_progress(task, replay(task, cut.responses))
    assert episode_reward(cut, 0.0, progress_weight=0.5) == pytest.approx(
        float(cut.record.success) + 0.5 * cut.record.progress
    )
    with pytest.raises(ConfigError, match="rl.progress_weight"):
        train_agent_rl(load_config(None, ["rl.progress_weight=-1"], AgentRLConfig))


def replay(task, responses):
    env = GUIEnv(width=task.window.width, height=task.window.height)
    env.reset(options={"task": task})
    for r in responses:
        env.step(r)
    return env.window


def test_expert_weight_counts_the_steps_that_point_where_the_expert_would():
    """The expert's own episode agrees with itself at every pointing step; moving one point
    outside its box, or making its step unparseable, drops exactly that step's credit."""
    from lmforge.agents.metrics import StepRecord

    run = expert_runs()[0]
    steps = run.record.steps
    pointing = [i for i, s in enumerate(steps) if s.target_box is not None]
    assert pointing and all(s.valid and s.point is not None for s in steps)
    base = episode_reward(run, 0.1)
    assert episode_reward(run, 0.1, 0.0, 8) == base  # off by default
    assert episode_reward(run, 0.1, 2.0, 8) == pytest.approx(base + 2.0 * len(pointing) / 8)
    i = pointing[0]
    box = steps[i].target_box
    steps[i] = StepRecord(True, (int(box[2]) + 3, int(box[3]) + 3), box)  # outside its box
    assert episode_reward(run, 0.1, 2.0, 8) == pytest.approx(base + 2.0 * (len(pointing) - 1) / 8)
    with pytest.raises(ConfigError, match="rl.expert_weight"):
        train_agent_rl(load_config(None, ["rl.expert_weight=-1"], AgentRLConfig))


def sampled_runs(vlm, section):
    """Episodes of the random tiny VLM, sampled freely through the engine with samples kept;
    one episode of the first group marked successful so its advantages differ."""
    model, tok, proc = vlm
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1)]
    rollouts = AgentRollouts(model, tok, proc, tasks, section, seed=3)
    runs = rollouts.play()
    runs[0].record.success = True
    return rollouts, runs


SECTION = AgentRLSection(tasks_per_rollout=2, group_size=2, max_steps=2, max_new_tokens=20,
                         history=2, constrained=False, temperature=1.0)  # fmt: skip


def test_expert_starts(vlm):
    """``rl.expert_starts``: a group's episodes share a start k expert steps in (1 ≤ k < n,
    seeded per rollout), the policy's samples are its own steps only, and the mean k is
    logged."""
    model, tok, proc = vlm
    tasks = [sample_task(s, template="dropdown_save") for s in (0, 1, 2)]
    lengths = [len(run_episodes(ExpertPolicy(), [t])[0].record.steps) for t in tasks]
    never = AgentRollouts(model, tok, proc, tasks, SECTION, seed=3)
    assert never.start_states(tasks) == [0, 0, 0]
    always = AgentRollouts(model, tok, proc, tasks, replace(SECTION, expert_starts=1.0), seed=3)
    seen = set()
    for n in range(6):
        always.rollouts = n
        starts = always.start_states(tasks)
        assert starts == always.start_states(tasks)  # seeded
        assert all(1 <= k < length for k, length in zip(starts, lengths, strict=True))
        seen.add(tuple(starts))
    assert len(seen) > 1
    always.rollouts = 0
    runs = always.play()
    picks = always.rollout_tasks()
    starts = always.start_states(picks)
    assert [r.expert_steps for r in runs] == [k for k in starts for _ in range(2)]
    assert all(len(r.samples) == len(r.responses) == len(r.record.steps) for r in runs)
    batch = always.batch(runs)
    assert float(batch["rollout_expert_steps"]) == pytest.approx(sum(starts) / len(starts))
    assert "expert_steps" in agent_pg_objective(model, batch).metrics
    assert "rollout_expert_steps" not in never.batch(never.play())
    for bad in (["rl.expert_starts=1.5"], ["rl.expert_starts=0.5", "rl.groups=state"]):
        with pytest.raises(ConfigError, match="rl.expert_starts"):
            train_agent_rl(load_config(None, bad, AgentRLConfig))


def test_rollouts_train_on_the_sampled_token_ids_and_logprobs(vlm):
    model, tok, _ = vlm
    rollouts, runs = sampled_runs(vlm, SECTION)
    samples = [s for run in runs for s in run.samples]
    assert len(samples) == sum(len(run.responses) for run in runs) > 0
    retokenized_differs = False
    for run in runs:
        for sample, response in zip(run.samples, run.responses, strict=True):
            body = [t for t in sample.token_ids if t != tok.token_to_id("<|im_end|>")]
            assert tok.decode(body, skip_special_tokens=True) == sample.text
            assert response == sample.text.strip()
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(lp is not None for lp in sample.logprobs[: len(body)])
            retokenized_differs |= tok.encode(sample.text) != body
    # free sampling gives token sequences BPE would not produce from their text: the reason
    # the trainer must reuse the engine's ids rather than re-encode the text
    assert retokenized_differs
    batch = rollouts.batch(runs)
    labelled = [batch["labels"][r][batch["labels"][r] != IGNORE_INDEX].tolist()
                for r in range(batch["labels"].shape[0])]  # fmt: skip
    assert sum(labelled, []) == sum((s.token_ids for s in samples), [])
    # the engine's log-probs are the trainer's: the ratio starts at 1
    out = agent_pg_objective(model, batch)
    assert float(out.metrics["logprob_gap"] / out.count) < 1e-4
    scored = ~torch.isnan(batch["old_logprobs"])
    assert int(scored.sum()) == sum(lp is not None for s in samples for lp in s.logprobs)


def test_packed_surrogate_gradient_equals_per_sample_policy_gradient(vlm):
    model, tok, proc = vlm
    rollouts, runs = sampled_runs(vlm, SECTION)
    batch = rollouts.batch(runs)
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    out.loss_sum.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    # brute force: −Σ_episodes A_e Σ_steps Σ_sampled tokens log π, one sample at a time
    rewards = torch.tensor([episode_reward(r, SECTION.format_weight) for r in runs])
    groups = rewards.view(-1, 2)
    adv = (groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-4)
    assert adv[0, 0] > 0 > adv[0, 1]
    model.zero_grad()
    count = 0
    for run, a in zip(runs, adv.view(-1).tolist(), strict=True):
        for s in run.samples:
            ids = torch.tensor([s.prompt_ids + s.token_ids])
            logits = model(input_ids=ids, pixel_values=s.pixel_values,
                           image_grid_thw=s.image_grid_thw).logits  # fmt: skip
            logp = torch.log_softmax(logits[0, len(s.prompt_ids) - 1 : -1].float(), -1)
            target = torch.tensor(s.token_ids)
            (-a * logp.gather(-1, target.unsqueeze(-1)).sum()).backward()
            count += len(s.token_ids)
    assert int(out.count) == count
    for name, g in packed.items():
        assert torch.allclose(g, model.get_parameter(name).grad, atol=1e-5, rtol=1e-3), name


def test_ratio_clipping(vlm):
    model, _, _ = vlm
    rollouts, runs = sampled_runs(vlm, SECTION)
    batch = rollouts.batch(runs)
    batch["old_logprobs"] = batch["old_logprobs"] - 1.0  # r = e > 1 + ε on every scored token
    batch["advantages"] = batch["advantages"].abs() + 1.0  # A > 0: min(rA, (1+ε)A) is flat
    keep = ~torch.isnan(batch["old_logprobs"]) | (batch["labels"] == IGNORE_INDEX)
    batch["labels"] = torch.where(keep, batch["labels"], IGNORE_INDEX)  # scored tokens only
    model.zero_grad()
    agent_pg_objective(model, batch).loss_sum.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    batch["advantages"] = -batch["advantages"]  # A < 0: min picks rA, the gradient flows
    model.zero_grad()
    agent_pg_objective(model, batch).loss_sum.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_step_examples_need_kept_samples():
    run = expert_runs()[0]
    with pytest.raises(ValueError, match="keep_samples"):
        step_examples(run)


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


@pytest.mark.parametrize("draws, thoughts", [(1, "free"), (2, "expert")])
def test_online_grpo_smoke_run(tmp_path, vlm, draws, thoughts):
    model, tok, _ = vlm
    overrides = [f"out_dir={tmp_path / 'rl'}", "rl.pool_tasks=2", "rl.tasks_per_rollout=1", "rl.group_size=2",
                 "rl.max_steps=2", "rl.eval_tasks=1", "rl.eval_max_steps=1", "rl.max_new_tokens=48", "train.max_steps=2", "train.batch_size=1",
                 "train.eval_every=0", "train.save_every=0", "log.progress=false", "log.plot=false",
                 "optim.warmup_steps=1", "data.seq_len=256", f"rl.max_draws={draws}", f"rl.thoughts={thoughts}"]  # fmt: skip
    summary = train_agent_rl(load_config(None, overrides, AgentRLConfig), model, tok)
    assert summary["step"] == 2 and summary["rl_tasks"] >= 1
    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "episode_reward" in x]
    assert len(logged) == 2 and all(0 <= x["episode_reward"] <= 1.1 for x in logged)
    assert all(("draws" in x) == (draws > 1) and x.get("draws", 1) in (1, 2) for x in logged)
    assert (
        json.loads((tmp_path / "rl" / "agent_eval.json").read_text())["episodes"]["episodes"] == 1
    )
    start = json.loads((tmp_path / "rl" / "agent_eval_start.json").read_text())  # before RL
    assert start["episodes"]["episodes"] == 1


def test_bad_rl_sections():
    for override, message in [("rl.group_size=1", "group_size"), ("rl.split=dev", "rl.split"),
                              ("rl.typing=any", "rl.typing"), ("rl.thoughts=any", "rl.thoughts"),
                              ("rl.clicks=any", "rl.clicks"),
                              ("rl.composed=true rl.split=heldout", "training-only"),
                              ("rl.clauses=0.5 rl.split=heldout", "training-only"),
                              ("rl.clauses=1.5", "rl.clauses"),
                              ("rl.messages=0.5 rl.split=heldout", "training-only"),
                              ("rl.messages=-0.5", "rl.messages"),
                              ("rl.train_grounded=true rl.clicks=pointer", "train_grounded"),
                              ("rl.train_grounded=true rl.greedy_pointer=true", "train_grounded"),
                              ("rl.ground_samples=4", "ground_samples"),
                              ("rl.ground_temperature=1.5", "ground_samples"),
                              ("rl.ground_samples=4 rl.train_grounded=true "
                               "rl.ground_temperature=-1", "ground_temperature"),
                              ("rl.pointer_lr_scale=0", "pointer_lr_scale"),
                              ("rl.ground_samples=1 rl.train_grounded=true", "ground_samples"),
                              ("rl.ground_samples=4 rl.train_grounded=true rl.ground_weight=-1",
                               "ground_samples"),
                              ("rl.screen_questions=8", "screen_questions"),
                              ("rl.screen_questions=8 rl.ground_samples=4 rl.train_grounded=true "
                               "rl.screen_open_rate=2", "screen_questions"),
                              ("rl.screen_questions=8 rl.ground_samples=4 rl.train_grounded=true "
                               "rl.screen_focus=-0.5", "screen_focus")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            train_agent_rl(load_config(None, override.split(), AgentRLConfig))
    with pytest.raises(ConfigError, match="model.init_from"):
        train_agent_rl(load_config(None, [], AgentRLConfig))


# ---------------------------------------------------------------------- pointer models
@pytest.fixture(scope="module")
def pvlm(vlm):
    """The tiny VLM with a random pointer head: its clicks come from pointing."""
    model, tok, proc = vlm
    torch.manual_seed(1)
    pointer = VisionLanguageModel(replace(model.config, pointer_size=16))
    pointer.load_state_dict(model.state_dict(), strict=False)
    return pointer, tok, proc


# under the grammar a random model reaches a coordinate action on most steps
PSECTION = replace(SECTION, constrained=True, max_new_tokens=100)


def pointer_logprob(model, sample, p) -> float:
    """log p(k) of pointer choice ``p`` recomputed from a plain one-row forward of the sample."""
    ids = (sample.prompt_ids + sample.token_ids)[: p.position + 1]
    hidden = model(torch.tensor([ids]), sample.pixel_values, sample.image_grid_thw,
                   output_hidden_states=True).hidden_states[0]  # fmt: skip
    image = (torch.tensor(ids) == model.config.image_token_id).nonzero().flatten()
    n = p.grid[0] * p.grid[1]  # the last image's tokens are the last n placeholders
    logits = model.pointer_head(hidden[-1:], hidden[image[-n:]][None])[0]
    return torch.log_softmax(logits, -1)[p.index]


def test_pointer_rollouts_train_the_lm_on_sampled_tokens_and_the_head_on_its_choices(pvlm):
    model, tok, _ = pvlm
    rollouts, runs = sampled_runs(pvlm, PSECTION)
    samples = [s for run in runs for s in run.samples]
    choices = [p for s in samples for p in s.pointers]
    assert len(choices) > 0 and any(not all(s.sampled) for s in samples)
    batch = rollouts.batch(runs)
    assert batch["pointer_queries"].shape == (len(choices), 2)
    labelled = [batch["labels"][r][batch["labels"][r] != IGNORE_INDEX].tolist()
                for r in range(batch["labels"].shape[0])]  # fmt: skip
    kept = [t for s in samples for t, f in zip(s.token_ids, s.sampled, strict=True) if f]
    assert sorted(sum(labelled, [])) == sorted(kept)  # spliced tokens get no LM term
    queried = batch["input_ids"][batch["pointer_queries"][:, 0], batch["pointer_queries"][:, 1]]
    assert all(tok.decode([t])[-1] in "(," for t in queried.tolist())
    assert sorted(batch["pointer_old"].tolist()) == pytest.approx(
        sorted(p.logprob for p in choices), abs=1e-6
    )
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    n_lm = int((batch["labels"] != IGNORE_INDEX).sum())
    assert int(out.count) == n_lm + len(choices)
    assert float(out.metrics["pointer_gap"] / out.count) < 1e-4  # the ratio starts at 1
    assert float(out.metrics["logprob_gap"] / out.count) < 1e-4
    out.loss_sum.backward()
    head = [p.grad for p in model.pointer_head.parameters()]
    assert all(g is not None for g in head) and sum(float(g.abs().sum()) for g in head) > 0


def test_greedy_pointer_rollouts_train_the_lm_only(pvlm):
    """``rl.greedy_pointer``: rollouts click at the pointer's readout and record no choice,
    so the batch has no pointer terms and the head gets no gradient."""
    model, _, _ = pvlm
    rollouts, runs = sampled_runs(pvlm, replace(PSECTION, greedy_pointer=True))
    samples = [s for run in runs for s in run.samples]
    assert all(s.pointers == [] for s in samples) and any(not all(s.sampled) for s in samples)
    batch = rollouts.batch(runs)
    assert batch["pointer_queries"].shape[0] == 0
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    assert int(out.count) == int((batch["labels"] != IGNORE_INDEX).sum())
    out.loss_sum.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0
               for p in model.pointer_head.parameters())  # fmt: skip


def test_grounded_click_rollouts_record_only_context_pointing(pvlm):
    """``rl.clicks=grounded``: a click whose thought names an element is grounded and not
    recorded (RL trains the text that chose it); other coordinate actions (a scroll, a
    thought naming nothing) keep their recorded pointer choice; the batch holds exactly the
    recorded ones."""
    rollouts, runs = sampled_runs(pvlm, replace(PSECTION, clicks="grounded"))
    samples = [s for run in runs for s in run.samples]
    grounded = 0
    for s in samples:
        action = s.text.split("\nAction: ")[-1]
        if action.split("(")[0] in ("click", "left_double", "right_single") and response_target(
            s.text
        ):
            assert s.pointers == []
            grounded += 1
        elif action.split("(")[0] in ("click", "left_double", "right_single", "scroll", "drag"):
            assert len(s.pointers) >= 1
    assert grounded > 0
    batch = rollouts.batch(runs)
    assert batch["pointer_queries"].shape[0] == sum(len(s.pointers) for s in samples)


def test_pointer_ratio_term_equals_a_hand_computation_with_clipping(pvlm):
    model, _, _ = pvlm
    rollouts, runs = sampled_runs(pvlm, PSECTION)
    batch = rollouts.batch(runs)
    batch["advantages"] = torch.zeros_like(batch["advantages"])  # the pointer terms only
    batch["pointer_old"] = batch["pointer_old"] - 1.0  # ρ = e > 1 + ε
    choices = [(s, p) for run in runs for s in run.samples for p in s.pointers]  # batch order
    assert batch["pointer_index"].tolist() == [p.index for _, p in choices]
    assert len(choices) >= 2  # A = +1 (clipped: ρ > 1 + ε) and A = -1 (not) both occur
    signs = [1.0 if j % 2 == 0 else -1.0 for j in range(len(choices))]
    batch["pointer_advantages"] = torch.tensor(signs)
    out = agent_pg_objective(model, batch)
    eps, want = SECTION.clip_eps, 0.0
    for (s, p), a in zip(choices, signs, strict=True):
        with torch.no_grad():
            ratio = math.exp(float(pointer_logprob(model, s, p)) - (p.logprob - 1.0))
        want -= min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
    assert float(out.loss_sum.detach()) == pytest.approx(want, rel=1e-4)
    # A > 0 on every choice: min(ρA, (1+ε)A) is flat, no gradient; A < 0: it flows
    for a, flows in ((1.0, False), (-1.0, True)):
        batch["pointer_advantages"] = torch.full_like(batch["pointer_advantages"], a)
        model.zero_grad()
        agent_pg_objective(model, batch).loss_sum.backward()
        grad = sum(float(p.grad.abs().sum()) for p in model.pointer_head.parameters())
        assert (grad > 0) == flows


def test_pointerless_batches_are_unchanged(vlm, pvlm):
    rollouts, runs = sampled_runs(vlm, SECTION)
    batch = rollouts.batch(runs)
    assert batch["pointer_index"].numel() == 0 and batch["pointer_queries"].shape == (0, 2)
    out = agent_pg_objective(vlm[0], batch)
    assert "pointer_gap" not in out.metrics
    # a pointer model's batch without a pointer choice: LM terms only, the head in the graph
    model = pvlm[0]
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    assert int(out.count) == int((batch["labels"] != IGNORE_INDEX).sum())
    assert float(out.metrics["pointer_gap"]) == 0.0
    out.loss_sum.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.pointer_head.parameters())


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["rl.train_grounded=true", "rl.ground_samples=4", "rl.pointer_lr_scale=30"],
        ["rl.train_grounded=true", "rl.ground_samples=4", "rl.screen_questions=6"],
        ["rl.train_grounded=true", "rl.ground_samples=4", "rl.state_tasks=1"],
    ],
)
def test_online_grpo_with_a_pointer_model(tmp_path, pvlm, extra):
    model, tok, _ = pvlm
    model = copy.deepcopy(model)
    overrides = [*extra, f"out_dir={tmp_path / 'rl'}", "rl.pool_tasks=2", "rl.failed_only=false",
                 "rl.tasks_per_rollout=1", "rl.group_size=2", "rl.max_steps=2", "rl.constrained=true",
                 "rl.eval_tasks=1", "rl.eval_max_steps=1", "rl.max_new_tokens=100", "train.max_steps=2",
                 "train.batch_size=1", "train.eval_every=0", "train.save_every=0", "log.progress=false",
                 "log.plot=false", "optim.warmup_steps=1", "data.seq_len=256"]  # fmt: skip
    summary = train_agent_rl(load_config(None, overrides, AgentRLConfig), model, tok)
    assert summary["step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "pointer_gap" in x]
    assert len(logged) == 2 and all(x["pointer_gap"] < 1e-3 for x in logged)
    if "rl.screen_questions=6" in extra:  # the stream's sampled grounding accuracy is logged
        assert all(0 <= x["screen_hits"] <= 1 for x in logged)
    if "rl.state_tasks=1" in extra:  # the state groups' share of expert moves is logged
        assert all(0 <= x["state_match"] <= 1 for x in logged)
    saved = json.loads((tmp_path / "rl" / "model" / "config.json").read_text())
    assert saved["pointer_head"]["size"] == 16


def test_mid_rollout_state_resamples_that_rollout(vlm):
    """μ = 3 updates per rollout: the iterator yields one rollout's batch three times; saved
    between them, the state does not count that rollout (a resume re-samples it)."""
    model, tok, proc = vlm
    tasks = [sample_task(s) for s in range(3)]
    section = replace(SECTION, iterations=3, tasks_per_rollout=1)
    r = AgentRollouts(model, tok, proc, tasks, section, seed=1)
    assert r.state_dict() == {"rollouts": 0}
    it = iter(r)
    batches = [next(it) for _ in range(3)]
    assert batches[0] is batches[1] is batches[2]
    assert r.state_dict() == {"rollouts": 1}
    nxt = next(it)
    assert nxt is not batches[0] and r.state_dict() == {"rollouts": 1}  # 1 of 3 updates done
    next(it)
    next(it)
    assert r.state_dict() == {"rollouts": 2}
    with pytest.raises(ConfigError, match="rl.iterations"):
        train_agent_rl(load_config(None, ["rl.iterations=0"], AgentRLConfig))


def test_dynamic_sampling_redraws_groups_whose_rewards_agree(vlm, monkeypatch):
    """A scripted `run_episodes`: the first draw's group all fail, the second's differ, the
    third's all succeed. One draw keeps whatever it got; three keep the second draw's group
    and log 2 draws; with no informative draw at all the last draw's group is kept."""
    import lmforge.agents.rl as rl_module
    from lmforge.agents.metrics import EpisodeRecord
    from lmforge.agents.rollout import EpisodeRun

    model, tok, proc = vlm
    tasks = [sample_task(s) for s in range(6)]
    outcomes = [[False, False], [True, False], [True, True]]
    played = []

    def scripted(policy, tasks, max_steps, keep_samples=False, expert_steps=None):
        played.append([t.instruction for t in tasks])
        ok = outcomes[(len(played) - 1) % 3]
        return [EpisodeRun(t, EpisodeRecord(t.template, x)) for t, x in zip(tasks, ok, strict=True)]

    monkeypatch.setattr(rl_module, "run_episodes", scripted)
    section = replace(SECTION, tasks_per_rollout=1, group_size=2, format_weight=0.0)
    one = AgentRollouts(model, tok, proc, tasks, section, seed=1)
    assert [r.record.success for r in one.play()] == [False, False] and len(played) == 1
    played.clear()  # the script starts over
    three = AgentRollouts(model, tok, proc, tasks, replace(section, max_draws=3), seed=1)
    runs = three.play()
    assert [r.record.success for r in runs] == [True, False] and three.draws == 2
    assert len(played) == 2 and played[0] != played[1]  # a new task for the second draw
    outcomes[:] = [[True, True]] * 3
    assert [r.record.success for r in three.play()] == [True, True] and three.draws == 3
    # each rollout owns max_draws places in the order: every task once per pass
    seen = []
    for n in range(2):
        three.rollouts = n
        seen += [t.instruction for d in range(3) for t in three.rollout_tasks(d)]
    assert sorted(seen) == sorted(t.instruction for t in tasks)
    for override, message in [("rl.max_draws=0", "rl.max_draws"),
                              ("rl.max_draws=2", "rl.groups=episode")]:  # fmt: skip
        bad = [override] + (["rl.groups=state"] if override.endswith("2") else [])
        with pytest.raises(ConfigError, match=message):
            train_agent_rl(load_config(None, bad, AgentRLConfig))
