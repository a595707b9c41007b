"""The pointer head (GUI-Actor): targets, loss and readout against independent computations;
the VLM's `pointer_logits` / `point` against the head applied by hand to the hidden states;
a pointer model saves and loads with its head, and transformers still loads the folder."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models.hf import load_model, save_model
from lmforge.models.pointer_head import (
    PointerHead,
    image_keys,
    normalise_box,
    pointer_loss,
    pointer_point,
    pointer_target,
    to_pixels,
    token_centre,
)
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VisionLanguageModel, VLMConfig

IMG = 60


def tiny(pointer_size: int = 8, merge: int = 2) -> VisionLanguageModel:
    torch.manual_seed(0)
    text = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, qkv_bias=True)  # fmt: skip
    vision = VisionConfig(hidden_size=16, depth=1, num_heads=2, intermediate_size=32, patch_size=4,
                          spatial_merge_size=merge, out_hidden_size=32)  # fmt: skip
    cfg = VLMConfig(text=text, vision=vision, image_token_id=IMG, vision_start_token_id=61,
                    vision_end_token_id=62, video_token_id=63, mrope_section=[1, 1, 2],
                    pointer_size=pointer_size)  # fmt: skip
    return VisionLanguageModel(cfg).eval()


def image_inputs(model, sizes):
    """Random patches and grids of images of ``sizes`` (h, w) patches, and their token counts."""
    v = model.config.vision
    grid = torch.tensor([[1, h, w] for h, w in sizes])
    n = int(grid.prod(-1).sum())
    pixels = torch.randn(n, v.in_channels * v.temporal_patch_size * v.patch_size**2)
    return pixels, grid, [h * w // v.spatial_merge_size**2 for h, w in sizes]


def test_target_is_uniform_over_the_overlapping_cells():
    # 4 x 4 grid of cells 0.25 wide; the box spans x in [0.3, 0.6), y in [0.0, 0.2)
    t = pointer_target((0.3, 0.0, 0.6, 0.2), (4, 4)).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[0, 1] = expected[0, 2] = 0.5  # cells x [0.25, 0.5) and [0.5, 0.75), row 0
    assert torch.allclose(t, expected)
    # a box touching a cell edge does not overlap it; a degenerate box takes its centre cell
    assert pointer_target((0.25, 0.25, 0.5, 0.5), (4, 4)).view(4, 4)[1, 1] == 1.0
    assert pointer_target((0.6, 0.6, 0.6, 0.6), (4, 4)).view(4, 4)[2, 2] == 1.0


def test_centre_target_keeps_the_cells_whose_centre_is_in_the_box():
    """``cells="centre"``: a 1-px overlap no longer counts, so the region readout of any mass
    on the target lies in the box; a box holding no centre falls back to its overlap."""
    grid = (16, 16)  # 8-px cells on a 128-px screen
    box = (5 / 128, 59 / 128, 49 / 128, 71 / 128)  # a button: x 5..49, y 59..71 px
    overlap = pointer_target(box, grid).view(16, 16)
    assert (overlap > 0).nonzero().tolist() == [[r, c] for r in (7, 8) for c in range(7)]
    centre = pointer_target(box, grid, "centre").view(16, 16)  # centres x 12..44, y 60, 68
    assert (centre > 0).nonzero().tolist() == [[r, c] for r in (7, 8) for c in range(1, 6)]
    assert torch.allclose(centre.sum(), torch.tensor(1.0))
    # a row 56..68 px high: the cell row 64..72 (centre 68) is the next row's, not this one's
    row = pointer_target((7 / 128, 56 / 128, 121 / 128, 68 / 128), grid, "centre").view(16, 16)
    assert set((row > 0).nonzero()[:, 0].tolist()) == {7}
    # the readout of the worst mass on it (all on one edge cell) is inside the box
    x, y = pointer_point(
        torch.where(centre.flatten() > 0, 1e-3, 0.0).index_fill(0, torch.tensor([7 * 16 + 5]), 1.0),
        grid,
    )
    assert box[0] <= x < box[2] and box[1] <= y < box[3]
    # a thin box (a number's digit centres) holds no centre: the overlap, as before
    thin = (40.2 / 128, 61.3 / 128, 45.01 / 128, 61.31 / 128)
    assert torch.equal(pointer_target(thin, grid, "centre"), pointer_target(thin, grid))
    with pytest.raises(ValueError, match="cells"):
        pointer_target(box, grid, "edges")


def test_loss_is_the_cross_entropy_against_the_target():
    logits = torch.tensor([[1.0, 2.0, 0.5, float("-inf")]])
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    z = math.log(math.e**1 + math.e**2 + math.e**0.5)
    expected = -(0.5 * (1.0 - z) + 0.5 * (2.0 - z))
    assert pointer_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_readout_is_the_weighted_centre_of_the_argmax_region():
    p = torch.zeros(4, 4)
    p[1, 1], p[1, 2] = 0.4, 0.2  # connected region above 0.3 · 0.4
    p[3, 3] = 0.1  # below the threshold: ignored
    p[0, 3] = 0.3  # above it but not connected to the argmax: ignored
    x, y = pointer_point(p.flatten(), (4, 4))
    assert x == pytest.approx((0.4 * 1.5 + 0.2 * 2.5) / 0.6 / 4)
    assert y == pytest.approx(1.5 / 4)
    assert token_centre(6, (4, 4)) == (2.5 / 4, 1.5 / 4)
    assert to_pixels((0.5, 0.999), (128, 64)) == (64, 63)
    assert normalise_box((32, 16, 64, 32), (128, 64)) == (0.25, 0.25, 0.5, 0.5)


def test_head_is_the_scaled_dot_product_of_two_mlps():
    torch.manual_seed(0)
    head = PointerHead(6, 4)
    q, k = torch.randn(2, 6), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = head(q, k, mask)

    def mlp(seq, x):
        a, _, b = seq
        h = x @ a.weight.T + a.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        return h @ b.weight.T + b.bias

    manual = (mlp(head.query, q)[:, None] * mlp(head.key, k)).sum(-1) / 2.0
    assert torch.allclose(out[0], manual[0], atol=1e-6)
    assert torch.allclose(out[1, :3], manual[1, :3], atol=1e-6)
    assert torch.isinf(out[1, 3:]).all()


def test_image_keys_select_each_querys_image():
    hidden = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    ids = torch.tensor([[IMG, IMG, 5, IMG, 5, 5], [5, IMG, IMG, IMG, 5, 5]])
    keys, mask = image_keys(hidden, ids, IMG, [2, 1, 3], [2, 0])
    assert keys[0, :, 0].tolist() == [7.0, 8.0, 9.0] and mask[0].all()
    assert keys[1, :2, 0].tolist() == [0.0, 1.0] and mask[1].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="image 3"):
        image_keys(hidden, ids, IMG, [2, 1, 3], [3])


def test_vlm_pointer_logits_equal_the_head_on_the_hidden_states():
    model = tiny()
    pixels, grid, counts = image_inputs(model, [(4, 4), (4, 8)])  # 4 and 8 image tokens
    ids = torch.tensor([[1, 61] + [IMG] * 4 + [62, 5, 6, 7], [1, 61] + [IMG] * 8])
    out = model(ids, pixels, grid, output_hidden_states=True)
    assert out.hidden_states.shape == (2, 10, 32)
    queries = torch.tensor([[0, 9], [1, 1], [0, 8]])
    logits, grids = model.pointer_logits(out.hidden_states, ids, grid, queries, [0, 1, 1])
    assert grids == [(2, 2), (2, 4), (2, 4)]
    h = out.hidden_states
    expected0 = model.pointer_head(h[0, 9][None], h[0, 2:6][None])[0]
    expected1 = model.pointer_head(h[1, 1][None], h[1, 2:10][None])[0]
    assert torch.allclose(logits[0, :4], expected0, atol=1e-5) and torch.isinf(logits[0, 4:]).all()
    assert torch.allclose(logits[1], expected1, atol=1e-5)
    # `point` queries the last position of a prompt
    logits, g = model.point(ids[:1, :9], pixels[:16], grid[:1])
    last = model(ids[:1, :9], pixels[:16], grid[:1], output_hidden_states=True).hidden_states
    manual = model.pointer_head(last[0, 8][None], last[0, 2:6][None])[0]
    assert g == [(2, 2)] and torch.allclose(logits[0], manual, atol=1e-5)


def test_pointer_gradients_reach_the_head_and_the_encoder():
    model = tiny().train()
    pixels, grid, _ = image_inputs(model, [(4, 4)])
    ids = torch.tensor([[1, 61] + [IMG] * 4 + [62, 5, 6]])
    h = model(ids, pixels, grid, output_hidden_states=True).hidden_states
    logits, grids = model.pointer_logits(h, ids, grid, torch.tensor([[0, 8]]), [0])
    pointer_loss(logits, pointer_target((0.0, 0.0, 0.4, 0.4), grids[0])[None]).sum().backward()
    assert model.pointer_head.query[0].weight.grad.abs().sum() > 0
    assert model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


def test_a_model_without_a_head_says_so():
    model = tiny(pointer_size=0)
    assert model.pointer_head is None
    with pytest.raises(ValueError, match="no pointer head"):
        model.pointer_logits(torch.zeros(1, 2, 32), torch.zeros(1, 2, dtype=torch.long),
                             torch.tensor([[1, 2, 2]]), torch.tensor([[0, 1]]), [0])  # fmt: skip


def test_pointer_model_saves_loads_and_transformers_reads_the_folder(tmp_path):
    model = tiny()
    save_model(model, tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"pointer_head"' in config
    again = load_model(tmp_path, dtype=torch.float32)
    assert again.config.pointer_size == 8
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    pixels, grid, _ = image_inputs(model, [(4, 4)])
    ids = torch.tensor([[1, 61] + [IMG] * 4 + [62, 5, 6]])
    with torch.no_grad():
        ours = again(ids, pixels, grid).logits
        theirs = hf(input_ids=ids, pixel_values=pixels, image_grid_thw=grid,
                    mm_token_type_ids=(ids == IMG).int()).logits  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-4)
