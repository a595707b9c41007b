"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for
NLP", §2.1 and Fig. 2).

A small residual MLP after each sublayer's output projection, before the residual add:

    h ← h + W_up f(W_down h),    W_down ∈ R^{m×d}, W_up ∈ R^{d×m}, m ≪ d

placed after attention (``o_proj``) and after the feed-forward block (``down_proj``).
W_up starts at zero, so the adapted model starts as the base model (the paper's
near-identity initialisation). Unlike LoRA the adapter is nonlinear and cannot be merged
into the weights; it adds ~2·m·d parameters and a little latency per block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lmforge.peft.lora import matches_target


@dataclass
class BottleneckConfig:
    bottleneck: int = 16
    target_modules: list[str] | str = field(default_factory=lambda: ["o_proj", "down_proj"])
    dropout: float = 0.0
    peft_type: str = "LMFORGE_BOTTLENECK"

    def __post_init__(self) -> None:
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"bottleneck={self.bottleneck!r} must be a positive integer")

    def to_dict(self) -> dict:
        return asdict(self)


class BottleneckLinear(nn.Module):
    """A linear layer followed by named residual bottleneck adapters (applied in order)."""

    is_tuner_layer = True

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_dropout = nn.ModuleDict()
        self.active: list[str] = []
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def adapter_names(self) -> list[str]:
        return list(self.adapter_down.keys())

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [*self.adapter_down[name].parameters(), *self.adapter_up[name].parameters()]

    def add_adapter(self, name: str, config: BottleneckConfig) -> None:
        w = self.base_layer.weight
        d = self.base_layer.out_features
        down = nn.Linear(d, config.bottleneck, device=w.device, dtype=w.dtype)
        up = nn.Linear(config.bottleneck, d, device=w.device, dtype=w.dtype)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.adapter_down[name], self.adapter_up[name] = down, up
        self.adapter_dropout[name] = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def delete_adapter(self, name: str) -> None:
        for d in (self.adapter_down, self.adapter_up, self.adapter_dropout):
            del d[name]
        self.active = [a for a in self.active if a != name]

    def merge(self, names=None) -> None:
        raise ValueError("bottleneck adapters are nonlinear and cannot be merged into weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        if self.disabled:
            return h
        for name in self.active:
            down, up = self.adapter_down[name], self.adapter_up[name]
            h = h + up(self.adapter_dropout[name](torch.nn.functional.gelu(down(h))))
        return h


def add_bottleneck(model: nn.Module, config: BottleneckConfig, adapter_name: str) -> list[str]:
    names = []
    for name, module in list(model.named_modules()):
        if not name or ".adapter_" in name or name.endswith(".base_layer"):
            continue
        if not matches_target(name, config.target_modules):
            continue
        if isinstance(module, BottleneckLinear):
            layer = module
        elif type(module) is nn.Linear:
            layer = BottleneckLinear(module)
            model.set_submodule(name, layer)
        else:
            raise ValueError(f"adapter target {name!r} is a {type(module).__name__}, not nn.Linear")
        layer.add_adapter(adapter_name, config)
        names.append(name)
    if not names:
        raise ValueError(f"target_modules={config.target_modules!r} matched no linear layer")
    return names


def apply_adapters(
    model: nn.Module,
    bottleneck: int = 16,
    target_modules: list[str] | str = ("o_proj", "down_proj"),
    dropout: float = 0.0,
    *,
    adapter_name: str = "default",
) -> nn.Module:
    """Add Houlsby bottleneck adapters (width ``bottleneck``) after ``target_modules``
    (default: after attention and after the MLP of every block) and activate them."""
    from lmforge.peft.state import register_adapter

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = BottleneckConfig(bottleneck=bottleneck, target_modules=targets, dropout=dropout)
    add_bottleneck(model, config, adapter_name)
    register_adapter(model, adapter_name, config)
    return model


def bottleneck_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Tensors to save, PEFT-style names: ``base_model.model.<module>.adapter_down.weight``."""
    out = {}
    for module_name, m in model.named_modules():
        if isinstance(m, BottleneckLinear) and name in m.adapter_names():
            for part in ("adapter_down", "adapter_up"):
                for pname, p in getattr(m, part)[name].named_parameters():
                    out[f"base_model.model.{module_name}.{part}.{pname}"] = p
    return out
