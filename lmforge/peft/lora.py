"""LoRA, rsLoRA, DoRA and PiSSA on the linear layers of a model, with named adapters.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3)
freezes a linear layer W ∈ R^{out×in} and learns a rank-r update:

    h = W x + s · B A dropout(x),    A ∈ R^{r×in}, B ∈ R^{out×r},   s = α / r

B starts at zero so training starts from the base model. rsLoRA (Kalajdzievski 2023,
"A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA") uses s = α / √r so the
update's scale does not collapse at large r. DoRA (Liu et al. 2024, "DoRA:
Weight-Decomposed Low-Rank Adaptation", eq. 5) splits the adapted weight into a learned
magnitude m (one per output row) and a direction:

    W' = m · (W + s B A) / ‖W + s B A‖_row,     m initialised to ‖W‖_row

with the norm treated as a constant in backward (§4.3), computed as PEFT does so adapters
move between the two libraries unchanged. PiSSA (Meng et al. 2024, "Principal Singular
Values and Singular Vectors Adaptation") initialises B A from the top-r singular triplets
of W (A = √S_r V_rᵀ / √s, B = U_r √S_r / √s) and freezes the residual W − s B A.

Module and parameter names are PEFT's: a wrapped ``q_proj`` holds ``base_layer`` (the
original nn.Linear) and ``lora_A.<adapter>`` / ``lora_B.<adapter>`` /
``lora_magnitude_vector.<adapter>``, so state dicts map one to one onto PEFT files.

The base layer may also be a quantised linear (`lmforge.peft.quantize`, QLoRA): forward is
then ``base(x) + s · B A dropout(x)`` with A, B in float32; DoRA, PiSSA and merging need
the full-precision weight and are refused on such a base.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.peft.quantize import is_quantized_linear

INITS = ("kaiming", "gaussian", "pissa")


@dataclass
class LoraConfig:
    """One LoRA adapter's hyperparameters (PEFT ``LoraConfig`` field meanings)."""

    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    init: str = "kaiming"
    peft_type: str = "LORA"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r={self.r!r} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout!r} must be in [0, 1)")
        if self.init not in INITS:
            raise ValueError(f"LoRA init={self.init!r}: use one of {INITS}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.use_rslora)

    def to_dict(self) -> dict:
        return asdict(self)


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """s = α / r (LoRA), or α / √r (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def matches_target(name: str, targets: Sequence[str] | str) -> bool:
    """PEFT's rule: a string is a regex that must match the whole module name; a list
    matches a module whose name equals an entry or ends with ``.<entry>``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def dora_weight_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """‖W + ΔW‖ per output row (DoRA eq. 5's column norm in the paper's W ∈ R^{in×out})."""
    return torch.linalg.norm(weight + delta, dim=1).to(weight.dtype)


class LoraLinear(nn.Module):
    """An nn.Linear plus any number of named LoRA / DoRA adapters.

    ``active`` lists the adapters applied in forward (summed); ``disabled`` turns all of
    them off (the base model, e.g. DPO's frozen reference) without touching any weight.
    """

    is_tuner_layer = True

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.quantized = is_quantized_linear(base_layer)  # QLoRA: frozen quantised base
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.active: list[str] = []
        self.disabled = False
        self.merged: list[str] = []
        self._merge_norms: dict[str, torch.Tensor] = {}  # DoRA: ‖W + sBA‖ at merge time
        # Per-token adapters (`lmforge.peft.multi_lora.LoraRouter`): when set, each token
        # gets only the adapter its index names (0: none) instead of the ``active`` sum.
        self.router = None

    # The wrapped layer still reads like a Linear (shapes, weight, bias) for other code.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        params = [*self.lora_A[name].parameters(), *self.lora_B[name].parameters()]
        if name in self.lora_magnitude_vector:
            params.append(self.lora_magnitude_vector[name])
        return params

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, config: LoraConfig) -> None:
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if self.quantized and (config.use_dora or config.init == "pissa"):
            raise ValueError(
                f"{'DoRA' if config.use_dora else 'PiSSA init'} needs the full-precision base "
                "weight; on a quantised base (quantize_base) use plain LoRA"
            )
        w = self.base_layer.weight
        dtype = torch.float32 if self.quantized else w.dtype  # packed ints can't train
        a = nn.Linear(self.in_features, config.r, bias=False, device=w.device, dtype=dtype)
        b = nn.Linear(config.r, self.out_features, bias=False, device=w.device, dtype=dtype)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.scaling[name] = config.scaling
        with torch.no_grad():
            if config.init == "pissa":
                self._pissa_init(name)
            elif config.init == "gaussian":  # PEFT "gaussian": A ~ N(0, 1/r²)
                nn.init.normal_(a.weight, std=1.0 / config.r)
                nn.init.zeros_(b.weight)
            else:  # nn.Linear's default for A (Kaiming-uniform, a=√5), B = 0
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
                nn.init.zeros_(b.weight)
            if config.use_dora:
                norm = dora_weight_norm(w, self.scaling[name] * (b.weight @ a.weight))
                self.lora_magnitude_vector[name] = nn.Parameter(norm.clone())

    def _pissa_init(self, name: str) -> None:
        w = self.base_layer.weight
        s = self.scaling[name]
        r = self.lora_A[name].out_features
        u, sv, vh = torch.linalg.svd(w.float(), full_matrices=False)
        root = torch.sqrt(sv[:r] / s)
        a = root[:, None] * vh[:r]
        b = u[:, :r] * root[None, :]
        self.lora_A[name].weight.copy_(a.to(w.dtype))
        self.lora_B[name].weight.copy_(b.to(w.dtype))
        w.copy_((w.float() - s * (b @ a)).to(w.dtype))

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter {name!r} is merged; unmerge it before deleting")
        for d in (self.lora_A, self.lora_B, self.lora_dropout, self.lora_magnitude_vector):
            if name in d:
                del d[name]
        self.scaling.pop(name, None)
        self.active = [a for a in self.active if a != name]

    def delta_weight(self, name: str) -> torch.Tensor:
        """s · B A, the LoRA update of the weight."""
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self, names: Sequence[str] | None = None) -> None:
        """Fold adapters into ``base_layer.weight`` (LoRA: W + sBA; DoRA: m/‖W+sBA‖·(W+sBA))."""
        if self.quantized and any(
            n in self.lora_A for n in (self.active if names is None else names)
        ):
            raise ValueError(
                "cannot merge LoRA into a quantised base layer: re-quantising W + sBA would not "
                "reproduce the trained model. Save the adapter and merge it into the "
                "full-precision base (load_adapter + merge_and_unload, or lmforge merge)"
            )
        for name in names if names is not None else self.active:
            if name in self.merged or name not in self.lora_A:
                continue
            w = self.base_layer.weight
            delta = self.delta_weight(name).to(w.dtype)
            if name in self.lora_magnitude_vector:
                norm = dora_weight_norm(self._unmerged_weight(), delta)
                self._merge_norms[name] = norm
                factor = (self.lora_magnitude_vector[name] / norm)[:, None]
                w.copy_(factor * (w + delta))
            else:
                w.add_(delta)
            self.merged.append(name)

    def _unmerged_weight(self) -> torch.Tensor:
        """The base weight with every merged adapter taken out (DoRA norms use it)."""
        if not self.merged:
            return self.base_layer.weight
        w = self.base_layer.weight.clone()
        for name in reversed(self.merged):
            w = self._unmerge_one(w, name, keep_norm=True)
        return w

    def _unmerge_one(self, w: torch.Tensor, name: str, keep_norm: bool = False) -> torch.Tensor:
        delta = self.delta_weight(name).to(w.dtype)
        if name in self.lora_magnitude_vector:
            norm = self._merge_norms[name] if keep_norm else self._merge_norms.pop(name)
            factor = (self.lora_magnitude_vector[name] / norm)[:, None]
            return w / factor - delta
        return w - delta

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take every merged adapter back out of ``base_layer.weight``."""
        w = self.base_layer.weight
        while self.merged:
            name = self.merged.pop()
            w.copy_(self._unmerge_one(w, name))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()
        result = self.base_layer(x)
        if self.disabled:
            return result
        out_dtype = result.dtype
        if self.router is not None:
            return self._routed(x, result)
        for name in self.active:
            if name in self.merged or name not in self.lora_A:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            xa = x.to(a.weight.dtype)
            dropout = self.lora_dropout[name]
            if name in self.lora_magnitude_vector:
                result = result + self._dora(name, xa, result, dropout)
            else:
                result = result + b(a(dropout(xa))) * self.scaling[name]
        return result.to(out_dtype)

    def _routed(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus, for each token, the delta s·B A x of the adapter the router's
        per-token index names (tokens of one adapter are gathered into one GEMM pair)."""
        ids = self.router.token_adapters
        if ids is None:
            return result
        rows_x = x.reshape(-1, x.shape[-1])
        ids = ids.reshape(-1)
        if ids.numel() != rows_x.shape[0]:
            raise ValueError(
                f"the router has {ids.numel()} token adapter ids for {rows_x.shape[0]} tokens"
            )
        out = result.reshape(-1, result.shape[-1])
        for index in ids.unique().tolist():
            name = self.router.name_of(index)
            if name is None or name not in self.lora_A:  # the base, or not adapted here
                continue
            if name in self.merged or name in self.lora_magnitude_vector:
                raise ValueError(f"adapter {name!r} is merged or DoRA: it cannot be routed")
            rows = (ids == index).nonzero().squeeze(1)
            a, b = self.lora_A[name], self.lora_B[name]
            delta = b(a(rows_x.index_select(0, rows).to(a.weight.dtype))) * self.scaling[name]
            out = out.index_add(0, rows, delta.to(out.dtype))
        return out.view_as(result)

    def _dora(self, name: str, x: torch.Tensor, result: torch.Tensor, dropout) -> torch.Tensor:
        """DoRA's extra output: (m/‖W+sBA‖ − 1)·W x + m/‖W+sBA‖ · s·B A x (bias excluded)."""
        a, b, s = self.lora_A[name], self.lora_B[name], self.scaling[name]
        weight = self.base_layer.weight.to(x.dtype)
        norm = dora_weight_norm(weight, s * (b.weight @ a.weight).detach()).detach()
        factor = self.lora_magnitude_vector[name] / norm
        if isinstance(dropout, nn.Identity) or not self.training:
            base = result if self.base_layer.bias is None else result - self.base_layer.bias
        else:
            x = dropout(x)
            base = F.linear(x, weight)
        return (factor - 1) * base + factor * b(a(x)) * s


# ---------------------------------------------------------------------- model level
def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every `LoraLinear` of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def add_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> list[str]:
    """Wrap (or extend) every linear layer selected by ``config.target_modules``; return
    the names of the adapted modules. Raises if nothing matches or a target is not Linear."""
    targets = config.target_modules
    if targets == "all-linear" or targets == ["all-linear"]:
        targets = r".*\.(q|k|v|o|gate|up|down)_proj"
    names = []
    for name, module in list(model.named_modules()):
        if not name or ".lora_" in name or name.endswith(".base_layer"):
            continue
        if not matches_target(name, targets):
            continue
        if isinstance(module, LoraLinear):
            layer = module
        elif type(module) is nn.Linear or is_quantized_linear(module):
            layer = LoraLinear(module)
            model.set_submodule(name, layer)
        else:
            raise ValueError(
                f"LoRA target {name!r} is a {type(module).__name__}; only nn.Linear layers "
                "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head) "
                "can be adapted"
            )
        if name == "lm_head" and getattr(model.config, "tie_word_embeddings", False):
            raise ValueError(
                "LoRA on lm_head of a model with tie_word_embeddings=true would also change "
                "the input embeddings when merged; target the other layers"
            )
        layer.add_adapter(adapter_name, config)
        names.append(name)
    if not names:
        raise ValueError(
            f"target_modules={config.target_modules!r} matched no linear layer "
            "(PEFT names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)"
        )
    return names
