"""``VisionConfig.abs_pos``: absolute (row, column) embeddings on the merged image tokens.
Off by default (no module, Qwen2-VL's state dict and outputs unchanged); ``sincos`` adds
exactly `sincos_2d` of each token's merged-grid position; ``learned`` adds trainable row and
column tables; bad values are refused by name."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ConfigError, ModelConfig
from lmforge.models.vision_encoder import (
    ABS_POS_MAX_SIDE,
    VisionConfig,
    VisionEncoder,
    merged_rows_cols,
    patch_rows_cols,
    sincos_2d,
)
from lmforge.models.vlm import VisionLanguageModel, VLMConfig

GRID = torch.tensor([[1, 4, 6], [2, 2, 2]])  # a 2×3-token image, then a 2-frame 1×1-token clip


def encoder(abs_pos: str, seed: int = 0, **kw) -> VisionEncoder:
    torch.manual_seed(seed)
    config = VisionConfig(hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4,
                          out_hidden_size=16, abs_pos=abs_pos, **kw)  # fmt: skip
    return VisionEncoder(config).eval()


def patches(enc: VisionEncoder) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(int(GRID.prod(-1).sum()), enc.config.patch_dim)


def test_default_is_off_and_adds_no_parameters():
    assert VisionConfig().abs_pos == "none"
    names = {n for n, _ in encoder("none").named_parameters()}
    assert not any("abs_pos" in n for n in names)
    assert {n for n, _ in encoder("sincos").named_parameters()} == names  # no parameters
    learned = {n for n, _ in encoder("learned").named_parameters()} - names
    assert learned == {"abs_pos.row_embed.weight", "abs_pos.col_embed.weight"}


def test_merged_positions_follow_the_merger_order():
    """The merger reads each 2×2 block's patches consecutively: its output token k sits at
    the block of patches 4k … 4k+3, i.e. at their (row, col) // 2."""
    blocks = patch_rows_cols(GRID, 2, "merge_blocks")[::4] // 2
    assert torch.equal(merged_rows_cols(GRID, 2), blocks)
    assert merged_rows_cols(GRID, 2).tolist()[-2:] == [[0, 0], [0, 0]]  # each frame from (0, 0)


def test_sincos_2d_brute_force():
    rc = torch.tensor([[0, 0], [3, 5], [7, 1]])
    dim, theta = 16, 10000.0
    out = sincos_2d(rc, dim, theta)
    for n, (r, c) in enumerate(rc.tolist()):
        for axis, p in enumerate((r, c)):
            for i in range(dim // 4):
                w = theta ** (-i / (dim // 4))
                base = axis * dim // 2
                assert out[n, base + i].item() == pytest.approx(torch.tensor(p * w).sin().item())
                assert out[n, base + dim // 4 + i].item() == pytest.approx(
                    torch.tensor(p * w).cos().item(), abs=1e-6
                )


def test_sincos_adds_exactly_its_table_to_the_same_weights():
    plain, sincos = encoder("none"), encoder("sincos")
    sincos.load_state_dict(plain.state_dict())
    x = patches(plain)
    added = sincos(x, GRID) - plain(x, GRID)
    expected = sincos_2d(merged_rows_cols(GRID, 2), 16)
    torch.testing.assert_close(added, expected, atol=1e-5, rtol=0)


def test_learned_tables_add_and_train():
    plain, learned = encoder("none"), encoder("learned")
    learned.load_state_dict(plain.state_dict(), strict=False)
    x = patches(plain)
    rc = merged_rows_cols(GRID, 2)
    table = learned.abs_pos
    expected = table.row_embed.weight[rc[:, 0]] + table.col_embed.weight[rc[:, 1]]
    torch.testing.assert_close(learned(x, GRID) - plain(x, GRID), expected.detach(), atol=1e-5, rtol=0)
    learned(x, GRID).square().sum().backward()
    assert table.row_embed.weight.grad[:2].abs().sum() > 0
    assert table.row_embed.weight.grad[2:].abs().sum() == 0  # rows 0-1 only in GRID
    big = torch.tensor([[1, 2, 2 * (ABS_POS_MAX_SIDE + 1)]])
    with pytest.raises(ValueError, match="abs_pos='learned'"):
        learned.abs_pos(big, 2)


def test_vlm_outputs_change_only_when_on():
    """The same VLM weights: ``none`` reproduces the plain model (the HF parity path),
    ``sincos`` changes the logits of the tokens after the image only."""
    text = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       qkv_bias=True)  # fmt: skip
    models = {}
    for kind in ("none", "sincos"):
        torch.manual_seed(0)
        vision = VisionConfig(hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4,
                              out_hidden_size=16, abs_pos=kind)  # fmt: skip
        config = VLMConfig(text=text, vision=vision, image_token_id=5, mrope_section=[1, 1, 2])
        models[kind] = VisionLanguageModel(config).eval()
    grid = GRID[:1]
    ids = torch.tensor([[1, 2] + [5] * 6 + [3, 4]])
    x = torch.randn(int(grid.prod()), models["none"].config.vision.patch_dim)
    logits = {k: m(ids, x, grid).logits for k, m in models.items()}
    assert torch.equal(logits["none"][:, :2], logits["sincos"][:, :2])
    assert not torch.allclose(logits["none"][:, 2:], logits["sincos"][:, 2:])


def test_bad_abs_pos_is_refused_by_name():
    with pytest.raises(ConfigError, match="abs_pos='rotary'"):
        VisionConfig(abs_pos="rotary")
