"""The GAN losses against hand computation, the gradient penalty against a brute-force
per-example autograd computation, and a WGAN-GP critic estimating a known W₁."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.generative.gan_losses import (
    clip_weights,
    critic_loss,
    generator_loss,
    gradient_penalty,
    interpolate,
    wasserstein_estimate,
)

D_REAL = [0.5, -1.0, 2.0]
D_FAKE = [2.0, 0.0, -3.0]


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


@pytest.mark.parametrize("method", ["gan", "nsgan", "wgan", "wgan-gp"])
def test_losses_match_hand_computation(method):
    r, f = torch.tensor(D_REAL), torch.tensor(D_FAKE)
    if method in ("gan", "nsgan"):  # −E log D(x) − E log(1 − D(G(z)))
        want_d = -mean(math.log(sigmoid(v)) for v in D_REAL) - mean(
            math.log(1 - sigmoid(v)) for v in D_FAKE
        )
        if method == "gan":  # minimise E log(1 − D(G(z)))
            want_g = mean(math.log(1 - sigmoid(v)) for v in D_FAKE)
        else:  # minimise −E log D(G(z))
            want_g = -mean(math.log(sigmoid(v)) for v in D_FAKE)
    else:
        want_d = mean(D_FAKE) - mean(D_REAL)
        want_g = -mean(D_FAKE)
    assert critic_loss(method, r, f).item() == pytest.approx(want_d, rel=1e-6)
    assert generator_loss(method, f).item() == pytest.approx(want_g, rel=1e-6)
    assert wasserstein_estimate(r, f).item() == pytest.approx(mean(D_REAL) - mean(D_FAKE))
    with pytest.raises(ValueError, match="expected one of"):
        critic_loss("lsgan", r, f)


def test_saturating_generator_gradient_vanishes_where_non_saturating_does_not():
    # A confident discriminator (D(G(z)) ≈ 0): d/dl log(1 − σ(l)) = −σ(l) ≈ 0, while
    # d/dl −log σ(l) = σ(l) − 1 ≈ −1 (Goodfellow et al. 2014, §3).
    logit = torch.tensor([-8.0], requires_grad=True)
    (g_minimax,) = torch.autograd.grad(generator_loss("gan", logit), logit)
    (g_ns,) = torch.autograd.grad(generator_loss("nsgan", logit), logit)
    assert abs(g_minimax.item()) < 1e-3 and g_ns.item() == pytest.approx(sigmoid(-8.0) - 1)


def small_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 1),
        nn.Flatten(0),
    )  # fmt: skip


def test_gradient_penalty_matches_brute_force():
    critic = small_critic()
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    eps = torch.rand(5, generator=g)
    gp = gradient_penalty(critic, real, fake, eps, weight=10.0)
    # Brute force: one example at a time, the gradient of the scalar critic value.
    terms = []
    for i in range(5):
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        terms.append((grad.pow(2).sum().sqrt() - 1) ** 2)
    brute = 10.0 * torch.stack(terms).mean()
    assert gp.item() == pytest.approx(brute.item(), rel=1e-5)
    # … and its gradient in the critic's parameters (the double backward) agrees too.
    params = list(critic.parameters())  # (the last bias does not move ∇_x f: no gradient)
    got = torch.autograd.grad(gp, params, allow_unused=True)
    want = torch.autograd.grad(brute, params, allow_unused=True)
    assert [a is None for a in got] == [b is None for b in want] == [False] * 3 + [True]
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    w = torch.tensor([3.0, 4.0])  # ∇f = w everywhere: λ (‖w‖ − 1)² = 10 · 16
    gp = gradient_penalty(lambda x: x @ w, torch.randn(6, 2), torch.randn(6, 2), torch.rand(6))
    assert gp.item() == pytest.approx(160.0)
    x = interpolate(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(x, torch.tensor([[0.25] * 3, [1.0] * 3]))


def test_clip_weights():
    layer = nn.Linear(3, 3)
    with torch.no_grad():
        layer.weight.mul_(100)
    clip_weights(layer, 0.01)
    assert layer.weight.abs().max().item() <= 0.01 and layer.bias.abs().max().item() <= 0.01


@pytest.mark.parametrize("mu, sigma", [(2.0, 1.0), (-1.5, 0.5)])
def test_wgan_gp_critic_estimates_w1_between_gaussians(mu, sigma):
    # W₁(N(0, σ²), N(μ, σ²)) = |μ| (one distribution is a translate of the other).
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                           nn.Linear(32, 1), nn.Flatten(0))  # fmt: skip
    # f starts constant: the penalty's barrier at slope 0 between the ±1 slopes of a 1-D
    # critic would otherwise trap a critic that starts with the wrong sign (a local optimum).
    nn.init.zeros_(critic[4].weight)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        real = sigma * torch.randn(256, 1, generator=g)
        fake = mu + sigma * torch.randn(256, 1, generator=g)
        loss = critic_loss("wgan-gp", critic(real), critic(fake))
        loss = loss + gradient_penalty(critic, real, fake, torch.rand(256, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real = sigma * torch.randn(20000, 1, generator=g)
        fake = mu + sigma * torch.randn(20000, 1, generator=g)
        estimate = wasserstein_estimate(critic(real), critic(fake)).item()
    # The penalty is soft: the penalised optimum over slopes s maximises s·|μ| − λ(s − 1)²,
    # so s = 1 + |μ|/(2λ) and the estimate is |μ|(1 + |μ|/(2λ)) — W₁ plus 5–10 % here.
    assert estimate == pytest.approx(abs(mu) * (1 + abs(mu) / 20), rel=0.04)
    assert estimate == pytest.approx(abs(mu), rel=0.15)
