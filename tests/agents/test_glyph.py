"""The dense glyph (OCR) objective: the renderer's text layout is what it draws, the
per-token targets on a known screen, the loss against an independent computation, the
objective wrapper (and off by default), and a tiny SFT run with it."""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lmforge
from lmforge.agents.agent_data import make_agent_dataset, read_examples, write_examples
from lmforge.agents.glyph import (
    NONE,
    NUM_CLASSES,
    OTHER,
    GlyphPackedLoader,
    attach_glyph_head,
    char_class,
    class_char,
    example_glyph_targets,
    fresh_glyph_batches,
    glyph_objective,
    glyph_targets,
)
from lmforge.agents.layout import layout_window
from lmforge.agents.random_screens import random_window
from lmforge.agents.render import (
    Glyph,
    Painter,
    glyph_centre,
    render_window,
    render_window_glyphs,
    text_layout,
    ui_font,
)
from lmforge.agents.sft import train_agent_sft
from lmforge.agents.sft_config import AgentRunConfig, AgentSection, uses_glyphs
from lmforge.agents.tasks import sample_task
from lmforge.agents.widgets import Geometry, ListView, Window
from lmforge.config import ConfigError
from lmforge.models.glyph_head import IGNORE, GlyphHead, glyph_loss
from lmforge.train.config import load_config
from lmforge.train.vlm_sft import pointer_objective, vlm_objective
from lmforge.vision.vlm_data import MultimodalPackedLoader, encode_chat

sys.path.insert(0, str(Path(__file__).parent))
from test_sft import POINTER, SMALL  # noqa: E402


def ink(image: Image.Image, background: str = "#ffffff") -> np.ndarray:
    a = np.asarray(image).astype(int)
    bg = np.asarray(Image.new("RGB", (1, 1), background)).astype(int)[0, 0]
    return np.abs(a - bg).sum(-1) > 60


def coverage(glyphs, shape) -> np.ndarray:
    cover = np.zeros(shape, dtype=bool)
    for g in glyphs:
        x0, y0, x1, y1 = g.box
        cover[max(0, y0) : y1, max(0, x0) : x1] = True
    return cover


@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize(
    "text",
    ["memo 16", "invoice 61", "Wave AV Tj", "gjpqy", string.ascii_letters, string.digits,
     "a label far too long to fit in its box, cut from the end"],
)  # fmt: skip
def test_glyph_boxes_hold_every_ink_pixel(text, centre):
    image = Image.new("RGB", (200, 20), "#ffffff")
    painter = Painter(image, "light")
    box = (3, 2, 150, 17)
    painter.text(box, text, centre=centre)
    layout = text_layout(box, text, centre)
    assert painter.glyphs == list(layout.glyphs)
    assert (
        text.startswith(layout.shown) and ui_font().getlength(layout.shown) <= box[2] - box[0] - 2
    )
    assert len(layout.shown) < len(text) or layout.shown == text  # cut only when too wide
    drawn = ink(image)
    assert drawn.any() and not (drawn & ~coverage(layout.glyphs, drawn.shape)).any()
    assert [g.char for g in layout.glyphs] == [c for c in layout.shown if not c.isspace()]
    for g in layout.glyphs:  # each box holds ink of its own
        x0, y0, x1, y1 = g.box
        assert drawn[y0:y1, x0:x1].any(), g


def test_window_glyphs_come_from_the_same_pass_and_hidden_text_is_dropped():
    for j in range(20):
        win = random_window(random.Random(f"glyph-test/{j}"), 128, 128)
        image, glyphs = render_window_glyphs(win)
        assert np.array_equal(np.asarray(image), np.asarray(render_window(win)))
        a = np.asarray(image).astype(int)
        for g in glyphs:  # every glyph box shows contrast (text over its background)
            x0, y0, x1, y1 = g.box
            patch = a[max(0, y0) : y1, max(0, x0) : x1]
            assert (patch.max((0, 1)) - patch.min((0, 1))).max() > 30, g
    win = sample_task(2, template="dialog_tick").fresh_window()
    _, covered = render_window_glyphs(win)
    box = win.dialog.box
    win.dialog = None
    _, shown = render_window_glyphs(win)
    under = [g for g in shown if box[0] <= glyph_centre(g)[0] < box[2] + 2
             and box[1] <= glyph_centre(g)[1] < box[3] + 2]  # fmt: skip
    assert under and not set(under) & set(covered)  # the dialog hides the text below it
    assert set(shown) - set(under) <= set(covered)  # the rest stays


def test_targets_on_a_known_layout():
    glyphs = [Glyph("6", (9, 2, 14, 8)), Glyph("1", (3, 2, 8, 8)), Glyph("x", (20, 9, 25, 14)),
              Glyph("é", (0, 120, 4, 126)), Glyph("z", (125, 125, 131, 131))]  # fmt: skip
    t = glyph_targets(glyphs, (32, 128), cell=8, slots=2)
    assert t.shape == (16 * 4, 2)
    assert t[0].tolist() == [char_class("1"), NONE]  # centre (5.5, 5)
    assert t[1].tolist() == [char_class("6"), NONE]  # centre (11.5, 5)
    assert t[1 * 4 + 2].tolist() == [char_class("x"), NONE]  # centre (22.5, 11.5)
    assert t[15 * 4 + 0].tolist() == [OTHER, NONE]  # é: not printable ASCII
    assert int((t != NONE).sum()) == 4  # z is centred off the 32-px-wide image
    both = glyph_targets([Glyph("6", (4, 2, 7, 8)), Glyph("1", (0, 2, 4, 8))], (8, 8), 8, 2)
    assert both.tolist() == [[char_class("1"), char_class("6")]]  # ordered by centre x
    flipped = glyph_targets([Glyph("1", (4, 2, 7, 8)), Glyph("6", (0, 2, 4, 8))], (8, 8), 8, 2)
    assert flipped.tolist() == [[char_class("6"), char_class("1")]]  # "61" ≠ "16"
    assert class_char(char_class("7")) == "7" and NUM_CLASSES == 96


def row_text(targets: torch.Tensor, rows: range, cols: int = 16) -> str:
    cells = []
    for r in rows:
        for c in range(cols):
            for s, k in enumerate(targets[r * cols + c].tolist()):
                if k != NONE:
                    cells.append((c, r, s, class_char(k)))
    return "".join(ch for *_, ch in sorted(cells))


def test_targets_read_a_list_row():
    items = ["memo 16", "memo 61", "memo 7", "memo 23"]
    win = Window("Notes", 128, 128, [ListView("l", "Memos", items=items, visible=4)])
    layout_window(win, Geometry())
    image, glyphs = render_window_glyphs(win)
    lv = next(w for w in win.walk() if isinstance(w, ListView))
    for i, item in enumerate(items):
        b = lv.row_box(i)
        in_row = [g for g in glyphs if b[1] <= glyph_centre(g)[1] < b[3]]
        assert "".join(g.char for g in in_row) == item.replace(" ", "")
        mine = glyph_targets(in_row, image.size, 8, 2)
        assert int((mine != NONE).sum()) == len(in_row)  # ≤ 2 glyph centres per 8-px cell
        assert mine.view(-1).tolist() != [0] * mine.numel()
    assert not torch.equal(glyph_targets([g for g in glyphs if g.char in "16"], image.size),
                           torch.zeros(256, 2, dtype=torch.long))  # fmt: skip


def test_shifted_and_zoomed_examples_get_their_own_glyphs(tmp_path):
    data = make_agent_dataset("train", 2, 3, grounding_count=0, grounding_turns=4,
                              grounding_shift=8, zoom=2, glyphs=True)  # fmt: skip
    seen = {"shift": 0, "zoom": 0, "plain": 0}
    for ex in data["grounding"] + data["perception"]:
        (glyphs,) = ex.meta["glyphs"]
        kind = "zoom" if "zoom" in ex.meta else "shift" if ex.meta.get("shift") else "plain"
        seen[kind] += 1
        a = ex.images[0].astype(int)
        for g in glyphs:
            x, y = glyph_centre(g)
            if not (0 <= x < 128 and 0 <= y < 128):
                continue
            x0, y0, x1, y1 = g.box
            patch = a[max(0, y0) : y1, max(0, x0) : x1]
            assert (patch.max((0, 1)) - patch.min((0, 1))).max() > 30, (kind, g)
    assert all(seen.values()), seen
    assert all("glyphs" not in ex.meta for ex in data["trajectory"])
    plain = make_agent_dataset("train", 2, 3, grounding_count=0, grounding_turns=4)
    assert all("glyphs" not in ex.meta for k in plain for ex in plain[k])
    write_examples(tmp_path / "ex", data["grounding"][:3])  # glyphs are not written
    assert all("glyphs" not in ex.meta for ex in read_examples(tmp_path / "ex"))


def test_glyph_loss_equals_an_independent_computation():
    torch.manual_seed(0)
    logits = torch.randn(5, 2, 7)
    targets = torch.tensor([[1, 0], [IGNORE, 3], [6, IGNORE], [0, 0], [2, 5]])
    by_hand = []
    for n in range(5):
        for s in range(2):
            k = int(targets[n, s])
            if k != IGNORE:
                by_hand.append(-(logits[n, s, k] - torch.logsumexp(logits[n, s], 0)))
    assert torch.allclose(glyph_loss(logits, targets), torch.stack(by_hand).mean(), atol=1e-6)
    none = torch.full((5, 2), IGNORE)
    assert float(glyph_loss(logits.requires_grad_(), none).detach()) == 0.0
    head = GlyphHead(8, 2, 7)
    assert head(torch.randn(3, 8)).shape == (3, 2, 7)


def encoded_batch(model, tok, proc, data, n=3):
    examples = data["grounding"][:n]
    encoded = [encode_chat(tok, proc, ex.messages(), ex.images) for ex in examples]
    targets = [example_glyph_targets(ex, model.visual.tokens_per_image(e.image_grid_thw),
                                     8 * model.config.vision.spatial_merge_size)
               for ex, e in zip(examples, encoded, strict=True)]  # fmt: skip
    loader = GlyphPackedLoader(encoded, targets, 1024, 2, tok.pad_token_id or 0, shuffle=False)
    plain = MultimodalPackedLoader(encoded, 1024, 2, tok.pad_token_id or 0, shuffle=False)
    return next(iter(loader)), next(iter(plain)), targets


def test_glyph_objective_adds_weight_times_the_heads_loss(agent_vlm_factory):
    model, tok, proc, _ = agent_vlm_factory(2, 0, pointer_size=8)
    data = make_agent_dataset("train", 2, 0, grounding_count=0, grounding_turns=4, glyphs=True)
    batch, plain, targets = encoded_batch(model, tok, proc, data)
    assert all(t.shape[1] == 2 and (t != NONE).any() for t in targets)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    torch.manual_seed(1)
    attach_glyph_head(model, 2)
    base = pointer_objective(0.5)
    with torch.no_grad():
        ref = base(model, batch)
        got = glyph_objective(base, 0.7)(model, batch)
        features = model.image_features(batch["pixel_values"], batch["image_grid_thw"])
        logits = model.glyph_head(features)
        t = batch["glyph_targets"]
        keep = t != IGNORE
        ce = -logits.log_softmax(-1).gather(-1, t.clamp(min=0)[..., None])[..., 0][keep].mean()
        zero = glyph_objective(base, 0.0)(model, batch)
    count = float(ref.count)
    assert torch.allclose(got.loss_sum, ref.loss_sum + 0.7 * ce * count, rtol=1e-5)
    assert torch.allclose(got.metrics["glyph_loss"], ce * count, rtol=1e-5)
    assert torch.equal(zero.loss_sum, ref.loss_sum)  # weight 0: the base objective's loss
    with torch.no_grad():  # a batch without targets (or a plain loader's): the base's loss
        assert torch.equal(glyph_objective(vlm_objective, 1.0)(model, plain).loss_sum,
                           vlm_objective(model, plain).loss_sum)  # fmt: skip


def test_glyphs_are_off_by_default():
    a = AgentSection()
    assert a.glyph_weight == 0 and a.glyph_steps == 0 and not uses_glyphs(a)


@pytest.mark.parametrize(
    "override",
    [
        "agent.glyph_weight=-1",
        "agent.glyph_steps=-2",
        "agent.glyph_slots=0",
        "agent.glyph_screens=x",
    ],
)
def test_bad_glyph_settings_are_refused(override):
    with pytest.raises(ConfigError, match="agent.glyph"):
        train_agent_sft(load_config(None, [*SMALL, override], AgentRunConfig))


def test_tiny_sft_with_the_glyph_loss_trains_and_saves_without_the_head(tmp_path):
    run = tmp_path / "run"
    overrides = [f"out_dir={run}", *SMALL, *POINTER, "agent.merge_size=1",
                 "agent.kinds=[grounding,perception]", "agent.glyph_weight=1.0",
                 "agent.glyph_steps=4", "agent.glyph_screens=fresh", "train.max_steps=10"]  # fmt: skip
    summary = train_agent_sft(load_config(None, overrides, AgentRunConfig))
    assert 0 <= summary["agent_eval"]["grounding_accuracy"] <= 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    glyph = [x["glyph_loss"] for x in lines if "glyph_loss" in x]
    assert len(glyph) == 10 and all(0 < g < 5 for g in glyph) and glyph[-1] < glyph[0]
    back = lmforge.load_model(run / "model")
    assert getattr(back, "glyph_head", None) is None and back.pointer_head is not None
    state = torch.load(run / "glyph_head.pt")
    assert state["mlp.2.weight"].shape == (2 * NUM_CLASSES, 32)
    plain = load_config(None, [f"out_dir={tmp_path / 'off'}", *SMALL, *POINTER,
                               "agent.merge_size=1", "train.max_steps=2"], AgentRunConfig)  # fmt: skip
    train_agent_sft(plain)
    off = (tmp_path / "off" / "metrics.jsonl").read_text()
    assert "glyph" not in off and not (tmp_path / "off" / "glyph_head.pt").exists()


def test_fresh_glyph_batches_are_new_screens_with_their_targets(agent_vlm_factory):
    model, _, proc, _ = agent_vlm_factory(1, 0)
    cell = 8 * model.config.vision.spatial_merge_size
    batches = fresh_glyph_batches(proc, 3, seed=5, cell=cell)
    first, second = next(batches), next(batches)
    for b in (first, second):
        assert b["image_grid_thw"].shape[0] == 3
        assert b["glyph_targets"].shape == (
            sum(model.visual.tokens_per_image(b["image_grid_thw"])),
            2,
        )
        assert (b["glyph_targets"] > NONE).any()
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    again = next(fresh_glyph_batches(proc, 3, seed=5, cell=cell))
    assert torch.equal(again["pixel_values"], first["pixel_values"])  # seeded
    assert torch.equal(again["glyph_targets"], first["glyph_targets"])


def test_query_number_targets_name_the_rows_digits():
    from lmforge.agents.agent_data import ChatExample, pointer_queries
    from lmforge.agents.glyph import query_number_targets

    image = np.zeros((128, 128, 3), dtype=np.uint8)
    boxes = [(0, 0, 20, 12), (0, 12, 20, 24), (0, 24, 20, 36), (40, 0, 60, 12)]
    ex = ChatExample([image], "Click on the row 'invoice 17'.", "click(10,6)", "grounding",
                     {"target_boxes": boxes},
                     [("Click on the button 'Save'.", "click(10,18)"),
                      ("Click on the row 'memo 3'.", "click(10,30)"),
                      ("Click on the row 'apple'.", "click(50,6)")])  # fmt: skip
    queries = pointer_queries(ex, (128, 128))
    got = query_number_targets(ex, queries, slots=2)
    assert got.tolist() == [[char_class("1"), char_class("7")], [IGNORE, IGNORE],
                            [char_class("3"), NONE], [IGNORE, IGNORE]]  # fmt: skip
    assert query_number_targets(ex, queries, slots=1)[0].tolist() == [IGNORE]  # "17" needs 2


def test_query_label_targets_read_the_label_where_the_box_shows_it():
    """Other kinds' queries get the label's first characters and, as key point, the centre
    of the last of them — only where the glyphs in the box spell them; rows keep numbers."""
    from lmforge.agents.agent_data import ChatExample, pointer_queries
    from lmforge.agents.glyph import query_label_targets
    from lmforge.agents.render import Glyph

    image = np.zeros((128, 128, 3), dtype=np.uint8)
    boxes = [(0, 0, 40, 12), (0, 12, 40, 24), (50, 0, 90, 12), (50, 20, 90, 32)]
    glyphs = [Glyph("S", (4, 2, 9, 10)), Glyph("a", (10, 4, 15, 10)), Glyph("v", (16, 4, 21, 10)),
              Glyph("1", (20, 14, 25, 22)), Glyph("2", (26, 14, 31, 22)),
              Glyph("O", (60, 2, 65, 10)), Glyph("f", (66, 2, 71, 10)),
              Glyph("B", (60, 22, 65, 30)), Glyph("e", (70, 22, 75, 30))]  # fmt: skip
    ex = ChatExample([image], "Click on the button 'Save'.", "click(20,6)", "grounding",
                     {"target_boxes": boxes, "glyphs": [glyphs]},
                     [("Click on the row 'memo 12'.", "click(20,18)"),
                      ("Click on the checkbox 'On'.", "click(70,6)"),
                      ("Click on the dropdown 'Size'.", "click(70,26)")])  # fmt: skip
    queries = pointer_queries(ex, (128, 128))
    targets, points = query_label_targets(ex, queries, (128, 128), slots=2)
    assert targets.tolist() == [[char_class("S"), char_class("a")],
                                [char_class("1"), char_class("2")],
                                [IGNORE, IGNORE],  # the box shows "Of", not "On"
                                [IGNORE, IGNORE]]  # fmt: skip # the box shows "Be": no key
    assert points[0].tolist() == [12.5 / 128, 7 / 128]  # the centre of "a"
    assert points[1:].isnan().all()  # rows: the box's last-digit token; others: none


def test_query_objective_adds_weight_times_the_heads_loss_at_the_queries(agent_vlm_factory):
    from lmforge.agents.agent_data import pointer_queries
    from lmforge.agents.glyph import (
        attach_query_head,
        detach_query_head,
        last_digit_tokens,
        query_number_targets,
        query_objective,
    )

    model, tok, proc, _ = agent_vlm_factory(2, 0, pointer_size=8)
    data = make_agent_dataset("train", 1, 1, grounding_count=0, grounding_turns=8,
                              random_screens=0, row_screens=6, glyphs=True)  # fmt: skip
    chats = [ex for ex in data["grounding"] if ex.meta.get("template") == "random"][:2]
    assert len(chats) == 2
    queried = [pointer_queries(ex, (128, 128), "number") for ex in chats]
    encoded = [encode_chat(tok, proc, ex.messages(), ex.images, q)
               for ex, q in zip(chats, queried, strict=True)]  # fmt: skip
    numbers = [query_number_targets(ex, q) for ex, q in zip(chats, queried, strict=True)]
    assert all((n[:, 0] > NONE).all() for n in numbers)  # every turn names a row's number
    cell = 8 * model.config.vision.spatial_merge_size
    targets = [example_glyph_targets(ex, model.visual.tokens_per_image(e.image_grid_thw), cell)
               for ex, e in zip(chats, encoded, strict=True)]  # fmt: skip
    loader = GlyphPackedLoader(encoded, targets, 1024, 2, tok.pad_token_id or 0, shuffle=False,
                               query_targets=numbers)  # fmt: skip
    batch = next(iter(loader))
    assert batch["query_targets"].shape == (batch["pointer_queries"].shape[0], 2)
    with pytest.raises(ValueError, match="query targets"):
        GlyphPackedLoader(encoded, targets, 1024, 2, 0, query_targets=[n[:0] for n in numbers])
    torch.manual_seed(2)
    head = attach_query_head(model, 2)
    base = pointer_objective(1.0)
    with torch.no_grad():
        ref = base(model, batch)
        got = query_objective(base, 0.3)(model, batch)
        out = model(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"],
                    document_ids=batch["document_ids"], output_hidden_states=True)  # fmt: skip
        q = batch["pointer_queries"]
        ce = glyph_loss(head(out.hidden_states[q[:, 0], q[:, 1]]), batch["query_targets"])
    count = float(ref.count)
    assert torch.allclose(got.loss_sum, ref.loss_sum + 0.3 * ce * count, rtol=1e-5)
    assert torch.allclose(got.metrics["query_loss"], ce * count, rtol=1e-5)
    with torch.no_grad():  # keys: + the same head's loss at each row's last-digit token
        both = query_objective(base, 0.3, keys=True)(model, batch)
        picked = last_digit_tokens(model, out.hidden_states, batch)
        flat = out.hidden_states[batch["input_ids"] == model.config.image_token_id]
        starts = [0, *np.cumsum(model.visual.tokens_per_image(batch["image_grid_thw"]))]
        chat_queries = [q for qs in queried for q in qs]
        for k, pq in enumerate(chat_queries):  # by hand: the cell of the row's last digit
            x1, y0 = pq.box[2] * 128 - 0.01, pq.box[1] * 128
            token = starts[int(batch["pointer_images"][k])]
            token += int(y0 // cell) * (128 // cell) + int(x1 // cell)
            assert torch.equal(picked[k], flat[token])
        key_ce = glyph_loss(head(picked), batch["query_targets"])
    assert torch.allclose(both.loss_sum, got.loss_sum + 0.3 * key_ce * count, rtol=1e-5)
    assert torch.allclose(both.metrics["key_loss"], key_ce * count, rtol=1e-5)
    loss = query_objective(base, 1.0)(model, batch).loss_sum  # the head and the LM both learn
    loss.backward()
    assert head.mlp[0].weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert detach_query_head(model) is head and detach_query_head(model) is None


def test_tiny_sft_with_the_query_loss_trains_and_saves_without_its_head(tmp_path):
    run = tmp_path / "run"
    overrides = [f"out_dir={run}", *SMALL, *POINTER, "agent.merge_size=1",
                 "agent.kinds=[grounding]", "agent.row_target=number", "agent.row_screens=6",
                 "agent.query_weight=1.0", "agent.query_keys=true", "train.max_steps=6"]  # fmt: skip
    summary = train_agent_sft(load_config(None, overrides, AgentRunConfig))
    assert 0 <= summary["agent_eval"]["grounding_accuracy"] <= 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    query = [x["query_loss"] for x in lines if "query_loss" in x]
    assert len(query) == 6 and all(0 <= g < 10 for g in query) and max(query) > 0
    assert max(x.get("key_loss", 0) for x in lines) > 0
    assert not any("glyph_loss" in x for x in lines)  # the glyph loss stays off
    back = lmforge.load_model(run / "model")
    assert getattr(back, "query_head", None) is None and back.pointer_head is not None
    assert torch.load(run / "query_head.pt")["mlp.2.weight"].shape == (2 * NUM_CLASSES, 32)
    with pytest.raises(ConfigError, match="agent.query_weight"):
        train_agent_sft(load_config(None, [*SMALL, "agent.query_weight=1"], AgentRunConfig))
    with pytest.raises(ConfigError, match="agent.query_keys"):  # needs the digits' boxes
        train_agent_sft(load_config(None, [*SMALL, *POINTER, "agent.query_weight=1",
                                           "agent.query_keys=true"], AgentRunConfig))  # fmt: skip
    with pytest.raises(ConfigError, match="agent.query_weight"):
        train_agent_sft(load_config(None, [*SMALL, *POINTER, "agent.query_weight=-1"],
                                    AgentRunConfig))  # fmt: skip


def test_glyph_and_query_heads_train_on_merged_tokens(tmp_path):
    """The agent-match recipe's heads with 2×2-merged image tokens (16-px cells) and the
    centre-cell pointer targets: the glyph and query losses are logged and finite, the heads
    are saved beside a model that has neither."""
    run = tmp_path / "run"
    overrides = [f"out_dir={run}", *SMALL, *POINTER, "agent.merge_size=2",
                 "agent.kinds=[grounding]", "agent.glyph_weight=1.0", "agent.glyph_steps=2",
                 "agent.row_target=number", "agent.row_screens=4", "agent.query_weight=0.3",
                 "agent.query_keys=true", "agent.query_labels=true", "agent.pointer_cells=centre",
                 "agent.eval_tasks=0", "train.max_steps=4"]  # fmt: skip
    summary = train_agent_sft(load_config(None, overrides, AgentRunConfig))
    assert 0 <= summary["agent_eval"]["grounding_accuracy"] <= 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("glyph_loss", "query_loss", "pointer_loss"):
        values = [x[name] for x in lines if name in x]
        assert len(values) == 4 and all(np.isfinite(values)), name
    assert any(x["query_loss"] > 0 for x in lines if "query_loss" in x)
    back = lmforge.load_model(run / "model")
    assert back.config.vision.spatial_merge_size == 2 and back.pointer_head is not None
    assert getattr(back, "glyph_head", None) is None and getattr(back, "query_head", None) is None
    assert (run / "glyph_head.pt").is_file() and (run / "query_head.pt").is_file()
