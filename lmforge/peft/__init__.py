"""Parameter-efficient fine-tuning: LoRA / rsLoRA / DoRA / PiSSA, bottleneck adapters,
prefix tuning, prompt tuning — interoperable with Hugging Face ``peft`` files.

>>> from lmforge.peft import apply_lora, save_adapter, load_adapter, merge
>>> apply_lora(model, r=16, alpha=32, target_modules=["q_proj", "v_proj"])
>>> ...train...
>>> save_adapter(model, "out/adapter")          # loads with peft.PeftModel.from_pretrained
>>> with disable_adapters(model): ref = model(ids)   # the base model, no copies
>>> quantize_base(model, "nf4"); apply_lora(model, r=16)   # QLoRA (bitsandbytes / torchao)

| module | what |
|---|---|
| `lora` | `LoraLinear`: LoRA, rsLoRA, DoRA, PiSSA init, named adapters, merge / unmerge |
| `state` | which adapters a model carries: apply, set, disable, delete, merge_and_unload |
| `adapters` | Houlsby bottleneck adapters |
| `prefix` | prefix tuning (with the reparameterisation MLP folded away for inference) |
| `prompt` | prompt tuning (virtual token embeddings) |
| `quantize` | a quantised frozen base for QLoRA (bitsandbytes NF4 / FP4 / int8, torchao int4) |
| `io` | PEFT-format files: ``adapter_config.json`` + ``adapter_model.safetensors`` |
| `settings` | `PeftSettings` (what ``--peft`` asks for) and `apply_peft` |
| `multi_lora` | several LoRA adapters served at once, chosen per token inside one batch |
| `merging` | `load_merged`: base checkpoint + LoRA adapter → a plain model |
"""

from lmforge.peft.adapters import apply_adapters
from lmforge.peft.io import AdapterError, is_adapter_dir, load_adapter, save_adapter
from lmforge.peft.lora import LoraConfig, LoraLinear
from lmforge.peft.prefix import apply_prefix_tuning, fold_prefix
from lmforge.peft.prompt import apply_prompt_tuning
from lmforge.peft.quantize import QuantizationError, is_quantized_linear, quantize_base
from lmforge.peft.state import (
    apply_lora,
    delete_adapter,
    disable_adapters,
    is_peft_model,
    merge,
    merge_and_unload,
    set_adapter,
    trainable_parameters,
    unload,
    unmerge,
)

__all__ = [
    "AdapterError",
    "LoraConfig",
    "LoraLinear",
    "QuantizationError",
    "apply_adapters",
    "apply_lora",
    "apply_prefix_tuning",
    "apply_prompt_tuning",
    "fold_prefix",
    "delete_adapter",
    "disable_adapters",
    "is_adapter_dir",
    "is_peft_model",
    "is_quantized_linear",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "quantize_base",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
    "unload",
    "unmerge",
]
