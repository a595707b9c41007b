"""Maximum-likelihood training of normalizing flows through the one Trainer.

The objective is the dequantised negative log-likelihood (Theis et al. 2016, §3.1;
Dinh et al. 2017, §4.1): x + u with u ~ U(0, w) per dimension (w = 2/255, the 8-bit grid of
[-1, 1]), loss = −log p(x + u) per image; bits/dim follow from `lmforge.vision.metrics`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.train.objective import LossOutput
from lmforge.vision.metrics import bits_per_dim

BIN_WIDTH = 2 / 255

__all__ = ["BIN_WIDTH", "FlowNLLObjective", "dequantize", "flow_bits_per_dim"]


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(0, w): a continuous density's likelihood lower-bounds the discrete one."""
    u = torch.rand(x.shape, generator=generator, device=x.device if generator is None else "cpu")
    return x + BIN_WIDTH * u.to(x.device)


class FlowNLLObjective:
    """``objective(model, {"images"}) -> LossOutput(Σ −log p(x + u), B)``."""

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        x = dequantize(batch["images"])
        nll = -model.log_prob(x)
        return LossOutput(nll.sum(), x.shape[0])


@torch.no_grad()
def flow_bits_per_dim(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, seed: int = 0
) -> float:
    """Test bits/dim of a flow on ``images`` (one dequantisation draw, seeded)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    nll = []
    for i in range(0, len(images), batch_size):
        x = dequantize(images[i : i + batch_size], g)
        nll.append(-model.log_prob(x))
    return bits_per_dim(torch.cat(nll), images[0].numel(), BIN_WIDTH)
