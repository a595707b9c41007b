"""Numerical parity with `transformers` for every family and architecture option.

Each case: random HF model → save_pretrained → lmforge.load_model → equal logits (padded
batch); lmforge → save_model → HF from_pretrained → equal again; a packed batch equals each
document run alone; incremental decoding with the KV cache equals one full forward.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import lmforge
from lmforge import KVCache

ATOL = 1e-4

# A tiny DeepSeek-V3 (HF config kwargs): q LoRA, 8 routed experts in 4 groups (top-2 groups,
# top-3 experts), one shared expert, one dense-first layer, YaRN with mscale_all_dim (which
# changes the softmax scale), interleaved RoPE.
DEEPSEEK_TINY = dict(
    num_key_value_heads=4,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    moe_intermediate_size=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=3,
    n_group=4,
    topk_group=2,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "mscale": 1.0,
        "mscale_all_dim": 0.8,
    },
)

CASES = {
    "llama-mha": ("llama", dict(num_key_value_heads=4)),
    "llama-gqa-headdim-bias": (
        "llama",
        dict(head_dim=16, attention_bias=True, mlp_bias=True),
    ),
    "llama-mqa-linear-rope": (
        "llama",
        dict(num_key_value_heads=1, rope_parameters={"rope_type": "linear", "factor": 2.0}),
    ),
    "llama-llama3-rope-tied": (
        "llama",
        dict(
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama-yarn": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        ),
    ),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-sliding": (
        "qwen2",
        dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
    "qwen3-qknorm-headdim": ("qwen3", dict(head_dim=16)),
    "qwen3-bias-sliding-yarn": (
        "qwen3",
        dict(
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=0,
            rope_parameters={"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0},
        ),
    ),
    "mistral-sliding": ("mistral", dict(sliding_window=5)),
    "mistral-full-mqa": ("mistral", dict(sliding_window=None, num_key_value_heads=1)),
    # DeepSeek-V3: MLA + DeepSeekMoE. `correction_bias_std` draws a non-zero
    # e_score_correction_bias (it changes which experts are chosen, not their weights).
    "deepseek-qlora-groups-yarn-bias": (
        "deepseek_v3",
        dict(DEEPSEEK_TINY, correction_bias_std=0.5),
    ),
    "deepseek-plainq-tied-dense0-bias": (
        "deepseek_v3",
        dict(
            DEEPSEEK_TINY,
            q_lora_rank=None,
            tie_word_embeddings=True,
            n_group=1,
            topk_group=1,
            n_shared_experts=2,
            first_k_dense_replace=0,
            norm_topk_prob=False,
            rope_interleave=False,
            attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            correction_bias_std=0.3,
        ),
    ),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def pair(request, tmp_path_factory, hf_model_factory):
    """(hf_model, lmforge_model, folder) for one case."""
    model_type, overrides = CASES[request.param]
    overrides = dict(overrides)
    bias_std = overrides.pop("correction_bias_std", 0.0)
    seed = zlib.crc32(request.param.encode()) % 1000
    hf = hf_model_factory(model_type, seed=seed, **overrides)
    if bias_std:
        generator = torch.Generator().manual_seed(seed)
        for name, buf in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(bias_std * torch.randn(buf.shape, generator=generator))
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, lmforge.load_model(folder).eval(), folder


def _batch(vocab: int = 97, b: int = 3, t: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    return ids, mask


def _max_diff(a, b, mask=None):
    d = (a - b).abs()
    if mask is not None:
        d = d * mask[..., None]
    return d.max().item()


@torch.no_grad()
def test_hf_to_lmforge_logits(pair):
    hf, ours, _ = pair
    ids, mask = _batch()
    assert _max_diff(hf(ids).logits, ours(ids).logits) <= ATOL
    ref = hf(ids, attention_mask=mask).logits
    got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert _max_diff(ref, got, mask) <= ATOL


@torch.no_grad()
def test_inputs_embeds_and_hidden_states_match_hf(pair):
    """The body takes embeddings instead of ids (VLMs, prompt tuning) and returns the final
    hidden states: both as HF's ``inputs_embeds`` / ``last_hidden_state``."""
    hf, ours, _ = pair
    ids, mask = _batch(seed=2)
    embeds = torch.randn(
        *ids.shape, hf.config.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    ref = hf(inputs_embeds=embeds, attention_mask=mask).logits
    assert _max_diff(ref, ours(inputs_embeds=embeds, attention_mask=mask).logits, mask) <= ATOL
    hidden = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert _max_diff(hidden, ours.model(ids, attention_mask=mask), mask) <= ATOL


@torch.no_grad()
def test_lmforge_to_hf_logits(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    _, ours, _ = pair
    lmforge.save_model(ours, tmp_path)
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids, mask = _batch(seed=1)
    assert (
        _max_diff(hf2(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits, mask)
        <= ATOL
    )


@torch.no_grad()
def test_packed_equals_separate(pair):
    _, ours, _ = pair
    lengths = [5, 7, 4]
    docs = [
        torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths
    ]
    packed = torch.cat(docs, dim=1)
    doc_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    out = ours(packed, document_ids=doc_ids).logits
    cu = torch.tensor([0, 5, 12, 16], dtype=torch.int32)
    out_cu = ours(packed, cu_seqlens=cu).logits
    start = 0
    for doc, n in zip(docs, lengths):
        alone = ours(doc).logits
        assert _max_diff(out[:, start : start + n], alone) <= ATOL
        assert _max_diff(out_cu[:, start : start + n], alone) <= ATOL
        start += n


@torch.no_grad()
def test_packed_rows_with_cu_seqlens(pair):
    """Two rows of 8 tokens: [3, 5] and [8]; cu_seqlens over the flattened batch."""
    _, ours, _ = pair
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    cu = torch.tensor([0, 3, 8, 16], dtype=torch.int32)
    out = ours(ids, cu_seqlens=cu).logits
    assert _max_diff(out[0:1, :3], ours(ids[0:1, :3]).logits) <= ATOL
    assert _max_diff(out[0:1, 3:], ours(ids[0:1, 3:]).logits) <= ATOL
    assert _max_diff(out[1:2], ours(ids[1:2]).logits) <= ATOL


@torch.no_grad()
def test_kv_cache_incremental_equals_full(pair):
    _, ours, _ = pair
    ids, mask = _batch(t=14, seed=2)
    full = ours(ids, attention_mask=mask).logits
    cache = KVCache.for_model(ours, batch_size=ids.shape[0], max_len=ids.shape[1])
    pieces, pos = [], 0
    for step in (6, 1, 3, 1, 1, 1, 1):  # prefill, single tokens and a chunk with a cache offset
        chunk = ids[:, pos : pos + step]
        pieces.append(ours(chunk, attention_mask=mask[:, : pos + step], cache=cache).logits)
        pos += step
    assert pos == ids.shape[1] and cache.length == pos
    assert _max_diff(torch.cat(pieces, dim=1), full, mask) <= ATOL
    # Without padding, too.
    cache = KVCache.for_model(ours, batch_size=ids.shape[0], max_len=ids.shape[1])
    first = ours(ids[:, :9], cache=cache).logits
    rest = [ours(ids[:, i : i + 1], cache=cache).logits for i in range(9, 14)]
    assert _max_diff(torch.cat([first, *rest], dim=1), ours(ids).logits) <= ATOL


# ---------------------------------------------------------------------- DeepSeek-V3 only
DEEPSEEK_CASES = sorted(k for k in CASES if CASES[k][0] == "deepseek_v3")


only_deepseek = pytest.mark.parametrize("pair", DEEPSEEK_CASES, indirect=True)


@only_deepseek
@torch.no_grad()
def test_deepseek_greedy_generation_matches_hf(pair):
    hf, ours, _ = pair
    prompt = torch.randint(1, 97, (1, 7), generator=torch.Generator().manual_seed(5))
    ref = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    got = lmforge.generate(ours, prompt, max_new_tokens=12, min_new_tokens=12)
    assert got.tolist() == ref.tolist()


@only_deepseek
@torch.no_grad()
def test_deepseek_correction_bias_changes_routing_not_weights(pair):
    """The non-zero correction bias of the parity case changes which experts run (zeroing
    it changes the logits), and the logits still match HF with it (tests above)."""
    _, ours, _ = pair
    biases = [b for n, b in ours.named_buffers() if n.endswith("e_score_correction_bias")]
    if not any(bool(b.any()) for b in biases):
        pytest.skip("this case has a zero correction bias")
    ids, _ = _batch(seed=4)
    with_bias = ours(ids).logits
    saved = [b.clone() for b in biases]
    for b in biases:
        b.zero_()
    without = ours(ids).logits
    for b, s in zip(biases, saved):
        b.copy_(s)
    assert _max_diff(with_bias, without) > 1e-2


@only_deepseek
@torch.no_grad()
def test_deepseek_engine_paged_latent_cache_matches_contiguous(pair):
    """The paged engine (model.forward over its paged cache, which stores MLA's latent as
    one shared KV head; continuous batching, prefix caching) produces the contiguous-cache
    greedy tokens."""
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    _, ours, _ = pair
    shared = list(range(3, 23))  # two prompts share 5 blocks: a prefix-cache hit
    prompts = [[5, 9, 2], shared, [7], shared + [40, 41]]
    engine = Engine(ours, block_size=4)
    assert engine.runner is None  # MLA/MoE layers use model.forward
    assert engine.cache.keys[0].shape[1:] == (1, ours.config.kv_lora_rank + 8)
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    out = engine.generate(prompts[:3], greedy)
    out += engine.generate(prompts[3:], greedy)  # after `shared` is cached
    assert engine.stats()["prefix_cache_hit_tokens"] >= 16
    for prompt, result in zip(prompts, out):
        cache = KVCache.for_model(ours, 1, len(prompt) + 6)
        logits = ours(torch.tensor([prompt]), cache=cache).logits[0, -1]
        ref = []
        for _ in range(6):  # argmax each step, no eos handling (as ignore_eos)
            ref.append(int(logits.argmax()))
            logits = ours(torch.tensor([[ref[-1]]]), cache=cache).logits[0, -1]
        assert result.token_ids == ref
