"""The Triton FlashAttention kernels against the PyTorch reference (`lmforge.nn.flash_attention`):
values and gradients for packed causal sequences with GQA, a prefill after a cache (Tq < Tk)
and full attention, and the opt-in hook of `lmforge.nn.attention` in a model (packed and
batched, logits and gradients vs SDPA).

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set before
Triton compiles anything; slow, so the shapes are tiny). Without Triton every test is skipped
with the reason. On a CUDA GPU (bench/gpu_check.sh) the last test compares the kernel with
SDPA in bf16 at realistic sizes.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # run the kernels on CPU tensors
pytest.importorskip("triton", reason="needs triton (pip install triton) for the kernel tests")
if "lmforge.nn.flash_attention_triton" in sys.modules:  # imported earlier in this session,
    # before TRITON_INTERPRET was set (e.g. by the architecture test): `triton.jit` reads the
    # variable when the kernels are defined, so define them again.
    importlib.reload(sys.modules["lmforge.nn.flash_attention_triton"])

from lmforge.config import ModelConfig  # noqa: E402
from lmforge.models.transformer import CausalLM  # noqa: E402
from lmforge.nn.flash_attention import flash_attention, flash_attention_varlen  # noqa: E402
from lmforge.nn.flash_attention_triton import (  # noqa: E402
    KernelConfig,
    kernel_configs,
    triton_flash_attention,
    triton_flash_attention_varlen,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _grads(fn, *inputs, seed=1):
    leaves = [x.detach().to(DEVICE).requires_grad_() for x in inputs]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def test_varlen_causal_gqa_matches_reference():
    # A 1-token sequence, and a 3-block one (causal block skipping in all three kernels).
    cu = torch.tensor([0, 5, 38, 39, 50], dtype=torch.int32, device=DEVICE)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(50, 2, 12, generator=g)  # head dim 12: padded to 16 inside the kernel
    k, v = torch.randn(50, 1, 12, generator=g), torch.randn(50, 1, 12, generator=g)
    ours, ours_grads = _grads(
        lambda *x: triton_flash_attention_varlen(*x, cu, 33, block_m=16, block_n=16), q, k, v
    )
    ref, ref_grads = _grads(lambda *x: flash_attention_varlen(*x, cu), q, k, v)
    assert torch.allclose(ours, ref, atol=1e-5)
    for name, a, b in zip("qkv", ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5), (name, (a - b).abs().max())


@pytest.mark.parametrize("causal", [True, False])
def test_each_kernel_its_own_tiles(causal):
    # The forward and the two backward kernels tile independently (as tuned on a GPU): tiles
    # of 32 × 16, 16 × 32 and 32 × 32 over sequences that end mid-tile, a cache offset
    # (45 keys for 20 queries in the second sequence), and the unmasked / masked block split.
    configs = {"fwd": KernelConfig(32, 16), "dkdv": KernelConfig(16, 32),
               "dq": KernelConfig(32, 32)}  # fmt: skip
    cu_q = torch.tensor([0, 37, 57, 58], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 37, 82, 83], dtype=torch.int32, device=DEVICE)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(58, 4, 16, generator=g)
    k, v = torch.randn(83, 2, 16, generator=g), torch.randn(83, 2, 16, generator=g)
    run = lambda *x: triton_flash_attention_varlen(  # noqa: E731
        *x, cu_q, 37, cu_seqlens_k=cu_k, max_seqlen_k=45, causal=causal, configs=configs
    )
    ours, ours_grads = _grads(run, q, k, v)
    ref, ref_grads = _grads(
        lambda *x: flash_attention_varlen(*x, cu_q, cu_seqlens_k=cu_k, causal=causal), q, k, v
    )
    assert torch.allclose(ours, ref, atol=1e-5)
    for name, a, b in zip("qkv", ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5), (name, (a - b).abs().max())


def test_kernel_configs_table():
    cpu = kernel_configs(128, torch.device("cpu"))
    assert set(cpu) == {"fwd", "dkdv", "dq"} and all(c[:2] == (64, 64) for c in cpu.values())
    cuda = kernel_configs(96, torch.device("cuda"))  # the next tuned head dim up: 128
    assert cuda == kernel_configs(128, torch.device("cuda"))
    assert all(c[:2] == (16, 32) for c in kernel_configs(64, torch.device("cuda"), 16, 32).values())


@pytest.mark.parametrize("causal", [True, False])
def test_batched_prefill_after_cache_matches_reference(causal):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 20, 16, generator=g)  # 20 new queries after 45 − 20 cached keys
    k, v = torch.randn(1, 1, 45, 16, generator=g), torch.randn(1, 1, 45, 16, generator=g)
    ours, ours_grads = _grads(
        lambda *x: triton_flash_attention(*x, causal=causal, block_m=16, block_n=32), q, k, v
    )
    ref, ref_grads = _grads(lambda *x: flash_attention(*x, causal=causal), q, k, v)
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def _tiny_model() -> CausalLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return CausalLM(config).to(DEVICE)


def _logits_and_grad(model, ids, **kwargs):
    model.zero_grad()
    logits = model(ids, **kwargs).logits
    logits.square().mean().backward()
    return logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()


def test_attention_hook_runs_the_kernel_in_the_model(monkeypatch):
    model = _tiny_model()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    cu = torch.tensor([0, 4, 10, 17, 20], dtype=torch.int32, device=DEVICE)
    calls = []
    real = triton_flash_attention_varlen
    monkeypatch.setattr("lmforge.nn.flash_attention_triton.triton_flash_attention_varlen",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    monkeypatch.delenv("LMFORGE_ATTENTION", raising=False)
    expected = [_logits_and_grad(model, ids), _logits_and_grad(model, ids, cu_seqlens=cu)]
    assert calls == []  # opt-in: without LMFORGE_ATTENTION=triton the model uses SDPA
    monkeypatch.setenv("LMFORGE_ATTENTION", "triton")
    got = [_logits_and_grad(model, ids), _logits_and_grad(model, ids, cu_seqlens=cu)]
    assert len(calls) == 2  # batched, packed
    for (lg, gg), (le, ge) in zip(got, expected):
        assert torch.allclose(lg, le, atol=1e-4)
        assert torch.allclose(gg, ge, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")
def test_cuda_kernel_matches_sdpa_bf16():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 2, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(2, 2, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    ours, ours_grads = _grads(triton_flash_attention, q, k, v)
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    ref, ref_grads = _grads(sdpa, q.float(), k.float(), v.float())
    assert (ours.float() - ref).abs().max() < 2e-2
    for a, b in zip(ours_grads, ref_grads):
        assert (a.float() - b).abs().max() < 5e-2 * max(1.0, b.abs().max().item())
