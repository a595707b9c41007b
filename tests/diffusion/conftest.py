"""Shared by the sampler tests: run one trajectory through lmforge's and diffusers' scheduler
with the same model outputs and the same variance noise, step for step."""

from __future__ import annotations

import math

import pytest
import torch

SHAPE = (2, 3, 4, 4)


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for a denoiser: depends on x and t, bounded."""
    tf = float(t)
    return torch.sin(1.3 * x + 0.003 * tf) * 0.8 + 0.05 * math.cos(0.01 * tf)


def run_pair(ours, theirs, steps: int, stochastic: bool = False, seed: int = 0, step_kwargs=None):
    """Trajectories of both schedulers; returns the lists of samples (after each step)."""
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.allclose(ours.timesteps.double(), theirs.timesteps.double()), (
        ours.timesteps,
        theirs.timesteps,
    )
    sigma = float(getattr(theirs, "init_noise_sigma", 1.0))
    assert abs(float(ours.init_noise_sigma) - sigma) < 1e-4
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(SHAPE, generator=g) * sigma
    xa, xb = x0.clone(), x0.clone()
    out_a, out_b = [], []
    for k, t in enumerate(theirs.timesteps):
        ma = fake_model(ours.scale_model_input(xa, t), t)
        scale = getattr(theirs, "scale_model_input", lambda x, t: x)
        mb = fake_model(scale(xb, t), t)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + k))
        kwargs = dict(step_kwargs or {})
        if stochastic:
            kwargs["generator"] = torch.Generator().manual_seed(1000 + k)
        xa = ours.step(ma, t, xa, noise=noise if stochastic else None)
        xb = theirs.step(mb, t, xb, **kwargs).prev_sample
        out_a.append(xa)
        out_b.append(xb)
    return out_a, out_b


def assert_trajectories_close(out_a, out_b, rtol: float = 1e-4) -> None:
    for k, (a, b) in enumerate(zip(out_a, out_b, strict=True)):
        scale = b.abs().max().clamp(min=1.0)
        err = (a - b).abs().max() / scale
        assert err <= rtol, f"step {k}: relative difference {err:.2e}"


class Trajectories:
    """The helpers above, as a fixture (test modules cannot import conftest under importlib)."""

    run_pair = staticmethod(run_pair)
    assert_close = staticmethod(assert_trajectories_close)
    fake_model = staticmethod(fake_model)
    shape = SHAPE


@pytest.fixture
def traj() -> Trajectories:
    return Trajectories()
