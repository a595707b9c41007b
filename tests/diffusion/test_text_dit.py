"""Cross-attention against a hand computation (softmax over the unmasked context), padding
ignored, and the text-conditioned DiT's shapes and dependence on the caption."""

from __future__ import annotations

import math

import torch

from lmforge.diffusion.text_dit import CrossAttention, TextDiT, TextDiTConfig


def test_cross_attention_matches_hand_formula_and_masks_padding():
    torch.manual_seed(0)
    attn = CrossAttention(8, 6, heads=2)
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 4, 6)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    out = attn(x, ctx, mask)
    assert out.shape == (2, 5, 8)
    q = attn.q(x).view(2, 5, 2, 4)
    k, v = attn.kv(ctx).view(2, 4, 2, 2, 4).unbind(2)
    want = torch.zeros(2, 5, 2, 4)
    for b in range(2):
        keep = mask[b].bool()
        for h in range(2):
            scores = q[b, :, h] @ k[b, keep, h].T / math.sqrt(4)
            want[b, :, h] = scores.softmax(-1) @ v[b, keep, h]
    torch.testing.assert_close(out, attn.proj(want.reshape(2, 5, 8)), rtol=1e-5, atol=1e-5)
    changed = ctx.clone()
    changed[0, 0] = 100.0  # a padding position of row 0
    torch.testing.assert_close(attn(x, changed, mask)[0], out[0])


def test_text_dit_shapes_and_caption_dependence():
    torch.manual_seed(0)
    cfg = TextDiTConfig(sample_size=4, in_channels=3, out_channels=3, hidden_size=16, depth=1,
                        num_heads=2, context_dim=6)  # fmt: skip
    net = TextDiT(cfg)
    for p in net.parameters():  # leave the zero-initialised output layers
        torch.nn.init.normal_(p, std=0.2)
    x, ctx = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 6)
    out = net(x, torch.tensor([10, 500]), ctx, torch.ones(2, 3))
    assert out.shape == (2, 3, 4, 4)
    other = net(x, torch.tensor([10, 500]), ctx.flip(0), torch.ones(2, 3))
    assert not torch.allclose(out, other)
