"""Which adapter a fine-tuning run trains: `PeftSettings` (the ``--peft`` options of
``lmforge sft``, ``dpo``, ``grpo`` and ``ppo``) and `apply_peft`, which adds it to a model.

    settings = PeftSettings(method="lora", lora_r=16, lora_alpha=32, lora_targets="q_proj,v_proj")
    apply_peft(model, settings, source="ckpt/")   # only the adapter trains
    PeftSettings(method="lora", quantize="nf4")   # QLoRA: 4-bit frozen base (bitsandbytes)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmforge.models.hub import hub_id_of

METHODS = ("lora", "dora", "prefix", "prompt", "adapter")
QUANT_METHODS = ("nf4", "fp4", "int8", "int4")  # lmforge.peft.quantize.METHODS
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class PeftSettings:
    """An adapter to train instead of all weights (``method=None``: none)."""

    method: str | None = None  # one of METHODS
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str | Sequence[str] = DEFAULT_LORA_TARGETS  # comma-separated, or all-linear
    rslora: bool = False  # scale by α/√r
    virtual_tokens: int = 20  # prefix / prompt length
    bottleneck: int = 16  # bottleneck adapter width
    quantize: str | None = None  # QLoRA base: one of QUANT_METHODS (with method="lora")
    quant_compute_dtype: str = "bfloat16"  # dtype nf4/fp4 weights are dequantised to


def apply_peft(
    model: nn.Module,
    settings: PeftSettings | None,
    source: str,
    report: Callable[[str], None] | None = None,
) -> nn.Module:
    """Add the adapter ``settings`` asks for to ``model`` (loaded from ``source``, recorded
    as the adapter's base by `base_model_reference`, so ``AutoPeftModelForCausalLM`` finds
    it); nothing without a method. ``report`` (default: print on the main process) gets one
    line with the trainable and total parameter counts."""
    method = settings.method if settings is not None else None
    quantize = settings.quantize if settings is not None else None
    if quantize and method != "lora":
        raise ValueError(f"--quantize {quantize} needs --peft lora (a quantised base is frozen; "
                         "DoRA and adapters need the full-precision weights)")  # fmt: skip
    if not method:
        return model
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r} (use one of {', '.join(METHODS)})")
    model.name_or_path = base_model_reference(source)
    model = _add_adapter(model, settings, method, quantize)
    (report or print_on_main)(f"peft: {method}, {trainable_summary(model)}")
    return model


def _add_adapter(model: nn.Module, settings: PeftSettings, method: str, quantize: str | None):
    if quantize:
        import torch

        from lmforge.peft.quantize import quantize_base

        if torch.cuda.is_available():  # quantise where it trains: the packed layout is per device
            model.to(torch.device("cuda", torch.cuda.current_device()))
        quantize_base(model, quantize, getattr(torch, settings.quant_compute_dtype))
    if method in ("lora", "dora"):
        from lmforge.peft.state import apply_lora

        return apply_lora(model, settings.lora_r, settings.lora_alpha,
                          lora_target_modules(settings.lora_targets), settings.lora_dropout,
                          use_rslora=settings.rslora, use_dora=method == "dora")  # fmt: skip
    if method in ("prefix", "prompt"):
        # SFT batches are packed (several documents per row); virtual tokens need each
        # sequence on its own row, which lmforge's SFT loader does not produce.
        raise ValueError(
            f"--peft {method} needs unpacked batches (every sequence starting at the virtual "
            "tokens); use lmforge.peft.apply_prefix_tuning / apply_prompt_tuning with your own "
            "one-sequence-per-row loader, or --peft lora / dora / adapter"
        )
    from lmforge.peft.adapters import apply_adapters

    return apply_adapters(model, bottleneck=settings.bottleneck)


def base_model_reference(source: str) -> str:
    """What an adapter records as ``base_model_name_or_path``: the Hub id when ``source`` is
    a snapshot of the Hugging Face cache (loads on any machine with that model), else the
    absolute folder (loads from any working directory)."""
    return hub_id_of(source) or str(Path(source).resolve())


def trainable_summary(model: nn.Module) -> str:
    """``"12,288 trainable / 1,234,567 total parameters (1.00 %)"`` (shared tensors once)."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    share = 100 * trainable / total if total else 0.0
    return f"{trainable:,} trainable / {total:,} total parameters ({share:.2f} %)"


def print_on_main(line: str) -> None:
    """``print`` on the main process only (every process under torchrun would repeat it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(line, flush=True)


def lora_target_modules(targets: str | Sequence[str]) -> str | list[str]:
    """``"q_proj,v_proj"`` → ``["q_proj", "v_proj"]``; ``"all-linear"`` stays the string
    `apply_lora` takes for every block projection."""
    if not isinstance(targets, str):
        return list(targets)
    names = targets.split(",") if "," in targets else [targets]
    return "all-linear" if names == ["all-linear"] else names
