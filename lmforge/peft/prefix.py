"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", §4) and P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be
Comparable to Fine-tuning Universally Across Scales and Tasks").

Every attention layer gets P trained key/value vectors per KV head, prepended to the keys
and values of the sequence, so every token can attend to them:

    attn(Q, [P_k; K], [P_v; V])

Li & Liang train the prefix through a reparameterisation, P = MLP(P'), with a smaller
P' ∈ R^{P×d'} (§4.3: direct optimisation is unstable); after training the MLP is
*folded away*: P is computed once and stored (`PrefixEncoder.fold`), which is also what
PEFT saves. ``projection=False`` trains P directly — P-tuning v2's deep prompts.

Layout (PEFT's): a prefix row holds, for every layer l, the keys then the values,
``[L, 2, H_kv, D]`` flattened. Keys are used as stored (no RoPE), and the sequence's
positions start at P, as they do in ``transformers`` with P cached positions.

Hook: the prefix rides on the model's KV-cache protocol (no change to attention): with no
cache, a `PrefixCache` of length P hands each layer ``[P_k; K]``; with an empty
``KVCache`` (generation) the prefix is written into it first. Packed batches
(``document_ids``) and the paged engine cache are not supported.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 20
    projection: bool = True
    encoder_hidden_size: int | None = None
    peft_type: str = "PREFIX_TUNING"

    def __post_init__(self) -> None:
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens={self.num_virtual_tokens!r} must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)


class PrefixEncoder(nn.Module):
    """Named prefixes: ``embedding[name]`` ``[P, E]`` and, while reparameterised,
    ``transform[name]`` (Linear(E, h) → tanh → Linear(h, L·2·H_kv·D)), E = H_kv·D."""

    is_tuner_layer = True

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.embedding = nn.ParameterDict()
        self.transform = nn.ModuleDict()
        self.active: list[str] = []
        self.disabled = False

    @property
    def row_dim(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def adapter_names(self) -> list[str]:
        return list(self.embedding.keys())

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        extra = list(self.transform[name].parameters()) if name in self.transform else []
        return [self.embedding[name], *extra]

    def add_adapter(self, name: str, config: PrefixConfig, like: torch.Tensor) -> None:
        token_dim = self.num_kv_heads * self.head_dim
        p = config.num_virtual_tokens
        kw = dict(device=like.device, dtype=like.dtype)
        if config.projection:
            hidden = config.encoder_hidden_size or token_dim
            self.embedding[name] = nn.Parameter(torch.randn(p, token_dim, **kw))
            self.transform[name] = nn.Sequential(
                nn.Linear(token_dim, hidden, **kw), nn.Tanh(), nn.Linear(hidden, self.row_dim, **kw)
            )
        else:
            self.embedding[name] = nn.Parameter(0.02 * torch.randn(p, self.row_dim, **kw))

    def delete_adapter(self, name: str) -> None:
        del self.embedding[name]
        if name in self.transform:
            del self.transform[name]
        self.active = [a for a in self.active if a != name]

    def merge(self, names=None) -> None:
        raise ValueError("a prefix is extra attention keys, not a weight update; it cannot merge")

    def rows(self, name: str) -> torch.Tensor:
        """The prefix ``[P, L·2·H_kv·D]`` (through the MLP while reparameterised)."""
        emb = self.embedding[name]
        return self.transform[name](emb) if name in self.transform else emb

    @torch.no_grad()
    def fold(self, name: str) -> None:
        """Replace MLP(P') by its output: inference no longer runs (or stores) the MLP."""
        if name in self.transform:
            folded = self.rows(name).detach().clone()
            del self.transform[name]
            self.embedding[name] = nn.Parameter(folded, requires_grad=False)

    def key_values(self, name: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(K, V)``, each ``[B, H_kv, P, D]``."""
        r = self.rows(name)
        kv = r.view(r.shape[0], self.num_layers, 2, self.num_kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 3, 0, 4)  # [L, 2, H, P, D]
        return [(kv[i, 0].expand(batch, -1, -1, -1), kv[i, 1].expand(batch, -1, -1, -1))
                for i in range(self.num_layers)]  # fmt: skip


class PrefixCache:
    """A read-only 'cache' of the prefix: each layer's K/V is prepended to the sequence's."""

    def __init__(self, key_values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.key_values = key_values
        self.length = key_values[0][0].shape[2]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        pk, pv = self.key_values[layer_idx]
        return torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)

    def advance(self, n: int) -> None:  # the prefix stays; nothing of the sequence is kept
        pass


def bound_forward_arguments(model: nn.Module, args, kwargs) -> dict:
    bound = inspect.signature(type(model).forward).bind(model, *args, **kwargs)
    out = dict(bound.arguments)
    out.pop("self")
    return out


def check_unpacked(arguments: dict, what: str) -> None:
    if arguments.get("document_ids") is not None or arguments.get("cu_seqlens") is not None:
        raise ValueError(
            f"{what} does not support packed batches (document_ids / cu_seqlens): every "
            "sequence must see the virtual tokens from position 0; pass one sequence per row"
        )
    if getattr(arguments.get("cache"), "paged", False):
        raise ValueError(
            f"{what} is not supported by the paged engine cache; run the model with a "
            "contiguous lmforge.models.KVCache"
        )


def prefix_pre_hook(model: nn.Module, args, kwargs):
    """Forward pre-hook of the `CausalLM`: supply the active prefix as (part of) the cache."""
    enc: PrefixEncoder = model.peft_prefix
    if enc.disabled or not enc.active:
        return None
    a = bound_forward_arguments(model, args, kwargs)
    check_unpacked(a, "prefix tuning")
    ids, cache, mask = a["input_ids"], a.get("cache"), a.get("attention_mask")
    p = enc.embedding[enc.active[0]].shape[0]
    if cache is None:
        cache = a["cache"] = PrefixCache(enc.key_values(enc.active[0], ids.shape[0]))
    elif cache.length == 0:  # generation: the prefix fills the first P slots of the cache
        for i, (k, v) in enumerate(enc.key_values(enc.active[0], ids.shape[0])):
            cache.update(i, k, v)
        cache.advance(p)
    if mask is not None and mask.shape[1] == cache.length + ids.shape[1] - p:
        ones = torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device)
        a["attention_mask"] = torch.cat([ones, mask], dim=1)
    return (), a


def apply_prefix_tuning(
    model: nn.Module,
    num_virtual_tokens: int = 20,
    projection: bool = True,
    encoder_hidden_size: int | None = None,
    *,
    adapter_name: str = "default",
) -> nn.Module:
    """Add a trainable prefix of ``num_virtual_tokens`` to every layer and activate it.
    ``projection=True``: reparameterised through an MLP (Li & Liang); False: P-tuning v2."""
    from lmforge.peft.state import register_adapter

    config = PrefixConfig(num_virtual_tokens, projection, encoder_hidden_size)
    add_prefix(model, config, adapter_name)
    register_adapter(model, adapter_name, config)
    return model


def add_prefix(model: nn.Module, config: PrefixConfig, adapter_name: str) -> PrefixEncoder:
    c = model.config
    if not hasattr(model, "peft_prefix"):
        model.peft_prefix = PrefixEncoder(c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
        handle = model.register_forward_pre_hook(prefix_pre_hook, with_kwargs=True)
        model._peft_hooks = [*getattr(model, "_peft_hooks", []), handle]
    if adapter_name in model.peft_prefix.adapter_names():
        raise ValueError(f"the model already has a prefix named {adapter_name!r}")
    model.peft_prefix.add_adapter(adapter_name, config, model.lm_head.weight)
    return model.peft_prefix


def fold_prefix(model: nn.Module, adapter_name: str | None = None) -> None:
    """Fold the reparameterisation MLP of one (default: every) prefix away."""
    enc = model.peft_prefix
    for name in [adapter_name] if adapter_name else enc.adapter_names():
        enc.fold(name)
        model.peft_config[name].projection = False
