"""DPMSolverMultistepScheduler (DPM-Solver++ 1/2M, ODE and SDE) vs diffusers."""

import pytest

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from lmforge.config import ConfigError  # noqa: E402
from lmforge.diffusion import load_scheduler  # noqa: E402

CONFIGS = [
    dict(),
    dict(solver_type="heun"),
    dict(solver_order=1),
    dict(use_karras_sigmas=True),
    dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    ),
    dict(
        prediction_type="sample",
        timestep_spacing="leading",
        steps_offset=1,
        final_sigmas_type="sigma_min",
    ),
    dict(lower_order_final=False, final_sigmas_type="sigma_min"),
    dict(algorithm_type="sde-dpmsolver++"),
    dict(algorithm_type="sde-dpmsolver++", solver_type="heun", use_karras_sigmas=True),
    dict(beta_schedule="squaredcos_cap_v2", euler_at_final=True),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [6, 20])
def test_dpm_solver_trajectory_matches_diffusers(config, steps, traj):
    theirs = diffusers.DPMSolverMultistepScheduler(**config)
    ours = load_scheduler({"_class_name": "DPMSolverMultistepScheduler", **config})
    stochastic = config.get("algorithm_type") == "sde-dpmsolver++"
    a, b = traj.run_pair(ours, theirs, steps, stochastic=stochastic)
    traj.assert_close(a, b)


def test_third_order_is_refused():
    with pytest.raises(ConfigError, match="solver_order"):
        load_scheduler({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3})
