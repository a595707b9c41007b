"""The native-resolution vision encoder: MoonViT's layout against transformers'
`Kimi_K25VisionModel` (+ its multimodal projector) on loaded weights, Qwen2-VL's layout
against `Qwen2VisionTransformerPretrainedModel`, packing = each image alone, and the 2-D
RoPE angles against a brute-force computation."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.vision_encoder import (
    VisionConfig,
    VisionEncoder,
    axial_rope_tables,
    patch_rows_cols,
    raster_to_merge_blocks,
)

transformers = pytest.importorskip("transformers")
GRID = torch.tensor([[1, 4, 6], [1, 8, 4], [1, 6, 6]])  # three sizes in one packed sequence


def kimi_config(**kw) -> VisionConfig:
    return VisionConfig(hidden_size=16, depth=2, num_heads=2, intermediate_size=40,
                        hidden_act="gelu_pytorch_tanh", patch_size=4, temporal_patch_size=1,
                        out_hidden_size=24, norm_eps=1e-5, rope_layout="wh_interleaved",
                        patch_order="raster", fused_qkv=False, patch_bias=True, pos_grid=6,
                        final_norm=True, **kw)  # fmt: skip


def kimi_state(vision, projector) -> dict:
    """transformers' Kimi-K2.5 vision tower + projector names → lmforge's."""
    state = {}
    for k, v in vision.state_dict().items():
        k = (k.replace("patch_embed.pos_emb.", "pos_grid.").replace("layers.", "blocks.")
             .replace("final_layernorm.", "final_norm."))  # fmt: skip
        state[k] = v[:, :, None] if k == "patch_embed.proj.weight" else v  # Conv2d → T = 1
    names = {"pre_norm": "ln_q", "in_proj": "mlp.0", "out_proj": "mlp.2"}
    for k, v in projector.state_dict().items():
        module, param = k.split(".")
        state[f"merger.{names[module]}.{param}"] = v
    return state


def test_moonvit_layout_matches_kimi_k25_vision_model():
    from transformers.models.kimi_k25.configuration_kimi_k25 import (
        Kimi_K25Config,
        Kimi_K25VisionConfig,
    )
    from transformers.models.kimi_k25.modeling_kimi_k25 import (
        Kimi_K25MultimodalProjection,
        Kimi_K25VisionModel,
    )

    vc = Kimi_K25VisionConfig(patch_size=4, pos_emb_height=6, pos_emb_width=6, pos_emb_time=2,
                              num_attention_heads=2, num_hidden_layers=2, hidden_size=16,
                              intermediate_size=40)  # fmt: skip
    full = Kimi_K25Config(vision_config=vc.to_dict(), projection_hidden_size=16,
                          text_config=dict(hidden_size=24, vocab_size=50, num_hidden_layers=1))  # fmt: skip
    torch.manual_seed(0)
    hf, projector = Kimi_K25VisionModel(vc).eval(), Kimi_K25MultimodalProjection(full).eval()
    with torch.no_grad():  # random everything (the position grid starts at zero otherwise)
        for p in [*hf.parameters(), *projector.parameters()]:
            p.normal_(0, 0.2)
    ours = VisionEncoder(kimi_config()).eval()
    ours.load_state_dict(kimi_state(hf, projector), strict=True)
    n = int(GRID.prod(-1).sum())
    pv = torch.randn(n, 3, 4, 4)
    with torch.no_grad():
        ref = hf(pv, GRID)
        hidden = ours.hidden_states(pv.reshape(n, -1), GRID)
        merged = ours(pv.reshape(n, -1), GRID)
        ref_merged = projector(ref.pooler_output).squeeze(1)
    assert (hidden - ref.last_hidden_state).abs().max() < 1e-5
    assert (merged - ref_merged).abs().max() < 1e-5


def test_qwen2_vl_layout_matches_transformers_vision_tower():
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    vc = Qwen2VLVisionConfig(depth=2, embed_dim=16, hidden_size=24, num_heads=2, patch_size=4,
                             mlp_ratio=2, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    torch.manual_seed(1)
    hf = Qwen2VisionTransformerPretrainedModel(vc).eval()
    ours = VisionEncoder(VisionConfig(hidden_size=16, depth=2, num_heads=2, intermediate_size=32,
                                      patch_size=4, out_hidden_size=24)).eval()  # fmt: skip
    ours.load_state_dict(hf.state_dict(), strict=True)  # the same names and shapes
    pv = torch.randn(int(GRID.prod(-1).sum()), 3 * 2 * 4 * 4)
    with torch.no_grad():
        assert (ours(pv, GRID) - hf(pv, grid_thw=GRID).pooler_output).abs().max() < 1e-5


def test_packed_images_equal_each_image_alone():
    torch.manual_seed(2)
    enc = VisionEncoder(kimi_config()).eval()
    sizes = GRID.prod(-1).tolist()
    pv = torch.randn(sum(sizes), 3 * 4 * 4)
    with torch.no_grad():
        packed = enc(pv, GRID)
        alone = torch.cat([enc(chunk, GRID[i : i + 1])
                           for i, chunk in enumerate(pv.split(sizes))])  # fmt: skip
    assert (packed - alone).abs().max() < 1e-5


def test_equal_sized_images_run_as_a_batch_like_the_masked_path():
    """Equal-sized images take the batched attention path; the block-diagonal mask path
    (forced through one different-sized image) gives the same tokens for them."""
    torch.manual_seed(3)
    enc = VisionEncoder(kimi_config()).eval()
    same = torch.tensor([[1, 4, 4], [1, 4, 4]])
    mixed = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 2, 2]])
    pv = torch.randn(36, 3 * 4 * 4)
    with torch.no_grad():
        batched = enc(pv[:32], same)
        masked = enc(pv, mixed)[:8]
    assert (batched - masked).abs().max() < 1e-5


def test_axial_rope_angles_brute_force():
    """Angle of dim j: row·θ_j (first quarter), col·θ_j (second) for Qwen2-VL; (col, row)
    pairs interleaved for MoonViT; θ_j = theta^(−4j/D)."""
    d, theta = 16, 100.0
    rc = torch.tensor([[3, 5], [0, 2]])
    inv = [theta ** (-4 * j / d) for j in range(d // 4)]
    cos, _ = axial_rope_tables(rc, d, theta, "hw_halves")
    angles = [r * f for r, _ in rc.tolist() for f in inv]
    for i, (r, c) in enumerate(rc.tolist()):
        half = [r * f for f in inv] + [c * f for f in inv]
        assert torch.allclose(cos[i], torch.tensor(half + half).cos(), atol=1e-6)
        pairs = [a for f in inv for a in (c * f, r * f)]
        k_cos, _ = axial_rope_tables(rc, d, theta, "wh_interleaved")
        assert torch.allclose(k_cos[i], torch.tensor(pairs + pairs).cos(), atol=1e-6)
    assert len(angles) == 2 * d // 4


def test_merge_block_order_is_a_regrouping_of_raster():
    grid = torch.tensor([[1, 4, 6]])
    raster = patch_rows_cols(grid, 2, "raster")
    blocks = patch_rows_cols(grid, 2, "merge_blocks")
    assert torch.equal(raster[raster_to_merge_blocks(grid, 2)], blocks)
    assert blocks[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_bad_grids_are_clear_errors():
    enc = VisionEncoder(kimi_config())
    with pytest.raises(ValueError, match="multiples of 2"):
        enc(torch.randn(15, 48), torch.tensor([[1, 3, 5]]))
    with pytest.raises(ValueError, match="pixel_values has shape"):
        enc(torch.randn(10, 48), torch.tensor([[1, 4, 4]]))
