"""Identity verification with the margin-softmax losses: synthetic "faces" (identities
with shared nuisance factors — pose, lighting — and noise), an embedding network trained as
a classifier over the training identities, and verification of held-out identities by the
cosine similarity of embeddings at a fixed false-accept rate (as in LFW / IJB protocols).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.representation.margin_softmax import margin_loss

__all__ = ["synthetic_identities", "EmbeddingNet", "train_embedding", "verification_at_far"]


def synthetic_identities(
    identities: int, per_identity: int, dim: int = 48, nuisance: int = 8, noise: float = 0.6,
    seed: int = 0, world_seed: int = 7,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(samples [identities · per_identity, dim], identity ids): x = μ_id + N a + ε with μ_id
    a random prototype, N [dim, nuisance] nuisance directions shared by everyone (the same
    for every call with ``world_seed``), a ~ N(0, 1.5²) and ε ~ N(0, noise²)."""
    world = np.random.default_rng(world_seed)
    directions = world.normal(size=(dim, nuisance))
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(identities, dim))
    ids = np.repeat(np.arange(identities), per_identity)
    coeff = 1.5 * rng.normal(size=(len(ids), nuisance))
    x = protos[ids] + coeff @ directions.T + noise * rng.normal(size=(len(ids), dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(ids)


class EmbeddingNet(nn.Module):
    """An MLP to a ``features``-dimensional embedding, and the class weights W [C, features]."""

    def __init__(self, dim: int = 48, features: int = 16, classes: int = 40) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, features))
        self.weights = nn.Parameter(torch.randn(classes, features) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def train_embedding(
    kind: str = "arcface", identities: int = 40, steps: int = 300, lr: float = 3e-3,
    seed: int = 0, **loss_kw: float,
) -> tuple[EmbeddingNet, list[float]]:  # fmt: skip
    """An `EmbeddingNet` trained with margin loss ``kind`` on ``identities`` training
    identities (full batch, Adam); returns (network, loss per step)."""
    torch.manual_seed(seed)
    x, y = synthetic_identities(identities, 20, seed=seed)
    net = EmbeddingNet(x.shape[1], classes=identities)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        _, loss = margin_loss(kind, net(x), net.weights, y, **loss_kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net.eval(), losses


def verification_at_far(
    embeddings: torch.Tensor, ids: torch.Tensor, far: float = 0.01
) -> tuple[float, float]:
    """(accuracy on balanced same / different pairs, TAR) at the cosine threshold where the
    false-accept rate over all different-identity pairs is ``far``."""
    e = F.normalize(embeddings, dim=1)
    sim = e @ e.T
    same = ids.view(-1, 1) == ids.view(1, -1)
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    genuine = sim[same & upper]
    impostor = sim[~same & upper]
    threshold = torch.quantile(impostor, 1.0 - far)
    tar = float((genuine > threshold).float().mean())
    return (tar + (1.0 - far)) / 2.0, tar
