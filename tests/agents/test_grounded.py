"""Grounded clicks: every expert thought reads back as its sentence and slots; every click
or double-click of the expert (train and held-out templates, scrolling and dragging) names,
through `click_target`, exactly one element on its screen, and the expert's point lies
inside it; thoughts that name no element (scrolls, drags, typing, free text, an injected
mistake's) give None; the grounding query is the grounding data's own prompt with the
answer's ``click(`` appended."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmforge.agents.actions import Click, LeftDouble, action_point, format_response
from lmforge.agents.agent_data import grounding_examples, grounding_question, screen_elements
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import expert_step
from lmforge.agents.grounded import (
    TARGETS,
    click_target,
    grounding_query,
    read_thought,
    response_target,
)
from lmforge.agents.render import render_window
from lmforge.agents.tasks import sample_task
from lmforge.agents.thoughts import REFLECTION, THOUGHTS, say
from lmforge.agents.widgets import box_contains
from lmforge.tokenizer import Tokenizer
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE, ImageProcessor, ImageProcessorConfig
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS, encode_prompt


def expert_steps(split: str, seeds: range):
    """(window before the step, the expert's step) over whole expert episodes; even seeds
    drag far rows into view."""
    for seed in seeds:
        task = sample_task(seed, split)
        env = GUIEnv()
        env.reset(options={"task": task})
        done = False
        while not done:
            step = expert_step(task, env.window, None, seed % 2 == 0)
            yield env.window, step
            *_, terminated, truncated, _ = env.step(step.action)
            done = terminated or truncated


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_expert_click_names_one_element_that_holds_its_point(split):
    clicks = named = 0
    seen = set()
    for window, step in expert_steps(split, range(60)):
        name, slots = read_thought(step.thought)
        assert THOUGHTS[name].format(**slots) == step.thought  # reads back exactly
        seen.add(name)
        target = click_target(step.thought)
        if not isinstance(step.action, (Click, LeftDouble)):
            assert target is None, step.thought  # typing, keys, scrolls, drags name none
            continue
        clicks += 1
        assert target is not None, step.thought
        found = [e for e in screen_elements(window) if (e.kind, e.label) == target]
        assert len(found) == 1, (step.thought, target, found)
        assert box_contains(found[0].box, *action_point(step.action))
        named += 1
    assert clicks == named > 50
    assert {"tick", "press"} <= seen  # both splits click boxes and buttons


def test_targets_of_each_clicking_sentence():
    assert click_target(say("tab", label="Sync", tab="Privacy")) == ("tab", "Privacy")
    assert click_target(say("untick", label="Sync")) == ("checkbox", "Sync")
    assert click_target(say("radio", label="Plan", want="Pro")) == ("option", "Pro")
    assert click_target(say("dd_open", label="Size", value="Small", want="Large")) == (
        "dropdown",
        "Size",
    )
    assert click_target(say("dd_pick", label="Size", want="Large")) == ("option", "Large")
    assert click_target(say("field", field="Username")) == ("field", "Username")
    assert click_target(say("submit_field", label="Search")) == ("field", "Search")
    assert click_target(say("press", button="Log in")) == ("button", "Log in")
    assert click_target(say("open_row", label="memo 12")) == ("row", "memo 12")
    assert click_target(say("dialog", title="Welcome")) == ("close box", "Welcome")
    fixed = REFLECTION + say("tick", label="Beta")
    assert click_target(fixed) == ("checkbox", "Beta")  # a correction names its box too
    assert set(TARGETS) <= set(THOUGHTS)


@pytest.mark.parametrize(
    "thought",
    [
        say("list_scroll", label="memo 3", dir="down"),
        say("pane_drag", label="Sync", dir="down"),
        say("type_into", want="bob", field="Username"),
        say("done"),
        "I toggle it.",  # an injected mistake's thought (training data only)
        "Press the thing",
        "",
    ],
)
def test_thoughts_that_name_no_element(thought):
    assert click_target(thought) is None


def test_response_target_reads_the_thought_line():
    text = format_response(say("press", button="OK"), Click(3, 4))
    assert response_target(text) == ("button", "OK")
    assert response_target(text.split("click(")[0] + "click(") == ("button", "OK")
    assert response_target("Action: click(1,2)") is None
    assert response_target("Thought: The task is done.\nAction: finished(done)") is None


def test_grounding_query_is_the_grounding_datas_prompt():
    task = sample_task(5, "heldout")
    (ex,) = grounding_examples(task.fresh_window(), random.Random(0), count=1)
    texts = [ex.question + " " + ex.answer, "click("]
    tok = Tokenizer.train(texts, vocab_size=300, min_frequency=1,
                          special_tokens=VLM_SPECIAL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    proc = ImageProcessor(ImageProcessorConfig(patch_size=8, merge_size=1, min_pixels=128 * 128,
                                               max_pixels=128 * 128))  # fmt: skip
    kind, label = ex.question.removeprefix("Click on the ").removesuffix("'.").split(" '")
    assert grounding_question(kind, label) == ex.question
    shot = np.asarray(render_window(task.fresh_window()))
    ids, pixels, grid = grounding_query(tok, proc, kind, label, shot)
    want, want_pixels, want_grid = encode_prompt(tok, proc, ex.messages()[:1], ex.images)
    assert ids == want + tok.encode("click(")
    assert torch_equal(pixels, want_pixels) and torch_equal(grid, want_grid)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
