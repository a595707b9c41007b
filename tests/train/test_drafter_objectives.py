"""Drafter objectives: Medusa-1 (frozen backbone: no gradient reaches it) and Medusa-2
(L_LM + 0.2·Σ 0.8^k L_k) against the formulas computed here, EAGLE's objective against
`eagle_loss` on the target's own features, and the checkpoint hook saving trainables only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmforge import CausalLM, ModelConfig
from lmforge.models.eagle import EagleLayer, eagle_loss
from lmforge.models.medusa import MedusaHeads, medusa_head_losses
from lmforge.train.drafter_objectives import (
    EagleModel,
    EagleObjective,
    EagleSection,
    MedusaModel,
    MedusaObjective,
    MedusaSection,
)


def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=30, hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, max_position_embeddings=32))  # fmt: skip


def batch() -> dict:
    ids = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids.clone()}


def test_medusa_objectives_by_hand(tmp_path):
    base = tiny()
    heads = MedusaHeads(16, 30, 2, lm_head=base.lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = batch()
    base.requires_grad_(False)
    model = MedusaModel(base, heads)
    out = MedusaObjective(MedusaSection(num_heads=2))(model, b)
    hidden = base.model(b["input_ids"])
    losses, count = medusa_head_losses(heads(hidden), b["labels"])
    expected = 0.8 * losses[0] + 0.64 * losses[1]
    assert math.isclose((out.loss_sum / out.count).item(), expected.item(), rel_tol=1e-5)
    out.loss_sum.backward()
    assert all(p.grad is None for p in base.parameters())
    assert heads.projections[0].weight.grad is not None

    base.requires_grad_(True)
    out2 = MedusaObjective(MedusaSection(num_heads=2, mode="medusa2"))(model, b)
    lm = F.cross_entropy(
        base(b["input_ids"]).logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten()
    )
    expected2 = lm + 0.2 * (0.8 * losses[0] + 0.64 * losses[1])
    assert math.isclose((out2.loss_sum / out2.count).item(), expected2.item(), rel_tol=1e-5)
    model.save_weights_folder(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "heads.projections.0.weight" in saved and "base.lm_head.weight" in saved
    base.requires_grad_(False)
    model.save_weights_folder(tmp_path)
    assert not any(k.startswith("base.") for k in load_file(str(tmp_path / "model.safetensors")))


def test_eagle_objective_matches_loss():
    base = tiny().requires_grad_(False)
    layer = EagleLayer.for_model(base.config)
    b = batch()
    out = EagleObjective(EagleSection())(EagleModel(base, layer), b)
    feats = base.model(b["input_ids"])
    pred, _ = layer(base.model.embed_tokens(b["input_ids"][:, 1:]), feats[:, :-1], torch.arange(8))
    valid = torch.ones(2, 8, dtype=torch.bool)
    loss, _, _ = eagle_loss(pred, feats[:, 1:], base.lm_head, valid)
    assert math.isclose((out.loss_sum / out.count).item(), loss.item(), rel_tol=1e-5)
    assert out.count == 16
