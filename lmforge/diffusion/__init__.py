"""Diffusion models: samplers with diffusers-compatible configs, denoisers and their training
targets, score SDEs with the probability-flow ODE, rectified flow.

    from lmforge.diffusion import load_scheduler
    s = load_scheduler("runs/diffusion-digits/model"); s.set_timesteps(50)

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
| `unet` | the UNet denoiser (residual blocks, low-resolution attention, sinusoidal time and class embeddings) |
| `unet_diffusers` | UNet ↔ diffusers UNet2DModel: config, weights, folders; what does not map |
| `dit` | DiT with adaLN-zero (Peebles & Xie 2023) on lmforge's SwiGLU block |
| `targets` | ε / v / x₀ / flow-velocity targets and the denoising objective (classifier-free label dropout) |
| `sampling` | sampling any denoiser with any scheduler, classifier-free guidance |
| `denoiser_io` | a trained denoiser on disk (diffusers-pipeline-shaped folder) |
| `training` | ``lmforge diffusion train``: data, Trainer run, sample grids and classifier metrics per eval |
| `rectified_flow` | rectified flow: reflow couplings, straightness, few- and one-step Euler |
| `sde` | VP / sub-VP / VE SDEs, denoising score matching, Euler–Maruyama, predictor–corrector |
| `pf_ode` | probability-flow ODE: adaptive Dormand–Prince, exact log-likelihood (Hutchinson) |
| `autoencoder_kl` | KL-regularised autoencoder (Stable Diffusion's first stage): diagonal-Gaussian latents, closed-form KL, L1 + MSE + βKL objective, latent scaling factor |
| `text_encoder` | word-level caption tokenizer (left padding, the empty caption as null) and a text encoder that is an lmforge LM body |
| `text_dit` | text-conditioned DiT: adaLN-zero for time, masked cross-attention to text-encoder states |
| `text2image` | ``lmforge text2image train``: autoencoder stage, then text encoder + cross-attention DiT trained jointly on latents with caption dropout |
| `text2image_pipeline` | a latent text-to-image model on disk, prompt → image sampling with any ε sampler and CFG, prompt accuracy |
"""

from lmforge.diffusion.schedulers import SCHEDULERS, load_scheduler

__all__ = ["SCHEDULERS", "load_scheduler"]
