"""Generative models other than diffusion: normalizing flows (this issue); GANs, VQ models
and autoencoders come next.

| module | what |
|---|---|
| `nice` | NICE: additive coupling, diagonal scaling, logistic prior (Dinh et al. 2015) |
| `realnvp` | RealNVP: affine coupling, checkerboard / channel masks, squeeze (Dinh et al. 2017) |
| `flow_training` | dequantised maximum likelihood for the Trainer, bits/dim, `train_flow` (a run folder), `load_flow` / `sample_flow` |
| `flow_io` | a flow on disk: config.json + model.safetensors (saved models and Trainer checkpoints) |
| `vq` | vector quantisation: nearest code, straight-through estimator, codebook / commitment losses, EMA codebook, dead-code restarts, usage / perplexity (van den Oord et al. 2017) |
| `perceptual` | perceptual loss (LPIPS-style, uniform weights) on the evaluation classifier's features — no downloaded VGG |
| `patch_discriminator` | PatchGAN discriminator, hinge losses, VQGAN's adaptive weight λ from last-layer gradient norms |
| `vqgan` | VQGAN: conv encoder / decoder around the quantiser, its two-player objective for the one Trainer (one optimizer), save / load |
| `vqgan_training` | `train_vqgan`: a VQGAN run folder (reconstruction grids, held-out PSNR, codebook usage) |
| `code_prior` | transformer prior over VQ codes: raster order, class- or caption-prefix token layout, resumable loader, engine sampling (top-k / top-p; CFG through the engine's per-request logits hook), decoding |
| `code_prior_training` | `train_code_prior`: an lmforge `CausalLM` over a VQGAN's codes through the one Trainer, saved in HF format + prior.json |
| `gan_losses` | the GAN family's losses: minimax and non-saturating (Goodfellow et al. 2014), WGAN critic / generator, weight clipping (Arjovsky et al. 2017), gradient penalty on interpolates (Gulrajani et al. 2017) |
| `gan_models` | DCGAN-style generator / discriminator, class-conditional (projection critic), spectral norm option; the pair saved as config.json + model.safetensors |
| `gan_diagnostics` | mode-collapse diagnostics by the evaluation classifier: class coverage, within-class diversity, Fréchet distance, conditional accuracy, the collapse rule |
| `gan_training` | `train_gan` through the one Trainer: one player per step (n_critic), Adam / RMSProp, both players' losses, curves, sample grids, divergence stop |
"""

from lmforge.generative.flow_training import FlowNLLObjective, flow_bits_per_dim
from lmforge.generative.nice import NICE, NICEConfig
from lmforge.generative.realnvp import RealNVP, RealNVPConfig

__all__ = [
    "NICE",
    "FlowNLLObjective",
    "NICEConfig",
    "RealNVP",
    "RealNVPConfig",
    "flow_bits_per_dim",
]
