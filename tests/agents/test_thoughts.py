"""The expert's thought language: every thought the expert writes in its trajectories
(train and held-out tasks, with injected mistakes and their corrections, scrolling and
dragging) is a sentence of `THOUGHTS` and matches `thought_regex` of its own instruction's
spans (and the whole response `response_regex`) — but the held-out profile_edit's radio
group, which its instruction does not name; an instruction slot admits only the
instruction's words, a screen slot one or two plain words; a correction may re-tick a box
the instruction does not name; every match fits `MAX_THOUGHT`, even with the longest spans."""

from __future__ import annotations

import random
import re

import pytest

from lmforge.agents.action_grammar import instruction_spans, response_regex
from lmforge.agents.actions import MAX_CONTENT, MAX_THOUGHT, parse_response
from lmforge.agents.agent_data import expert_trajectory
from lmforge.agents.task_templates import COMPOSED_TEMPLATES, TEMPLATES, TRAIN_TEMPLATES
from lmforge.agents.tasks import sample_task
from lmforge.agents.thoughts import (
    FREE_REGEX,
    FREE_WORD,
    FREE_WORDS,
    REFLECTION,
    SLOT,
    THOUGHTS,
    say,
    thought_regex,
)


def test_say_fills_a_template():
    assert say("dd_pick", label="Size", want="Large") == "The Size list is open; I pick Large."
    assert say("done") == "The task is done."
    with pytest.raises(KeyError):
        say("dd_pick", label="Size")


@pytest.mark.parametrize("split", ["train", "heldout", "composed"])
def test_every_expert_thought_is_in_the_language_of_its_instruction(split):
    rng, seen = random.Random(0), set()
    for seed in range(120):
        if split == "composed":  # the training split with the composed templates
            task = sample_task(seed, "train", width=128, height=128, composed=True)
        else:
            task = sample_task(seed, split, width=128, height=128)
        spans = instruction_spans(task.instruction)
        thought = re.compile(thought_regex(spans))
        response = re.compile(response_regex((128, 128), spans, thought_regex(spans)))
        mistake = rng.randrange(4) if rng.random() < 0.5 else None
        traj = expert_trajectory(task, mistake_at=mistake, seed=seed, drag=seed % 3 == 0)
        for step in traj.steps:
            if step.mistake:  # history only, never a target
                continue
            text = parse_response(step.response).thought
            if task.template == "profile_edit" and text.startswith("Plan must be"):
                # the one exception: a held-out template's radio group its instruction does
                # not name ("choose 'Pro'"); every training template names it
                assert "Plan" not in spans and not thought.fullmatch(text)
                continue
            assert thought.fullmatch(text), (task.instruction, text)
            assert response.fullmatch(step.response), step.response
            body = text.removeprefix(REFLECTION)
            names = [n for n, t in THOUGHTS.items() if re.fullmatch(_literal(t), body)]
            assert names, text
            seen.update(names)
        seen.add(task.template)
    want = {"train": TRAIN_TEMPLATES, "heldout": TEMPLATES}.get(split, COMPOSED_TEMPLATES)
    assert set(want) <= seen
    assert {"tab", "dd_open", "dd_pick", "radio", "press"} <= seen


def _literal(template: str) -> str:
    """``template`` with each slot as "anything" (which sentence a thought is)."""
    parts = SLOT.split(template)
    return "".join(re.escape(p) if i % 2 == 0 else ".+" for i, p in enumerate(parts))


def test_instruction_slots_take_only_the_instructions_words():
    rx = re.compile(thought_regex(instruction_spans("Choose 'System' for Theme, then press Apply")))
    assert rx.fullmatch("Theme must be 'System'; I choose it.")
    assert not rx.fullmatch("Theme must be 'Dark'; I choose it.")  # a value from memory
    assert rx.fullmatch("Everything is set; I press Apply.")  # the button: screen text
    assert rx.fullmatch("Everything is set; I press Sign in.")
    rx = re.compile(thought_regex(instruction_spans("Set Size to Medium, then press OK")))
    assert rx.fullmatch("Size shows Small, not Medium; I open the list.")
    assert rx.fullmatch("The Size list is open; I pick Medium.")
    assert not rx.fullmatch("The Font list is open; I pick Off.")
    # the list that is open is screen text (SCREEN_READ); what to pick is the instruction's
    assert rx.fullmatch("The Font list is open; I pick Medium.")
    assert not rx.fullmatch("The Font list is open by mistake; I pick Medium.")
    assert not rx.fullmatch("Mode shows Manual, n must be 'OK'; I choose it.")  # no comma
    assert not rx.fullmatch("Shippick is a listace must be 'OK'; I choose it.")  # ≤ 2 words
    assert not rx.fullmatch("I think the list is fine.")  # not one of the sentences


def test_a_correction_may_name_a_box_the_instruction_does_not():
    rx = re.compile(thought_regex(instruction_spans("Sign in as ivan with 'Remember me' ticked")))
    fix = "'Show password' must be unticked; I untick it."
    assert rx.fullmatch(REFLECTION + fix) and not rx.fullmatch(fix)
    assert rx.fullmatch(REFLECTION + "'Remember me' must be ticked; I tick it.")
    assert rx.fullmatch("'Remember me' must be ticked; I tick it.")


def test_every_match_fits_the_thought_limit():
    """The longest spans (`MAX_CONTENT`) and the longest screen words: each sentence's
    longest filling either fits `MAX_THOUGHT` or the grammar leaves that span out."""
    long_a, long_b = "a" * MAX_CONTENT, "b" * (MAX_CONTENT - 8)
    spans = [long_a, long_b, "Size", "OK"]
    rx = re.compile(thought_regex(spans))
    free = " ".join(["W" * FREE_WORD] * FREE_WORDS)
    assert re.fullmatch(FREE_REGEX, free)
    admitted = 0
    for template in THOUGHTS.values():
        slots = SLOT.findall(template)
        for prefix in ("", REFLECTION):
            for span in spans:
                fill = {s: span if s in ("label", "tab", "want") else free for s in slots}
                fill["dir"] = "down"
                text = prefix + template.format(**fill)
                if rx.fullmatch(text):
                    admitted += 1
                    assert len(text) <= MAX_THOUGHT, text
                else:  # left out only when it would not fit
                    assert len(text) > MAX_THOUGHT, text
    assert admitted > len(THOUGHTS)  # the short spans are admitted everywhere
    assert re.fullmatch(rx, "The task is done.")
    # no span at all: only the sentences without instruction slots remain
    bare = re.compile(thought_regex([]))
    assert bare.fullmatch("Everything is set; I press Save.")
    assert not bare.fullmatch("The Size list is open; I pick Large.")
