"""Multi-head latent attention: KV-cache bytes per token against MHA and GQA of the same width,
and decode speed of the absorbed form against the training form (and transformers' MLA).

1. **Bytes per token.** For the ``deepseek-30m`` preset's width (hidden 384, 6 heads) and for
   DeepSeek-V3's (hidden 7168, 128 heads), three models that differ only in attention: MHA
   (6 / 128 K/V heads of ``hidden / heads``), GQA (2 / 8 of them) and MLA (one latent
   of ``kv_lora_rank + qk_rope_head_dim``). The small ones are built and the bytes of
   ``KVCache.for_model`` (the contiguous cache) and of the paged engine's pool are measured
   (÷ layers ÷ slots); V3's are the same formulas at V3's sizes.
2. **Decode speed.** ``deepseek-30m`` (6 layers, fp32, batch 1, one CPU thread): prefill a
   context of 256 / 2048 / 8192 tokens into the cache, then time single-token decode steps
   in the absorbed form (attend over the cached latents) and in the training form (expand
   every cached latent to per-head keys and values each step — what transformers'
   ``DeepseekV3Attention`` does, timed too on the same weights at 256 and 2048).

    nice -n 10 python bench/mla_cache.py [--steps 15] [--contexts 256,2048,8192]

Last line: ``RESULT mla_cache bytes_ratio_vs_mha=<x> absorbed_speedup_8k=<y>`` (MLA ÷ MHA
bytes per token for the deepseek-30m width; training-form ÷ absorbed-form decode step time at
8k context).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import lmforge
from lmforge.config import ModelConfig
from lmforge.infer.cache import PagedKVCache
from lmforge.models.kv_cache import KVCache
from lmforge.models.presets import preset_config


def attention_variants(mla: ModelConfig) -> dict[str, ModelConfig]:
    """MHA, GQA (2 K/V heads, or 8 for wide models) and the MLA model itself, all with
    the same hidden size, heads and layers (dense MLPs for the two baselines)."""
    base = dict(
        vocab_size=mla.vocab_size,
        hidden_size=mla.hidden_size,
        intermediate_size=mla.intermediate_size,
        num_hidden_layers=mla.num_hidden_layers,
        num_attention_heads=mla.num_attention_heads,
    )
    heads = mla.num_attention_heads
    gqa = 8 if heads >= 64 else 2
    return {
        "MHA": ModelConfig(**base),
        "GQA": ModelConfig(**base, num_key_value_heads=gqa),
        "MLA": mla,
    }


def formula_bytes(cfg: ModelConfig, itemsize: int = 2) -> int:
    """Cache bytes per token and layer: 2·H_kv·d for K and V, or the latent once for MLA."""
    if cfg.use_mla:
        return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * itemsize
    return 2 * cfg.num_key_value_heads * cfg.head_dim * itemsize


def measured_bytes(cfg: ModelConfig, slots: int = 64) -> tuple[float, float]:
    """(contiguous KVCache, paged engine pool) bytes per token and layer, fp16, measured."""
    holder = torch.nn.Linear(1, 1, dtype=torch.half)  # KVCache.for_model reads config + dtype
    holder.config = cfg
    cache = KVCache.for_model(holder, batch_size=1, max_len=slots)
    contiguous = sum(t.nbytes for t in (*cache.keys, *cache.values))
    pool = PagedKVCache(
        cfg.num_hidden_layers, slots // 16, 16, cfg.num_key_value_heads, cfg.head_dim, torch.half,
        key_only=cfg.use_mla,  # as `lmforge.infer.engine.Engine` builds it: no value blocks
    )  # fmt: skip
    paged = pool.nbytes
    per = cfg.num_hidden_layers * slots
    return contiguous / per, paged / per


def set_form(model, form: str) -> None:
    for layer in model.model.layers:
        layer.self_attn.form = form


@torch.no_grad()
def decode_times(model, cache: KVCache, context: int, steps: int) -> dict[str, float]:
    """Median seconds of one decode step at ``context`` cached tokens, per form; the two
    forms alternate step by step so that load from other processes hits both alike."""
    token = torch.tensor([[7]])
    times: dict[str, list[float]] = {"absorbed": [], "training": []}
    for _ in range(steps + 1):
        for form in times:
            set_form(model, form)
            cache.crop(context)
            t0 = time.perf_counter()
            model(token, cache=cache)
            times[form].append(time.perf_counter() - t0)
    return {form: statistics.median(t[1:]) for form, t in times.items()}


@torch.no_grad()
def hf_decode_time(hf, context_ids: torch.Tensor, steps: int) -> float:
    """transformers' decode step (its MLA expands the cached latents every step)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    hf(context_ids, cache=cache, use_cache=True)
    n = context_ids.shape[1]
    times = []
    for _ in range(steps + 1):
        extra = cache.get_seq_length() - n
        if extra:
            cache.crop(-extra)
        t0 = time.perf_counter()
        hf(torch.tensor([[7]]), cache=cache, use_cache=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--contexts", default="256,2048,8192")
    parser.add_argument("--hf-max-context", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]

    print("== KV-cache bytes per token and layer (fp16)")
    small = preset_config("deepseek-30m", max_position_embeddings=max(contexts) + 64)
    v3 = ModelConfig(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, moe_intermediate_size=2048,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
        topk_group=4, first_k_dense_replace=3,
    )  # fmt: skip
    ratio = None
    for name, mla in (("deepseek-30m width", small), ("DeepSeek-V3 width", v3)):
        variants = attention_variants(mla)
        mha = formula_bytes(variants["MHA"])
        print(f"-- {name}: hidden {mla.hidden_size}, {mla.num_attention_heads} heads")
        for kind, cfg in variants.items():
            line = f"{kind}: {formula_bytes(cfg):>7} B  ({formula_bytes(cfg) / mha:.4f} of MHA)"
            if mla is small:
                contiguous, paged = measured_bytes(cfg)
                line += f"  measured: KVCache {contiguous:.0f} B, paged pool {paged:.0f} B"
            print("  " + line)
        if mla is small:
            ratio = formula_bytes(variants["MLA"]) / mha

    print("== decode step (deepseek-30m, fp32, batch 1, 1 thread)")
    torch.manual_seed(0)
    model = lmforge.CausalLM(small, with_mtp=False).eval()
    hf = None
    if args.hf_max_context:
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as folder:
            lmforge.save_model(model, folder)
            hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    speedups = {}
    for context in contexts:
        ids = torch.randint(0, small.vocab_size, (1, context))
        cache = KVCache.for_model(model, batch_size=1, max_len=context + 1)
        set_form(model, "training")
        with torch.no_grad():
            model(ids, cache=cache)
        times = decode_times(model, cache, context, args.steps)
        absorbed, training = times["absorbed"], times["training"]
        speedups[context] = training / absorbed
        line = (
            f"  context {context:>5}: absorbed {absorbed * 1e3:7.2f} ms  training form "
            f"{training * 1e3:7.2f} ms  speedup {training / absorbed:5.2f}x"
        )
        if hf is not None and context <= args.hf_max_context:
            line += f"  transformers {hf_decode_time(hf, ids, args.steps) * 1e3:7.2f} ms"
        print(line, flush=True)
    big = max(contexts)
    print(
        f"RESULT mla_cache bytes_ratio_vs_mha={ratio:.4f} "
        f"absorbed_speedup_{big // 1024}k={speedups[big]:.2f}"
        if big >= 1024
        else f"RESULT mla_cache bytes_ratio_vs_mha={ratio:.4f} absorbed_speedup={speedups[big]:.2f}"
    )


if __name__ == "__main__":
    main()
