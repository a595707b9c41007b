"""Quantised base + LoRA (QLoRA): bitsandbytes NF4/FP4/LLM.int8() and torchao int8/int4
layers match the fp32 model within each method's error, LoRA trains on them, the adapter
moves to the fp32 base, and what cannot work says so clearly.

bitsandbytes 0.50 and torchao 0.18 run on CPU, so these are real tests here; without the
libraries they skip (the missing-library messages are tested by hiding them)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import lmforge
from lmforge.peft import (
    QuantizationError,
    apply_lora,
    disable_adapters,
    is_quantized_linear,
    load_adapter,
    merge,
    quantize_base,
    save_adapter,
    trainable_parameters,
)

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_bnb = pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install bitsandbytes)")
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="needs torchao (pip install torchao)")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# (method, backend, relative output error of one layer vs fp32 allowed; measured on
# N(0, 0.2²) weights, worst layer: NF4 ≈ 0.09, FP4 ≈ 0.12, int4 (groups of 32) ≈ 0.10,
# int8 ≈ 0.005)
CASES = [
    pytest.param("nf4", "bitsandbytes", 0.12, marks=needs_bnb, id="nf4"),
    pytest.param("fp4", "bitsandbytes", 0.16, marks=needs_bnb, id="fp4"),
    pytest.param("int8", "bitsandbytes", 0.01, marks=needs_bnb, id="int8-bnb"),
    pytest.param("int8", "torchao", 0.01, marks=needs_torchao, id="int8-torchao"),
    pytest.param("int4", "torchao", 0.14, marks=needs_torchao, id="int4-torchao"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _dequantized(layer: nn.Module) -> torch.Tensor:
    """The weight the library's own dequantisation gives back (the reference)."""
    if HAS_BNB:
        import bitsandbytes as bnb

        if isinstance(layer, bnb.nn.Linear4bit):
            return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return layer.weight.dequantize()  # torchao tensor subclasses


@pytest.fixture
def folder(base_dir):
    return base_dir("llama")


@pytest.mark.parametrize(("method", "backend", "tol"), CASES)
def test_quantized_model_close_to_fp32(method, backend, tol, folder, ids):
    fp32 = lmforge.load_model(folder).eval()
    model = quantize_base(lmforge.load_model(folder).eval(), method, torch.float32,
                          backend=backend)  # fmt: skip
    layers = {n: m for n, m in model.named_modules() if n.endswith(PROJECTIONS)}
    assert len(layers) == 14 and all(is_quantized_linear(m) for m in layers.values())
    assert type(model.lm_head) is nn.Linear and not is_quantized_linear(model.lm_head)
    assert model.quantization["method"] == method and model.quantization["backend"] == backend
    assert not trainable_parameters(model)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    for name, layer in layers.items():  # each layer: really quantised, and close
        ref = fp32.get_submodule(name)
        with torch.no_grad():
            assert 1e-4 < _rel(layer(x[:, : ref.in_features]), ref(x[:, : ref.in_features])) < tol
    with torch.no_grad():
        ours = model(ids).logits
        if (method, backend) == ("int8", "bitsandbytes"):  # LLM.int8() also rounds activations
            assert _rel(ours, fp32(ids).logits) < 0.05
            return
        for name, layer in layers.items():  # the whole model = fp32 on dequantised weights
            fp32.get_submodule(name).weight.copy_(_dequantized(layer))
        assert (ours - fp32(ids).logits).abs().max() < 1e-4


@needs_bnb
def test_nf4_layer_is_dequantised_weight_matmul():
    """The NF4 layer computes x Wᵀ with bitsandbytes' own dequantisation of W (exactly),
    the scales are double-quantised, and the weights take 4 bits each."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module()])
    model.layers[0].proj = nn.Linear(128, 64)
    with torch.no_grad():
        model.layers[0].proj.weight.normal_(0, 0.1)
    w, b = model.layers[0].proj.weight.detach().clone(), model.layers[0].proj.bias.detach()
    quantize_base(model, "nf4", torch.float32, double_quant=True)
    layer = model.layers[0].proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.nested
    assert layer.weight.numel() * layer.weight.element_size() == w.numel() // 2  # 4 bits
    deq = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(5, 128)
    assert (layer(x) - F.linear(x, deq, b)).abs().max() < 1e-5
    assert 1e-3 < _rel(deq, w) < 0.12  # NF4's error on N(0, σ²) weights ≈ 9%
    # bf16 compute (QLoRA's default): same within bf16 rounding, output in the input dtype
    bf = quantize_base(_one_linear(w, b), "nf4")
    assert bf.layers[0].proj(x).dtype == torch.float32
    assert _rel(bf.layers[0].proj(x), F.linear(x, deq, b)) < 2e-2


def _one_linear(w, b) -> nn.Module:
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module()])
    model.layers[0].proj = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        model.layers[0].proj.weight.copy_(w)
        model.layers[0].proj.bias.copy_(b)
    return model


@pytest.mark.parametrize(
    "method", [pytest.param("nf4", marks=needs_bnb), pytest.param("int8", marks=needs_torchao)]
)
def test_lora_trains_on_quantized_base(method, folder, ids):
    backend = "bitsandbytes" if method == "nf4" else "torchao"
    model = quantize_base(lmforge.load_model(folder), method, torch.float32, backend=backend)
    apply_lora(model, r=4, alpha=8, target_modules="all-linear")
    trainable = trainable_parameters(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    with torch.no_grad():
        before = model(ids).logits
        with disable_adapters(model):
            assert (model(ids).logits - before).abs().max() == 0  # B = 0: starts at the base
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    losses = []
    for _ in range(8):
        logits = model(ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.1
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name


@pytest.mark.parametrize(
    "method", [pytest.param("nf4", marks=needs_bnb), pytest.param("int8", marks=needs_torchao)]
)
def test_adapter_from_quantized_run_loads_on_fp32_base(method, folder, randomize, ids, tmp_path):
    backend = "bitsandbytes" if method == "nf4" else "torchao"
    model = quantize_base(lmforge.load_model(folder).eval(), method, torch.float32,
                          backend=backend)  # fmt: skip
    apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    randomize(model, std=0.1)
    save_adapter(model, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all(".lora_" in k for k in saved)  # the adapter only, PEFT names
    fp32 = load_adapter(lmforge.load_model(folder).eval(), tmp_path / "adapter")
    for name, p in trainable_parameters(model).items():
        assert torch.equal(p, fp32.get_parameter(name))
    dequantized = lmforge.load_model(folder).eval()  # fp32 layers holding the quantised values
    with torch.no_grad():
        for name, layer in model.named_modules():
            if is_quantized_linear(layer):
                target = dequantized.get_submodule(name.removesuffix(".base_layer"))
                target.weight.copy_(_dequantized(layer))
    load_adapter(dequantized, tmp_path / "adapter")
    with torch.no_grad():
        q_logits, f_logits = model(ids).logits, fp32(ids).logits
        assert (q_logits - dequantized(ids).logits).abs().max() < 1e-4  # the same function
        with disable_adapters(fp32), disable_adapters(model):
            base_error = _rel(model(ids).logits, fp32(ids).logits)
            assert _rel(f_logits, fp32(ids).logits) > 0.1  # the adapter matters
    # on the fp32 base it differs only as much as the two bases do (tiny random models
    # amplify 4-bit weight error: ≈ 0.3 relative logits error for NF4, 0.02 for int8)
    assert _rel(q_logits, f_logits) < 1.5 * base_error
    if method == "int8":
        assert _rel(q_logits, f_logits) < 0.05


@needs_bnb
def test_qlora_matches_transformers_bitsandbytes_and_peft(folder, randomize, ids, tmp_path):
    """The reference QLoRA stack (transformers BitsAndBytesConfig NF4 + double quant, and a
    peft LoRA on it) gives the same logits as ours, adapters moving both ways."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def hf_qlora():
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.float32,
                                    bnb_4bit_use_double_quant=True)  # fmt: skip
        return AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=config, device_map="cpu", dtype=torch.float32,
            attn_implementation="sdpa")  # fmt: skip

    targets = ["q_proj", "v_proj", "down_proj"]
    ours = quantize_base(lmforge.load_model(folder).eval(), "nf4", torch.float32)
    apply_lora(ours, r=4, alpha=8, target_modules=targets)
    randomize(ours, std=0.1)
    save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(hf_qlora(), tmp_path / "ours").eval()
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() < 1e-5
        with disable_adapters(ours), theirs.disable_adapter():
            assert (ours(ids).logits - theirs(ids).logits).abs().max() < 1e-5
    peft_model = get_peft_model(hf_qlora(), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                init_lora_weights=False, task_type="CAUSAL_LM"))  # fmt: skip
    peft_model.eval().save_pretrained(tmp_path / "theirs")
    again = quantize_base(lmforge.load_model(folder).eval(), "nf4", torch.float32)
    load_adapter(again, tmp_path / "theirs")
    with torch.no_grad():
        assert (again(ids).logits - peft_model(ids).logits).abs().max() < 1e-5


@needs_bnb
def test_refusals_on_quantized_base(folder):
    model = quantize_base(lmforge.load_model(folder), "nf4", torch.float32)
    with pytest.raises(ValueError, match="DoRA needs the full-precision"):
        apply_lora(model, r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ValueError, match="PiSSA init needs the full-precision"):
        apply_lora(model, r=2, target_modules=["q_proj"], init="pissa", adapter_name="p")
    with pytest.raises(ValueError, match="already quantised"):
        quantize_base(model, "nf4")
    apply_lora(model, r=2, target_modules=["q_proj"], adapter_name="ok")
    with pytest.raises(ValueError, match="cannot merge LoRA into a quantised base"):
        merge(model)
    plain = apply_lora(lmforge.load_model(folder), r=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="before apply_lora"):
        quantize_base(plain, "nf4")


def test_bad_arguments(folder):
    model = lmforge.load_model(folder)
    with pytest.raises(ValueError, match="use one of"):
        quantize_base(model, "nf3")
    with pytest.raises(ValueError, match="provided by bitsandbytes, not torchao"):
        quantize_base(model, "nf4", backend="torchao")
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        quantize_base(model, "int8", target_modules=["nothing"])
    model.config.tie_word_embeddings = True
    with pytest.raises(ValueError, match="shares its weight"):
        quantize_base(model, "int8", target_modules=["lm_head"])


def test_missing_libraries_name_what_to_install(folder, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    model = lmforge.load_model(folder)
    with pytest.raises(QuantizationError, match=r"needs bitsandbytes.*pip install"):
        quantize_base(model, "nf4")
    with pytest.raises(QuantizationError, match="needs bitsandbytes or torchao"):
        quantize_base(model, "int8")
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(QuantizationError, match=r"needs torchao \(pip install"):
        quantize_base(model, "int4", backend="torchao")
    assert not any(is_quantized_linear(m) for m in model.modules())  # left untouched


@needs_bnb
def test_backend_without_cpu_kernels_says_use_a_gpu(folder, monkeypatch):
    """An older bitsandbytes (no CPU backend) fails at its first matmul; quantize_base
    turns that into a message naming the remedy instead of a deep library trace."""
    import bitsandbytes as bnb

    def no_kernel(self, x):
        raise NotImplementedError("no kernel for cpu")

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", no_kernel)
    with pytest.raises(QuantizationError, match=r"on cpu \(model.layers.0.*CUDA GPU"):
        quantize_base(lmforge.load_model(folder), "nf4")


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("pretrain")
    tiny = ["model.preset=tiny", "data.synthetic_docs=40", "data.val_docs=0", "data.seq_len=32",
            "train.batch_size=2", "train.max_time_s=0", "train.eval_every=0",
            "train.save_every=0", "log.progress=false", "log.plot=false", "data.num_workers=0",
            "data.vocab_size=300", "train.max_steps=1"]  # fmt: skip
    assert main(["pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out", str(out),
                 *tiny]) == 0  # fmt: skip
    return out / "model"


def _sft(model_dir, out, *options) -> int:
    from lmforge.cli import main

    overrides = ["train.batch_size=2", "data.seq_len=48", "log.progress=false",
                 "log.plot=false", "data.val_fraction=0", "train.max_time_s=0",
                 "train.eval_every=0", "train.max_steps=2", "data.synthetic_docs=20"]  # fmt: skip
    return main(["sft", "--config", "recipes/sft-tiny.yaml", "--model", str(model_dir),
                 *options, "--out", str(out), "--", *overrides])  # fmt: skip


@needs_bnb
def test_sft_qlora_cli_saves_adapter_for_fp32_base(pretrained, tmp_path, monkeypatch):
    import lmforge.peft.quantize as quantize

    calls = []

    def spy(model, method, compute_dtype, **kw):
        calls.append((method, compute_dtype))
        return real(model, method, compute_dtype, **kw)

    real = quantize.quantize_base
    monkeypatch.setattr(quantize, "quantize_base", spy)
    out = tmp_path / "run"
    options = ["--peft", "lora", "--lora-r", "4", "--quantize", "nf4",
               "--quant-compute-dtype", "float32"]  # fmt: skip
    assert _sft(pretrained, out, *options) == 0
    assert calls == [("nf4", torch.float32)]
    adapter = out / "model"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert not (adapter / "model.safetensors").exists()  # the adapter only
    model = load_adapter(lmforge.load_model(pretrained).eval(), adapter)
    assert any(p.abs().max() > 0 for k, p in model.named_parameters() if ".lora_B." in k)


def test_sft_quantize_needs_peft_lora(pretrained, tmp_path, capsys):
    assert _sft(pretrained, tmp_path / "run", "--peft", "dora", "--quantize", "nf4") != 0
    assert "--quantize nf4 needs --peft lora" in capsys.readouterr().err
    assert _sft(pretrained, tmp_path / "run", "--quantize", "int8") != 0
    assert "--quantize int8 needs --peft lora" in capsys.readouterr().err
