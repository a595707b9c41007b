"""OadTR: online action detection with transformers (Wang et al. 2021, "OadTR: Online
Action Detection with Transformers"), a TRN-like GRU baseline, a synthetic streaming
dataset and per-frame mAP.

- the encoder sees the last T chunk features (linear embedding + learned positions) and a
  learnable task token prepended; its output at the task token summarises the window (§3.2);
- the decoder turns ℓ learnable queries, cross-attending to the encoder output, into
  predictions of the next ℓ chunks' actions (§3.3);
- the current chunk is classified from [task-token output ; mean of the decoder outputs]
  (eq. 8); the joint loss is CE(current) + λ Σ_i CE(future_i) (eq. 10).

Online inference sees one chunk at a time (`OadTRStream`): a buffer of the last T features,
zero-padded at the start exactly as `sliding_windows` pads the batched forward, so the two
agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OadTRSettings",
    "OadTR",
    "GRUDetector",
    "OadTRStream",
    "sliding_windows",
    "future_labels",
    "synthetic_stream",
    "average_precision",
    "frame_map",
    "train_detector",
]


@dataclass
class OadTRSettings:
    feature_dim: int = 16
    num_classes: int = 5  # including background (class 0)
    window: int = 16  # T
    future: int = 4  # ℓ
    dim: int = 32
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 1
    future_weight: float = 0.5  # λ


class OadTR(nn.Module):
    """``forward(windows [B, T, D]) -> (current logits [B, C], future logits [B, ℓ, C])``."""

    def __init__(self, s: OadTRSettings | None = None) -> None:
        super().__init__()
        s = s or OadTRSettings()
        self.settings = s
        self.embed = nn.Linear(s.feature_dim, s.dim)
        self.task_token = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.positions = nn.Parameter(torch.randn(1, s.window + 1, s.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(s.dim, s.heads, 2 * s.dim, dropout=0.0,
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, s.encoder_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(1, s.future, s.dim) * 0.02)
        dec = nn.TransformerDecoderLayer(s.dim, s.heads, 2 * s.dim, dropout=0.0,
                                         batch_first=True)  # fmt: skip
        self.decoder = nn.TransformerDecoder(dec, s.decoder_layers)
        self.future_head = nn.Linear(s.dim, s.num_classes)
        self.current_head = nn.Linear(2 * s.dim, s.num_classes)

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = windows.shape[0]
        x = torch.cat([self.task_token.expand(B, -1, -1), self.embed(windows)], dim=1)
        memory = self.encoder(x + self.positions)
        decoded = self.decoder(self.queries.expand(B, -1, -1), memory)
        current = self.current_head(torch.cat([memory[:, 0], decoded.mean(1)], dim=-1))
        return current, self.future_head(decoded)

    def loss(self, windows: torch.Tensor, current: torch.Tensor,
             future: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """CE(current) + λ · mean_i CE(future_i) (future labels −100 beyond the stream end)."""
        cur, fut = self(windows)
        ce = F.cross_entropy(cur, current)
        ce_future = F.cross_entropy(fut.reshape(-1, fut.shape[-1]), future.reshape(-1),
                                    ignore_index=-100)  # fmt: skip
        return ce + self.settings.future_weight * ce_future


class GRUDetector(nn.Module):
    """The TRN-like baseline: a GRU over the stream, a per-chunk classifier; causal."""

    def __init__(self, s: OadTRSettings | None = None) -> None:
        super().__init__()
        s = s or OadTRSettings()
        self.settings = s
        self.gru = nn.GRU(s.feature_dim, s.dim, batch_first=True)
        self.head = nn.Linear(s.dim, s.num_classes)

    def forward(self, stream: torch.Tensor) -> torch.Tensor:
        """Per-chunk logits [B, L, C] for streams [B, L, D]."""
        return self.head(self.gru(stream)[0])


def sliding_windows(stream: torch.Tensor, window: int) -> torch.Tensor:
    """[L, T, D]: for every chunk t of a stream [L, D], chunks t−T+1..t (zeros before 0)."""
    padded = torch.cat([stream.new_zeros(window - 1, stream.shape[1]), stream], dim=0)
    return padded.unfold(0, window, 1).transpose(1, 2)


def future_labels(labels: torch.Tensor, future: int) -> torch.Tensor:
    """[L, ℓ]: the labels of chunks t+1..t+ℓ, −100 past the end."""
    padded = torch.cat([labels, labels.new_full((future,), -100)])
    return padded[1:].unfold(0, future, 1)[: len(labels)]


class OadTRStream:
    """One chunk at a time: ``push(feature [D]) -> current logits [C]``."""

    def __init__(self, model: OadTR) -> None:
        self.model = model
        s = model.settings
        self.buffer = torch.zeros(s.window, s.feature_dim)

    @torch.no_grad()
    def push(self, feature: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer[1:], feature.view(1, -1)], dim=0)
        return self.model(self.buffer.unsqueeze(0))[0][0]


def synthetic_stream(
    length: int = 256, feature_dim: int = 16, num_classes: int = 5, noise: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(features [L, D], labels [L]): background (0) alternating with action segments of
    8–24 chunks; an action's features ramp from the background prototype to its own over
    its first chunks (transitions), plus Gaussian noise that makes single chunks ambiguous."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(12345).normal(size=(num_classes, feature_dim))
    feats, labels = [], []
    while len(labels) < length:
        gap = int(rng.integers(4, 16))
        feats += [protos[0]] * gap
        labels += [0] * gap
        c = int(rng.integers(1, num_classes))
        n = int(rng.integers(8, 25))
        ramp = np.minimum(1.0, (np.arange(n) + 1) / 4.0)[:, None]
        feats += list(ramp * protos[c] + (1 - ramp) * protos[0])
        labels += [c] * n
    x = np.asarray(feats[:length]) + noise * rng.normal(size=(length, feature_dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels[:length])


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP = Σ_k P(k) · [item k is positive] / #positives over items sorted by score
    (ties broken by order, as ``sklearn.metrics.average_precision_score``)."""
    order = np.argsort(-scores, kind="mergesort")
    hits = positives[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    # sklearn's step-wise AP groups tied scores into one threshold
    s = scores[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(hits)[distinct]
    precision = tp / (distinct + 1)
    recall = tp / hits.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def frame_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Per-frame mAP over the action classes (background, class 0, excluded), as in
    TVSeries/THUMOS'14 online action detection."""
    s, y = scores.detach().numpy(), labels.numpy()
    aps = [average_precision(s[:, c], y == c) for c in range(1, s.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps))


def train_detector(
    kind: str = "oadtr", settings: OadTRSettings | None = None, streams: int = 16,
    steps: int = 200, lr: float = 3e-3, seed: int = 0,
) -> tuple[nn.Module, list[float]]:  # fmt: skip
    """An OadTR (or ``gru``) trained on synthetic streams; returns (model, loss per step)."""
    s = settings or OadTRSettings()
    torch.manual_seed(seed)
    data = [synthetic_stream(256, s.feature_dim, s.num_classes, seed=seed * 1000 + i)
            for i in range(streams)]  # fmt: skip
    model: nn.Module = OadTR(s) if kind == "oadtr" else GRUDetector(s)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    windows = torch.cat([sliding_windows(x, s.window) for x, _ in data])
    current = torch.cat([y for _, y in data])
    future = torch.cat([future_labels(y, s.future) for _, y in data])
    streams_x = torch.stack([x for x, _ in data])
    streams_y = torch.stack([y for _, y in data])
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        model.train()
        if kind == "oadtr":
            idx = torch.randint(0, len(windows), (128,), generator=g)
            loss = model.loss(windows[idx], current[idx], future[idx])
        else:
            logits = model(streams_x)
            loss = F.cross_entropy(logits.reshape(-1, s.num_classes), streams_y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses
