"""Images in the engine (`lmforge.infer.multimodal`): greedy output of image + text prompts
equals `VisionLanguageModel`'s own full-recompute greedy, in mixed batches with text-only
requests, under chunked prefill and preemption; the encoder runs once per request; prefix
caching shares blocks only between equal images; bad inputs are clear `ValueError`s."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.infer.cache import block_key
from lmforge.infer.engine import Engine
from lmforge.infer.multimodal import ImageInputs, image_digest
from lmforge.infer.params import SamplingParams
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VisionLanguageModel, VLMConfig

IMG, START, END, EOS = 60, 61, 62, 2
PATCH = 3 * 2 * 4 * 4  # C · T · P · P


def tiny_vlm(positions: str = "mrope", seed: int = 0) -> VisionLanguageModel:
    text = ModelConfig(
        model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, qkv_bias=True,
        max_position_embeddings=128, eos_token_id=EOS,
    )  # fmt: skip
    vision = VisionConfig(hidden_size=16, depth=1, num_heads=2, intermediate_size=32,
                          patch_size=4, out_hidden_size=32)  # fmt: skip
    config = VLMConfig(text=text, vision=vision, image_token_id=IMG, vision_start_token_id=START,
                       vision_end_token_id=END, positions=positions,
                       mrope_section=[2, 1, 1] if positions == "mrope" else None)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionLanguageModel(config)
        with torch.no_grad():  # sharp, input-dependent logits (greedy far from ties)
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.4)
    return model.eval()


def images(grids: list[list[int]], seed: int) -> ImageInputs:
    grid = torch.tensor(grids)
    g = torch.Generator().manual_seed(seed)
    return ImageInputs(torch.randn(int(grid.prod(-1).sum()), PATCH, generator=g), grid)


def image_tokens(grid: list[int]) -> list[int]:
    t, h, w = grid
    return [START] + [IMG] * (t * h * w // 4) + [END]


def reference_greedy(model, prompt, inputs, n) -> list[int]:
    """Full recompute every step: the model's own forward over prompt + generated tokens."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            pv = None if inputs is None else inputs.pixel_values
            grid = None if inputs is None else inputs.image_grid_thw
            logits = model(torch.tensor([seq]), pixel_values=pv, image_grid_thw=grid).logits
            token = int(logits[0, -1].argmax())
            if token == EOS:
                break
            seq.append(token)
    return seq[len(prompt) :]


GRIDS = [[[1, 4, 4]], [[1, 2, 6], [1, 6, 2]], [[1, 2, 2]]]


def requests():
    """Three image prompts (one with two images of different sizes) and two text prompts."""
    return [
        ([5, 6, *image_tokens(GRIDS[0][0]), 7, 8], images(GRIDS[0], seed=1)),
        ([9, 10, 11, 12, 13], None),
        ([5, *image_tokens(GRIDS[1][0]), 14, *image_tokens(GRIDS[1][1]), 15], images(GRIDS[1], 2)),
        ([16, 17, 18], None),
        ([*image_tokens(GRIDS[2][0]), 19, 20, 21], images(GRIDS[2], seed=3)),
    ]


@pytest.fixture(scope="module")
def model():
    return tiny_vlm()


@pytest.fixture(scope="module")
def expected(model):
    return [reference_greedy(model, p, im, 10) for p, im in requests()]


def greedy(n: int = 10) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),  # everything in one step
        dict(max_num_batched_tokens=7, block_size=4),  # chunked prefill splits the images
        dict(num_blocks=12, block_size=4),  # preemption: recompute from the kept features
    ],
    ids=["batched", "chunked", "preempted"],
)
def test_engine_greedy_equals_full_recompute_in_mixed_batch(model, expected, settings):
    engine = Engine(model, **settings)
    prompts, inputs = zip(*requests())
    outs = engine.generate(list(prompts), greedy(), images=list(inputs))
    assert [o.token_ids for o in outs] == expected
    assert any(len(e) >= 5 for e in expected)  # the comparison covers real decoding
    if "num_blocks" in settings:
        assert engine.stats()["num_preemptions"] > 0


def test_vision_features_are_computed_once_per_request(model):
    engine = Engine(model, num_blocks=12, block_size=4)
    calls = []
    handle = model.visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        prompts, inputs = zip(*requests())
        for p, im in zip(prompts, inputs):
            engine.add_request(p, greedy(), images=im)
        reqs = list(engine.requests.values())
        while engine.has_unfinished():
            engine.step()
    finally:
        handle.remove()
    assert engine.stats()["num_preemptions"] > 0
    assert len(calls) == 3 and [r.images.num_encodes for r in reqs if r.images] == [1, 1, 1]


def test_1d_positions_model_matches_full_recompute():
    model = tiny_vlm(positions="1d", seed=1)
    prompts, inputs = zip(*requests()[:2])
    want = [reference_greedy(model, p, im, 8) for p, im in zip(prompts, inputs)]
    outs = Engine(model, block_size=4).generate(list(prompts), greedy(8), images=list(inputs))
    assert [o.token_ids for o in outs] == want


def test_kimi_vl_shape_mla_moe_body_matches_full_recompute():
    """Kimi-VL's shape: DeepSeek-V3 body (MLA, a K-only paged cache; MoE), MoonViT encoder."""
    text = ModelConfig(
        model_type="deepseek_v3", vocab_size=64, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4,
        moe_intermediate_size=16, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, max_position_embeddings=128, eos_token_id=EOS,
    )  # fmt: skip
    vision = VisionConfig(hidden_size=16, depth=1, num_heads=2, intermediate_size=32,
                          patch_size=4, temporal_patch_size=1, out_hidden_size=32,
                          rope_layout="wh_interleaved", patch_order="raster", fused_qkv=False,
                          patch_bias=True, pos_grid=6, final_norm=True)  # fmt: skip
    config = VLMConfig(text=text, vision=vision, image_token_id=IMG, positions="1d",
                       model_type="kimi_vl")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionLanguageModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.4)
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])  # 6 + 1 merged tokens
    pv = torch.randn(
        int(grid.prod(-1).sum()), 3 * 4 * 4, generator=torch.Generator().manual_seed(0)
    )
    prompt, inputs = [3, *[IMG] * 6, 4, 5, IMG, 7], ImageInputs(pv, grid)
    engine = Engine(model, block_size=4)
    outs = engine.generate([prompt, [5, 6, 7]], greedy(8), images=[inputs, None])
    assert outs[0].token_ids == reference_greedy(model, prompt, inputs, 8)
    assert len(outs[0].token_ids) >= 4, outs[0].token_ids
    assert outs[1].token_ids == reference_greedy(model, [5, 6, 7], None, 8)


def test_prefix_cache_is_keyed_by_image_content(model):
    prompt = [5, 6, 7, 8, *image_tokens([1, 4, 4]), 9, 10, 11, 12, 13, 14, 15]  # 4 + 6 + 7 tokens
    a, b = images([[1, 4, 4]], seed=7), images([[1, 4, 4]], seed=8)
    engine = Engine(model, block_size=4)
    first = engine.generate([prompt], greedy(4), images=[a])[0].token_ids
    hits = engine.stats()["prefix_cache_hit_tokens"]
    # Same tokens, another image: only the block before the image is shared.
    other = engine.generate([prompt], greedy(4), images=[b])[0].token_ids
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == 4
    assert other == reference_greedy(model, prompt, b, 4)
    # Same image again: every full block of the prompt is reused.
    hits = engine.stats()["prefix_cache_hit_tokens"]
    again = engine.generate([prompt], greedy(4), images=[a])[0].token_ids
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == 16
    assert again == first == reference_greedy(model, prompt, a, 4)
    assert first != other  # the image matters to this model's answer
    # A text-only request with the same leading text shares that first block too.
    hits = engine.stats()["prefix_cache_hit_tokens"]
    engine.generate([[5, 6, 7, 8, 9, 10]], greedy(1))
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == 4


def test_block_key_and_digest():
    assert block_key(None, [1, 2], ("a",)) != block_key(None, [1, 2])
    assert block_key(None, [1, 2], ()) == block_key(None, [1, 2])
    x = images([[1, 2, 2]], seed=0)
    assert image_digest(x.pixel_values, x.image_grid_thw[0]) == image_digest(
        x.pixel_values.clone(), torch.tensor([1, 2, 2])
    )
    assert image_digest(x.pixel_values, torch.tensor([1, 2, 2])) != image_digest(
        x.pixel_values, torch.tensor([1, 4, 1])
    )


def test_bad_image_inputs_are_clear_errors(model):
    engine = Engine(model)
    prompt = [5, *image_tokens([1, 4, 4]), 6]
    good = images([[1, 4, 4]], seed=0)
    with pytest.raises(ValueError, match="image placeholder tokens.*no images"):
        engine.add_request(prompt, greedy())
    with pytest.raises(ValueError, match="more image placeholder tokens|placeholders for only"):
        engine.add_request(prompt, greedy(), images=images([[1, 4, 4], [1, 2, 2]], seed=0))
    with pytest.raises(ValueError, match="image 0 needs 4 placeholder tokens"):
        engine.add_request([5, START, IMG, IMG, END], greedy(), images=good)
    with pytest.raises(ValueError, match="pixel_values has shape"):
        engine.add_request(
            prompt, greedy(), images=ImageInputs(good.pixel_values[:3], good.image_grid_thw)
        )
    with pytest.raises(ValueError, match="image_grid_thw"):
        engine.add_request(
            prompt, greedy(), images=ImageInputs(good.pixel_values, torch.tensor([4, 4]))
        )
    with pytest.raises(ValueError, match="image_grid_thw heights/widths must be multiples of 2"):
        engine.add_request(
            prompt, greedy(), images=ImageInputs(good.pixel_values, torch.tensor([[1, 1, 16]]))
        )
    bad = good.pixel_values.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="pixel_values holds NaN"):
        engine.add_request(prompt, greedy(), images=ImageInputs(bad, good.image_grid_thw))
    assert not engine.requests  # nothing half-added
