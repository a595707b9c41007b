"""Each margin loss against a hand computation with `math` on 2-D vectors at known angles."""

import math

import pytest
import torch

from lmforge.representation.margin_softmax import MARGIN_LOSSES, margin_loss, psi


def at(angle_deg, norm=1.0):
    a = math.radians(angle_deg)
    return [norm * math.cos(a), norm * math.sin(a)]


# x at 0°, ‖x‖ = 2; W_0 at 30° (‖W_0‖ = 1.5), W_1 at 100° (‖W_1‖ = 0.5); label 0.
X = torch.tensor([at(0, 2.0)], dtype=torch.float64)
W = torch.tensor([at(30, 1.5), at(100, 0.5)], dtype=torch.float64)
Y = torch.tensor([0])
T0, T1 = math.radians(30), math.radians(100)


def ce(target, other):
    """−log softmax of the target among two logits."""
    return -target + math.log(math.exp(target) + math.exp(other))


def hand_psi(theta, m):
    for k in range(m):
        if k * math.pi / m <= theta <= (k + 1) * math.pi / m:
            return (-1) ** k * math.cos(m * theta) - 2 * k
    raise AssertionError


@pytest.mark.parametrize(
    "kind,kw,expected",
    [
        ("softmax", {}, ce(3.0 * math.cos(T0), 1.0 * math.cos(T1))),
        ("normface", {"scale": 10.0}, ce(10 * math.cos(T0), 10 * math.cos(T1))),
        ("lsoftmax", {"margin": 2}, ce(3.0 * hand_psi(T0, 2), 1.0 * math.cos(T1))),
        ("lsoftmax", {"margin": 4}, ce(3.0 * hand_psi(T0, 4), 1.0 * math.cos(T1))),
        ("lsoftmax", {"margin": 2, "anneal": 3.0},
         ce((3 * 3.0 * math.cos(T0) + 3.0 * hand_psi(T0, 2)) / 4, 1.0 * math.cos(T1))),
        ("sphereface", {"margin": 4}, ce(2.0 * hand_psi(T0, 4), 2.0 * math.cos(T1))),
        ("cosface", {"scale": 10.0, "margin": 0.35},
         ce(10 * (math.cos(T0) - 0.35), 10 * math.cos(T1))),
        ("arcface", {"scale": 10.0, "margin": 0.5}, ce(10 * math.cos(T0 + 0.5), 10 * math.cos(T1))),
    ],
)  # fmt: skip
def test_loss_matches_the_hand_computation(kind, kw, expected):
    logits, loss = margin_loss(kind, X, W, Y, **kw)
    assert logits.shape == (1, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_psi_is_cos_m_theta_near_zero_continuous_and_decreasing():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    for m in (1, 2, 3, 4):
        values = psi(theta, m)
        assert (values[1:] <= values[:-1] + 1e-12).all()  # monotonically decreasing
        assert values[0] == 1.0 and values[-1].item() == pytest.approx(1 - 2 * m)
        for k in range(1, m):  # continuous at the joins kπ/m
            t = torch.tensor([k * math.pi / m - 1e-9, k * math.pi / m + 1e-9], dtype=torch.float64)
            a, b = psi(t, m)
            assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert psi(torch.tensor([0.3]), 1).item() == pytest.approx(math.cos(0.3))


def test_arcface_beyond_pi_and_easy_margin():
    """θ_y = 170°, m = 0.5: θ + m > π, so the target is cos θ − m sin m (insightface), not
    cos(θ + m) (which would increase again); easy margin keeps cos θ where cos θ ≤ 0."""
    x = torch.tensor([at(0)], dtype=torch.float64)
    w = torch.tensor([at(170), at(90)], dtype=torch.float64)
    theta = math.radians(170)
    logits, _ = margin_loss("arcface", x, w, Y, scale=1.0, margin=0.5)
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - 0.5 * math.sin(0.5))
    logits, _ = margin_loss("arcface", x, w, Y, scale=1.0, margin=0.5, easy_margin=True)
    assert logits[0, 0].item() == pytest.approx(math.cos(theta))
    x = torch.tensor([at(0)], dtype=torch.float64)
    w = torch.tensor([at(40), at(90)], dtype=torch.float64)
    logits, _ = margin_loss("arcface", x, w, Y, scale=1.0, margin=0.5, easy_margin=True)
    assert logits[0, 0].item() == pytest.approx(math.cos(math.radians(40) + 0.5))


def test_margins_make_the_target_harder_and_gradients_flow():
    torch.manual_seed(0)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (8,))
    _, plain = margin_loss("normface", x, w, y, scale=8.0)
    for kind in ("cosface", "arcface"):
        _, loss = margin_loss(kind, x, w, y, scale=8.0)
        assert loss.item() > plain.item()
    for kind in MARGIN_LOSSES:
        _, loss = margin_loss(kind, x, w, y)
        (gx, gw) = torch.autograd.grad(loss, (x, w))
        assert torch.isfinite(gx).all() and torch.isfinite(gw).all() and gx.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown margin loss 'triplet'"):
        margin_loss("triplet", x, w, y)
