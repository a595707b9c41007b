"""Generative models other than diffusion: normalizing flows (this issue); GANs, VQ models
and autoencoders come next.

| module | what |
|---|---|
| `nice` | NICE: additive coupling, diagonal scaling, logistic prior (Dinh et al. 2015) |
| `realnvp` | RealNVP: affine coupling, checkerboard / channel masks, squeeze (Dinh et al. 2017) |
| `flow_training` | dequantised maximum likelihood for the Trainer, bits/dim, `train_flow` (a run folder), `load_flow` / `sample_flow` |
| `flow_io` | a flow on disk: config.json + model.safetensors (saved models and Trainer checkpoints) |
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
