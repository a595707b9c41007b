"""A quantised, frozen base model for LoRA (QLoRA and its 8-/4-bit relatives).

QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", eq. 5)
stores the frozen base weights in 4-bit NormalFloat (NF4: 16 levels at the quantiles of
N(0, 1), one absmax scale per block of 64 weights), optionally quantises those scales
again ("double quantisation", 8-bit per block of 256, §3), and dequantises on the fly
to a 16-bit *compute dtype* for every matmul; only the LoRA matrices are trained:

    Y = X · doubleDequant(c₁, c₂, W_NF4) + s · X A B

This file only swaps the frozen ``nn.Linear`` layers of the decoder blocks for the
quantised layers of the libraries that own the kernels; `LoraLinear` then wraps them
like any base layer (``lmforge.peft.lora``). Methods:

| method | library | layer | weights |
|---|---|---|---|
| ``nf4`` | bitsandbytes | ``bnb.nn.Linear4bit`` | NF4, block 64, optional double quant |
| ``fp4`` | bitsandbytes | ``bnb.nn.Linear4bit`` | 4-bit float, block 64 |
| ``int8`` | bitsandbytes | ``bnb.nn.Linear8bitLt`` | LLM.int8(): per-row int8, outliers fp16 |
| ``int8`` | torchao | ``nn.Linear`` + int8 tensor | per-row int8 weight-only |
| ``int4`` | torchao | ``nn.Linear`` + intx tensor | int4 weight-only, ``group_size`` groups |

LLM.int8() (Dettmers et al. 2022) keeps input columns with |x| > ``int8_threshold`` in
fp16; ``int8`` uses bitsandbytes when installed, else torchao (``backend`` picks).

Recent bitsandbytes (its CPU backend) and torchao also run on CPU (tested: bitsandbytes
0.50, torchao 0.18, torch 2.13 CPU); older bitsandbytes needs a CUDA GPU. Quantise on the
device you train on (``model.to("cuda")`` first): the packed layout is made where it is built.
Merging LoRA into a quantised base is refused (the re-quantised sum would not equal the
trained model); merge into the full-precision base instead (`lmforge merge` does).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Sequence

import torch
from torch import nn

METHODS = ("nf4", "fp4", "int8", "int4")
BACKENDS = ("auto", "bitsandbytes", "torchao")
DEFAULT_TARGETS = r"(.*\.)?layers\.\d+\..*"  # every Linear inside a decoder block
INSTALL = "pip install 'lmforge[quant]' (bitsandbytes, torchao)"


class QuantizationError(RuntimeError):
    """A quantised base was asked for but cannot be built here (missing library, no GPU)."""


def is_quantized_linear(module: nn.Module) -> bool:
    """True for a linear layer whose weight is stored quantised (bitsandbytes 4-/8-bit
    layers, or an ``nn.Linear`` holding a torchao quantised weight tensor)."""
    if not isinstance(module, nn.Linear):
        return False
    if type(module).__module__.startswith("bitsandbytes"):
        return True
    return type(module.weight).__module__.startswith("torchao")


def quantized_method(model: nn.Module) -> str | None:
    """The method `quantize_base` applied to ``model`` (None for a full-precision model)."""
    return (getattr(model, "quantization", None) or {}).get("method")


def quantize_base(
    model: nn.Module,
    method: str = "nf4",
    compute_dtype: torch.dtype = torch.bfloat16,
    double_quant: bool = True,
    *,
    target_modules: Sequence[str] | str | None = None,
    backend: str = "auto",
    int8_threshold: float = 6.0,
    group_size: int = 32,
) -> nn.Module:
    """Replace the frozen ``nn.Linear`` layers of the decoder blocks by quantised ones, in
    place, and return ``model`` (then `apply_lora` on it trains QLoRA-style).

    ``method``: "nf4" (QLoRA), "fp4", "int8" or "int4" (see the module table).
    ``compute_dtype``: the dtype 4-bit weights are dequantised to for each matmul (nf4/fp4).
    ``double_quant``: also quantise the per-block scales (nf4/fp4; ≈0.37 bit/weight saved).
    ``target_modules``: PEFT-style names or a regex (default: every Linear inside
    ``layers.<i>`` — attention and MLP projections, never ``lm_head`` or embeddings).
    ``backend``: "auto" (bitsandbytes, else torchao for int8), "bitsandbytes" or "torchao".
    ``int8_threshold``: LLM.int8() outlier threshold (bitsandbytes int8; 0 disables).
    ``group_size``: weights per scale for torchao int4.

    Raises `QuantizationError` naming what to install when the library is missing or
    its kernels cannot run on this device, and ValueError for bad arguments.
    """
    if method not in METHODS:
        raise ValueError(f"quantize method {method!r}: use one of {METHODS}")
    if backend not in BACKENDS:
        raise ValueError(f"quantize backend {backend!r}: use one of {BACKENDS}")
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantised ({model.quantization})")
    if any(getattr(m, "is_tuner_layer", False) for m in model.modules()):
        raise ValueError("quantize_base must run before apply_lora / load_adapter (it "
                         "replaces the base layers the adapters wrap)")  # fmt: skip
    names = _select(model, target_modules if target_modules is not None else DEFAULT_TARGETS)
    if not names:
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear layer")
    config = getattr(model, "config", None)
    if "lm_head" in names and getattr(config, "tie_word_embeddings", False):
        raise ValueError("lm_head shares its weight with the input embeddings "
                         "(tie_word_embeddings=true); leave it out of target_modules")  # fmt: skip
    backend = _pick_backend(method, backend)
    if backend == "torchao":
        _quantize_torchao(model, names, method, group_size)
    else:
        bnb = _import("bitsandbytes", method)
        for i, name in enumerate(names):
            linear = model.get_submodule(name)
            layer = _bnb_layer(bnb, linear, method, compute_dtype, double_quant, int8_threshold)
            if i == 0:
                _probe(layer, name, method, backend)
            model.set_submodule(name, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    model.quantization = dict(method=method, backend=backend, modules=len(names),
                              compute_dtype=str(compute_dtype).removeprefix("torch."),
                              double_quant=double_quant)  # fmt: skip
    return model


# ---------------------------------------------------------------------- helpers
def _pick_backend(method: str, backend: str) -> str:
    owners = {"nf4": ("bitsandbytes",), "fp4": ("bitsandbytes",), "int4": ("torchao",),
              "int8": ("bitsandbytes", "torchao")}[method]  # fmt: skip
    if backend != "auto":
        if backend not in owners:
            raise ValueError(f"quantize method {method!r} is provided by {' or '.join(owners)}, "
                             f"not {backend}")  # fmt: skip
        return backend
    for owner in owners:
        if importlib.util.find_spec(owner) is not None:
            return owner
    raise QuantizationError(
        f"quantize method {method!r} needs {' or '.join(owners)}, which is not installed: "
        f"{INSTALL}. 4-bit NF4/FP4 and LLM.int8() come from bitsandbytes (CUDA GPU, or CPU "
        "with a recent release, e.g. 0.50); torchao gives int8/int4 weight-only on CPU and GPU"
    )


def _import(package: str, method: str):
    try:
        if package != "torchao" or "torchao" in sys.modules:
            return importlib.import_module(package)
        # torchao's import logs notices about optional CUDA extensions and torch's pytree
        # deprecations; they are not ours to act on
        quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
        levels = [log.level for log in quiet]
        for log in quiet:
            log.setLevel(logging.ERROR)
        try:
            return importlib.import_module(package)
        finally:
            for log, level in zip(quiet, levels):
                log.setLevel(level)
    except ImportError as e:
        raise QuantizationError(
            f"quantize method {method!r} needs {package} ({INSTALL}): {e}"
        ) from e


def _select(model: nn.Module, targets: Sequence[str] | str) -> list[str]:
    if isinstance(targets, str):
        pattern = re.compile(targets)
        chosen = lambda n: pattern.fullmatch(n) is not None  # noqa: E731
    else:
        chosen = lambda n: any(n == t or n.endswith("." + t) for t in targets)  # noqa: E731
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and chosen(n)]


def _bnb_layer(bnb, linear: nn.Linear, method: str, compute_dtype, double_quant, threshold):
    """A bitsandbytes layer holding ``linear``'s weights; built on the meta device and
    moved to ``linear``'s device, which is when bitsandbytes quantises (Params*.to)."""
    device, has_bias = linear.weight.device, linear.bias is not None
    weight = linear.weight.detach()
    if method in ("nf4", "fp4"):
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=compute_dtype, compress_statistics=double_quant,
                                  quant_type=method, device="meta")  # fmt: skip
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=method,
                                         compress_statistics=double_quant)  # fmt: skip
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=threshold,
                                    device="meta")  # fmt: skip
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    try:
        return layer.to(device)
    except Exception as e:  # noqa: BLE001 — the library's own error names no remedy
        raise _unsupported(method, "bitsandbytes", device, e) from e


def _probe(layer: nn.Module, name: str, method: str, backend: str) -> None:
    """Run one row through the first quantised layer so a backend without kernels for this
    device fails here, with a remedy, rather than deep inside the first training step."""
    device = next(layer.parameters()).device
    try:
        with torch.no_grad():
            layer(torch.zeros(1, layer.in_features, device=device))
    except Exception as e:  # noqa: BLE001
        raise _unsupported(method, backend, device, e, name) from e


def _unsupported(method, backend, device, error, name: str | None = None) -> QuantizationError:
    where = f" ({name})" if name else ""
    version = getattr(importlib.import_module(backend), "__version__", "?")
    if device.type != "cpu":
        hint = f"check that {backend} {version} supports this GPU and torch {torch.__version__}"
    elif backend == "bitsandbytes":
        hint = ("bitsandbytes on CPU needs a release with its CPU backend (tested: 0.50); "
                "otherwise use a CUDA GPU (model.to('cuda') before quantize_base) or torchao "
                "(method='int8' or 'int4', backend='torchao')")  # fmt: skip
    else:
        hint = "use a CUDA GPU (model.to('cuda') before quantize_base) or bitsandbytes"
    return QuantizationError(
        f"{method} quantisation with {backend} {version} failed on {device}{where}: "
        f"{type(error).__name__}: {error}. {hint}"
    )


def _quantize_torchao(model: nn.Module, names: list[str], method: str, group_size: int) -> None:
    torchao = _import("torchao", method)
    from torchao import quantization as q

    if method == "int8":
        config = q.Int8WeightOnlyConfig()
    else:
        from torchao.quantization.granularity import PerGroup

        for name in names:
            k = model.get_submodule(name).in_features
            if k % group_size:
                raise ValueError(f"int4 quantisation of {name}: in_features={k} is not a "
                                 f"multiple of group_size={group_size}")  # fmt: skip
        config = q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    chosen = set(names)
    device = next(model.parameters()).device
    try:
        q.quantize_(model, config, filter_fn=lambda m, fqn: fqn in chosen)
    except Exception as e:  # noqa: BLE001
        raise _unsupported(method, "torchao", device, e) from e
    first = model.get_submodule(names[0])
    if not is_quantized_linear(first):  # torchao leaves layers alone it has no kernel for
        raise QuantizationError(f"torchao {torchao.__version__} did not quantise {names[0]} "
                                f"with {method} on {device}")  # fmt: skip
    _probe(first, names[0], method, "torchao")


__all__ = [
    "METHODS",
    "QuantizationError",
    "is_quantized_linear",
    "quantize_base",
    "quantized_method",
]
