"""Episodes side by side: the expert oracle scores 100% success and grounding with no
invalid actions; a policy that writes garbage scores 0 and is all invalid; a policy that
presses the wrong button fails with the right grounding figure; GIFs hold every frame."""

from __future__ import annotations

from PIL import Image

from lmforge.agents.policy import ExpertPolicy
from lmforge.agents.rollout import evaluate_agent, run_episodes, save_gif
from lmforge.agents.tasks import sample_task
from lmforge.agents.widgets import box_center


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
