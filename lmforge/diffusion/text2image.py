"""Latent text-to-image ("Stable Diffusion in miniature", Rombach et al. 2022) trained through
the one Trainer (``lmforge text2image train``).

    config = load_config("recipes/text2image-shapes.yaml", [], Text2ImageConfig)
    summary = train_text2image(config)          # summary["model_dir"]: a pipeline folder

Two stages in one run folder, each a Trainer run with its own ``metrics.jsonl``, curves PNG,
atomic checkpoints and exact resume:

1. ``<out>/autoencoder``: the KL autoencoder (`autoencoder_kl`) on the images; then the
   latent scaling factor (1 / std of the training latents); saved to
   ``<out>/autoencoder/model`` (a finished stage is loaded, not retrained, on resume).
2. ``<out>``: the text encoder (an lmforge LM body, `text_encoder`) and the cross-attention
   DiT (`text_dit`) trained **jointly** on the ε-prediction loss over the scaled latents,
   with caption dropout (probability ``p_uncond``: the caption becomes the empty caption)
   for classifier-free guidance. Joint rather than CLIP-style contrastive pretraining: the
   captions are a closed template (size, colour, shape, position) whose every word the
   denoising loss itself must resolve, so a separate contrastive stage would add a run and a
   batch-size-hungry loss without giving the encoder anything the denoiser does not demand;
   CLIP pretraining pays off with open-vocabulary captions, which these are not.

At every evaluation ``samples/step-XXXXXXXX.png`` holds one sample per fixed prompt (the
first test captions) and, with ``text2image.classifier_steps`` > 0, ``samples.jsonl`` the
prompt accuracy of ``eval_samples`` samples (`text2image_pipeline.prompt_accuracy`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.autoencoder_kl import (
    AutoencoderKL,
    AutoencoderKLConfig,
    AutoencoderKLObjective,
    load_autoencoder,
    save_autoencoder,
)
from lmforge.diffusion.ddpm import forward_noise
from lmforge.diffusion.schedulers import load_scheduler
from lmforge.diffusion.text2image_pipeline import (
    Text2ImageModel,
    Text2ImagePipeline,
    prompt_accuracy,
    sample_text2image,
    save_text2image,
)
from lmforge.diffusion.text_dit import TextDiT, TextDiTConfig
from lmforge.diffusion.text_encoder import CaptionTokenizer, TextEncoder, TextEncoderConfig
from lmforge.diffusion.training import evaluation_classifier, write_sample_metrics
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.objective import LossOutput
from lmforge.train.run import print_summary, training_run
from lmforge.vision.datasets import ImageDataset, load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader

__all__ = [
    "LatentDenoisingObjective",
    "Text2ImageConfig",
    "Text2ImageSection",
    "drop_captions",
    "latent_dataset",
    "train_autoencoder_stage",
    "train_text2image",
]


@dataclass
class Text2ImageSection:
    """Data, the three networks, the noise schedule, and evaluation sampling."""

    dataset: str = "shapes"  # a captioned lmforge.vision dataset
    image_size: int = 16
    num_train: int = 8000
    num_eval: int = 500
    data_seed: int = 0
    autoencoder: dict[str, Any] = field(default_factory=dict)  # AutoencoderKLConfig fields
    autoencoder_steps: int = 1500
    autoencoder_lr: float = 2e-3
    autoencoder_batch_size: int = 0  # 0: train.batch_size
    text_encoder: dict[str, Any] = field(default_factory=dict)  # TextEncoderConfig fields
    denoiser: dict[str, Any] = field(default_factory=dict)  # TextDiTConfig fields
    p_uncond: float = 0.1  # caption dropout (classifier-free guidance)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    sampler: str = "ddim"  # evaluation grids: ddpm | ddim | euler | dpm++
    sample_steps: int = 30
    guidance_scale: float = 4.0
    grid_prompts: int = 16
    classifier_steps: int = 0  # > 0: train the evaluation classifier; prompt accuracy per eval
    eval_samples: int = 100


@dataclass
class Text2ImageConfig(RunConfig):
    text2image: Text2ImageSection = field(default_factory=Text2ImageSection)


def drop_captions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, p_uncond: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption replaced by the empty caption (``<bos>`` alone, left-padded) with
    probability ``p_uncond`` (Ho & Salimans 2022, Algorithm 1)."""
    if p_uncond <= 0:
        return input_ids, attention_mask
    drop = (torch.rand(input_ids.shape[0], device=input_ids.device) < p_uncond)[:, None]
    null_ids = torch.zeros_like(input_ids)
    null_ids[:, -1] = 1  # <bos>
    null_mask = torch.zeros_like(attention_mask)
    null_mask[:, -1] = 1
    return torch.where(drop, null_ids, input_ids), torch.where(drop, null_mask, attention_mask)


class LatentDenoisingObjective:
    """ε-prediction on scaled latents (Ho et al. 2020 eq. 14 in the autoencoder's latent
    space, LDM eq. 2) for ``{"images": latents, "input_ids", "attention_mask"}`` batches."""

    validation_metrics = True

    def __init__(self, alphas_cumprod: torch.Tensor, p_uncond: float) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.p_uncond = p_uncond

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        z0 = batch["images"]
        noise = torch.randn_like(z0)
        t = torch.randint(0, len(self.alphas_cumprod), (z0.shape[0],), device=z0.device)
        zt = forward_noise(self.alphas_cumprod, z0, noise, t)
        p = self.p_uncond if model.training else 0.0
        ids, mask = drop_captions(batch["input_ids"], batch["attention_mask"], p)
        out = model(zt, t, ids, mask)
        per_item = (out.float() - noise.float()).pow(2).flatten(1).mean(1)
        return LossOutput(per_item.sum(), z0.shape[0])


def check_section(s: Text2ImageSection) -> None:
    if not 0 <= s.p_uncond < 1:
        raise ConfigError(f"text2image.p_uncond={s.p_uncond}: must be in [0, 1)")
    if s.sampler not in ("ddpm", "ddim", "euler", "dpm++"):
        raise ConfigError(
            f"text2image.sampler={s.sampler!r}: expected ddpm, ddim, euler or dpm++ "
            "(the model is trained with an ε target)"
        )


def training_scheduler(s: Text2ImageSection):
    return load_scheduler(
        {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": s.num_train_timesteps,
            "beta_schedule": s.beta_schedule,
            "beta_start": s.beta_start,
            "beta_end": s.beta_end,
            "prediction_type": "epsilon",
            "clip_sample": False,  # latents are not confined to [−1, 1]
        }
    )


def train_autoencoder_stage(
    config: Text2ImageConfig,
    train_set: ImageDataset,
    eval_set: ImageDataset,
    dist: DistInfo,
    console: Console,
) -> AutoencoderKL:
    """Stage 1 (module docstring): ``<out>/autoencoder``, loaded when already finished."""
    s = config.text2image
    run_dir = Path(config.out_dir) / "autoencoder"
    if (run_dir / "model" / "config.json").is_file():
        return load_autoencoder(run_dir / "model")
    stage = copy.deepcopy(config)
    stage.out_dir = str(run_dir)
    stage.train.max_steps = s.autoencoder_steps
    stage.optim.lr = s.autoencoder_lr
    stage.train.batch_size = s.autoencoder_batch_size or config.train.batch_size
    if s.autoencoder_steps and stage.train.save_every > s.autoencoder_steps:
        stage.train.save_every = s.autoencoder_steps
    ae_cfg = AutoencoderKLConfig(**{**s.autoencoder, "in_channels": train_set.shape[0]})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        ae = AutoencoderKL(ae_cfg)
    console.print(
        f"[bold]text2image[/] stage 1: KL autoencoder ({sum(p.numel() for p in ae.parameters()):,}"
        f" parameters), {s.autoencoder_steps} steps"
    )
    Trainer(
        ae,
        ImageLoader(train_set, stage.train.batch_size, config.train.seed),
        stage,
        val_data=ImageLoader(eval_set, stage.train.batch_size, seed=12345),
        objective=AutoencoderKLObjective(),
        run_dir=run_dir,
        dist=dist,
        console=console,
    ).fit()
    ae.eval()
    latents = ae.latents(train_set.images)
    ae.config.scaling_factor = float(1.0 / latents.std())
    if dist.is_main:
        save_autoencoder(ae, run_dir / "model")
    return ae


def latent_dataset(
    ae: AutoencoderKL, images: ImageDataset, tokenizer: CaptionTokenizer
) -> tuple[ImageDataset, dict[str, torch.Tensor]]:
    """The scaled latents as an `ImageDataset` (labels and captions kept) and the tokenized
    captions as loader extras."""
    latents = ae.latents(images.images)
    data = ImageDataset(images.name, latents, images.labels, images.class_names, images.captions)
    ids, mask = tokenizer.encode(images.captions)
    return data, {"input_ids": ids, "attention_mask": mask}


def train_text2image(
    config: Text2ImageConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Both stages (module docstring); returns the Trainer's summary with ``model_dir``."""
    s = config.text2image
    check_section(s)
    with training_run(config, dist, console) as (dist, console):
        train_set = load_image_dataset(s.dataset, s.image_size, s.num_train, s.data_seed, "train")
        eval_set = load_image_dataset(s.dataset, s.image_size, s.num_eval, s.data_seed, "test")
        if not train_set.captions:
            raise ConfigError(f"text2image.dataset={s.dataset!r} has no captions")
        run_dir = Path(config.out_dir)
        ae = train_autoencoder_stage(config, train_set, eval_set, dist, console)
        for p in ae.parameters():
            p.requires_grad_(False)
        tokenizer = CaptionTokenizer.from_captions(train_set.captions + eval_set.captions)
        latents, extras = latent_dataset(ae, train_set, tokenizer)
        val_latents, val_extras = latent_dataset(ae, eval_set, tokenizer)
        c, h, _ = latents.shape
        te_cfg = TextEncoderConfig(
            **{
                **s.text_encoder,
                "vocab_size": tokenizer.vocab_size,
                "max_length": tokenizer.max_length,
            }
        )
        den_cfg = TextDiTConfig(
            **{
                **s.denoiser,
                "sample_size": h,
                "in_channels": c,
                "out_channels": c,
                "context_dim": te_cfg.hidden_size,
            }
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            model = Text2ImageModel(TextEncoder(te_cfg), TextDiT(den_cfg))
        sched = training_scheduler(s)
        objective = LatentDenoisingObjective(sched.alphas_cumprod, s.p_uncond)
        pipe = Text2ImagePipeline(
            ae, model, tokenizer, sched, train_set.shape, {"dataset": s.dataset}
        )
        classifier = None
        if s.classifier_steps and dist.is_main:
            classifier = evaluation_classifier(train_set, s.classifier_steps, run_dir, console)
        prompts = eval_set.captions[: s.grid_prompts]

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            with torch.random.fork_rng(devices=[]):
                images = sample_text2image(
                    pipe, prompts, s.sampler, s.sample_steps, s.guidance_scale, seed=trainer.step
                )
                save_grid(images, run_dir / "samples" / f"step-{trainer.step:08d}.png", nrow=4)
                if classifier is None:
                    return
                n = min(s.eval_samples, len(eval_set))
                scored = sample_text2image(
                    pipe, eval_set.captions[:n], s.sampler, s.sample_steps, s.guidance_scale,
                    seed=trainer.step,
                )  # fmt: skip
            metrics = prompt_accuracy(classifier, scored, eval_set.subset(slice(0, n)))
            line = {"step": trainer.step, "sampler": s.sampler, "steps": s.sample_steps, **metrics}
            write_sample_metrics(run_dir, line)
            trainer.console.print(
                f"step {trainer.step}: prompt accuracy "
                + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            )

        trainer = Trainer(
            model,
            ImageLoader(latents, config.train.batch_size, config.train.seed, extras),
            config,
            val_data=ImageLoader(val_latents, config.train.batch_size, 12345, val_extras),
            objective=objective,
            run_dir=run_dir,
            dist=dist,
            console=console,
            callbacks=[on_step],
        )
        console.print(
            f"[bold]text2image[/] stage 2: text encoder "
            f"({sum(p.numel() for p in model.text_encoder.parameters()):,} parameters, LM body) + "
            f"cross-attention DiT ({sum(p.numel() for p in model.denoiser.parameters()):,}) on "
            f"{c}×{h}×{h} latents, jointly"
        )
        summary = trainer.fit()
        if dist.is_main:
            summary["model_dir"] = str(save_text2image(pipe, run_dir / "model"))
        print_summary(summary, console)
    return summary
