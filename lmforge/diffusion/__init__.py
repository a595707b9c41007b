"""Diffusion models: samplers with diffusers-compatible configs, denoisers, training targets,
score SDEs, rectified flow.

    from lmforge.diffusion import load_scheduler
    s = load_scheduler("runs/ddpm/model"); s.set_timesteps(50)

| module | what |
|---|---|
| `noise_schedules` | β tables (linear, scaled-linear, cosine, zero-terminal-SNR), timestep spacings, Karras σ, x̂_0/ε̂ from a prediction |
| `scheduler_base` | the sampler contract (set_timesteps, scale_model_input, step, add_noise) and scheduler_config.json io |
| `ddpm` | DDPM ancestral sampling (Ho et al. 2020), diffusers' DDPMScheduler |
| `ddim` | DDIM with η (Song et al. 2021), diffusers' DDIMScheduler |
| `euler` | Euler in σ with Karras spacing (Karras et al. 2022), diffusers' EulerDiscreteScheduler |
| `dpm_solver` | DPM-Solver++ 2M (Lu et al. 2022), diffusers' DPMSolverMultistepScheduler |
| `flow_match` | flow-matching Euler with timestep shift, diffusers' FlowMatchEulerDiscreteScheduler |
| `schedulers` | the registry and `load_scheduler` (``_class_name`` → class) |
"""

from lmforge.diffusion.schedulers import SCHEDULERS, load_scheduler

__all__ = ["SCHEDULERS", "load_scheduler"]
