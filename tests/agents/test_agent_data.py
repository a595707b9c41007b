"""Agent data: each kind is well formed (grounding points hit their element in the env,
trajectory answers parse and replay to success, reflections follow an injected mistake),
examples encode with the VLM SFT code and train a tiny VLM for a step, and the JSONL io
round-trips; grounding on random screens clicks the named element."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch

from lmforge.agents.actions import parse_action, parse_response
from lmforge.agents.agent_data import (
    KINDS,
    ChatExample,
    agent_prompt,
    covered,
    dense_caption,
    expert_trajectory,
    grounding_examples,
    make_agent_dataset,
    pointer_prefix,
    pointer_queries,
    read_examples,
    reflective,
    screen_elements,
    shift_down,
    state_questions,
    trajectory_examples,
    write_examples,
)
from lmforge.agents.env import GUIEnv, WindowController
from lmforge.agents.random_screens import random_window
from lmforge.agents.render import render_window
from lmforge.agents.tasks import sample_task
from lmforge.agents.widgets import box_contains
from lmforge.tokenizer import Tokenizer
from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm, vlm_objective
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS, MultimodalPackedLoader, encode_chat


@pytest.fixture(scope="module")
def data():
    return make_agent_dataset("train", num_tasks=12, seed=0, history=2, mistake_rate=0.6)


def test_every_kind_is_produced(data):
    assert set(data) == set(KINDS)
    assert all(data[k] for k in KINDS), {k: len(v) for k, v in data.items()}
    for kind, examples in data.items():
        for ex in examples:
            assert ex.task == kind and ex.images and ex.images[0].shape == (128, 128, 3)
            assert ex.messages()[-1] == {"role": "assistant", "content": ex.answer}


def test_grounding_points_hit_the_named_element(data):
    for ex in data["grounding"]:
        point = parse_action(ex.answer, (128, 128))
        assert box_contains(ex.meta["target_box"], point.x, point.y)
    # through the env: clicking the answer hits exactly the element the question names
    rng = random.Random(0)
    for seed in range(10):
        task = sample_task(seed, "heldout")
        win = task.fresh_window()
        for ex in grounding_examples(win, rng, count=10):
            a = parse_action(ex.answer)
            label = ex.question.split("'")[1]
            hit = win.hit(a.x, a.y)
            assert hit is not None, ex.question
            w = hit.widget
            names = [w.label] + list(getattr(w, "options", []) or getattr(w, "names", []) or
                                     getattr(w, "items", []))  # fmt: skip
            assert label in names, (ex.question, w)


def test_trajectories_replay_to_success(data):
    for seed in range(6):
        task = sample_task(seed, "train")
        traj = expert_trajectory(task)
        assert traj.success
        env = GUIEnv()
        env.reset(options={"task": task})
        for step in traj.steps:
            _, reward, terminated, _, _ = env.step(step.response)
        assert terminated and reward == 1.0
        examples = trajectory_examples(traj, history=3)
        assert len(examples) == len(traj.steps)
        for t, ex in enumerate(examples):
            assert len(ex.images) == min(t + 1, 3)
            assert np.array_equal(ex.images[-1], traj.steps[t].screenshot)
            assert ex.question.startswith(f"Task: {task.instruction}\nPrevious actions: ")
            before = parse_response(traj.steps[t - 1].response).thought if t else "none"
            assert f"\nLast thought: {before}\n" in ex.question  # what the step before meant
            parse_response(ex.answer, (128, 128))
    assert data["trajectory"][0].question.endswith("What next?")


def test_reflection_follows_an_injected_mistake():
    found = 0
    for seed in range(20):
        task = sample_task(seed, "train")
        clean = expert_trajectory(task)
        traj = expert_trajectory(task, mistake_at=len(clean.steps) // 2, seed=seed)
        assert traj.success  # the expert corrects the mistake and still succeeds
        for i, step in enumerate(traj.steps):
            if step.correction:
                found += 1
                assert traj.steps[i - 1].mistake
                assert parse_response(step.response).thought.startswith(
                    ("My last step", "Mistake.")
                )
        reflections = [ex for ex in trajectory_examples(traj) if ex.task == "reflection"]
        mistakes = [s for s in traj.steps if s.mistake]
        assert len(reflections) == len(mistakes)
        for ex in reflections:  # the mistake is in the history, not a target
            assert mistakes[0].action in ex.question
    assert found >= 10
    assert len(reflective("x" * 96)) <= 96


def test_perception_text_matches_state():
    task = sample_task(0, template="login_remember")
    win = task.fresh_window()
    assert "checkbox 'Remember me' unticked" in dense_caption(win) or "unticked" in dense_caption(
        win
    )
    WindowController(win).apply(parse_action("type('x')"))
    qa = dict(state_questions(win))
    assert qa["Is a message box open?"] == "no" and qa["What is in the Username field?"] == "empty"
    remember = win.find("remember")
    remember.checked = True
    assert dict(state_questions(win))[f"Is '{remember.label}' ticked?"] == "yes"
    assert {e.kind for e in screen_elements(win)} >= {"field", "checkbox", "button"}
    assert agent_prompt("Do it", [], 1) == (
        "Task: Do it\nPrevious actions: none\nLast thought: none\n"
        "The last 1 screenshot(s), newest last. What next?"
    )
    assert agent_prompt("Do it", ["click(1,2)", "wait()"], 2, ["I look.", "I wait."]) == (
        "Task: Do it\nPrevious actions: click(1,2); wait()\nLast thought: I wait.\n"
        "The last 2 screenshot(s), newest last. What next?"
    )
    assert "Last thought: none" in agent_prompt("Do it", ["invalid"], 1, [""])


def test_examples_plug_into_vlm_sft(data):
    examples = [data[k][0] for k in KINDS] + [
        ex for ex in data["trajectory"] if len(ex.images) == 2
    ][:1]
    texts = [ex.question + " " + ex.answer for k in KINDS for ex in data[k][:30]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, mrope_section=[2, 3, 3], vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(section, tok)
    processor = image_processor_for(model, 128)
    encoded = [encode_chat(tok, processor, ex.messages(), ex.images) for ex in examples]
    assert encoded[-1].image_grid_thw.shape[0] == 2  # a two-screenshot trajectory step
    for enc, ex in zip(encoded, examples, strict=True):
        labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
        assert tok.decode(labelled, skip_special_tokens=True).strip() == ex.answer
    loader = MultimodalPackedLoader(encoded, seq_len=max(len(e) for e in encoded), batch_size=2)
    out = vlm_objective(model, next(iter(loader)))
    assert torch.isfinite(out.loss_sum) and out.count > 0
    out.loss_sum.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_write_and_read_round_trip(tmp_path, data):
    examples = [data[k][1] for k in KINDS]
    write_examples(tmp_path / "set", examples)
    back = read_examples(tmp_path / "set")
    assert len(back) == len(examples)
    for a, b in zip(examples, back, strict=True):
        assert (a.question, a.answer, a.task) == (b.question, b.answer, b.task)
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
        assert a.meta == b.meta
    (tmp_path / "set" / "examples.jsonl").write_text('{"images": []}\n')
    with pytest.raises(ValueError, match="examples.jsonl line 1"):
        read_examples(tmp_path / "set")


def test_grounding_chats_ask_every_element_once():
    rng = random.Random(0)
    texts = []
    for seed in range(4):
        win = sample_task(seed, "train").fresh_window()
        elements = screen_elements(win)
        chats = grounding_examples(win, rng, count=0, turns=4)
        assert len(chats) == -(-len(elements) // 4)
        pairs, boxes = [], []
        for chat in chats:
            turns = [(chat.question, chat.answer), *getattr(chat, "turns", [])]
            assert isinstance(chat, ChatExample) == (len(turns) > 1) and len(turns) <= 4
            assert chat.meta["target_box"] == chat.meta["target_boxes"][0]
            pairs += turns
            boxes += chat.meta["target_boxes"]
            messages = chat.messages()
            assert [m["role"] for m in messages] == ["user", "assistant"] * len(turns)
            assert [m["content"] for m in messages[1::2]] == [a for _, a in turns]
            later = [part for m in messages[2::2] for part in m["content"]]
            assert all(part["type"] == "text" for part in later)  # the image comes once
            texts += [q + " " + a for q, a in turns]
        asked = sorted(q for q, _ in pairs)
        assert asked == sorted(f"Click on the {e.kind} '{e.label}'." for e in elements)
        for (_, answer), box in zip(pairs, boxes, strict=True):
            point = parse_action(answer)
            assert box_contains(box, point.x, point.y)
    # every answer of a chat is labelled, in order, after one image
    tok = Tokenizer.train(texts * 3, vocab_size=400, min_frequency=1,
                          special_tokens=VLM_SPECIAL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, vocab_size=tok.vocab_size)  # fmt: skip
    chat = next(c for c in chats if isinstance(c, ChatExample))
    processor = image_processor_for(tiny_vlm(section, tok), 128)
    encoded = encode_chat(tok, processor, chat.messages(), chat.images)
    assert encoded.image_grid_thw.shape[0] == 1
    labelled = [
        t if lab != -100 else None for t, lab in zip(encoded.input_ids, encoded.labels, strict=True)
    ]
    spans, current = [], []
    for t in labelled + [None]:
        if t is None and current:
            spans.append(tok.decode(current, skip_special_tokens=True).strip())
            current = []
        elif t is not None:
            current.append(t)
    assert spans == [chat.answer] + [a for _, a in chat.turns]


def test_chat_examples_round_trip(tmp_path):
    win = sample_task(1, "train").fresh_window()
    chats = grounding_examples(win, random.Random(1), count=0, turns=3)
    write_examples(tmp_path / "chats", chats)
    back = read_examples(tmp_path / "chats")
    for a, b in zip(chats, back, strict=True):
        assert type(a) is type(b) and a.messages() == b.messages() and a.meta == b.meta


def test_shifted_grounding_moves_image_and_targets_together():

    rng = random.Random(2)
    shifts = set()
    for seed in range(6):
        win = sample_task(seed, "train").fresh_window()
        original = np.asarray(render_window(win))
        elements = {f"Click on the {e.kind} '{e.label}'.": e.box for e in screen_elements(win)}
        for chat in grounding_examples(win, rng, count=0, turns=8, shift=40):
            turns = [(chat.question, chat.answer), *getattr(chat, "turns", [])]
            for (q, a), box in zip(turns, chat.meta["target_boxes"], strict=True):
                dy = box[1] - elements[q][1]
                assert 0 <= dy <= 40 and box[3] <= 128 and box == (elements[q][0], elements[q][1] + dy,
                                                                     elements[q][2], elements[q][3] + dy)  # fmt: skip
                point = parse_action(a)
                assert box_contains(box, point.x, point.y)
            assert np.array_equal(chat.images[0], shift_down(original, dy))
            shifts.add(dy)
    assert len(shifts) > 3
    image = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    moved = shift_down(image, 1)
    assert np.array_equal(moved[1:], image[:3]) and (moved[0] == image[-1, -1]).all()


# ---------------------------------------------------------------- random screens
def test_grounding_on_random_screens_hits_the_named_element():
    rng = random.Random(0)
    asked = 0
    for seed in range(80):
        win = random_window(random.Random(seed))
        for ex in grounding_examples(win, rng, count=0, turns=1, skip_covered=True):
            a = parse_action(ex.answer)
            hit = win.hit(a.x, a.y)
            assert hit is not None, ex.question
            label = ex.question.split("'")[1]
            w = hit.widget
            names = [w.label] + list(getattr(w, "options", []) or getattr(w, "names", []) or
                                     getattr(w, "items", []))  # fmt: skip
            assert label in names, (ex.question, w)
            asked += 1
    assert asked > 300


def test_covered_elements_are_skipped():
    for seed in range(200):
        win = random_window(random.Random(seed), dropdown_rate=1.0)
        hidden = [e for e in screen_elements(win) if covered(win, e)]
        if hidden:
            kept = grounding_examples(win, random.Random(0), 0, 1, skip_covered=True)
            every = grounding_examples(win, random.Random(0), 0, 1)
            assert len(kept) == len(every) - len(hidden)
            assert win.open_dropdown() is not None
            return
    pytest.fail("no random screen had an element under an open dropdown")


def test_dataset_adds_random_screen_grounding():
    base = make_agent_dataset("train", 2, seed=0, grounding_count=0, grounding_turns=8)
    more = make_agent_dataset("train", 2, seed=0, grounding_count=0, grounding_turns=8,
                              random_screens=10)  # fmt: skip
    extra = [ex for ex in more["grounding"] if ex.meta["template"] == "random"]
    assert len(extra) >= 10 and len(more["grounding"]) == len(base["grounding"]) + len(extra)
    for k in ("trajectory", "reflection"):
        assert len(more[k]) == len(base[k])
    assert len(more["perception"]) == len(base["perception"]) + 10
    for ex in extra:
        point = parse_action(ex.answer)
        box = ex.meta["target_box"]
        assert box[0] <= point.x < box[2] and box[1] <= point.y < box[3]


def test_question_first_grounding_puts_the_question_before_the_image(tmp_path):
    from lmforge.agents.agent_data import read_examples, write_examples
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm
    from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
    from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS, encode_chat

    win = random_window(random.Random(1))
    for turns in (1, 3):
        exs = grounding_examples(win, random.Random(0), 0, turns, question_first=True)
        for ex in exs:
            user = ex.messages()[0]["content"]
            assert user[0] == {"type": "text", "text": ex.question} and user[1]["type"] == "image"
        plain = grounding_examples(win, random.Random(0), 0, turns)
        assert [ex.answer for ex in exs] == [ex.answer for ex in plain]
        assert plain[0].messages()[0]["content"][0]["type"] == "image"
    write_examples(tmp_path / "d", exs)
    back = read_examples(tmp_path / "d")
    assert [ex.messages() for ex in back] == [ex.messages() for ex in exs]
    texts = [ex.question for ex in exs] + [ex.answer for ex in exs]
    tok = Tokenizer.train(texts * 3, vocab_size=300, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    model = tiny_vlm(VLMSection(patch_size=8, vocab_size=300), tok)
    enc = encode_chat(tok, image_processor_for(model, 128), exs[0].messages(), exs[0].images)
    image = enc.input_ids.index(tok.token_to_id("<|image_pad|>"))
    question = tok.encode(exs[0].question)
    first = next(
        i for i in range(len(enc.input_ids)) if enc.input_ids[i : i + len(question)] == question
    )
    assert first < image


def test_pointer_prefix_lands_after_the_coordinate_parenthesis():
    def offset(text):
        hit = pointer_prefix(text)
        return None if hit is None else hit[1]

    assert offset("click(40,12)") == 6
    answer = "Thought: I press click(3,4) next.\nAction: left_double(40,12)"
    assert answer[: offset(answer)].endswith("Action: left_double(")
    assert offset("Thought: x\nAction: scroll(5,6,down)") == len("Thought: x\nAction: scroll(")
    assert offset("Thought: x\nAction: drag(1,2,3,4)") == len("Thought: x\nAction: drag(")
    for answer in ("Thought: t\nAction: type('a(b')", "Thought: t\nAction: hotkey('enter')",
                   "finished('done')", "wait()", "yes", "window 'click(1,2)'"):  # fmt: skip
        assert offset(answer) is None, answer
    # as a policy reads a response while decoding it
    text = "Thought: a\nAction: click("
    assert pointer_prefix(text) == ("click", len(text))
    assert pointer_prefix("Thought: a\nAction: left_double(1") == ("left_double", len(text) + 6)
    assert pointer_prefix("Thought: click(") is None
    assert pointer_prefix("Thought: a\nAction: type(") is None
    assert pointer_prefix("Thought: a\nSay: click(") is None


def _content(message):
    c = message["content"]
    return c if isinstance(c, str) else "".join(x.get("text", "") for x in c)


def test_pointer_queries_cover_every_boxed_coordinate_action(data):
    from lmforge.agents.actions import action_point

    screen = (128, 128)
    assert not any(
        pointer_queries(ex, screen) for k in ("perception", "state_qa") for ex in data[k]
    )
    chats = make_agent_dataset("train", 3, seed=1, grounding_count=0, grounding_turns=4)[
        "grounding"
    ]
    checked = {"grounding": 0, "trajectory": 0, "reflection": 0}
    for ex in [*chats, *data["grounding"], *data["trajectory"], *data["reflection"]]:
        msgs = ex.messages()
        queries = pointer_queries(ex, screen)
        answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if ex.task == "grounding":  # one query per turn, the turn's own box
            boxes = ex.meta["target_boxes"]
            assert [q.message for q in queries] == answers and len(boxes) == len(answers)
        else:  # a step with a box and a pointing action has one; typing, keys, done have none
            point = action_point(parse_response(ex.answer).action)
            has = ex.meta["target_box"] is not None and point is not None
            assert len(queries) == int(has), ex.answer
            boxes = [ex.meta["target_box"]]
        for q, box in zip(queries, boxes, strict=False):
            text = _content(msgs[q.message])
            assert text[: q.offset].endswith("(") and text[q.offset].isdigit()
            name = text[: q.offset - 1].rsplit(" ", 1)[-1]
            assert name in ("click", "left_double", "right_single", "drag", "scroll"), text
            assert q.image == len(ex.images) - 1  # the current screenshot
            assert q.box == tuple(v / 128 for v in box) and all(0 <= v <= 1 for v in q.box)
            x, y = action_point(parse_action(text[q.offset - len(name) - 1 :].split("\n")[0]))
            assert box_contains(box, x, y)  # the box is the one this action clicks into
            checked[ex.task] += 1
    assert all(checked.values()), checked
    nobox = ChatExample(chats[0].images, chats[0].question, chats[0].answer, "grounding",
                        {"target_boxes": [None, (0, 0, 64, 64)]}, [("q", "click(3,4)")])  # fmt: skip
    assert [(q.message, q.box) for q in pointer_queries(nobox, screen)] == [(3, (0, 0, 0.5, 0.5))]


def test_pointer_queries_encode_at_the_parenthesis_token(data):
    chats = make_agent_dataset("train", 2, seed=1, grounding_count=0, grounding_turns=4)[
        "grounding"
    ]
    examples = chats[:2] + data["trajectory"][:6] + data["reflection"][:2]
    texts = [ex.question + " " + ex.answer for k in KINDS for ex in data[k][:30]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, mrope_section=[2, 3, 3], vocab_size=tok.vocab_size)  # fmt: skip
    processor = image_processor_for(tiny_vlm(section, tok), 128)
    total = 0
    for ex in examples:
        queries = pointer_queries(ex, (128, 128))
        enc = encode_chat(tok, processor, ex.messages(), ex.images, queries)
        assert len(enc.pointer_positions) == len(queries)
        assert enc.pointer_boxes == [q.box for q in queries]
        assert enc.pointer_images == [len(ex.images) - 1] * len(queries)
        for p in enc.pointer_positions:
            assert tok.decode(enc.input_ids[: p + 1]).endswith("(")  # the query ends with `(`
            assert tok.decode([enc.input_ids[p + 1]])[0].isdigit()  # and predicts a digit
            assert enc.labels[p + 1] == enc.input_ids[p + 1]  # inside the trained answer
        labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
        assert tok.decode(labelled, skip_special_tokens=True).strip().startswith(ex.answer)
        total += len(queries)
    assert total >= 8


# ---------------------------------------------------------------- reading
HELDOUT_200 = "4e8412f88b9653b3"


def list_window(seed: int = 0):
    """A random window that shows a list (list-heavy draws)."""
    from lmforge.agents.agent_data import LIST_HEAVY
    from lmforge.agents.widgets import ListView

    for s in range(seed, seed + 200):
        win = random_window(random.Random(s), weights=LIST_HEAVY)
        if win.dialog is None and any(isinstance(w, ListView) for w in win.walk(shown_only=True)):
            return win
    pytest.fail("no list-heavy random screen showed a list")


def test_reading_asks_every_visible_row_both_ways():
    from lmforge.agents.agent_data import list_name, reading_examples
    from lmforge.agents.widgets import ListView

    for seed in range(0, 400, 40):
        win = list_window(seed)
        if win.open_dropdown() is not None:
            continue
        lists = [w for w in win.walk(shown_only=True) if isinstance(w, ListView)]
        names = [list_name(lv) for lv in lists]
        exs = reading_examples(win, random.Random(0), turns=3)
        assert all(ex.task == "reading" and not ex.meta for ex in exs)
        assert all(len(ex.messages()) <= 6 for ex in exs)  # ≤ 3 turns per chat
        asked = [t for ex in exs for t in [(ex.question, ex.answer), *getattr(ex, "turns", [])]]
        want_what, want_which = set(), set()
        for lv, name in zip(lists, names, strict=True):
            if names.count(name) > 1:
                continue
            shown = lv.items[lv.offset : lv.offset + lv.visible]
            tops = [lv.row_box(lv.offset + k)[1] for k in range(len(shown))]
            assert tops == sorted(tops)  # row 1 is the topmost shown row
            for k, item in enumerate(shown, 1):
                want_what.add((f"What does row {k} of the {name} list say?", item))
                want_which.add((f"Which row of the {name} list says '{item}'?", f"row {k}"))
        assert set(asked) == want_what | want_which and len(asked) == len(set(asked))
        for ex in exs:  # a chat never asks both questions about one row
            qs = [ex.question, *(q for q, _ in getattr(ex, "turns", []))]
            assert len({q.split()[0] for q in qs}) == 1, qs
        image = render_window(win)
        assert all(np.array_equal(ex.images[0], np.asarray(image)) for ex in exs)


def test_reading_skips_dialogs_and_gives_no_pointer_queries():
    from lmforge.agents.agent_data import reading_examples
    from lmforge.agents.widgets import Button, Dialog

    win = list_window(0)
    exs = reading_examples(win, random.Random(0))
    assert exs and all(pointer_queries(ex, (128, 128)) == [] for ex in exs)
    win.dialog = Dialog("d", "Note", message="hi", buttons=[Button("ok", "OK")])
    assert reading_examples(win, random.Random(0)) == []


def test_reading_leaves_the_other_kinds_and_the_heldout_questions_unchanged():
    kw = dict(grounding_count=0, grounding_turns=8, random_screens=30)
    base = make_agent_dataset("train", 6, seed=0, **kw)
    more = make_agent_dataset("train", 6, seed=0, reading_screens=5, **kw)
    for kind in KINDS:
        if kind != "reading":
            assert [(e.question, e.answer) for e in base[kind]] == [
                (e.question, e.answer) for e in more[kind]
            ]
    assert len(more["reading"]) > len(base["reading"]) > 0
    extra = more["reading"][len(base["reading"]) :]
    assert extra and all(e.meta["template"] == "random" for e in extra)
    assert [(e.question, e.answer) for e in base["reading"]] == [
        (e.question, e.answer) for e in more["reading"][: len(base["reading"])]
    ]
    # the 200 held-out grounding questions the pointer runs are scored on (seed 1 + 7919),
    # as they were before the reading kind existed
    held = make_agent_dataset("heldout_layout", 25, 1 + 7919, 2, 0.0)["grounding"][:200]
    text = "|".join(f"{e.question}>{e.answer}" for e in held)
    assert len(held) == 200 and sum(e.question.startswith("Click on the row") for e in held) == 45
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == HELDOUT_200


def test_random_window_weights_pick_the_kinds():
    from lmforge.agents.widgets import ListView

    only = {"list": 1}
    for s in range(10):
        win = random_window(random.Random(s), weights=only, dropdown_rate=0, dialog_rate=0)
        assert all(isinstance(w, ListView) for w in win.widgets)


# ---------------------------------------------------------------- zoom
def test_zoom_box_image_and_boxes_agree():
    from lmforge.agents.agent_data import zoom_box, zoom_image, zoomed_box

    assert zoom_box((64, 64), (128, 128)) == (32, 32, 96, 96)
    assert zoom_box((2, 125), (128, 128)) == (0, 64, 64, 128)  # kept on screen
    image = np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3)
    crop = (10, 20, 74, 84)
    big = zoom_image(image, crop)
    assert big.shape == (128, 128, 3) and big.flags["C_CONTIGUOUS"]
    assert np.array_equal(big[2 * 5 + 1, 2 * 7], image[20 + 5, 10 + 7])
    assert zoomed_box((30, 30, 40, 36), crop) == (40, 20, 60, 32)
    assert zoomed_box((4, 22, 24, 30), crop) == (0, 4, 28, 20)  # cut at the crop's edge
    assert zoomed_box((100, 30, 110, 36), crop) is None  # centre outside


def test_zoomed_grounding_hits_the_named_element():
    from lmforge.agents.agent_data import zoom_examples

    rng, asked = random.Random(0), 0
    for seed in range(40):
        win = random_window(random.Random(seed))
        names = {(e.kind, e.label): e.box for e in screen_elements(win)}
        for ex in zoom_examples(win, rng, crops=2, turns=3):
            crop = ex.meta["zoom"]
            assert ex.task == "grounding" and ex.images[0].shape == (128, 128, 3)
            turns = [(ex.question, ex.answer), *getattr(ex, "turns", [])]
            assert len(turns) == len(ex.meta["target_boxes"]) <= 3
            for (q, a), box in zip(turns, ex.meta["target_boxes"], strict=True):
                kind, label = q.removeprefix("Click on the ").split(" '", 1)
                real = names[(kind, label.removesuffix("'."))]
                p = parse_action(a)
                assert box_contains(box, p.x, p.y)
                x, y = crop[0] + p.x // 2, crop[1] + p.y // 2  # back on the screen
                assert box_contains(real, x, y), (q, a, crop, real)
                asked += 1
            assert pointer_queries(ex, (128, 128))
    assert asked > 100


def test_zoom_adds_grounding_and_leaves_the_rest():
    kw = dict(grounding_count=0, grounding_turns=8, random_screens=5)
    base = make_agent_dataset("train", 4, seed=0, **kw)
    more = make_agent_dataset("train", 4, seed=0, zoom=2, **kw)
    plain = [e for e in more["grounding"] if "zoom" not in e.meta]
    assert [(e.question, e.answer) for e in plain] == [
        (e.question, e.answer) for e in base["grounding"]
    ]
    assert len(more["grounding"]) > len(plain)
    for kind in ("perception", "trajectory", "reading"):
        assert len(more[kind]) == len(base[kind])


def test_number_box_covers_the_trailing_digits_of_the_row():
    from lmforge.agents.agent_data import number_box
    from lmforge.agents.render import Glyph, text_layout

    row = (10, 40, 90, 52)
    layout = text_layout((11, 40, 90, 52), "invoice 17")
    other = text_layout((11, 52, 90, 64), "invoice 23")  # the next row: ignored
    box = number_box(row, [*layout.glyphs, *other.glyphs])
    ones, sevens = layout.glyphs[-2], layout.glyphs[-1]
    assert (ones.char, sevens.char) == ("1", "7")
    x0 = (ones.box[0] + ones.box[2]) / 2
    x1 = (sevens.box[0] + sevens.box[2]) / 2 + 0.01
    assert box[0] == x0 and box[2] == x1 and box[1] < box[3] and box_contains(row, box[0], box[1])
    last = number_box(row, [*layout.glyphs, *other.glyphs], last_only=True)
    assert last[0] == x1 - 0.01 and last[2] == x1 and last[1:4:2] == box[1:4:2]
    assert number_box(row, text_layout((11, 40, 90, 52), "apple").glyphs) is None
    assert number_box(row, [Glyph("7", (0, 0, 4, 6))]) is None  # outside the row


def test_row_target_number_points_at_the_digits_and_reads_out_inside_the_row():
    from lmforge.agents.agent_data import ROW_QUESTION
    from lmforge.models.pointer_head import pointer_point, pointer_target, to_pixels

    data = make_agent_dataset("train", 4, seed=1, grounding_count=0, grounding_turns=8,
                              random_screens=6, glyphs=True, row_screens=12)["grounding"]  # fmt: skip
    rows = others = 0
    for ex in data:
        msgs = ex.messages()
        whole, digits = pointer_queries(ex, (128, 128)), pointer_queries(ex, (128, 128), "number")
        assert [(q.message, q.offset) for q in whole] == [(q.message, q.offset) for q in digits]
        for a, b in zip(whole, digits, strict=True):
            if not _content(msgs[a.message - 1]).startswith(ROW_QUESTION):
                assert a == b
                others += 1
                continue
            rows += 1
            row = tuple(v * 128 for v in a.box)
            assert b.box != a.box and box_contains(row, b.box[0] * 128, b.box[1] * 128)
            target = pointer_target(b.box, (16, 16))
            assert 1 <= int((target > 0).sum()) <= 4  # the digits' 1–4 cells, not the row's ≈ 28
            # a pointer that learned the target exactly clicks inside the row
            assert box_contains(row, *to_pixels(pointer_point(target, (16, 16)), (128, 128)))
            last = [q.box for q in pointer_queries(ex, (128, 128), "last_digit")
                    if q.message == a.message][0]  # fmt: skip
            one = pointer_target(last, (16, 16))
            assert int((one > 0).sum()) == 1 and float((one * (target > 0)).sum()) == 1.0
            cx, cy = last[0] * 128, last[1] * 128  # the cell the glyph head reads the digit in
            assert float(one.view(16, 16)[int(cy // 8), int(cx // 8)]) == 1.0
            assert box_contains(row, *to_pixels(pointer_point(one, (16, 16)), (128, 128)))
    assert rows > 20 and others > 20
    plain = make_agent_dataset("train", 1, seed=1, grounding_count=0, grounding_turns=8)
    assert pointer_queries(plain["grounding"][0], (128, 128), "number") == pointer_queries(
        plain["grounding"][0], (128, 128)
    )  # without glyphs nothing changes
    with pytest.raises(ValueError, match="row_target"):
        pointer_queries(plain["grounding"][0], (128, 128), "digits")


def test_row_screens_ask_only_rows_and_leave_the_rest_unchanged():
    from lmforge.agents.agent_data import ROW_QUESTION

    base = make_agent_dataset("train", 2, seed=3, grounding_count=0, grounding_turns=8,
                              random_screens=2)  # fmt: skip
    more = make_agent_dataset("train", 2, seed=3, grounding_count=0, grounding_turns=8,
                              random_screens=2, row_screens=5)  # fmt: skip
    n = len(base["grounding"])
    assert [e.answer for e in more["grounding"][:n]] == [e.answer for e in base["grounding"]]
    extra = more["grounding"][n:]
    assert extra
    for k in more:  # the other kinds are the same examples
        if k != "grounding":
            assert [e.answer for e in more[k]] == [e.answer for e in base[k]], k
    for ex in extra:
        msgs = ex.messages()
        questions = [_content(m) for m in msgs if m["role"] == "user"]
        assert all(q.startswith(ROW_QUESTION) for q in questions)
        assert len(questions) == len(ex.meta["target_boxes"]) <= 8
        assert ex.meta["template"] == "random"


def test_option_screens_ask_every_open_lists_options_and_leave_the_rest_unchanged():
    from lmforge.agents.agent_data import DROPDOWN_HEAVY, covered, grounding_question
    from lmforge.agents.agent_data import screen_elements as elements

    base = make_agent_dataset("train", 2, seed=3, grounding_count=0, grounding_turns=8)
    more = make_agent_dataset("train", 2, seed=3, grounding_count=0, grounding_turns=8,
                              option_screens=6)  # fmt: skip
    n = len(base["grounding"])
    assert [e.answer for e in more["grounding"][:n]] == [e.answer for e in base["grounding"]]
    for k in more:
        if k != "grounding":
            assert [e.answer for e in more[k]] == [e.answer for e in base[k]], k
    asked = []
    for ex in more["grounding"][n:]:
        questions = [_content(m) for m in ex.messages() if m["role"] == "user"]
        assert len(questions) == len(ex.meta["target_boxes"]) <= 8
        assert ex.meta["template"] == "random"
        asked += [(q.split("<|vision_end|>")[-1], b)
                  for q, b in zip(questions, ex.meta["target_boxes"], strict=True)]  # fmt: skip
    want = []  # the windows rebuilt from their seeds: each open list's options, then dropdowns
    for j in range(6):
        r = random.Random(f"agent-option-screens/train/3/{j}")
        win = random_window(r, 128, 128, dropdown_rate=1.0, weights=DROPDOWN_HEAVY)
        assert win.open_dropdown() is not None
        shown = [e for e in elements(win) if not covered(win, e)]
        for kind in ("option", "dropdown"):
            want += sorted((grounding_question(e.kind, e.label), e.box) for e in shown
                           if e.kind == kind)  # fmt: skip
    assert sorted(asked) == sorted(want)
    assert sum(q.startswith("Click on the option") for q, _ in asked) >= 6 * 3


def test_expert_drags_give_both_points_a_pointer_target():
    """With ``expert_drags`` a trajectory's drag has two pointer queries: the ``(`` (the
    thumb) and the ``,`` after ``x1,y1`` (the drop range, which holds the release); they
    encode at tokens ending with ``(`` and ``,``, as the pointer policy splices them."""
    from lmforge.models.pointer_head import normalise_box

    data = make_agent_dataset("train", 60, seed=3, mistake_rate=0.0, expert_drags=True)
    drags = [ex for ex in data["trajectory"] if "Action: drag(" in ex.answer]
    assert drags
    plain = make_agent_dataset("train", 60, seed=3, mistake_rate=0.0)["trajectory"]
    assert not any("drag(" in ex.answer for ex in plain)
    texts = [ex.question + " " + ex.answer for ex in data["trajectory"][:40]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, mrope_section=[2, 3, 3], vocab_size=tok.vocab_size)  # fmt: skip
    processor = image_processor_for(tiny_vlm(section, tok), 128)
    for ex in drags:
        action = parse_response(ex.answer).action
        first, second = pointer_queries(ex, (128, 128))
        text = ex.messages()[first.message]["content"]
        text = text if isinstance(text, str) else "".join(c.get("text", "") for c in text)
        assert text[: first.offset].endswith("drag(")
        assert text[: second.offset].endswith(f"drag({action.x1},{action.y1},")
        assert box_contains(ex.meta["target_box"], action.x1, action.y1)
        assert box_contains(ex.meta["drop_box"], action.x2, action.y2)
        assert second.box == normalise_box(ex.meta["drop_box"], (128, 128))
        enc = encode_chat(tok, processor, ex.messages(), ex.images, [first, second])
        p1, p2 = enc.pointer_positions
        assert tok.decode(enc.input_ids[: p1 + 1]).endswith("(")
        assert tok.decode(enc.input_ids[: p2 + 1]).endswith(f"{action.x1},{action.y1},")


def test_composed_data_adds_the_composed_templates_trajectories(data):
    from lmforge.agents.task_templates import COMPOSED_TEMPLATES, TRAIN_TEMPLATES

    mixed = make_agent_dataset("train", 24, seed=0, history=2, mistake_rate=0.0, composed=True)
    templates = {ex.meta["template"] for ex in mixed["trajectory"]}
    assert templates & set(COMPOSED_TEMPLATES) and templates <= {
        *TRAIN_TEMPLATES,
        *COMPOSED_TEMPLATES,
    }
    # off (the default), the training data is the seven training templates' as before
    assert {ex.meta["template"] for ex in data["trajectory"]} <= set(TRAIN_TEMPLATES)


def test_switched_messages_reach_the_trajectories():
    """``messages=1``: every training task's message is switched, so the expert's first
    thought closes a message exactly where the template has none."""
    from lmforge.agents.tasks import UNDER_A_MESSAGE

    data = make_agent_dataset("train", 12, seed=0, history=1, mistake_rate=0.0, messages=1.0)
    firsts = [ex for ex in data["trajectory"] if ex.meta.get("step") == 0]
    assert firsts and len({ex.meta["template"] for ex in firsts}) > 2
    for ex in firsts:
        closes = "message covers the window" in ex.answer
        assert closes == (ex.meta["template"] not in UNDER_A_MESSAGE)
