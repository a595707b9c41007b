"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", §2): P trained "virtual token" embeddings are prepended to the input embeddings;
the model is frozen. The virtual tokens take positions 0..P−1 and the real tokens P.., as
in PEFT. Initialised from the embeddings of randomly sampled vocabulary tokens (§3.2:
better than random uniform).

Hook (no change to the model): a forward pre-hook prepends P placeholder ids (and −100
labels, ones in the attention mask), an ``embed_tokens`` forward hook swaps their
embeddings for the prompt, and a forward hook drops the P virtual positions from the
logits, so the output lines up with ``input_ids`` as for the base model. With a non-empty
KV cache (decoding after the prompt was prefilled) nothing is added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lmforge.peft.prefix import bound_forward_arguments, check_unpacked


@dataclass
class PromptConfig:
    num_virtual_tokens: int = 20
    peft_type: str = "PROMPT_TUNING"

    def __post_init__(self) -> None:
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens={self.num_virtual_tokens!r} must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptEmbedding(nn.Module):
    """Named soft prompts ``embedding[name]`` ``[P, hidden]``."""

    is_tuner_layer = True

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.ParameterDict()
        self.active: list[str] = []
        self.disabled = False
        self.pending = 0  # virtual tokens prepended by the pre-hook, not yet embedded

    def adapter_names(self) -> list[str]:
        return list(self.embedding.keys())

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [self.embedding[name]]

    def delete_adapter(self, name: str) -> None:
        del self.embedding[name]
        self.active = [a for a in self.active if a != name]

    def merge(self, names=None) -> None:
        raise ValueError("a soft prompt is extra input tokens; it cannot merge into weights")

    def use(self) -> bool:
        return not self.disabled and bool(self.active)


def _prompt_pre_hook(model: nn.Module, args, kwargs):
    prompt: PromptEmbedding = model.peft_prompt
    if not prompt.use():
        return None
    a = bound_forward_arguments(model, args, kwargs)
    check_unpacked(a, "prompt tuning")
    cache = a.get("cache")
    if cache is not None and cache.length > 0:
        return None  # decoding: the prompt is already in the cache
    ids = a["input_ids"]
    b, p = ids.shape[0], prompt.embedding[prompt.active[0]].shape[0]
    a["input_ids"] = torch.cat([ids.new_zeros(b, p), ids], dim=1)
    if a.get("labels") is not None:
        a["labels"] = torch.cat([a["labels"].new_full((b, p), -100), a["labels"]], dim=1)
    if a.get("attention_mask") is not None:
        m = a["attention_mask"]
        a["attention_mask"] = torch.cat([m.new_ones(b, p), m], dim=1)
    if a.get("position_ids") is not None:
        pos = torch.arange(p, device=ids.device).expand(b, p)
        a["position_ids"] = torch.cat([pos, a["position_ids"] + p], dim=1)
    prompt.pending = p
    return (), a


def _embed_hook(module: nn.Module, args, output: torch.Tensor, prompt: PromptEmbedding):
    p, prompt.pending = prompt.pending, 0
    if not p:
        return None
    soft = prompt.embedding[prompt.active[0]].to(output.dtype)
    return torch.cat([soft.expand(output.shape[0], -1, -1), output[:, p:]], dim=1)


def _logits_hook(model: nn.Module, args, kwargs, output):
    prompt: PromptEmbedding = model.peft_prompt
    if not prompt.use() or output.logits is None:
        return None
    a = bound_forward_arguments(model, args, kwargs)
    keep = a.get("logits_to_keep", 0)
    cache = a.get("cache")
    fresh = cache is None or cache.length == a["input_ids"].shape[1]
    if fresh and not (isinstance(keep, torch.Tensor) or keep):
        output.logits = output.logits[:, prompt.embedding[prompt.active[0]].shape[0] :]
    return output


def apply_prompt_tuning(
    model: nn.Module, num_virtual_tokens: int = 20, *, adapter_name: str = "default"
) -> nn.Module:
    """Add a trainable soft prompt of ``num_virtual_tokens`` and activate it."""
    from lmforge.peft.state import register_adapter

    config = PromptConfig(num_virtual_tokens)
    add_prompt(model, config, adapter_name)
    register_adapter(model, adapter_name, config)
    with torch.no_grad():  # sampled-vocabulary initialisation
        emb = model.model.embed_tokens.weight
        rows = torch.randint(0, emb.shape[0], (num_virtual_tokens,), device=emb.device)
        model.peft_prompt.embedding[adapter_name].copy_(emb[rows])
    return model


def add_prompt(model: nn.Module, config: PromptConfig, adapter_name: str) -> PromptEmbedding:
    if not hasattr(model, "peft_prompt"):
        model.peft_prompt = PromptEmbedding()
        prompt = model.peft_prompt
        hooks = [
            model.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True),
            model.model.embed_tokens.register_forward_hook(
                lambda m, a, o: _embed_hook(m, a, o, prompt)
            ),
            model.register_forward_hook(_logits_hook, with_kwargs=True),
        ]
        model._peft_hooks = [*getattr(model, "_peft_hooks", []), *hooks]
    if adapter_name in model.peft_prompt.adapter_names():
        raise ValueError(f"the model already has a prompt named {adapter_name!r}")
    w = model.model.embed_tokens.weight
    model.peft_prompt.embedding[adapter_name] = nn.Parameter(
        torch.zeros(config.num_virtual_tokens, w.shape[1], device=w.device, dtype=w.dtype)
    )
    return model.peft_prompt
