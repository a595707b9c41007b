"""Tests for lmforge.agents.rl_examples: a step's example is token-exact, and a sampled
grounded click (``sample_grounded`` / ``rl.train_grounded``) becomes a label-free example in
the grounding question's context whose pointer term RL trains — its recorded log-prob is the
packed batch's, so the ratio starts at 1 and the head gets the gradient."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.agents.actions import action_point, parse_response
from lmforge.agents.agent_data import screen_elements
from lmforge.agents.env import GUIEnv
from lmforge.agents.grounded import grounding_query
from lmforge.agents.policy import AgentContext, VLMPolicy
from lmforge.agents.rl import AgentRollouts
from lmforge.agents.rl_config import AgentRLSection
from lmforge.agents.rl_examples import (
    bandit_examples,
    click_rewards,
    grounded_example,
    grounding_bandit,
    sample_example,
    sample_examples,
    step_examples,
    token_rows,
)
from lmforge.agents.rl_objective import agent_pg_objective
from lmforge.agents.rollout import run_episodes
from lmforge.agents.tasks import sample_task
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.pointer_head import to_pixels, token_centre

PRESS = (
    "Thought: Everything is set; I press (Save|OK)\\.\\nAction: click\\([0-9]{1,3},[0-9]{1,3}\\)"
)


@pytest.fixture(scope="module")
def pvlm(agent_vlm_factory, add_pointer_head):
    model, tok, proc, _ = agent_vlm_factory(4, 2)
    return add_pointer_head(model), tok, proc


def contexts(n: int) -> list[AgentContext]:
    out = []
    for seed in range(n):
        env = GUIEnv()
        obs, info = env.reset(options={"task": sample_task(seed, "heldout")})
        out.append(AgentContext(info["instruction"], [obs, obs], [], env))
    return out


def grounded_samples(
    pvlm, temperature=1.0, sample_grounded=True, ground_samples=0, ground_temperature=0.0
):
    model, tok, proc = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=temperature, seed=4, logprobs=True,
                       clicks="grounded", sample_grounded=sample_grounded,
                       ground_samples=ground_samples, ground_temperature=ground_temperature,
                       typing="free", thoughts="free")  # fmt: skip
    policy.regex = PRESS  # every response presses a named button: a grounded click
    cs = contexts(3)
    return cs, policy.sample(cs)


def test_ground_samples_record_more_points_from_the_same_distribution(pvlm):
    model, tok, proc = pvlm
    cs, samples = grounded_samples(pvlm, ground_samples=6)
    for s in samples:
        (g,) = s.grounded
        assert len(g.alternatives) == 5
        logits, grids = model.point(torch.tensor([g.ids]), g.pixel_values, g.image_grid_thw)
        logp = logits.log_softmax(-1)[0]
        for k, lp, point in g.alternatives:
            assert lp == pytest.approx(float(logp[k]))
            assert point == to_pixels(token_centre(k, grids[0]), (128, 128))
    # the clicked point and the action are as without the extra draws
    _, plain = grounded_samples(pvlm)
    assert [s.text for s in plain] == [s.text for s in samples]
    assert all(s.grounded[0].alternatives == () for s in plain)


def test_ground_temperature_spreads_the_other_points_only(pvlm):
    """``ground_temperature``: the K − 1 other points are drawn from softmax(logits / T_g)
    — cold they pile on the mode, hot they spread — while the clicked point, the response
    and every recorded log-prob (untempered) stay as at the rollout's temperature."""
    model, _, _ = pvlm
    _, base = grounded_samples(pvlm, temperature=0.5, ground_samples=16)
    _, cold = grounded_samples(pvlm, temperature=0.5, ground_samples=16, ground_temperature=1e-6)
    _, hot = grounded_samples(pvlm, temperature=0.5, ground_samples=16, ground_temperature=50.0)
    assert [s.text for s in base] == [s.text for s in cold] == [s.text for s in hot]
    spread = {}
    for name, samples in (("cold", cold), ("hot", hot)):
        spread[name] = sum(len({k for k, _, _ in s.grounded[0].alternatives}) for s in samples)
        for s in samples:
            g = s.grounded[0]
            assert g.choice == next(b for b in base if b.text == s.text).grounded[0].choice
            logits, _ = model.point(torch.tensor([g.ids]), g.pixel_values, g.image_grid_thw)
            logp = logits.log_softmax(-1)[0]
            assert all(lp == pytest.approx(float(logp[k])) for k, lp, _ in g.alternatives)
            if name == "cold":  # all on the mode
                assert {k for k, _, _ in g.alternatives} == {int(logp.argmax())}
    assert spread["cold"] == len(cold) and spread["hot"] > 3 * len(hot)


def test_the_grounding_bandit_rewards_points_on_the_named_element(pvlm):
    _, samples = grounded_samples(pvlm, ground_samples=8)
    g = samples[0].grounded[0]
    points = [g.choice.point, *(p for _, _, p in g.alternatives)]
    x, y = points[1]
    box = (x, y, x + 1, y + 1)  # exactly the second point's pixel
    rewards = click_rewards(g, [box])
    assert rewards == [float(p == (x, y)) for p in points]
    scored, advantages = grounding_bandit(g, [box])
    example, old, choices = scored
    assert set(example.labels) == {IGNORE_INDEX} and all(math.isnan(v) for v in old)
    assert example.pointer_positions == [g.choice.position] * 8
    assert choices == [
        (g.choice.index, g.choice.logprob),
        *((k, lp) for k, lp, _ in g.alternatives),
    ]
    r = torch.tensor(rewards)
    assert advantages == pytest.approx(((r - r.mean()) / (r.std() + 1e-4)).tolist(), abs=1e-5)
    assert sum(advantages) == pytest.approx(0.0, abs=1e-5)
    assert grounding_bandit(g, []) is None  # all rewards 0: nothing to learn
    assert grounding_bandit(g, [(0, 0, 128, 128)]) is None  # all 1


def test_bandit_examples_train_each_point_with_its_own_advantage(pvlm):
    model, tok, proc = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=1.0, seed=1, logprobs=True,
                       clicks="grounded", sample_grounded=True, ground_samples=8,
                       typing="free", thoughts="free")  # fmt: skip
    policy.regex = PRESS
    task = sample_task(0, template="dropdown_save")  # its buttons: Save or OK, and Cancel
    run = run_episodes(policy, [task], 3, keep_samples=True)[0]
    assert len(run.named) == len(run.samples)
    window = run.task.fresh_window()  # the first step's state: the named button's box, if shown
    button = run.responses[0].split("I press ")[1].split(".")[0]
    assert run.named[0] == [e.box for e in screen_elements(window) if e.label == button]
    assert any(run.named)
    # the named element, as if it lay exactly under each click's first extra point
    run.named = [[(*s.grounded[0].alternatives[0][2], s.grounded[0].alternatives[0][2][0] + 1,
                   s.grounded[0].alternatives[0][2][1] + 1)] for s in run.samples]  # fmt: skip
    bandits = bandit_examples(run, weight=2.0)
    assert len(bandits) == len(run.samples)
    for (_, _, choices), advantages in bandits:
        assert len(choices) == len(advantages) == 8
        assert sum(advantages) == pytest.approx(0.0, abs=1e-4) and advantages[1] > 1
    section = AgentRLSection(clicks="grounded", train_grounded=True, ground_samples=8)
    rollouts = AgentRollouts(model, tok, proc, [], section)
    scored = [(ex, 1.0) for ex in step_examples(run)] + bandits
    batch = rollouts.pack(scored, torch.tensor(0.0), [False])
    want = [a for _, advantages in bandits for a in advantages]
    got = batch["pointer_advantages"].tolist()
    assert sorted(got) == pytest.approx(sorted([1.0] * (len(got) - len(want)) + want))
    assert float(batch["advantages"].abs().sum()) > 0  # the steps' tokens keep their advantage


def test_sampled_grounded_clicks_are_recorded_in_their_question(pvlm):
    model, tok, proc = pvlm
    cs, samples = grounded_samples(pvlm)
    for c, s in zip(cs, samples, strict=True):
        assert s.pointers == [] and len(s.grounded) == 1
        g = s.grounded[0]
        button = s.text.split("I press ")[1].split(".")[0]
        ids, _, grid = grounding_query(tok, proc, "button", button, c.screenshots[-1])
        assert g.ids == ids and torch.equal(g.image_grid_thw, grid)
        assert (g.choice.position, g.choice.image) == (len(ids) - 1, 0)
        logits, grids = model.point(torch.tensor([ids]), g.pixel_values, g.image_grid_thw)
        assert g.choice.logprob == pytest.approx(float(logits.log_softmax(-1)[0, g.choice.index]))
        want = to_pixels(token_centre(g.choice.index, grids[0]), (128, 128))  # sampled: the centre
        assert action_point(parse_response(s.text, (128, 128)).action) == want == g.choice.point
    # greedy decoding, or sample_grounded off: grounded clicks are read out, not recorded
    assert all(s.grounded == [] for s in grounded_samples(pvlm, temperature=0.0)[1])
    assert all(s.grounded == [] for s in grounded_samples(pvlm, sample_grounded=False)[1])


def test_a_grounded_example_has_no_labels_and_one_pointer_choice(pvlm):
    _, samples = grounded_samples(pvlm)
    s = samples[0]
    step, ground = sample_examples(s)
    assert step[0].input_ids == sample_example(s)[0].input_ids == s.prompt_ids + s.token_ids
    example, old, choices = ground
    g = s.grounded[0]
    assert example.input_ids == g.ids and set(example.labels) == {IGNORE_INDEX}
    assert (example.pointer_positions, example.pointer_images) == ([len(g.ids) - 1], [0])
    assert all(math.isnan(x) for x in old)
    assert choices == [(g.choice.index, g.choice.logprob)] == grounded_example(g)[2]


def test_grounded_choices_train_the_head_in_the_packed_batch(pvlm):
    model, tok, proc = pvlm
    _, samples = grounded_samples(pvlm)
    section = AgentRLSection(clicks="grounded", train_grounded=True)
    rollouts = AgentRollouts(model, tok, proc, [], section)
    advantages = [1.0, -1.0, 0.5]
    scored = [
        (ex, a) for s, a in zip(samples, advantages, strict=True) for ex in sample_examples(s)
    ]
    batch = rollouts.pack(scored, torch.tensor(0.0), [False] * 3)
    assert batch["pointer_index"].tolist() == [s.grounded[0].choice.index for s in samples]
    assert batch["pointer_advantages"].tolist() == advantages
    model.zero_grad()
    out = agent_pg_objective(model, batch)
    n_lm = int((batch["labels"] != IGNORE_INDEX).sum())
    assert int(out.count) == n_lm + 3
    assert float(out.metrics["pointer_gap"] / out.count) < 1e-4  # recorded = recomputed
    out.loss_sum.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.pointer_head.parameters()) > 0


def test_step_examples_cover_every_step_and_need_kept_samples(pvlm):
    model, tok, proc = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=1.0, seed=1, logprobs=True,
                       clicks="grounded", sample_grounded=True,
                       typing="free", thoughts="free")  # fmt: skip
    policy.regex = PRESS
    run = run_episodes(policy, [sample_task(0, template="radio_apply")], 2, keep_samples=True)[0]
    examples = step_examples(run)
    assert len(examples) == len(run.samples) + sum(len(s.grounded) for s in run.samples)
    with pytest.raises(ValueError, match="keep_samples"):
        step_examples(run_episodes(policy, [sample_task(0, template="radio_apply")], 1)[0])


def test_token_rows_place_values_where_rows_pack_tokens():
    values = [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]]
    out = token_rows(values, [[0, 1], [2]], 4, fill=-1.0)
    assert out.tolist() == [[1.0, 2.0, 3.0, -1.0], [4.0, 5.0, 6.0, -1.0]]
