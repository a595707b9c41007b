"""RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x²) + eps) · g."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, eq. (4) of arXiv:1910.07467.

    Statistics are computed in fp32 and the result is cast back before the gain is applied,
    which matches Llama / Qwen / Mistral numerics in half precision.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
