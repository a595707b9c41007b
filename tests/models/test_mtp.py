"""Multi-token prediction: hidden states against transformers' ``MtpModel`` on the same
weights, the training loss against the paper's formula computed here, targets that never cross
packed documents, and the HF layout (extra layers after the last one; loads with or without)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import lmforge
from lmforge.models.mtp import mtp_hidden_states, mtp_targets, shift_left
from lmforge.models.presets import preset_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = preset_config(
        "deepseek-tiny", num_nextn_predict_layers=2, tie_word_embeddings=False, mtp_loss_weight=0.4
    )
    m = lmforge.CausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@torch.no_grad()
def test_hidden_states_match_transformers_mtp_model(model, tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import MtpModel

    lmforge.save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    hf_mtp = MtpModel(hf, 2).eval()
    state = {}
    for k, mod in enumerate(model.mtp):  # lmforge's names → MtpModel's (fused experts)
        for name, v in mod.state_dict().items():
            if ".experts." not in name:
                name = name.replace("shared_head.norm", "post_norm").replace("block.", "mtp_block.")
                state[f"layers.{k}.{name}"] = v
        experts = mod.block.mlp.experts
        state[f"layers.{k}.mtp_block.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts]
        )
        state[f"layers.{k}.mtp_block.mlp.experts.down_proj"] = torch.stack(
            [e.down_proj.weight for e in experts]
        )
    result = hf_mtp.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {"embed_tokens.weight", "shared_head.weight"}  # shared

    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    _, cos, sin, batch = model.model.prepare(ids)
    ours = mtp_hidden_states(
        model.mtp, model.model.embed_tokens, model.model(ids), ids, cos, sin, batch
    )
    previous = hf.model(ids).last_hidden_state
    positions = torch.arange(12).expand(2, 12)
    for k in range(2):
        previous = hf_mtp.forward_layer(
            k, previous, positions, None, input_ids=shift_left(ids, k + 1)
        )
        assert (previous - ours[k]).abs().max() < 1e-4
    assert ours[1].abs().max() > 1.0


def test_training_loss_is_main_plus_lambda_mean_of_depth_losses(model):
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :3] = -100
    model.train()
    try:
        out = model(ids, labels=labels)
        hidden = model.model(ids)
        _, cos, sin, batch = model.model.prepare(ids)
        states = mtp_hidden_states(
            model.mtp, model.model.embed_tokens, hidden, ids, cos, sin, batch
        )
        depth_losses = []
        for k, h in enumerate(states, start=1):  # position i predicts token i + k + 1
            logits = model.lm_head(h)[:, : 10 - k - 1]
            target = labels[:, k + 1 :]
            depth_losses.append(F.cross_entropy(logits.reshape(-1, 256), target.reshape(-1)))
        main = F.cross_entropy(
            model.lm_head(hidden)[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1)
        )
        expected = main + 0.4 * torch.stack(depth_losses).mean()
        assert torch.allclose(out.loss, expected, atol=1e-5)
        total = model(ids, labels=labels, loss_reduction="sum").loss
        assert torch.allclose(total / (labels[:, 1:] != -100).sum(), expected, atol=1e-5)
        out.loss.backward()
        assert model.mtp[1].eh_proj.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad()
        model.eval()
    assert model(ids, labels=labels).mtp_loss is None  # evaluation: the main loss only


def test_mtp_blocks_beside_layer_types_use_full_attention():
    """A model with per-layer attention types builds its MTP blocks (layer indices N, N + 1
    past ``layer_types``, which used to raise IndexError) with full attention, and trains."""
    cfg = preset_config("tiny", sliding_window=3, num_nextn_predict_layers=2,
                        layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    torch.manual_seed(0)
    m = lmforge.CausalLM(cfg)
    assert [layer.self_attn.window for layer in m.model.layers] == [3, None]
    assert [module.block.self_attn.window for module in m.mtp] == [None, None]
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(3))
    out = m(ids, labels=ids)
    assert torch.isfinite(out.mtp_loss) and out.mtp_loss > 0
    out.loss.backward()
    assert m.mtp[1].block.self_attn.q_proj.weight.grad.abs().sum() > 0


def test_targets_stay_inside_packed_documents():
    labels = torch.arange(10)[None]
    docs = torch.tensor([[0] * 4 + [1] * 6])
    t = mtp_targets(labels, 2, docs)
    # entry j scores position j - 1 against token j + 2; positions 0..3 are document 0
    # (positions 1-3 would predict tokens 4-6 of document 1; the last two run past the end)
    assert t[0].tolist() == [2, 3, -100, -100, -100, 7, 8, 9, -100, -100]


def test_hf_layout_and_loading_with_or_without_mtp(model, tmp_path):
    lmforge.save_model(model, tmp_path / "with")
    with safe_open(str(tmp_path / "with" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    n = model.config.num_hidden_layers
    for k in range(2):  # DeepSeek-V3's layout: layers N, N+1 with copies of embed and head
        for name in ("enorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                     "shared_head.head.weight", "embed_tokens.weight", "self_attn.kv_b_proj.weight",
                     "mlp.gate.e_score_correction_bias"):  # fmt: skip
            assert f"model.layers.{n + k}.{name}" in keys
    loaded = lmforge.load_model(tmp_path / "with")
    assert loaded.mtp is not None
    for (a, x), (b, y) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a == b and torch.equal(x, y)
    # Without the MTP layers (inference copies may drop them): the same main model.
    without = lmforge.CausalLM(model.config, with_mtp=False)
    without.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")}
    )
    lmforge.save_model(without, tmp_path / "without")
    dropped = lmforge.load_model(tmp_path / "without").eval()
    assert dropped.mtp is None and dropped.config.num_nextn_predict_layers == 2
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(dropped(ids).logits, model(ids).logits)
