"""Multimodal SFT through the one Trainer: a tiny VLM from scratch exports an HF qwen2_vl
folder (loads in lmforge and transformers), the projector stage trains only the merger, LoRA
writes an adapter, the loss falls, bad sections are ConfigErrors, and two DDP ranks make the
update of one process accumulating their micro-batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from lmforge.config import ConfigError
from lmforge.models.hf import read_state_dict
from lmforge.models.vlm import VisionLanguageModel
from lmforge.peft.settings import PeftSettings
from lmforge.train.config import load_config
from lmforge.train.vlm_sft import (
    VLMRunConfig,
    VLMSection,
    VLMShape,
    fan_in_init_,
    freeze_for_stage,
    image_processor_for,
    tiny_vlm,
    train_vlm_sft,
)
from lmforge.vision.vlm_data import train_vqa_tokenizer

SMALL = [
    "vlm.tasks=[colour, count]", "vlm.image_size=16", "vlm.train_examples=24",
    "vlm.eval_examples=4", "vlm.vision_hidden=32", "vlm.hidden_size=32", "vlm.vocab_size=400",
    "vlm.num_heads=2", "vlm.num_kv_heads=1", "vlm.vision_heads=2", "vlm.mrope_section=[2, 3, 3]",
    "data.seq_len=128", "train.batch_size=2", "train.max_steps=6", "train.eval_every=0",
    "train.save_every=0", "log.progress=false", "log.plot=false", "optim.warmup_steps=1",
    "train.cpu_threads=1",
]  # fmt: skip


def test_from_scratch_run_exports_a_qwen2_vl_folder(tmp_path, capsys):
    config = load_config(None, [f"out_dir={tmp_path / 'run'}", *SMALL], VLMRunConfig)
    summary = train_vlm_sft(config)
    folder = tmp_path / "run" / "model"
    acc = json.loads((tmp_path / "run" / "heldout_accuracy.json").read_text())
    assert set(acc) == {"colour", "count", "all"} and summary["heldout_accuracy"] == acc
    model = lmforge.load_model(folder)
    assert isinstance(model, VisionLanguageModel)
    saved = json.loads((folder / "preprocessor_config.json").read_text())  # as training resized
    trained = image_processor_for(model, config.vlm.image_size).config
    assert saved["size"] == {
        "longest_edge": trained.max_pixels,
        "shortest_edge": trained.min_pixels,
    }
    assert saved["patch_size"] == trained.patch_size == model.config.vision.patch_size
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    ids = torch.tensor([[3, *[model.config.image_token_id] * 4, 5]])
    pv = torch.randn(16, 3 * 2 * 4 * 4)
    grid = torch.tensor([[1, 4, 4]])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits
        ref = hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid,
                 mm_token_type_ids=(ids == model.config.image_token_id).int()).logits  # fmt: skip
    assert (ours - ref).abs().max() < 1e-4
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line).get("loss") for line in lines]
    losses = [x for x in losses if x is not None]
    assert losses[-1] < losses[0]
    more = load_config(None, [f"out_dir={tmp_path / 'run'}", *SMALL, "train.max_steps=7"],
                       VLMRunConfig)  # fmt: skip
    capsys.readouterr()
    assert train_vlm_sft(more)["step"] == 7
    assert "resumed from" in capsys.readouterr().out  # the step-6 checkpoint


def test_projector_stage_trains_only_the_merger(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path / 'a'}", *SMALL], VLMRunConfig)
    train_vlm_sft(config)
    start = lmforge.load_model(tmp_path / "a" / "model")
    stage = [f"out_dir={tmp_path / 'b'}", f"model.init_from={tmp_path / 'a' / 'model'}",
             "vlm.stage=projector", "train.max_steps=3", "optim.lr=1e-2"]  # fmt: skip
    train_vlm_sft(load_config(None, [*SMALL, *stage], VLMRunConfig))
    after = lmforge.load_model(tmp_path / "b" / "model")
    before = start.state_dict()
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("visual.merger.") for k in changed)
    lora = [f"out_dir={tmp_path / 'c'}", f"model.init_from={tmp_path / 'a' / 'model'}",
            "train.max_steps=1"]  # fmt: skip
    train_vlm_sft(load_config(None, [*SMALL, *lora], VLMRunConfig), peft=PeftSettings("lora", 4))
    assert (tmp_path / "c" / "model" / "adapter_model.safetensors").is_file()


def test_freeze_for_stage_and_bad_sections():
    tok = train_vqa_tokenizer(["colour"], 300)
    config = load_config(None, SMALL, VLMRunConfig)
    model = tiny_vlm(config.vlm, tok)
    freeze_for_stage(model, "projector")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("visual.merger.")}
    with pytest.raises(ConfigError, match="vlm.tasks"):
        train_vlm_sft(load_config(None, [*SMALL, "vlm.tasks=[juggling]"], VLMRunConfig))
    with pytest.raises(ConfigError, match="multiple of 2"):
        train_vlm_sft(load_config(None, [*SMALL, "vlm.image_size=20"], VLMRunConfig))


def test_fan_in_init_and_the_init_defaults():
    """``vlm``'s from-scratch model: encoder weights N(0, 1/fan_in) (biases and norms
    untouched), LM weights N(0, 0.1²); `VLMShape`'s own defaults keep N(0, 0.02²)."""
    tok = train_vqa_tokenizer(["colour"], 300)
    model = tiny_vlm(VLMSection(vision_hidden=64, hidden_size=64), tok)
    for name, p in model.visual.named_parameters():
        if p.ndim >= 2:
            expected = p[0].numel() ** -0.5
            assert abs(p.std().item() / expected - 1) < 0.1, name
        elif name.endswith("bias"):
            assert not p.any(), name
        else:
            assert torch.equal(p, torch.ones_like(p)), name  # LayerNorm gains
    q = model.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() / 0.1 - 1) < 0.1
    plain = tiny_vlm(VLMShape(vision_hidden=64, hidden_size=64), tok)
    assert abs(plain.visual.blocks[0].mlp.fc1.weight.std().item() / 0.02 - 1) < 0.1
    fan_in_init_(plain.visual)
    assert abs(plain.visual.merger.mlp[0].weight.std().item() * 16 - 1) < 0.1  # fan-in 256
    with pytest.raises(ConfigError, match="vision_init"):
        train_vlm_sft(load_config(None, [*SMALL, "vlm.vision_init=xavier"], VLMRunConfig))


def test_words_task_keeps_its_wide_images_at_native_resolution(tmp_path):
    """With ``words`` among the tasks the pixel budget holds a 16×32 image unresized: its
    grid is (1, 4, 8) next to the square (1, 4, 4), in one packed batch."""
    tok = train_vqa_tokenizer(["colour", "words"], 400)
    model = tiny_vlm(VLMSection(patch_size=4, vision_hidden=32, hidden_size=32, vision_heads=2,
                                num_heads=2, num_kv_heads=1), tok)  # fmt: skip
    wide = image_processor_for(model, 16, aspect=2)
    image = [np.zeros((16, 32, 3), np.uint8)]
    assert wide(image)[1].tolist() == [[1, 4, 8]]
    assert image_processor_for(model, 16)(image)[1].tolist() != [[1, 4, 8]]  # downscaled
    run = [f"out_dir={tmp_path}", *SMALL, "vlm.tasks=[colour, words]", "train.max_steps=2"]
    summary = train_vlm_sft(load_config(None, run, VLMRunConfig))
    assert set(summary["heldout_accuracy"]) == {"colour", "words", "all"}


@pytest.mark.parametrize("cells", ["overlap", "centre"])
def test_pointer_objective_adds_the_weighted_mean_pointer_loss(cells):
    """`pointer_objective(w, cells)` = the LM's summed loss + w · (mean pointer CE) · token
    count, the CE recomputed here from the hidden states with the head applied by hand."""
    from dataclasses import replace

    from lmforge.models.pointer_head import pointer_target
    from lmforge.train.vlm_sft import pointer_objective, vlm_objective
    from lmforge.vision.vlm_data import PointerQuery, collate_rows, encode_chat
    from lmforge.vision.vlm_tasks import make_vqa_examples

    tok = train_vqa_tokenizer(["colour"], 300)
    torch.manual_seed(0)
    plain = tiny_vlm(VLMSection(vision_hidden=32, hidden_size=32, num_heads=2, num_kv_heads=1,
                                mrope_section=[2, 3, 3], vocab_size=300), tok)  # fmt: skip
    cfg = plain.config
    model = VisionLanguageModel(replace(cfg, pointer_size=8))
    processor = image_processor_for(model, 16)
    examples = make_vqa_examples(["colour"], 3, 16, 0, "train")
    boxes = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), (0.1, 0.3, 0.7, 0.95)]
    encoded = [encode_chat(tok, processor, ex.messages(), ex.images,
                           [PointerQuery(1, 1, 0, box)]) for ex, box in zip(examples, boxes)]  # fmt: skip
    seq = sum(len(e) for e in encoded)
    batch = collate_rows(encoded, [[0, 1], [2]], seq, 0)
    out = pointer_objective(2.0, cells)(model, batch)
    lm = vlm_objective(model, batch)
    h = model(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"],
              document_ids=batch["document_ids"], output_hidden_states=True).hidden_states  # fmt: skip
    ids = batch["input_ids"]
    img = h[ids == model.config.image_token_id].view(3, -1, 32)  # one image per example
    ces = []
    for q, ((row, pos), box) in enumerate(zip(batch["pointer_queries"].tolist(), boxes)):
        logp = model.pointer_head(h[row, pos][None], img[q][None])[0].log_softmax(-1)
        n = img.shape[1]
        side = int(n**0.5)
        target = pointer_target(box, (side, side), cells)
        assert (q < 2 or cells == "overlap") == torch.equal(
            target, pointer_target(box, (side, side))
        )
        ces.append(-(target * logp).sum())
    expected = lm.loss_sum + 2.0 * torch.stack(ces).mean() * lm.count
    assert out.count == lm.count
    assert torch.allclose(out.loss_sum, expected, rtol=1e-5)
    assert out.metrics["pointer_loss"] / out.count == pytest.approx(
        torch.stack(ces).mean().item(), rel=1e-5
    )


# -- DDP: the same run on two CPU processes (gloo, ``torchrun --standalone --nproc_per_node 2``).
# Each rank trains its own rows of every global batch (`MultimodalPackedLoader`'s rank share),
# so two ranks of ``batch_size`` 1 make the updates of one process accumulating two
# micro-batches of 1: the same exported weights and the same logged losses.

DDP_SCRIPT = """
import json, sys, torch
from lmforge.train.config import load_config
from lmforge.train.vlm_sft import VLMRunConfig, train_vlm_sft
torch.set_num_threads(1)
out, overrides = sys.argv[1], json.loads(sys.argv[2])
train_vlm_sft(load_config(None, [*overrides, "train.batch_size=1", "train.distributed=ddp",
                                 f"out_dir={out}/ddp"], VLMRunConfig))
"""


def _losses(run) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_two_ranks_make_the_accumulated_update(tmp_path, torchrun):
    run = [o for o in SMALL if not o.startswith("train.batch")] + ["train.max_steps=3",
                                                                    "train.device=cpu"]  # fmt: skip
    script = tmp_path / "ranks.py"
    script.write_text(DDP_SCRIPT)
    torchrun(script, [str(tmp_path), json.dumps(run)], cwd=Path(__file__).resolve().parents[2])
    one = [*run, "train.batch_size=1", "train.grad_accum=2", f"out_dir={tmp_path / 'one'}"]
    train_vlm_sft(load_config(None, one, VLMRunConfig))
    a, b = read_state_dict(tmp_path / "one" / "model"), read_state_dict(tmp_path / "ddp" / "model")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
