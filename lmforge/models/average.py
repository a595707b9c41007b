"""Weight averaging of models fine-tuned from one start: a model soup and its extrapolation.

A uniform (or weighted) soup of n models with one architecture (Wortsman et al. 2022, "Model
soups", §2):

    θ = Σ_i w_i θ_i,   w_i ≥ 0,   Σ_i w_i = 1   (uniform: w_i = 1/n)

— WARP (Ramé et al. 2024, §3.2) merges policies RL-trained from one initialisation with
different seeds this way. From the shared start θ_0, the merged delta may be scaled:

    θ_α = θ_0 + α (θ − θ_0)

α = 1 keeps θ, α < 1 interpolates back toward the start (WARP's LITI, §3.3), α > 1
extrapolates past it (ExPO, Zheng et al. 2024).

    model = load_averaged(["runs/rl-s0/model", "runs/rl-s1/model", "runs/rl-s2/model"])
    save_model(model, "runs/rl-soup/model")

Floating tensors are averaged in float64 and cast back to their dtype; integer and boolean
tensors must agree across the models. Different names, shapes or dtypes are a
`CheckpointError` naming the tensor and the folder; `lmforge merge --average` is the command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lmforge.models.hf import CheckpointError, load_model


def soup_weights(n: int, weights: Sequence[float] | None = None) -> list[float]:
    """The soup's w_i: 1/n each, or ``weights`` normalised to sum to 1 (each ≥ 0, not all 0)."""
    if n < 1:
        raise ValueError("a soup needs at least one model")
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models: give one weight per model")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {list(weights)}: each must be ≥ 0 and their sum > 0")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _check_alike(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        if missing or extra:
            raise CheckpointError(f"{name}: tensors differ from {names[0]}'s — missing "
                                  f"{missing[:5]}, unexpected {extra[:5]}")  # fmt: skip
        for key, value in first.items():
            other = state[key]
            if other.shape != value.shape or other.dtype != value.dtype:
                raise CheckpointError(
                    f"{name}: tensor {key} is {tuple(other.shape)} {other.dtype}, "
                    f"{names[0]}'s {tuple(value.shape)} {value.dtype}"
                )
            if not value.is_floating_point() and not torch.equal(value, other):
                raise CheckpointError(f"{name}: non-float tensor {key} differs from "
                                      f"{names[0]}'s (it cannot be averaged)")  # fmt: skip


def average_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """θ = Σ_i w_i θ_i over state dicts with the same names, shapes and dtypes (`soup_weights`
    gives the w_i); ``names`` label the models in errors."""
    w = soup_weights(len(states), weights)
    names = list(names) if names is not None else [f"model {i}" for i in range(len(states))]
    _check_alike(states, names)
    out = {}
    for key, value in states[0].items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        acc = torch.zeros(value.shape, dtype=torch.float64)
        for wi, state in zip(w, states, strict=True):
            acc += wi * state[key].detach().to("cpu", torch.float64)
        out[key] = acc.to(value.dtype)
    return out


def scale_from_start(
    start: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """θ_α = θ_0 + α (θ − θ_0) for each floating tensor (others kept from ``state``)."""
    _check_alike([state, start], ["the merged model", "the start"])
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        s = start[key].detach().to("cpu", torch.float64)
        out[key] = (s + alpha * (value.detach().to("cpu", torch.float64) - s)).to(value.dtype)
    return out


def _architecture(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (expected an HF checkpoint folder)")
    config = json.loads(path.read_text())
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        config.pop(key, None)
    return config


def load_averaged(
    folders: Sequence[str | os.PathLike],
    weights: Sequence[float] | None = None,
    start: str | os.PathLike | None = None,
    alpha: float = 1.0,
    dtype: str | torch.dtype | None = torch.float32,
) -> nn.Module:
    """The soup of the checkpoint ``folders`` (same architecture: their ``config.json`` agree),
    scaled by ``alpha`` from ``start``'s weights when given; returns the first folder's model
    holding the averaged weights."""
    paths = [Path(f) for f in folders]
    if not paths:
        raise ValueError("give at least one model folder to average")
    if alpha != 1.0 and start is None:
        raise ValueError(f"alpha={alpha} scales the soup from its start: give the start folder")
    sources = [*paths, *([Path(start)] if start is not None else [])]
    configs = [_architecture(p) for p in sources]
    for path, config in zip(sources, configs, strict=True):
        if config != configs[0]:
            differ = sorted(k for k in set(config) | set(configs[0])
                            if config.get(k) != configs[0].get(k))  # fmt: skip
            raise CheckpointError(f"{path}: config.json differs from {paths[0]}'s in {differ}")
    models = [load_model(p, dtype=dtype) for p in paths]
    merged = average_state_dicts([m.state_dict() for m in models], weights, [str(p) for p in paths])
    if start is not None and alpha != 1.0:
        merged = scale_from_start(load_model(start, dtype=dtype).state_dict(), merged, alpha)
    model = models[0]
    model.load_state_dict(merged)
    return model


__all__ = ["average_state_dicts", "load_averaged", "scale_from_start", "soup_weights"]
