"""Vector quantisation: the nearest-codebook bottleneck of VQ-VAE (van den Oord et al. 2017)
and VQGAN (Esser et al. 2021).

    vq = VectorQuantizer(num_codes=64, dim=16, ema=True)
    out = vq(z)                        # z [B, D, H, W] → out.quantized (straight-through),
    out.indices, out.codebook_loss, out.commitment_loss, out.counts
    vq.embed(out.indices)              # codes [B, H, W] → [B, D, H, W]

- quantisation: k = argmin_j ‖z − e_j‖² (VQ-VAE eq. 1–2);
- straight-through estimator: z_q = z + sg[e_k − z], so ∂L/∂z = ∂L/∂z_q (VQ-VAE §3.1);
- losses (VQ-VAE eq. 3): codebook ‖sg[z] − e‖², commitment β‖z − sg[e]‖²;
- EMA codebook (VQ-VAE appendix A.1): N_i ← γN_i + (1−γ)n_i, m_i ← γm_i + (1−γ)Σ_{k=i} z,
  e_i = m_i / Ñ_i with Laplace-smoothed counts Ñ_i = (N_i + ε)/(N + Kε)·N; the codebook then
  takes no gradient and the codebook loss is only reported;
- data init: at the first training batch the codes are put on random encoder outputs;
- dead-code restarts (Dhariwal et al. 2020, Jukebox §3.3 "random restarts"): a code whose
  running usage falls below a threshold is moved onto a random encoder output of the batch;
- usage and perplexity exp(−Σ p_i log p_i) of the code histogram (1 … K; K = uniform use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "VQOutput",
    "VectorQuantizer",
    "code_counts",
    "codebook_perplexity",
    "codebook_usage",
    "ema_codebook_update",
    "nearest_code",
    "restart_dead_codes",
    "straight_through",
    "vq_losses",
]


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[N, D] vectors, [K, D] codebook → [N] indices of the nearest code (squared L2, via
    ‖z‖² − 2 z·e + ‖e‖²)."""
    dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)[None]
    return dist.argmin(dim=1)


def straight_through(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """z + sg[z_q − z]: the value of z_q, the gradient of z (the decoder's gradient is copied
    to the encoder output)."""
    return z + (z_q - z).detach()


def vq_losses(z: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook loss ‖sg[z] − z_q‖², commitment loss ‖z − sg[z_q]‖²), means over elements
    (VQ-VAE eq. 3 without β)."""
    return (z.detach() - z_q).pow(2).mean(), (z - z_q.detach()).pow(2).mean()


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Histogram [K] (float) of code indices of any shape."""
    return torch.bincount(indices.reshape(-1), minlength=num_codes).float()


def codebook_perplexity(counts: torch.Tensor) -> float:
    """exp(−Σ p log p) of the histogram ``counts`` (0 log 0 = 0): the effective number of
    codes in use."""
    p = counts.double() / counts.sum().clamp(min=1)
    entropy = -(p * p.clamp(min=1e-30).log()).sum()
    return float(entropy.exp())


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of the codes used at least once in ``counts``."""
    return float((counts > 0).double().mean())


@torch.no_grad()
def ema_codebook_update(
    codebook: torch.Tensor,
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    z: torch.Tensor,
    indices: torch.Tensor,
    decay: float,
    eps: float = 1e-5,
) -> None:
    """In place, VQ-VAE appendix A.1: N_i ← γN_i + (1−γ)n_i, m_i ← γm_i + (1−γ)Σ_{k(z)=i} z,
    e_i ← m_i / Ñ_i with Ñ_i = (N_i + ε) / (Σ N + Kε) · Σ N (Laplace smoothing, so an unused
    code never divides by zero). ``z`` [N, D], ``indices`` [N]."""
    k = codebook.shape[0]
    onehot = torch.zeros(z.shape[0], k, dtype=z.dtype, device=z.device)
    onehot.scatter_(1, indices[:, None], 1.0)
    cluster_size.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
    embed_sum.mul_(decay).add_(onehot.T @ z, alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + k * eps) * total
    codebook.copy_(embed_sum / smoothed[:, None])


@torch.no_grad()
def restart_dead_codes(
    codebook: torch.Tensor,
    usage: torch.Tensor,
    z: torch.Tensor,
    threshold: float,
    cluster_size: torch.Tensor | None = None,
    embed_sum: torch.Tensor | None = None,
) -> int:
    """Move every code whose running ``usage`` is below ``threshold`` onto a random row of
    ``z`` [N, D] (torch's global RNG, so a resumed run draws the same); its usage (and EMA
    statistics, when given) restart at ``threshold`` as if it had just been used that much.
    Returns how many codes were restarted."""
    dead = (usage < threshold).nonzero().flatten()
    if dead.numel() == 0 or z.shape[0] == 0:
        return 0
    picks = z[torch.randint(0, z.shape[0], (dead.numel(),), device=z.device)]
    codebook[dead] = picks
    usage[dead] = threshold
    if cluster_size is not None and embed_sum is not None:
        cluster_size[dead] = threshold
        embed_sum[dead] = picks * threshold
    return int(dead.numel())


@dataclass
class VQOutput:
    quantized: torch.Tensor  # [B, D, H, W], straight-through (gradient flows to z)
    indices: torch.Tensor  # [B, H, W] code ids
    codebook_loss: torch.Tensor  # ‖sg[z] − e‖² (no gradient to anything under EMA)
    commitment_loss: torch.Tensor  # ‖z − sg[e]‖² (to be weighted by β)
    counts: torch.Tensor  # [K] histogram of this batch's codes
    restarted: int = 0  # dead codes restarted by this call


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation of [B, D, H, W] feature maps (module docstring).

    ``ema=True``: the codebook follows EMA statistics (decay γ) and takes no gradient.
    ``dead_threshold`` > 0: in training, codes whose running usage (an EMA, decay γ, of the
    per-batch counts) falls below it are restarted on encoder outputs."""

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.ema = num_codes, dim, ema
        self.decay, self.eps, self.dead_threshold = decay, eps, dead_threshold
        init = torch.empty(num_codes, dim).uniform_(-1 / num_codes, 1 / num_codes)
        self.codebook = nn.Parameter(init, requires_grad=not ema)
        # Usage starts at the mean load, so no code counts as dead before it had a chance.
        self.register_buffer("usage", torch.ones(num_codes))
        # 0 until the first training batch puts the codebook on encoder outputs (data init).
        self.register_buffer("initialized", torch.zeros(()))  # float: checkpoints hold floats
        if ema:
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code ids [B, H, W] → their vectors [B, D, H, W]."""
        return self.codebook[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> VQOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and torch.is_grad_enabled() and not self.initialized:
            self.init_from_data(flat.detach())
        indices = nearest_code(flat.detach(), self.codebook.detach())
        counts = code_counts(indices, self.num_codes)
        restarted = 0
        if self.training and torch.is_grad_enabled():
            restarted = self.update(flat.detach(), indices, counts)
        z_q = self.codebook[indices].view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss, commitment_loss = vq_losses(z, z_q)
        return VQOutput(
            straight_through(z, z_q),
            indices.view(b, h, w),
            codebook_loss,
            commitment_loss,
            counts,
            restarted,
        )

    @torch.no_grad()
    def init_from_data(self, flat: torch.Tensor) -> None:
        """Codes on random rows of the first training batch (torch's global RNG), so no code
        starts far from every encoder output."""
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        self.codebook.data.copy_(flat[pick])
        if self.ema:
            self.embed_sum.copy_(flat[pick] * self.cluster_size[:, None])
        self.initialized.fill_(1)

    @torch.no_grad()
    def update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> int:
        """Training-time state: EMA codebook, running usage, dead-code restarts. The usage
        is scaled to a per-code load of 1 at uniform use (counts · K / N)."""
        if self.ema:
            ema_codebook_update(
                self.codebook.data, self.cluster_size, self.embed_sum, flat, indices,
                self.decay, self.eps,
            )  # fmt: skip
        load = counts * self.num_codes / max(1, flat.shape[0])
        self.usage.mul_(self.decay).add_(load, alpha=1 - self.decay)
        if self.dead_threshold <= 0:
            return 0
        return restart_dead_codes(
            self.codebook.data, self.usage, flat, self.dead_threshold,
            getattr(self, "cluster_size", None), getattr(self, "embed_sum", None),
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, ema={self.ema}"
