"""Tests for lmforge.agents.rl_screens: the grounding stream's questions are reproducible and
answerable on their own screenshot, and each becomes a grounding bandit whose points are the
pointer's samples (log-probs the model's own), rewarded 1 inside the element asked about."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmforge.agents.agent_data import covered, screen_elements
from lmforge.agents.grounded import grounding_query
from lmforge.agents.policy import VLMPolicy
from lmforge.agents.random_screens import random_window
from lmforge.agents.render import render_window
from lmforge.agents.rl_config import AgentRLSection
from lmforge.agents.rl_screens import (
    FOCUS_KINDS,
    FOCUS_WEIGHTS,
    ScreenQuestion,
    rollout_screens,
    screen_bandits,
    screen_choice,
    screen_questions,
)
from lmforge.agents.widgets import box_contains
from lmforge.models.pointer_head import to_pixels, token_centre


@pytest.fixture(scope="module")
def pvlm(agent_vlm_factory, add_pointer_head):
    model, tok, proc, _ = agent_vlm_factory(4, 2)
    return add_pointer_head(model), tok, proc


def policy(pvlm, k=8, temperature=1.0):
    model, tok, proc = pvlm
    return VLMPolicy(model, tok, proc, temperature=temperature, seed=3, logprobs=True,
                     clicks="grounded", sample_grounded=True, ground_samples=k)  # fmt: skip


def test_questions_are_reproducible_and_asked_about_shown_uncovered_elements():
    qs = screen_questions(seed=2, rollout=5, count=12)
    again = screen_questions(seed=2, rollout=5, count=12)
    assert [(q.kind, q.label, q.boxes) for q in qs] == [(q.kind, q.label, q.boxes) for q in again]
    assert all(np.array_equal(a.screenshot, b.screenshot) for a, b in zip(qs, again, strict=True))
    other = screen_questions(seed=2, rollout=6, count=12)
    assert [(q.kind, q.label) for q in qs] != [(q.kind, q.label) for q in other]
    for j, q in enumerate(qs):  # rebuilt from the stream's seed: the element is there
        win = random_window(random.Random(f"agent-rl-screens/2/5/{j}"), 128, 128, dropdown_rate=0.5)
        shown = [e for e in screen_elements(win) if not covered(win, e)]
        assert np.array_equal(q.screenshot, np.asarray(render_window(win)))
        want = tuple(e.box for e in shown if (e.kind, e.label) == (q.kind, q.label))
        assert q.boxes == want and len(want) >= 1
    assert {q.kind for q in screen_questions(0, 0, 40)} >= {"option", "checkbox", "button"}
    opened = screen_questions(0, 0, 30, open_rate=1.0)
    assert sum(q.kind == "option" for q in opened) > sum(
        q.kind == "option" for q in screen_questions(0, 0, 30, open_rate=0.0)
    )


def test_a_screen_choice_samples_points_from_the_pointer_on_the_grounding_question(pvlm):
    model, tok, proc = pvlm
    q = screen_questions(1, 0, 1)[0]
    g = screen_choice(policy(pvlm), q, torch.Generator().manual_seed(0))
    ids, pixels, grid = grounding_query(tok, proc, q.kind, q.label, q.screenshot)
    assert g.ids == ids and torch.equal(g.pixel_values, pixels)
    logits, grids = model.point(torch.tensor([ids]), pixels, grid)
    logp = logits.log_softmax(-1)[0]
    assert g.choice.position == len(ids) - 1 and g.choice.image == 0
    assert g.choice.logprob == pytest.approx(float(logp[g.choice.index]), abs=1e-5)
    assert g.choice.point == to_pixels(token_centre(g.choice.index, grids[0]), (128, 128))
    assert len(g.alternatives) == 7
    for k, lp, point in g.alternatives:
        assert lp == pytest.approx(float(logp[k]), abs=1e-5)
        assert point == to_pixels(token_centre(k, grids[0]), (128, 128))
    # the same generator state draws the same points
    again = screen_choice(policy(pvlm), q, torch.Generator().manual_seed(0))
    assert again.choice.index == g.choice.index and again.alternatives == g.alternatives


def test_screen_bandits_reward_points_inside_the_element(pvlm):
    qs = screen_questions(3, 1, 6)
    p = policy(pvlm, k=8)
    bandits, hits = screen_bandits(p, qs, weight=2.0, seed=9)
    # recomputed: the same draws, rewards from the boxes, GRPO within each question's points
    generator, want, all_rewards = torch.Generator().manual_seed(9), [], []
    for q in qs:
        g = screen_choice(p, q, generator)
        points = [g.choice.point, *(pt for _, _, pt in g.alternatives)]
        r = torch.tensor([float(any(box_contains(b, *pt) for b in q.boxes)) for pt in points])
        all_rewards += r.tolist()
        if r.min() != r.max():
            want.append((2.0 * (r - r.mean()) / (r.std() + 1e-4)).tolist())
    assert want and 0 < hits < 1  # some questions split their points
    assert hits == pytest.approx(sum(all_rewards) / len(all_rewards))
    assert [a for _, a in bandits] == [pytest.approx(w, abs=1e-4) for w in want]
    for (example, _, choices), advantages in bandits:
        assert len(choices) == len(advantages) == 8 == len(example.pointer_positions)
    # a question whose element covers the whole screen: every point hits, nothing to learn
    whole = ScreenQuestion(qs[0].screenshot, qs[0].kind, qs[0].label, ((0, 0, 128, 128),))
    none, rate = screen_bandits(p, [whole])
    assert none == [] and rate == 1.0
    # at temperature 0 there is one point per question: no bandit
    greedy = policy(pvlm, k=8, temperature=0.0)
    assert screen_bandits(greedy, qs)[0] == []


def test_rollout_screens_use_the_sections_settings(pvlm):
    section = AgentRLSection(clicks="grounded", train_grounded=True, ground_samples=4,
                             screen_questions=5, ground_weight=3.0)  # fmt: skip
    p = policy(pvlm, k=4)
    bandits, hits = rollout_screens(p, section, seed=1, rollout=2)
    qs = screen_questions(1, 2, 5, 128, 128, section.screen_open_rate, section.screen_focus)
    want, rate = screen_bandits(p, qs, 3.0, 1 * 7919 + 2)
    assert bandits and hits == rate and [a for _, a in bandits] == [a for _, a in want]
    assert [c for (_, _, c), _ in bandits] == [c for (_, _, c), _ in want]


def test_a_window_with_nothing_to_click_gives_way_to_the_next():
    rng = random.Random("agent-rl-screens/0/38/22")  # three headings: no element
    win = random_window(rng, 128, 128, dropdown_rate=0.5)
    assert screen_elements(win) == []
    q = screen_questions(0, 38, 23)[22]
    nxt = random_window(rng, 128, 128, dropdown_rate=0.5)  # the stream's next window asks
    assert np.array_equal(q.screenshot, np.asarray(render_window(nxt))) and q.boxes


def test_focused_questions_ask_about_rows_and_options_on_their_own_windows():
    plain = screen_questions(4, 7, 40)
    assert [(q.kind, q.label) for q in plain] == [  # focus 0 leaves the stream as it was
        (q.kind, q.label) for q in screen_questions(4, 7, 40, focus=0.0)
    ]
    focused = screen_questions(4, 7, 40, focus=1.0)
    assert {q.kind for q in focused} == set(FOCUS_KINDS)  # rows and options only, both asked
    for j, q in enumerate(focused):  # rebuilt: the stream's draw, then a list-heavy window
        rng = random.Random(f"agent-rl-screens/4/7/{j}")
        rng.random()  # the stream's focus draw (always focused at 1.0)
        while True:
            win = random_window(rng, 128, 128, dropdown_rate=0.5, weights=FOCUS_WEIGHTS)
            shown = [e for e in screen_elements(win) if not covered(win, e)]
            if any(e.kind in FOCUS_KINDS for e in shown):
                break
        assert np.array_equal(q.screenshot, np.asarray(render_window(win)))
        assert q.boxes == tuple(e.box for e in shown if (e.kind, e.label) == (q.kind, q.label))
    half = screen_questions(4, 7, 200, focus=0.5)
    share = sum(q.kind in FOCUS_KINDS for q in half) / 200
    base = sum(q.kind in FOCUS_KINDS for q in screen_questions(4, 7, 200)) / 200
    assert share > base + 0.25  # about half focused, beside the plain stream's own share
