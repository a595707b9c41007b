import torch
from torch import nn

from lmforge.diffusion.rectified_flow import (
    flow_trajectory,
    reflow_loader,
    reflow_pairs,
    straightness,
)
from lmforge.diffusion.targets import DenoisingObjective


class _Field(nn.Module):
    """v(x, σ) = a · x + b (a = 0: a constant, straight field)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, labels=None):
        return self.a * x + self.b + 0 * self.p


def test_straightness_and_one_step():
    z = torch.randn(4, 1, 2, 2)
    x, vs = flow_trajectory(_Field(0.0, 0.5), z, steps=5)
    torch.testing.assert_close(x, z - 0.5)  # dx/dσ = 0.5 from σ = 1 to 0
    assert straightness(z, x, vs) < 1e-10
    x1, _ = flow_trajectory(_Field(0.0, 0.5), z, steps=1)
    torch.testing.assert_close(x1, x)  # a straight flow needs one step
    # dx/dσ = x: x(0) = z e^{-1}; Euler is exact only in the limit, and the path is curved
    xc, vc = flow_trajectory(_Field(1.0, 0.0), z, steps=200)
    torch.testing.assert_close(xc, z * torch.exp(torch.tensor(-1.0)), rtol=1e-2, atol=1e-3)
    assert straightness(z, xc, vc) > 1e-3


def test_reflow_pairs_train_on_their_own_noise():
    field = _Field(0.0, 0.25)
    noise, samples = reflow_pairs(
        field, 6, (1, 2, 2), steps=3, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(samples, noise - 0.25)
    batch = next(iter(reflow_loader(noise, samples, None, batch_size=6)))
    objective = DenoisingObjective("flow", conditional=False)
    # the field that made the pairs is exactly their straight velocity z − x̂: zero loss
    assert objective(field, batch).loss_sum.item() < 1e-10
