"""DDIMScheduler vs diffusers: whole trajectories (η = 0 and η > 0), many configurations."""

import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from lmforge.diffusion import load_scheduler  # noqa: E402

CONFIGS = [
    dict(),
    dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ),
    dict(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    ),
    dict(prediction_type="sample", timestep_spacing="linspace"),
    dict(
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps,eta", [(10, 0.0), (25, 0.0), (20, 1.0), (13, 0.3)])
def test_ddim_trajectory_matches_diffusers(config, steps, eta, traj):
    theirs = diffusers.DDIMScheduler(**config)
    ours = load_scheduler({"_class_name": "DDIMScheduler", **config}, eta=eta)
    a, b = traj.run_pair(ours, theirs, steps, stochastic=eta > 0, step_kwargs={"eta": eta})
    traj.assert_close(a, b)


def test_add_noise_and_deterministic_noise_free():
    theirs = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    ours = load_scheduler({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"})
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    # η = 0 never draws noise: two runs give the same sample whatever the generator.
    ours.set_timesteps(5)
    x = torch.randn(1, 2, 4, 4)
    y1 = ours.step(torch.ones_like(x), ours.timesteps[0], x)
    y2 = ours.step(torch.ones_like(x), ours.timesteps[0], x)
    assert torch.equal(y1, y2)
