import math

import pytest
import torch

from lmforge.vision.metrics import bits_per_dim, conditional_accuracy, frechet_distance


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(6, 6, generator=g, dtype=torch.float64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64), b @ b.T
    m1, m2 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    covmean = scipy_linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    want = float(
        (m1 - m2).double().pow(2).sum()
        + torch.trace(c1)
        + torch.trace(c2)
        - 2 * float(covmean.trace())
    )
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(m1, c1, m1, c1) == pytest.approx(0, abs=1e-8)
    # 1-D closed form: (μ1 − μ2)² + (σ1 − σ2)²
    one = frechet_distance(
        torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([0.0]), torch.tensor([[1.0]])
    )
    assert one == pytest.approx(1 + 1)


def test_bits_per_dim_of_uniform_density():
    # the uniform density on [-1, 1]^D has log p = −D log 2; on the 8-bit grid that is
    # exactly 8 bits per dimension.
    d = 12
    assert bits_per_dim(d * math.log(2.0), d, bin_width=2 / 256) == pytest.approx(8.0)


class _Fixed(torch.nn.Module):
    heads_spec = {"label": 3}

    def predict(self, images):
        return {"label": images.flatten(1)[:, 0].long()}


def test_conditional_accuracy():
    images = torch.tensor([0.0, 1, 2, 2]).reshape(4, 1, 1, 1)
    assert conditional_accuracy(_Fixed(), images, torch.tensor([0, 1, 2, 0])) == 0.75
