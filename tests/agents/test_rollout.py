"""Episodes side by side: the expert oracle scores 100% success and grounding with no
invalid actions; a policy that writes garbage scores 0 and is all invalid; a policy that
presses the wrong button fails with the right grounding figure; GIFs hold every frame; a
pointer model's clicks are what the episode records."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmforge.agents.expert import expert_step
from lmforge.agents.metrics import summarize
from lmforge.agents.policy import ExpertPolicy, VLMPolicy, agent_messages
from lmforge.agents.rollout import (
    evaluate_agent,
    open_episode,
    record_step,
    run_episodes,
    save_gif,
)
from lmforge.agents.tasks import sample_task
from lmforge.agents.widgets import box_center
from lmforge.train.vlm_sft import image_processor_for

# the plain grammar (a test's own `policy.regex` applies) and clicks pointed in the
# episode's context — not `VLMPolicy`'s defaults (typing and thoughts held, grounded clicks)
PLAIN = {"typing": "free", "thoughts": "free", "clicks": "pointer"}


def test_expert_oracle_scores_full_marks():
    summary, runs = evaluate_agent(ExpertPolicy(), "heldout", num_tasks=12, seed=0)
    assert summary["success_rate"] == 1.0 and summary["grounding_accuracy"] == 1.0
    assert summary["invalid_action_rate"] == 0.0 and summary["grounded_steps"] > 12
    assert sum(v["episodes"] for v in summary["per_template"].values()) == 12
    assert all(len(r.frames) == len(r.record.steps) + 1 for r in runs)


class Garbage:
    def act(self, contexts):
        return ["I do not know"] * len(contexts)


class PressCancel:
    """Clicks the secondary button at once (wrong for every 'press' task)."""

    def act(self, contexts):
        out = []
        for c in contexts:
            b = c.env.window.find("secondary")
            x, y = box_center(b.box)
            out.append(f"Thought: cancel\nAction: click({x},{y})")
        return out


def test_garbage_policy_is_all_invalid_and_truncated():
    runs = run_episodes(Garbage(), [sample_task(s) for s in range(3)], max_steps=4)
    for r in runs:
        assert not r.record.success and len(r.record.steps) == 4
        assert all(not s.valid for s in r.record.steps)


def test_wrong_button_fails_and_grounding_counts_it():
    tasks = [sample_task(s, template="dropdown_save") for s in range(3)]
    runs = run_episodes(PressCancel(), tasks, max_steps=5)
    for r in runs:
        assert not r.record.success and len(r.record.steps) == 1  # pressing ends the episode
        step = r.record.steps[0]
        assert step.valid and step.target_box is not None  # the expert would open the dropdown
        assert not (step.target_box[0] <= step.point[0] < step.target_box[2]
                    and step.target_box[1] <= step.point[1] < step.target_box[3])  # fmt: skip


def test_gif_has_every_frame(tmp_path):
    runs = run_episodes(ExpertPolicy(), [sample_task(1, template="list_open")])
    path = save_gif(runs[0], tmp_path / "ep.gif", scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == len(runs[0].frames) and gif.size == (256, 256)


def test_pointer_policy_episodes_record_the_pointed_clicks(tmp_path, agent_vlm_factory):
    """A (random) pointer model's episodes: every step that points is recorded at the
    pointer's click, so grounding accuracy and GIFs work unchanged."""
    model, tok, _, _ = agent_vlm_factory(2, 1, pointer_size=8)
    policy = VLMPolicy(
        model, tok, image_processor_for(model, 128), temperature=1.0, seed=2, **PLAIN
    )
    policy.regex = r"Thought: [a-z ]{1,8}\nAction: click\([0-9]{1,3},[0-9]{1,3}\)"  # it points
    tasks = [sample_task(s, template="dropdown_save") for s in range(3)]
    runs = run_episodes(policy, tasks, max_steps=3, keep_samples=True)
    pointed = 0
    for run in runs:
        for sample, step in zip(run.samples, run.record.steps, strict=True):
            if sample.pointers:
                pointed += 1
                assert step.valid and step.point == sample.pointers[0].point
    assert pointed > 0
    summary = summarize([r.record for r in runs])
    assert summary["grounded_steps"] > 0 and 0 <= summary["grounding_accuracy"] <= 1
    path = save_gif(runs[0], tmp_path / "pointer.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == len(runs[0].frames)


def test_the_next_prompt_shows_the_last_thought():
    env, run, context = open_episode(sample_task(2, template="dropdown_save"), max_steps=5)
    first = agent_messages(context, 2)[0][0]["content"][-1]["text"]
    assert "\nLast thought: none\n" in first
    step = expert_step(run.task, env.window)
    record_step(env, run, context, f"Thought: {step.thought}\nAction: wait()", step)
    assert context.thoughts == [step.thought] and context.previous == ["wait()"]
    text = agent_messages(context, 2)[0][0]["content"][-1]["text"]
    assert f"\nLast thought: {step.thought}\n" in text
    record_step(env, run, context, "I do not know", step)  # unparseable: no thought to show
    assert context.previous[-1] == "invalid" and context.thoughts[-1] == ""
    assert "\nLast thought: none\n" in agent_messages(context, 2)[0][0]["content"][-1]["text"]


def test_episodes_can_start_from_the_experts_states():
    task = sample_task(4, template="dropdown_save")
    (expert,) = run_episodes(ExpertPolicy(), [task])
    n = len(expert.record.steps)
    assert n >= 3 and expert.record.success
    for k in range(1, n):
        env, run, context = open_episode(task, max_steps=4, expert_steps=k)
        # the expert's first k steps are the context's history, not the run's steps
        assert context.previous == expert.history[:k] and run.history is context.previous
        assert context.thoughts == [r.split("\n")[0].removeprefix("Thought: ")
                                    for r in expert.responses[:k]]  # fmt: skip
        assert len(context.screenshots) == k + 1 and len(run.frames) == 1
        assert np.array_equal(context.screenshots[-1], expert.frames[k])
        assert run.record.steps == [] and run.expert_steps == k
        assert env.max_steps == 4 + k  # the policy still has its own max_steps
    with pytest.raises(ValueError, match="ends 'dropdown_save'"):
        open_episode(task, expert_steps=n)
    # the expert finishing what it started succeeds in n - k steps of its own
    runs = run_episodes(ExpertPolicy(), [task, task], max_steps=5, expert_steps=[1, n - 1])
    assert [len(r.record.steps) for r in runs] == [n - 1, 1]
    assert all(r.record.success for r in runs)
    with pytest.raises(ValueError, match="2 expert_steps for 1 tasks"):
        run_episodes(ExpertPolicy(), [task], expert_steps=[0, 1])
