"""Agent SFT smoke run: a tiny VLM from scratch trains on agent data through the one Trainer
(loss falls), exports a folder that reloads, and reports held-out grounding and episode
figures; bad sections are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.agents.agent_data import make_agent_dataset
from lmforge.agents.grounding import point_clicks
from lmforge.agents.sft import agent_model, evaluate_agent_model, train_agent_sft
from lmforge.agents.sft_config import AgentRunConfig
from lmforge.agents.widgets import box_contains
from lmforge.config import ConfigError
from lmforge.models.hf import read_state_dict, save_model
from lmforge.models.vlm import VisionLanguageModel
from lmforge.train.config import load_config
from lmforge.train.vlm_sft import image_processor_for

SMALL = [
    "agent.train_tasks=4", "agent.eval_tasks=2", "agent.eval_grounding=6", "agent.max_steps=2",
    "agent.vision_hidden=32", "agent.hidden_size=32",
    "agent.num_layers=1", "agent.vocab_size=400", "agent.num_heads=2", "agent.num_kv_heads=1",
    "agent.vision_heads=2", "agent.vision_depth=1", "data.seq_len=256", "train.batch_size=2",
    "train.max_steps=8", "train.eval_every=0", "train.save_every=0", "log.progress=false",
    "log.plot=false", "optim.warmup_steps=1", "optim.lr=3e-3", "train.cpu_threads=1",
]  # fmt: skip


def test_tiny_agent_sft_run(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path / 'run'}", *SMALL], AgentRunConfig)
    summary = train_agent_sft(config)
    report = json.loads((tmp_path / "run" / "agent_eval.json").read_text())
    assert report == summary["agent_eval"]
    assert 0 <= report["grounding_accuracy"] <= 1
    episodes = report["episodes"]
    assert episodes["episodes"] == 2 and episodes["invalid_action_rate"] == 0.0  # constrained
    assert isinstance(lmforge.load_model(tmp_path / "run" / "model"), VisionLanguageModel)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [x for x in (json.loads(line).get("loss") for line in lines) if x is not None]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.kinds=[dancing]", "agent.kinds"),
        ("agent.eval_split=test", "agent.eval_split"),
        ("agent.typing=any", "agent.typing"),
        ("agent.thoughts=any", "agent.thoughts"),
        ("agent.clicks=any", "clicks"),
        ("agent.screen=100", "agent.screen"),
        ("agent.mistake_rate=2", "agent.mistake_rate"),
        ("agent.vision_init=xavier", "agent.vision_init"),
        ("agent.lm_init_std=0", "agent.lm_init_std"),
        ("agent.expand_blocks=-1", "agent.expand_blocks"),
        ("agent.clauses=2", "agent.clauses"),
        ("agent.messages=2", "agent.messages"),
    ],
)
def test_bad_sections_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        train_agent_sft(load_config(None, [*SMALL, override], AgentRunConfig))


def test_coordinate_tokens_merge_size_and_rope_theta(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from lmforge.agents.sft import train_agent_tokenizer

    data = make_agent_dataset("train", 3, seed=0, grounding_count=0, grounding_turns=4)
    examples = [ex for k in data for ex in data[k]]
    tok = train_agent_tokenizer(examples, 500, coordinates=128)
    assert tok.vocab_size <= 500
    ids = tok.encode("click(103,32)")
    assert [tok.id_to_token(i) for i in ids] == ["click", "(", "103", ",", "32", ")"]
    tok.save(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the reference tokenizer agrees
    for text in ["click(0,127)", "drag(5,6,120,99)", "Find 'invoice 17' and open it", "x1280y"]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert tok.decode(tok.encode(text)) == text
    overrides = [
        *SMALL,
        "agent.coordinate_tokens=true",
        "agent.merge_size=1",
        "agent.rope_theta=100",
    ]
    config = load_config(None, overrides, AgentRunConfig)
    model, tok = agent_model(config, examples)
    assert tok.token_to_id("103") is not None
    assert model.config.vision.spatial_merge_size == 1 and model.config.text.rope_theta == 100
    processor = image_processor_for(model, 128)
    _, grid = processor([examples[0].images[0]])
    assert processor.tokens_per_image(grid) == [256]  # 8-px image tokens: 16 × 16
    save_model(model, tmp_path / "model")
    hf_config = AutoConfig.from_pretrained(tmp_path / "model")
    assert hf_config.vision_config.spatial_merge_size == 1
    assert hf_config.text_config.rope_parameters["rope_theta"] == 100


def test_fan_in_init_survives_the_merge_size_rebuild():
    """``agent.merge_size`` ≠ 2 rebuilds the model; the encoder still gets N(0, 1/fan_in)."""
    data = make_agent_dataset("train", 2, seed=0, grounding_count=0, grounding_turns=4)
    examples = [ex for k in data for ex in data[k]]
    stds = {}
    for init in ("fan_in", "config"):
        overrides = [*SMALL, "agent.merge_size=1", f"agent.vision_init={init}"]
        model, _ = agent_model(load_config(None, overrides, AgentRunConfig), examples)
        assert model.config.vision.spatial_merge_size == 1
        stds[init] = model.visual.merger.mlp[0].weight.std().item()
    fan_in = 32  # agent.vision_hidden=32 in SMALL, merge 1
    assert abs(stds["fan_in"] - fan_in**-0.5) < 0.03, stds
    assert abs(stds["config"] - 0.02) < 0.005, stds


def test_random_screens_are_refused_below_zero():
    with pytest.raises(ConfigError, match="agent.random_screens"):
        train_agent_sft(load_config(None, [*SMALL, "agent.random_screens=-1"], AgentRunConfig))


def test_random_screens_and_question_first_run(tmp_path):
    overrides = [f"out_dir={tmp_path / 'run'}", *SMALL, "agent.random_screens=6",
                 "agent.question_first=true", "agent.grounding_turns=1", "agent.eval_tasks=0",
                 "agent.kinds=[grounding]", "train.max_steps=3"]  # fmt: skip
    summary = train_agent_sft(load_config(None, overrides, AgentRunConfig))
    assert 0 <= summary["agent_eval"]["grounding_accuracy"] <= 1


POINTER = ["agent.pointer_size=16", "agent.eval_tasks=0", "agent.eval_grounding=12"]


def from_folder(overrides: list[str], folder) -> AgentRunConfig:
    return load_config(None, [*overrides, f"model.init_from={folder}"], AgentRunConfig)


def test_pointer_agent_sft_trains_saves_and_scores_by_pointing(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path / 'run'}", *SMALL, *POINTER], AgentRunConfig)
    report = train_agent_sft(config)["agent_eval"]
    assert 0 <= report["grounding_accuracy"] <= 1 and 0 <= report["grounding_accuracy_text"] <= 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    pointer = [x["pointer_loss"] for x in map(json.loads, lines) if x.get("pointer_loss")]
    assert pointer and all(0 < p < 20 for p in pointer)  # finite, ~log(64 tokens) at first
    back = lmforge.load_model(tmp_path / "run" / "model")
    assert back.config.pointer_size == 16 and back.pointer_head is not None
    for size in (16, 0, 32):  # a folder's (trained) head is kept, whatever agent.pointer_size
        overrides = [*SMALL, *POINTER, f"agent.pointer_size={size}"]
        again, _ = agent_model(from_folder(overrides, tmp_path / "run" / "model"), [])
        assert again.config.pointer_size == 16
        for a, b in zip(
            again.pointer_head.parameters(), back.pointer_head.parameters(), strict=True
        ):
            assert torch.equal(a, b)


def test_a_folder_without_a_head_gets_a_fresh_one(tmp_path):
    examples = make_agent_dataset("train", 2, seed=0)["grounding"]
    model, tok = agent_model(load_config(None, SMALL, AgentRunConfig), examples)
    assert model.pointer_head is None
    save_model(model, tmp_path / "m")
    tok.save(tmp_path / "m")
    for size in (0, 24):
        loaded, _ = agent_model(
            from_folder([*SMALL, f"agent.pointer_size={size}"], tmp_path / "m"), []
        )
        assert loaded.config.pointer_size == size
        assert (loaded.pointer_head is None) == (size == 0)
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)  # the folder's body


@pytest.mark.parametrize(
    "override", ["agent.pointer_size=-1", "agent.pointer_weight=-0.5", "agent.pointer_cells=edges"]
)
def test_bad_pointer_settings_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train_agent_sft(load_config(None, [*SMALL, override], AgentRunConfig))


def test_pointer_grounding_score_matches_a_hand_computation(monkeypatch):
    """`evaluate_agent_model` scores a pointer model by its pointing: with ``point`` fixed to
    a known distribution (0.6 on one token, 0.4 on its right neighbour), every click is the
    tokens' weighted centre and the accuracy the share of target boxes holding it."""
    config = load_config(None, [*SMALL, *POINTER, "agent.merge_size=1"], AgentRunConfig)
    a = config.agent
    torch.manual_seed(0)
    model, tok = agent_model(config, make_agent_dataset("train", 2, seed=0)["grounding"])
    processor = image_processor_for(model, 128)
    held = make_agent_dataset(
        "heldout_layout", max(1, a.eval_grounding // 8), 5 + 7919, a.history, 0.0, 128, 128
    )["grounding"][: a.eval_grounding]  # as evaluate_agent_model, seed 5
    x0, y0, x1, y1 = held[0].meta["target_box"]
    rows = cols = 16  # 8-px tokens, no merge
    r, c = int((y0 + y1) / 2) // 8, min(cols - 2, int(x0) // 8)
    calls = []

    def point(ids, pixel_values, grid, images):
        calls.append((ids.shape[0], list(images), grid.shape[0]))
        assert all(
            tok.decode(row).endswith("<|im_start|>assistant\nclick(") for row in ids.tolist()
        )
        probs = torch.zeros(ids.shape[0], rows * cols)
        probs[:, r * cols + c], probs[:, r * cols + c + 1] = 0.6, 0.4
        return probs.log(), [(rows, cols)] * ids.shape[0]  # `point` gives logits

    monkeypatch.setattr(model, "point", point)
    x = int((0.6 * (c + 0.5) + 0.4 * (c + 1.5)) / cols * 128)
    y = int((r + 0.5) / rows * 128)
    boxes = [ex.meta["target_box"] for ex in held]
    want = sum(box_contains(b, x, y) for b in boxes) / len(boxes)
    assert want > 0
    assert point_clicks(model, tok, processor, held, (128, 128)) == [f"click({x},{y})"] * len(held)
    report = evaluate_agent_model(model, tok, processor, a, seed=5)
    assert report["grounding_accuracy"] == pytest.approx(want)
    assert 0 <= report["grounding_accuracy_text"] <= 1  # the text answers, reported aside
    assert all(images == list(range(n)) for _, images, n in calls)  # each row's own screenshot
    assert sum(b for b, _, _ in calls) == 2 * len(held) and max(b for b, _, _ in calls) > 1


def test_batched_pointing_equals_one_by_one():
    held = make_agent_dataset("heldout_layout", 2, 3)["grounding"][:10]
    torch.manual_seed(1)
    model, tok = agent_model(load_config(None, [*SMALL, *POINTER], AgentRunConfig), held)
    model.eval()
    processor = image_processor_for(model, 128)
    together = point_clicks(model, tok, processor, held, (128, 128))
    alone = [point_clicks(model, tok, processor, [ex], (128, 128))[0] for ex in held]
    assert together == alone and len(set(together)) > 1


def test_reading_kind_trains_and_grounding_is_split_by_rows(tmp_path):
    overrides = [f"out_dir={tmp_path / 'run'}", *SMALL, *POINTER, "agent.random_screens=4",
                 "agent.reading_screens=4", "agent.kinds=[grounding,reading]",
                 "agent.eval_grounding=80", "train.max_steps=3", "train.seed=1"]  # fmt: skip
    report = train_agent_sft(load_config(None, overrides, AgentRunConfig))["agent_eval"]
    rows, other = report["grounding_rows_n"], report["grounding_other_n"]
    assert rows > 0 and rows + other == 80
    whole = (report["grounding_rows"] * rows + report["grounding_other"] * other) / 80
    assert whole == pytest.approx(report["grounding_accuracy"])
    with pytest.raises(ConfigError, match="agent.reading_screens"):
        train_agent_sft(load_config(None, [*SMALL, "agent.reading_screens=-1"], AgentRunConfig))
    assert "reading" not in AgentRunConfig().agent.kinds  # opt-in


def test_zoom_second_look_maps_back_to_the_screen(monkeypatch):
    import numpy as np

    from lmforge.agents import grounding
    from lmforge.agents.agent_data import zoom_image

    held = make_agent_dataset("heldout_layout", 1, 3)["grounding"][:3]
    looks = []

    def once(model, tok, proc, examples, screen, batch_size):
        looks.append(examples)
        return [(64, 64) if len(looks) == 1 else (10, 21)] * len(examples)

    monkeypatch.setattr(grounding, "_point_once", once)
    assert point_clicks(None, None, None, held, (128, 128)) == ["click(64,64)"] * 3
    looks.clear()
    assert point_clicks(None, None, None, held, (128, 128), zoom=2) == ["click(37,42)"] * 3
    first, second = looks
    assert first == held and [e.question for e in second] == [e.question for e in held]
    for ex, z in zip(held, second, strict=True):
        assert np.array_equal(z.images[-1], zoom_image(ex.images[-1], (32, 32, 96, 96)))


def test_zoom_run_reports_the_second_look(tmp_path):
    overrides = [f"out_dir={tmp_path / 'run'}", *SMALL, *POINTER, "agent.merge_size=1",
                 "agent.zoom=2", "agent.kinds=[grounding]", "agent.eval_grounding=80",
                 "train.max_steps=2", "train.seed=1"]  # fmt: skip
    report = train_agent_sft(load_config(None, overrides, AgentRunConfig))["agent_eval"]
    for key in ("grounding_accuracy_zoom", "grounding_zoom_rows", "grounding_zoom_other"):
        assert 0 <= report[key] <= 1
    with pytest.raises(ConfigError, match="agent.zoom"):
        train_agent_sft(load_config(None, [*SMALL, "agent.zoom=1"], AgentRunConfig))


@pytest.mark.parametrize(
    "override", ["agent.row_target=digits", "agent.row_screens=-1", "agent.option_screens=-1"]
)
def test_bad_row_settings_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train_agent_sft(load_config(None, [*SMALL, override], AgentRunConfig))


def test_row_target_number_and_row_screens_train(tmp_path, monkeypatch):
    import lmforge.agents.sft as sft
    from lmforge.agents.agent_data import ROW_QUESTION, pointer_queries

    seen = []

    def spy(ex, screen, row_target="box"):
        queries = pointer_queries(ex, screen, row_target)
        seen.append((ex, row_target, queries, pointer_queries(ex, screen)))
        return queries

    monkeypatch.setattr(sft, "pointer_queries", spy)
    overrides = [f"out_dir={tmp_path / 'run'}", *SMALL, *POINTER, "agent.kinds=[grounding]",
                 "agent.row_target=number", "agent.row_screens=6", "agent.grounding_turns=8",
                 "train.max_steps=3"]  # fmt: skip
    report = train_agent_sft(load_config(None, overrides, AgentRunConfig))["agent_eval"]
    assert 0 <= report["grounding_accuracy"] <= 1
    assert seen and all(target == "number" for _, target, _, _ in seen)
    moved = kept = 0
    for ex, _, digits, whole in seen:
        msgs = ex.messages()
        for a, b in zip(digits, whole, strict=True):
            row = msgs[a.message - 1]["content"]
            text = row if isinstance(row, str) else "".join(c.get("text", "") for c in row)
            if text.startswith(ROW_QUESTION):
                moved += a.box != b.box
            else:
                kept += a.box == b.box
    assert moved > 0 and kept > 0
    only_rows = [ex for ex, *_ in seen if ex.meta.get("template") == "random"
                 and ex.question.startswith(ROW_QUESTION)]  # fmt: skip
    assert only_rows  # the row screens' chats are in the training data


# -- DDP: Agent SFT on two CPU processes (gloo, ``torchrun --standalone --nproc_per_node 2``): each
# rank trains its own rows of every global batch (`MultimodalPackedLoader`'s rank share), so a
# DDP run with ``batch_size`` 1 per rank makes the updates of one process accumulating two
# micro-batches of 1 (the pointer term is a per-micro-batch mean, `pointer_objective`) — the
# language model *and* the pointer head (GUI-Actor) end with the same weights, and the logged
# losses are the whole step's.

ROOT = Path(__file__).resolve().parents[2]
DDP_RUN = [*(o for o in SMALL if not o.startswith(("agent.train_tasks", "agent.eval", "train.batch"))),
           "agent.train_tasks=6", "agent.eval_tasks=0", "agent.eval_grounding=0",
           "agent.pointer_size=16", "train.max_steps=4", "train.device=cpu"]  # fmt: skip
SCRIPT = """
import json, sys, torch
from lmforge.agents.sft import train_agent_sft
from lmforge.agents.sft_config import AgentRunConfig
from lmforge.train.config import load_config
torch.set_num_threads(1)
out, overrides = sys.argv[1], json.loads(sys.argv[2])
config = load_config(None, [*overrides, "train.batch_size=1", "train.distributed=ddp",
                            f"out_dir={out}/ddp"], AgentRunConfig)
train_agent_sft(config)
"""


def _step_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_two_ranks_make_the_accumulated_update(tmp_path, torchrun):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    torchrun(script, [str(tmp_path), json.dumps(DDP_RUN)], cwd=ROOT)
    config = load_config(None, [*DDP_RUN, "train.batch_size=1", "train.grad_accum=2", f"out_dir={tmp_path}/one"], AgentRunConfig)  # fmt: skip
    train_agent_sft(config)
    one, ddp = (
        read_state_dict(tmp_path / "one" / "model"),
        read_state_dict(tmp_path / "ddp" / "model"),
    )
    assert one.keys() == ddp.keys() and any("pointer" in k for k in one)
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=2e-5, rtol=1e-4, msg=key)
    assert _step_losses(tmp_path / "ddp") == pytest.approx(_step_losses(tmp_path / "one"), rel=1e-4)


def test_expand_blocks_deepens_the_folder_model_without_changing_it(tmp_path):
    examples = make_agent_dataset("train", 2, seed=0)["grounding"]
    model, tok = agent_model(load_config(None, [*SMALL, "agent.pointer_size=16"], AgentRunConfig),
                             examples)  # fmt: skip
    save_model(model, tmp_path / "m")
    tok.save(tmp_path / "m")
    config = from_folder([*SMALL, "agent.expand_blocks=1"], tmp_path / "m")
    deeper, _ = agent_model(config, [])
    assert deeper.config.text.num_hidden_layers == 2 and deeper.pointer_head is not None
    ids = torch.randint(8, 300, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(deeper.eval()(ids).logits, model.eval()(ids).logits)
