"""Multi-head latent attention: the absorbed form equals the training form (full, padded,
cached), the cache holds only the latent, interleaved RoPE and the YaRN softmax scale against
closed forms. Parity of whole models with transformers is in tests/models/test_parity.py."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.models.kv_cache import KVCache
from lmforge.nn.attention import AttentionBatch
from lmforge.nn.mla import MultiHeadLatentAttention, deinterleave, mla_softmax_scale
from lmforge.nn.rope import RotaryEmbedding, rotate

R, ROPE, NOPE, V, HEADS, HIDDEN = 12, 8, 6, 10, 4, 32


def make_mla(q_lora_rank, interleave=True, bias=False, seed=0):
    torch.manual_seed(seed)
    mla = MultiHeadLatentAttention(
        HIDDEN, HEADS, R, NOPE, ROPE, V, q_lora_rank=q_lora_rank, bias=bias,
        rope_interleave=interleave, softmax_scale=0.37,
    )  # fmt: skip
    with torch.no_grad():
        for p in mla.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return mla.eval()


def tables(b, t, past=0):
    rope = RotaryEmbedding(ROPE, 10000.0)
    return rope(torch.arange(past, past + t).expand(b, t), torch.float32)


def run(mla, x, form, batch=None, cache=None, past=0):
    mla.form = form
    cos, sin = tables(x.shape[0], x.shape[1], past)
    batch = batch or AttentionBatch(seq_len=x.shape[1], past=past)
    return mla(x, cos, sin, batch, cache)


@pytest.mark.parametrize("q_lora_rank,interleave,bias", [(16, True, False), (None, False, True)])
@torch.no_grad()
def test_absorbed_form_equals_training_form(q_lora_rank, interleave, bias):
    mla = make_mla(q_lora_rank, interleave, bias)
    x = torch.randn(2, 9, HIDDEN)
    ref = run(mla, x, "training")
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(run(mla, x, "absorbed"), ref, atol=1e-5, rtol=1e-5)
    # with left padding (a mask over keys)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, :3] = False
    padded = AttentionBatch(seq_len=9, key_valid=valid)
    ref = run(mla, x, "training", padded)
    got = run(mla, x, "absorbed", AttentionBatch(seq_len=9, key_valid=valid))
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, 3:], ref[0, 3:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_holds_only_the_latent_and_decoding_matches():
    mla = make_mla(16)
    x = torch.randn(2, 7, HIDDEN)
    full = run(mla, x, "training")

    class Config:  # what KVCache.for_model reads
        num_hidden_layers, num_key_value_heads, head_dim, use_mla = 1, 1, R + ROPE, True

    holder = torch.nn.Linear(1, 1)
    holder.config = Config
    for form in ("absorbed", "training"):
        cache = KVCache.for_model(holder, batch_size=2, max_len=7)
        assert cache.keys[0].shape == (2, 1, 7, R + ROPE) and cache.values[0].shape[-1] == 0
        pieces = []
        for start, end in ((0, 4), (4, 5), (5, 7)):
            out = run(mla, x[:, start:end], form, cache=cache, past=start)
            cache.advance(end - start)
            pieces.append(out)
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_interleaved_rope_rotates_adjacent_pairs():
    """DeepSeek's layout: pair (x_2i, x_2i+1) rotates by angle pos·θ_i (as a complex number
    times e^{i·pos·θ_i}); the output lists the real parts, then the imaginary parts."""
    x = torch.randn(1, 1, 5, ROPE)
    cos, sin = tables(1, 5)
    got = rotate(deinterleave(x), cos[:, None], sin[:, None])
    theta = 10000.0 ** (-torch.arange(0, ROPE, 2).float() / ROPE)
    angle = torch.arange(5).float()[:, None] * theta
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(got, torch.cat((z.real, z.imag), -1), atol=1e-6, rtol=1e-6)


def test_yarn_softmax_scale():
    yarn = {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707}
    m = 0.1 * 0.707 * math.log(40.0) + 1.0
    assert mla_softmax_scale(192, yarn) == pytest.approx(m * m / math.sqrt(192))
    assert mla_softmax_scale(192, None) == pytest.approx(1 / math.sqrt(192))
    assert mla_softmax_scale(192, {"rope_type": "yarn", "factor": 4.0}) == pytest.approx(
        1 / math.sqrt(192)
    )


def test_parameter_names_and_shapes_are_deepseeks():
    names = {n: tuple(p.shape) for n, p in make_mla(16, bias=True).named_parameters()}
    assert names["q_a_proj.weight"] == (16, HIDDEN) and "q_a_proj.bias" in names
    assert names["q_b_proj.weight"] == (HEADS * (NOPE + ROPE), 16)
    assert names["kv_a_proj_with_mqa.weight"] == (R + ROPE, HIDDEN)
    assert names["kv_b_proj.weight"] == (HEADS * (NOPE + V), R)
    assert names["o_proj.weight"] == (HIDDEN, HEADS * V)
    assert "q_proj.weight" in dict(make_mla(None).named_parameters())


@torch.no_grad()
def test_decoding_sees_weights_written_through_data():
    """A ``p.data`` write (or a fused optimizer's in-place step) bumps no version counter; the
    absorbed form must still use the new W_UK/W_UV: cached decode equals a full forward."""
    mla = make_mla(16)
    x = torch.randn(1, 6, HIDDEN)

    class Config:  # what KVCache.for_model reads
        num_hidden_layers, num_key_value_heads, head_dim, use_mla = 1, 1, R + ROPE, True

    holder = torch.nn.Linear(1, 1)
    holder.config = Config

    def decode():
        cache = KVCache.for_model(holder, batch_size=1, max_len=6)
        pieces = []
        for start in range(6):
            pieces.append(run(mla, x[:, start : start + 1], "absorbed", cache=cache, past=start))
            cache.advance(1)
        return torch.cat(pieces, 1)

    decode()  # uses (and, before the fix, cached) the absorbed weights
    mla.kv_b_proj.weight.data.mul_(-1.5)  # no version bump
    full = run(mla, x, "training")
    torch.testing.assert_close(decode(), full, atol=1e-5, rtol=1e-5)


def test_generate_after_a_data_update_matches_full_forward():
    """`lmforge.generate` (KVCache decode, absorbed MLA) after a ``.data`` write: greedy tokens
    equal the argmax of full forwards with the new weights."""
    from lmforge.infer.generate import generate
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    model = CausalLM(preset_config("deepseek-tiny")).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 5))
    generate(model, prompt, max_new_tokens=3)
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    out = generate(model, prompt, max_new_tokens=4)
    ids = prompt
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat((ids, model(ids).logits[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(out[:, : ids.shape[1]], ids)
