"""FlowMatchEulerDiscreteScheduler vs diffusers (shift, stochastic sampling)."""

import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from lmforge.diffusion import load_scheduler  # noqa: E402

CONFIGS = [
    dict(),
    dict(shift=3.0),
    dict(shift=0.5, num_train_timesteps=100),
    dict(stochastic_sampling=True, shift=2.0),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_flow_match_trajectory_matches_diffusers(config, steps, traj):
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours = load_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler", **config})
    a, b = traj.run_pair(ours, theirs, steps, stochastic=config.get("stochastic_sampling", False))
    traj.assert_close(a, b)


def test_add_noise_is_diffusers_scale_noise():
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = load_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    theirs.set_timesteps(10)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = theirs.timesteps[[2, 5]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.scale_noise(x0, t, noise))
