"""DDPMScheduler vs diffusers: whole trajectories, many configurations."""

import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from lmforge.diffusion import load_scheduler  # noqa: E402

CONFIGS = [
    dict(),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    dict(variance_type="fixed_large", prediction_type="sample", timestep_spacing="trailing"),
    dict(timestep_spacing="linspace", clip_sample_range=0.5),
    dict(steps_offset=1, num_train_timesteps=200),
    dict(
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [10, 37])
def test_ddpm_trajectory_matches_diffusers(config, steps, traj):
    theirs = diffusers.DDPMScheduler(**config)
    ours = load_scheduler({"_class_name": "DDPMScheduler", **config})
    a, b = traj.run_pair(ours, theirs, steps, stochastic=True)
    traj.assert_close(a, b)


def test_full_chain_and_add_noise(traj):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=50)
    ours = load_scheduler({"_class_name": "DDPMScheduler", "num_train_timesteps": 50})
    a, b = traj.run_pair(ours, theirs, 50, stochastic=True)
    traj.assert_close(a, b)
    x0, noise = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    t = torch.tensor([0, 10, 25, 49])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


def test_config_roundtrip_through_diffusers(tmp_path):
    ours = load_scheduler({"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear"})
    ours.save_config(tmp_path)
    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path)
    assert theirs.config.beta_schedule == "scaled_linear"
    diffusers.DDPMScheduler(variance_type="fixed_large").save_pretrained(tmp_path / "d")
    back = load_scheduler(tmp_path / "d")
    assert type(back).__name__ == "DDPMScheduler" and back.config.variance_type == "fixed_large"


def test_unimplemented_options_are_refused():
    from lmforge.config import ConfigError

    with pytest.raises(ConfigError, match="thresholding"):
        load_scheduler({"_class_name": "DDPMScheduler", "thresholding": True})
    with pytest.raises(ConfigError, match="variance_type"):
        load_scheduler({"_class_name": "DDPMScheduler", "variance_type": "learned"})
