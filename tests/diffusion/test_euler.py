"""EulerDiscreteScheduler vs diffusers: whole trajectories incl. Karras σ."""

import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from lmforge.diffusion import load_scheduler  # noqa: E402

CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True),
    dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        use_karras_sigmas=True,
        prediction_type="v_prediction",
    ),
    dict(timestep_spacing="leading", steps_offset=1, prediction_type="sample"),
    dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"),
    dict(interpolation_type="log_linear", beta_schedule="squaredcos_cap_v2"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [8, 30])
def test_euler_trajectory_matches_diffusers(config, steps, traj):
    theirs = diffusers.EulerDiscreteScheduler(**config)
    ours = load_scheduler({"_class_name": "EulerDiscreteScheduler", **config})
    a, b = traj.run_pair(ours, theirs, steps)
    traj.assert_close(a, b)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)


def test_add_noise_matches_diffusers():
    theirs = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    ours = load_scheduler({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True})
    theirs.set_timesteps(12)
    ours.set_timesteps(12)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = theirs.timesteps[[0, 7]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
