"""Contrastive predictive coding (van den Oord et al. 2018, "Representation Learning with
Contrastive Predictive Coding").

- g_enc: a strided 1-D conv stack, raw signal [B, L] → z_t [B, T, D];
- g_ar: a GRU, or an lmforge causal transformer (`lmforge.models.TransformerModel` fed
  ``inputs_embeds``), z_≤t → c_t [B, T, H];
- one bilinear predictor per step k: f_k(x_{t+k}, c_t) = exp(z_{t+k}ᵀ W_k c_t) (eq. 3);
- InfoNCE (eq. 4): L_k = −E log f_k(z_{t+k}, c_t) / Σ_{z_j ∈ X} f_k(z_j, c_t), where the
  candidate set X holds the positive and, as negatives, every other z at every (sequence,
  time) of the batch: in-batch and cross-time negatives. With N = |X|,
  I(x_{t+k}; c_t) ≥ log N − L_k (eq. 5).

Data: synthetic "audio" — each sequence is a sum of two sinusoids whose frequencies are
set by a latent speaker (the slowly varying factor, constant over the sequence) with a
slowly drifting amplitude and noise. A linear probe on the context c_t predicts the speaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models.transformer import TransformerModel

__all__ = [
    "info_nce",
    "CPCModel",
    "CPCSettings",
    "cpc_loss",
    "synthetic_speakers",
    "features_of",
    "linear_probe_accuracy",
    "train_cpc",
    "train_supervised",
]


def info_nce(predictions: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean InfoNCE loss, N) where row i of ``predictions`` [M, D] (W_k c_t) has its positive
    at row i of ``candidates`` [M, D] (z_{t+k}) and every other row as a negative."""
    scores = predictions @ candidates.T
    target = torch.arange(len(predictions), device=predictions.device)
    return F.cross_entropy(scores, target), len(candidates)


@dataclass
class CPCSettings:
    """Sizes of the CPC model; ``context`` is ``gru`` or ``transformer``."""

    latent: int = 32
    hidden: int = 32
    steps: int = 4
    context: str = "gru"
    downsample: int = 4  # two stride-2 convolutions


class CPCModel(nn.Module):
    """g_enc, g_ar and the W_k predictors."""

    def __init__(self, settings: CPCSettings | None = None) -> None:
        super().__init__()
        s = settings or CPCSettings()
        self.settings = s
        self.encoder = nn.Sequential(
            nn.Conv1d(1, s.latent, 8, stride=2, padding=3), nn.ReLU(),
            nn.Conv1d(s.latent, s.latent, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(s.latent, s.latent, 1),
        )  # fmt: skip
        if s.context == "gru":
            self.context = nn.GRU(s.latent, s.hidden, batch_first=True)
        elif s.context == "transformer":
            self.project = nn.Linear(s.latent, s.hidden)
            self.context = TransformerModel(ModelConfig(
                vocab_size=8, hidden_size=s.hidden, intermediate_size=2 * s.hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024))  # fmt: skip
        else:
            raise ValueError(f"context must be 'gru' or 'transformer', not {s.context!r}")
        self.predictors = nn.ModuleList(
            nn.Linear(s.hidden, s.latent, bias=False) for _ in range(s.steps)
        )

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        """z [B, T, D] from a signal [B, L]."""
        return self.encoder(signal.unsqueeze(1)).transpose(1, 2)

    def contextualise(self, z: torch.Tensor) -> torch.Tensor:
        """c [B, T, H], causal in t."""
        if self.settings.context == "gru":
            return self.context(z)[0]
        return self.context(inputs_embeds=self.project(z))

    def forward(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(signal)
        return z, self.contextualise(z)


def cpc_loss(model: CPCModel, signal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean of L_k over k = 1..K, and per-k losses / MI bounds log N − L_k."""
    z, c = model(signal)
    B, T, _ = z.shape
    losses, metrics = [], {}
    for k, W in enumerate(model.predictors, start=1):
        if T - k < 1:
            break
        pred = W(c[:, : T - k]).reshape(B * (T - k), -1)
        cand = z[:, k:].reshape(B * (T - k), -1)
        loss, n = info_nce(pred, cand)
        losses.append(loss)
        metrics[f"loss_k{k}"] = float(loss.detach())
        metrics[f"mi_bound_k{k}"] = math.log(n) - float(loss.detach())
    total = torch.stack(losses).mean()
    metrics["loss"] = float(total.detach())
    return total, metrics


def synthetic_speakers(
    num: int, length: int = 256, speakers: int = 8, noise: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(signals [num, length], speaker ids [num]): per speaker two fixed frequencies; per
    sequence a random phase and a slowly drifting amplitude; Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.02, 0.2, speakers)
    ids = torch.randint(0, speakers, (num,), generator=g)
    t = torch.arange(length, dtype=torch.float32)
    f1 = base[ids].unsqueeze(1)
    f2 = base.flip(0)[ids].unsqueeze(1) * 0.5
    phase = torch.rand(num, 2, generator=g) * 2 * math.pi
    drift = 0.5 + 0.5 * torch.sin(2 * math.pi * t / length
                                  + torch.rand(num, 1, generator=g) * 2 * math.pi)  # fmt: skip
    x = drift * torch.sin(2 * math.pi * f1 * t + phase[:, :1]) + 0.5 * torch.sin(
        2 * math.pi * f2 * t + phase[:, 1:]
    )
    return x + noise * torch.randn(num, length, generator=g), ids


@torch.no_grad()
def features_of(model: CPCModel, signals: torch.Tensor) -> torch.Tensor:
    """The context at the last step, c_T [N, H] (the probe's input)."""
    model.eval()
    return model(signals)[1][:, -1]


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    steps: int = 300, seed: int = 0,
) -> float:  # fmt: skip
    """Held-out accuracy of a logistic-regression probe (full-batch Adam on standardised
    features)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(a.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(probe(a), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((probe(b).argmax(1) == test_y).float().mean())


def train_cpc(
    settings: CPCSettings | None = None,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[CPCModel, list[dict[str, float]]]:
    """A CPC model trained on fresh synthetic batches; returns (model, metrics per step)."""
    torch.manual_seed(seed)
    model = CPCModel(settings)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(steps):
        signal, _ = synthetic_speakers(batch_size, seed=seed * 100_003 + step + 1)
        model.train()
        loss, metrics = cpc_loss(model, signal)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    return model, history


def train_supervised(
    settings: CPCSettings | None = None,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    speakers: int = 8,
) -> CPCModel:
    """The same g_enc + g_ar trained with speaker labels (a linear head on c_T, cross-entropy):
    the supervised upper reference for the probe."""
    torch.manual_seed(seed)
    model = CPCModel(settings)
    head = nn.Linear(model.settings.hidden, speakers)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=lr)
    for step in range(steps):
        signal, ids = synthetic_speakers(
            batch_size, speakers=speakers, seed=seed * 100_003 + step + 1
        )
        model.train()
        loss = F.cross_entropy(head(model(signal)[1][:, -1]), ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
