"""Which adapters a model carries, which are active, and switching them on, off and into
the weights.

Every PEFT method attaches *tuner layers* to the model (modules with ``is_tuner_layer``):
`LoraLinear`, `BottleneckLinear`, `PrefixEncoder`, `PromptEmbedding`. Each holds one or
more named adapters and exposes ``active`` (the adapters it applies), ``disabled``,
``adapter_names()``, ``adapter_parameters(name)`` and ``delete_adapter(name)``. The
model records each adapter's config in ``model.peft_config`` (name → config) and the
active ones in ``model.active_adapters``.

Only active adapters' parameters have ``requires_grad``; everything else is frozen, so an
optimizer over ``requires_grad`` parameters holds state for the adapter alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from lmforge.peft.lora import LoraConfig, LoraLinear, add_lora


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` that holds PEFT adapters."""
    return [m for m in model.modules() if getattr(m, "is_tuner_layer", False)]


def peft_configs(model: nn.Module) -> dict:
    """``model.peft_config`` (adapter name → config), empty for a plain model."""
    return getattr(model, "peft_config", None) or {}


def is_peft_model(model: nn.Module) -> bool:
    return bool(peft_configs(model))


def register_adapter(model: nn.Module, name: str, config) -> None:
    """Record ``config`` under ``name`` and make ``name`` the active adapter."""
    if name in peft_configs(model):
        raise ValueError(f"the model already has an adapter named {name!r}")
    kinds = {c.peft_type for c in peft_configs(model).values()}
    if kinds and config.peft_type not in kinds:
        raise ValueError(
            f"cannot add a {config.peft_type} adapter to a model with {sorted(kinds)} adapters "
            "(one PEFT method per model; merge_and_unload a LoRA model first)"
        )
    if not hasattr(model, "peft_config"):
        model.peft_config = {}
    model.peft_config[name] = config
    set_adapter(model, name)


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    *,
    use_rslora: bool = False,
    use_dora: bool = False,
    init: str = "kaiming",
    adapter_name: str = "default",
) -> nn.Module:
    """Add a LoRA adapter named ``adapter_name`` to ``model`` in place and activate it.

    ``target_modules``: PEFT names (``["q_proj", "v_proj"]``; a module matches if its name
    ends with one), a regex matched against whole module names, or ``"all-linear"`` (every
    projection in the blocks, not ``lm_head``). ``init``: "kaiming" (PEFT's default),
    "gaussian" or "pissa" (PiSSA: the base weight becomes the SVD residual). The base model
    is frozen; only the active adapter trains. Returns ``model``.
    """
    config = LoraConfig(
        r=r,
        alpha=alpha,
        target_modules=list(target_modules)
        if not isinstance(target_modules, str)
        else target_modules,
        dropout=dropout,
        use_rslora=use_rslora,
        use_dora=use_dora,
        init=init,
    )
    if adapter_name in peft_configs(model):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}")
    add_lora(model, config, adapter_name)
    register_adapter(model, adapter_name, config)
    return model


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Activate adapter(s) ``names`` (several LoRA adapters add up); only they train."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in peft_configs(model)]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; the model has {list(peft_configs(model))}")
    for layer in tuner_layers(model):
        layer.active = [n for n in names if n in layer.adapter_names()]
    model.active_adapters = names
    mark_trainable(model)


def mark_trainable(model: nn.Module) -> None:
    """Freeze everything but the parameters of the active adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in tuner_layers(model):
        for name in layer.active:
            for p in layer.adapter_parameters(name):
                p.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model inside the block (e.g. the frozen reference policy of DPO):
    a flag per tuner layer, no weight copies. Merged LoRA weights are unmerged first."""
    layers = tuner_layers(model)
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before, strict=True):
            layer.disabled = was


def merge(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Fold the active (or the named) LoRA adapters into the base weights, in place.

    Forward then costs the same as the base model's; `unmerge` takes them out again.
    """
    _only_lora(model, "merge")
    for layer in tuner_layers(model):
        layer.merge(adapter_names)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take every merged LoRA adapter back out of the base weights."""
    for layer in tuner_layers(model):
        if isinstance(layer, LoraLinear):
            layer.unmerge()
    return model


def merge_and_unload(model: nn.Module, adapter_names: Sequence[str] | None = None) -> nn.Module:
    """Merge the active (or named) LoRA adapters and replace every `LoraLinear` by its
    plain base ``nn.Linear``: the result is an ordinary model (savable as HF, fast path
    in the inference engine). Modifies and returns ``model``."""
    merge(model, adapter_names)
    return unload(model)


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters, keeping the current base weights (merged ones stay merged)."""
    for name, module in list(model.named_modules()):
        if getattr(module, "is_tuner_layer", False) and hasattr(module, "base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.base_layer)
    for attr in ("peft_prompt", "peft_prefix"):
        if hasattr(model, attr):
            delattr(model, attr)
    for handle in getattr(model, "_peft_hooks", []):
        handle.remove()
    model._peft_hooks = []
    model.peft_config = {}
    model.active_adapters = []
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` (not merged) from every layer."""
    if name not in peft_configs(model):
        raise ValueError(f"no adapter named {name!r}; the model has {list(peft_configs(model))}")
    for layer in tuner_layers(model):
        if name in layer.adapter_names():
            layer.delete_adapter(name)
    del model.peft_config[name]
    model.active_adapters = [n for n in model.active_adapters if n != name]
    mark_trainable(model)


def _only_lora(model: nn.Module, what: str) -> None:
    other = {c.peft_type for c in peft_configs(model).values()} - {"LORA"}
    if other:
        raise ValueError(
            f"cannot {what} {sorted(other)} adapters into the weights (only LoRA/DoRA merge: "
            "bottleneck adapters are nonlinear, prefixes and prompts are extra tokens)"
        )


__all__ = [
    "apply_lora",
    "delete_adapter",
    "disable_adapters",
    "is_peft_model",
    "mark_trainable",
    "merge",
    "merge_and_unload",
    "peft_configs",
    "register_adapter",
    "set_adapter",
    "trainable_parameters",
    "tuner_layers",
    "unload",
    "unmerge",
]
