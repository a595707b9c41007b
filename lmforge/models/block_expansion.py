"""Block expansion (LLaMA Pro, Wu et al. 2024): a deeper model that computes exactly what
the trained one did, so fine-tuning adds capacity without losing what was learned.

    deeper = expand_blocks(model, every=1)   # 2 decoder layers → 4, same outputs

After every ``every`` decoder layers of the language model a copy of the last one is
inserted with its residual outputs — attention ``o_proj`` and the MLP's ``down_proj`` —
set to zero. A pre-norm block computes x + Attn(norm(x)) then h + MLP(norm(h)); with both
outputs zero it is the identity, so the expanded model's logits equal the original's (the
copy's other weights start where the trained block is, not from noise, and get their
gradient through the zeroed projections from the first step on). Works for `CausalLM` and
`VisionLanguageModel` (only the language model grows; the vision encoder and any pointer
head are copied as they are).

Layers that differ by index — MoE layers after ``first_k_dense_replace``, per-layer
``layer_types``, MTP modules — would change meaning when renumbered, so such configs are
refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import torch
from torch import nn

from lmforge.config import ConfigError, ModelConfig

M = TypeVar("M", bound=nn.Module)
ZEROED = ("self_attn.o_proj", "mlp.down_proj")  # a block's residual outputs


def text_config(model: nn.Module) -> ModelConfig:
    """The language model's config (a VLM's ``config.text``, a CausalLM's ``config``)."""
    config = model.config
    return config.text if hasattr(config, "text") else config


def expansion_plan(num_layers: int, every: int) -> list[int | None]:
    """For each layer of the expanded model, the original layer it comes from (None: a new,
    zero-output copy of the layer before it). A copy follows every ``every`` original layers:
    ``expansion_plan(2, 1)`` = [0, None, 1, None]."""
    if every < 1:
        raise ConfigError(f"every={every}: expand after at least one layer")
    plan: list[int | None] = []
    for i in range(num_layers):
        plan.append(i)
        if (i + 1) % every == 0:
            plan.append(None)
    return plan


def expand_blocks(model: M, every: int = 1) -> M:
    """A new model of ``model``'s class with an identity-initialised copy inserted after every
    ``every`` decoder layers (see the module docstring); ``model`` is left unchanged."""
    text = text_config(model)
    if text.n_routed_experts or text.layer_types or text.num_nextn_predict_layers:
        raise ConfigError("block expansion needs layers that do not depend on their index "
                          "(no MoE, layer_types or MTP)")  # fmt: skip
    plan = expansion_plan(text.num_hidden_layers, every)
    grown = replace(text, num_hidden_layers=len(plan))
    config = replace(model.config, text=grown) if hasattr(model.config, "text") else grown
    out = type(model)(config)
    state, old = {}, model.state_dict()
    prefix = "model.layers."
    for key, value in old.items():
        if not key.startswith(prefix):
            state[key] = value
    source = 0
    for new, orig in enumerate(plan):
        source = source if orig is None else orig
        head = f"{prefix}{source}."
        for key, value in old.items():
            if key.startswith(head):
                name = key[len(head) :]
                zero = orig is None and name.startswith(ZEROED)
                state[f"{prefix}{new}.{name}"] = torch.zeros_like(value) if zero else value.clone()
    out.load_state_dict(state)
    first = next(model.parameters())
    return out.to(device=first.device, dtype=first.dtype)  # where and as the original is


__all__ = [
    "ZEROED",
    "expand_blocks",
    "expansion_plan",
    "text_config",
]
