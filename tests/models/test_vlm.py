"""Vision-language models against `transformers.Qwen2VLForConditionalGeneration` (tiny random
configs, several images of different sizes per prompt): HF → lmforge and lmforge → HF logits,
greedy generation, KV-cached decoding = one full forward, packed documents = separate ones;
the Kimi-VL configuration (DeepSeek-V3 body + MoonViT encoder, 1-D positions); bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch

import lmforge
from lmforge import KVCache
from lmforge.config import ConfigError, ModelConfig
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VisionLanguageModel, VLMConfig, mrope_position_ids
from lmforge.nn.rope import MultimodalRotaryEmbedding, RotaryEmbedding

transformers = pytest.importorskip("transformers")
ATOL = 1e-4
IMG, START, END = 120, 122, 123
PATCH = 3 * 2 * 4 * 4  # C · T · P · P
GRID = torch.tensor([[1, 4, 4], [1, 2, 6], [1, 6, 2]])  # 4, 3 and 3 merged tokens

CASES = {
    "gqa-mrope211": dict(num_key_value_heads=2, mrope=[2, 1, 1]),
    "mha-mrope112-tied": dict(num_key_value_heads=4, mrope=[1, 1, 2], tie=True),
}


def hf_config(num_key_value_heads: int, mrope: list[int], tie: bool = False):
    text = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)  # fmt: skip
    return transformers.Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=121,
        vision_start_token_id=START, vision_end_token_id=END, tie_word_embeddings=tie,
    )  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(hf_config(**CASES[request.param])).eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, lmforge.load_model(folder).eval(), folder


def image(k: int) -> list[int]:
    return [START] + [IMG] * k + [END]


def prompt() -> torch.Tensor:
    """One prompt with three images of different sizes between text tokens."""
    return torch.tensor([[5, 6, *image(4), 7, 8, 9, *image(3), 10, *image(3), 11, 12]])


def pixels(grid: torch.Tensor = GRID, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(grid.prod(-1).sum()), PATCH, generator=g)


def hf_logits(hf, ids, pv, grid):
    with torch.no_grad():
        return hf(input_ids=ids, pixel_values=pv, image_grid_thw=grid,
                  mm_token_type_ids=(ids == IMG).int()).logits  # fmt: skip


def test_hf_to_lmforge_logits(pair):
    hf, model, _ = pair
    ids, pv = prompt(), pixels()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pv, image_grid_thw=GRID).logits
    assert (ours - hf_logits(hf, ids, pv, GRID)).abs().max() < ATOL


def test_two_rows_with_images_match_hf(pair):
    hf, model, _ = pair
    ids = torch.tensor([[5, *image(4), 7, *image(3), 9], [8, *image(3), 6, 6, 6, 6, 6, 6, 6, 6]])
    grid = torch.tensor([[1, 4, 4], [1, 2, 6], [1, 6, 2]])
    pv = pixels(grid, seed=1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits
    assert (ours - hf_logits(hf, ids, pv, grid)).abs().max() < ATOL


def test_lmforge_to_hf_logits(pair, tmp_path):
    hf, model, _ = pair
    model = copy.deepcopy(model)
    with torch.no_grad():  # perturb so that a dropped or transposed tensor shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    lmforge.save_model(model, tmp_path)
    back = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pv = prompt(), pixels(seed=2)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pv, image_grid_thw=GRID).logits
    assert (ours - hf_logits(back, ids, pv, GRID)).abs().max() < ATOL
    again = lmforge.load_model(tmp_path)
    assert isinstance(again, VisionLanguageModel)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, pixel_values=pv, image_grid_thw=GRID).logits, ours)


def test_greedy_generation_matches_hf(pair):
    hf, model, _ = pair
    ids, pv = prompt(), pixels(seed=3)
    expected = hf.generate(input_ids=ids, pixel_values=pv, image_grid_thw=GRID,
                           mm_token_type_ids=(ids == IMG).int(), max_new_tokens=8,
                           do_sample=False, eos_token_id=None)  # fmt: skip
    ours = model.generate(ids, pixel_values=pv, image_grid_thw=GRID, max_new_tokens=8,
                          do_sample=False, eos_token_id=[])  # fmt: skip
    assert ours.tolist() == expected.tolist()
    assert ours.shape == (1, ids.shape[1] + 8)


def test_generation_never_emits_an_image_placeholder(pair):
    """A model that favours the placeholder token writes its runner-up instead: a generated
    placeholder would have no image, and the next step could not embed it."""
    import copy

    _, model, _ = pair
    model = copy.deepcopy(model)
    weight = model.lm_head.weight.detach().clone()
    model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.lm_head.weight.copy_(weight)
        model.lm_head.bias.zero_()
        model.lm_head.bias[IMG] = 1e4  # the placeholder wins by far
    ids, pv = prompt(), pixels(seed=3)
    with torch.no_grad():
        first = model(ids, pixel_values=pv, image_grid_thw=GRID).logits[0, -1]
    assert int(first.argmax()) == IMG
    out = model.generate(ids, pixel_values=pv, image_grid_thw=GRID, max_new_tokens=4,
                         eos_token_id=[])  # fmt: skip
    new = out[0, ids.shape[1] :]
    assert IMG not in new.tolist() and int(new[0]) == int(first.topk(2).indices[1])


def test_left_padded_batch_generation_matches_hf_and_rows_alone(pair):
    """Two prompts of different lengths (different images) in one left-padded batch: greedy
    tokens equal transformers' with the same mask, and each row's tokens generated alone."""
    hf, model, _ = pair
    short = [5, *image(3), 7]
    long = [8, 9, *image(4), 6, *image(3), 10]
    pad = len(long) - len(short)
    ids = torch.tensor([[0] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    grid = torch.tensor([[1, 2, 6], [1, 4, 4], [1, 6, 2]])
    pv = pixels(grid, seed=4)
    expected = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pv,
                           image_grid_thw=grid, mm_token_type_ids=(ids == IMG).int(),
                           max_new_tokens=6, do_sample=False, eos_token_id=None,
                           pad_token_id=0)  # fmt: skip
    ours = model.generate(ids, pixel_values=pv, image_grid_thw=grid, max_new_tokens=6,
                          eos_token_id=[], attention_mask=mask)  # fmt: skip
    assert ours.tolist() == expected.tolist()
    # the first decoded token's position: lmforge's cache slot + delta, HF's valid count + delta
    ours_next = ids.shape[1] + model.rope_deltas
    hf_next = mask.sum(-1) + hf.model.rope_deltas.flatten()
    assert ours_next.tolist() == hf_next.tolist()
    first = model.generate(torch.tensor([short]), pixel_values=pv[:12], image_grid_thw=grid[:1],
                           max_new_tokens=6, eos_token_id=[])  # fmt: skip
    second = model.generate(torch.tensor([long]), pixel_values=pv[12:], image_grid_thw=grid[1:],
                            max_new_tokens=6, eos_token_id=[])  # fmt: skip
    assert ours[0, -6:].tolist() == first[0, -6:].tolist()
    assert ours[1, -6:].tolist() == second[0, -6:].tolist()
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.generate(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask[:, 1:])


def test_kv_cached_decode_equals_full_forward(pair):
    _, model, _ = pair
    ids, pv = prompt(), pixels(seed=4)
    tail = torch.tensor([[17, 33, 64, 5]])
    full_ids = torch.cat([ids, tail], dim=1)
    with torch.no_grad():
        full = model(input_ids=full_ids, pixel_values=pv, image_grid_thw=GRID).logits
        cache = KVCache.for_model(model.model, 1, full_ids.shape[1])
        steps = [model(input_ids=ids, pixel_values=pv, image_grid_thw=GRID, cache=cache).logits]
        for j in range(tail.shape[1]):
            steps.append(model(input_ids=tail[:, j : j + 1], cache=cache).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < ATOL


def test_packed_documents_equal_separate(pair):
    _, model, _ = pair
    a = torch.tensor([[5, *image(4), 7, 8]])
    b = torch.tensor([[9, *image(3), 10]])
    ga, gb = torch.tensor([[1, 4, 4]]), torch.tensor([[1, 2, 6]])
    pa, pb = pixels(ga, seed=5), pixels(gb, seed=6)
    packed = torch.cat([a, b], dim=1)
    docs = torch.tensor([[0] * a.shape[1] + [1] * b.shape[1]])
    with torch.no_grad():
        together = model(input_ids=packed, pixel_values=torch.cat([pa, pb]),
                         image_grid_thw=torch.cat([ga, gb]), document_ids=docs).logits  # fmt: skip
        alone = torch.cat([model(input_ids=a, pixel_values=pa, image_grid_thw=ga).logits,
                           model(input_ids=b, pixel_values=pb, image_grid_thw=gb).logits], dim=1)  # fmt: skip
    assert (together - alone).abs().max() < ATOL


def test_mrope_positions_follow_qwen2_vl_rule():
    """Brute force of §2.1: text counts on; a 2×3 merged image starting at 3 gets
    (3, 3+r, 3+c); the text after it resumes at 3 + max(2, 3) = 6."""
    ids = torch.tensor([[1, 2, 3, *[IMG] * 6, 4]])
    pos, delta = mrope_position_ids(ids, torch.tensor([[1, 4, 6]]), IMG, 2)
    image_rows = [3 + r for r in range(2) for _ in range(3)]
    image_cols = [3 + c for _ in range(2) for c in range(3)]
    assert pos[0, 0].tolist() == [0, 1, 2] + [3] * 6 + [6]
    assert pos[1, 0].tolist() == [0, 1, 2] + image_rows + [6]
    assert pos[2, 0].tolist() == [0, 1, 2] + image_cols + [6]
    assert delta.tolist() == [7 - ids.shape[1]]


def test_mrope_with_equal_axes_is_plain_rope():
    mrope = MultimodalRotaryEmbedding(16, [2, 3, 3], theta=500.0)
    plain = RotaryEmbedding(16, theta=500.0)
    pos = torch.arange(9).view(1, 9)
    for x, y in zip(mrope(pos, torch.float32), plain(pos, torch.float32), strict=True):
        assert torch.allclose(x, y)


def test_placeholder_errors_are_clear(pair):
    _, model, _ = pair
    pv = pixels()
    too_many = torch.tensor([[5, *image(4), *image(3), *image(3), *image(2)]])
    with pytest.raises(ValueError, match="more image placeholder tokens"):
        model(input_ids=too_many, pixel_values=pv, image_grid_thw=GRID)
    too_few = torch.tensor([[5, *image(4), *image(3)]])
    with pytest.raises(ValueError, match="3 images but placeholders for only 2"):
        model(input_ids=too_few, pixel_values=pv, image_grid_thw=GRID)
    with pytest.raises(ValueError, match="pixel_values has shape"):
        model(input_ids=prompt(), pixel_values=pv[:-1], image_grid_thw=GRID)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=prompt())


# ---------------------------------------------------------------------- Kimi-VL shape
def kimi_vl_config() -> VLMConfig:
    text = ModelConfig(
        model_type="deepseek_v3", vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4,
        moe_intermediate_size=16, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1,
    )  # fmt: skip
    vision = VisionConfig(hidden_size=16, depth=2, num_heads=2, intermediate_size=32,
                          hidden_act="gelu_pytorch_tanh", patch_size=4, temporal_patch_size=1,
                          out_hidden_size=32, norm_eps=1e-5, rope_layout="wh_interleaved",
                          patch_order="raster", fused_qkv=False, patch_bias=True, pos_grid=6,
                          final_norm=True)  # fmt: skip
    return VLMConfig(text=text, vision=vision, image_token_id=60, positions="1d",
                     model_type="kimi_vl")  # fmt: skip


def test_kimi_vl_configuration_runs_moe_body_on_image_tokens():
    torch.manual_seed(0)
    model = VisionLanguageModel(kimi_vl_config()).eval()
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])  # 6 + 1 merged tokens
    pv = torch.randn(int(grid.prod(-1).sum()), 3 * 4 * 4)
    ids = torch.tensor([[3, *[60] * 6, 4, 5, 60, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits
        # independently: splice the encoder's tokens into the embeddings by hand
        x = model.model.embed_tokens(ids).clone()
        feats = model.visual(pv, grid)
        x[0, 1:7], x[0, 9] = feats[:6], feats[6]
        expected = model.lm_head(model.model(inputs_embeds=x))
    assert (logits - expected).abs().max() < 1e-5
    out = model.generate(ids, pixel_values=pv, image_grid_thw=grid, max_new_tokens=4)
    with torch.no_grad():  # greedy with the KV cache = argmax of full forwards
        seq = ids
        for _ in range(4):
            nxt = (
                model(input_ids=seq, pixel_values=pv, image_grid_thw=grid).logits[:, -1].argmax(-1)
            )
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert out.tolist() == seq.tolist()


def test_kimi_vl_is_refused_as_an_hf_checkpoint(tmp_path):
    model = VisionLanguageModel(kimi_vl_config())
    with pytest.raises(ConfigError, match="only qwen2_vl"):
        lmforge.save_model(model, tmp_path / "kimi")
    assert not (tmp_path / "kimi").exists()


def test_mrope_refuses_mla_body():
    cfg = kimi_vl_config()
    with pytest.raises(ConfigError, match="M-RoPE needs a GQA/MHA"):
        VLMConfig(text=cfg.text, vision=cfg.vision, image_token_id=60, positions="mrope",
                  mrope_section=[2, 1, 1])  # fmt: skip
