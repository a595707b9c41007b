"""RoPE frequencies and scaling variants against `transformers`' reference functions."""

from __future__ import annotations

import pytest
import torch

from lmforge.nn.rope import RotaryEmbedding, apply_rotary, rope_frequencies

VARIANTS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 8,
     "beta_slow": 2, "truncate": False},
    {"rope_type": "yarn", "factor": 16.0, "mscale": 1.0, "mscale_all_dim": 0.707,
     "original_max_position_embeddings": 128},
    {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3},
]  # fmt: skip


@pytest.mark.parametrize("scaling", VARIANTS)
@pytest.mark.parametrize("theta,head_dim", [(10000.0, 64), (500000.0, 128)])
def test_frequencies_match_transformers(scaling, theta, head_dim):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
    cfg = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=512, rope_parameters=params,
    )  # fmt: skip
    rope_type = params["rope_type"]
    if rope_type == "default":
        ref_inv, ref_scale = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim)), 1.0
    else:
        ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
    inv, scale = rope_frequencies(head_dim, theta, scaling, 512)
    torch.testing.assert_close(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(ref_scale, rel=1e-7)


def test_rotation_preserves_norm_and_relative_positions():
    rope = RotaryEmbedding(16)
    q = torch.randn(1, 2, 1, 16)
    k = torch.randn(1, 2, 1, 16)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[pq]]), torch.float32)
        ck, sk = rope(torch.tensor([[pk]]), torch.float32)
        rq, _ = apply_rotary(q, q, cq, sq)
        _, rk = apply_rotary(k, k, ck, sk)
        assert torch.allclose(rq.norm(), q.norm(), atol=1e-5)
        return (rq * rk).sum()

    # q·k depends only on the offset between positions (RoFormer eq. 16).
    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-4)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-4)


def test_unknown_rope_type():
    with pytest.raises(ValueError, match="dynamic"):
        rope_frequencies(8, 10000.0, {"rope_type": "dynamic", "factor": 2.0})


def test_frequencies_stay_fp32_when_the_model_is_cast():
    rope = RotaryEmbedding(64, theta=500000.0)
    exact = rope.inv_freq.clone()
    rope.to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, exact)
    cos, _ = rope(torch.arange(4)[None], torch.bfloat16)
    assert cos.dtype == torch.bfloat16
