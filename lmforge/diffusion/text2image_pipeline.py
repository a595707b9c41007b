"""A trained latent text-to-image model on disk and in use: prompts → images with any
ε-prediction sampler and classifier-free guidance, and prompt accuracy by the metric
classifier.

    pipe = load_text2image("runs/text2image-shapes/model")
    images = sample_text2image(pipe, ["a large blue circle at the bottom right"], "ddim", 30, 4.0)

Folder layout:

    <model>/text2image.json                       image shape, dataset
    <model>/autoencoder/{config.json, model.safetensors}         (`autoencoder_kl`)
    <model>/text_encoder/{config.json, tokenizer.json, model.safetensors}
    <model>/denoiser/{config.json, model.safetensors}            (`text_dit`)
    <model>/scheduler/scheduler_config.json                      the training noise table

Guidance (Ho & Salimans 2022, eq. 6, with the empty caption as the null condition, as
Stable Diffusion): ε̃ = ε(z, ∅) + w (ε(z, c) − ε(z, ∅)) (`lmforge.diffusion.sampling.cfg_combine`).
The text encoder runs once per prompt, not once per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.autoencoder_kl import AutoencoderKL, load_autoencoder, save_autoencoder
from lmforge.diffusion.sampling import cfg_combine
from lmforge.diffusion.scheduler_base import Scheduler
from lmforge.diffusion.schedulers import load_scheduler
from lmforge.diffusion.text_dit import TextDiT, TextDiTConfig
from lmforge.diffusion.text_encoder import CaptionTokenizer, TextEncoder, TextEncoderConfig
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.vision.classifier import ImageClassifier
from lmforge.vision.datasets import ImageDataset

META_FILE = "text2image.json"
PROMPT_ATTRIBUTES = {"colour": "colour", "shape": "label", "position": "position", "size": "size"}

__all__ = [
    "META_FILE",
    "Text2ImageModel",
    "Text2ImageModelConfig",
    "Text2ImagePipeline",
    "is_text2image_folder",
    "load_text2image",
    "prompt_accuracy",
    "sample_latents",
    "sample_text2image",
    "save_text2image",
]


@dataclass
class Text2ImageModelConfig:
    text_encoder: dict[str, Any]
    denoiser: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"text_encoder": dict(self.text_encoder), "denoiser": dict(self.denoiser)}


class Text2ImageModel(nn.Module):
    """The text encoder and the latent denoiser, trained together:
    ``forward(z_t, t, input_ids, attention_mask) → ε̂``."""

    def __init__(self, text_encoder: TextEncoder, denoiser: TextDiT) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        self.config = Text2ImageModelConfig(vars(text_encoder.config), vars(denoiser.config))

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """A trainer checkpoint's weights: ``config.json`` + ``model.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(self, folder / "model.safetensors")
        atomic_write_json(folder / "config.json", {"lmforge_text2image": self.config.to_dict()})
        return folder

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        context = self.text_encoder(input_ids, attention_mask)
        return self.denoiser(x, t, context, attention_mask)


@dataclass
class Text2ImagePipeline:
    autoencoder: AutoencoderKL
    model: Text2ImageModel
    tokenizer: CaptionTokenizer
    scheduler: Scheduler
    image_shape: tuple[int, int, int]
    meta: dict[str, Any] = field(default_factory=dict)


def save_weights(module: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save_text2image(pipe: Text2ImagePipeline, folder: str | os.PathLike) -> Path:
    """Write the folder of the module docstring (every file atomically)."""
    folder = Path(folder)
    save_autoencoder(pipe.autoencoder, folder / "autoencoder")
    for name, net in (("text_encoder", pipe.model.text_encoder), ("denoiser", pipe.model.denoiser)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / name / "config.json", vars(net.config))
        save_weights(net, folder / name / "model.safetensors")
    atomic_write_json(folder / "text_encoder" / "tokenizer.json", pipe.tokenizer.to_dict())
    pipe.scheduler.save_config(folder / "scheduler")
    atomic_write_json(folder / META_FILE, {"image_shape": list(pipe.image_shape), **pipe.meta})
    return folder


def is_text2image_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / META_FILE).is_file()


def load_text2image(folder: str | os.PathLike) -> Text2ImagePipeline:
    """The pipeline saved by `save_text2image` (networks in eval mode)."""
    folder = Path(folder)
    if not is_text2image_folder(folder):
        raise ConfigError(f"{folder}: not a text2image model folder (no {META_FILE})")
    meta = dict(read_json(folder / META_FILE))
    te = TextEncoder(TextEncoderConfig(**read_json(folder / "text_encoder" / "config.json")))
    te.load_state_dict(load_file(str(folder / "text_encoder" / "model.safetensors")))
    den = TextDiT(TextDiTConfig(**read_json(folder / "denoiser" / "config.json")))
    den.load_state_dict(load_file(str(folder / "denoiser" / "model.safetensors")))
    tokenizer = CaptionTokenizer.from_dict(read_json(folder / "text_encoder" / "tokenizer.json"))
    shape = tuple(meta.pop("image_shape"))
    return Text2ImagePipeline(
        load_autoencoder(folder / "autoencoder"),
        Text2ImageModel(te, den).eval(),
        tokenizer,
        load_scheduler(folder / "scheduler"),
        shape,  # type: ignore[arg-type]
        meta,
    )


@torch.no_grad()
def sample_latents(
    model: Text2ImageModel,
    scheduler: Scheduler,
    num_steps: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    latent_shape: tuple[int, int, int],
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Latents for the tokenized prompts, from pure noise through ``scheduler``'s steps; the
    unconditional branch is the empty caption (guidance_scale 1: no second branch)."""
    was_training = model.training
    model.eval()
    n = input_ids.shape[0]
    context = model.text_encoder(input_ids, attention_mask)
    guided = guidance_scale != 1.0
    if guided:
        null_ids = torch.zeros_like(input_ids)
        null_ids[:, -1] = 1
        null_mask = torch.zeros_like(attention_mask)
        null_mask[:, -1] = 1
        null_context = model.text_encoder(null_ids, null_mask)
        context = torch.cat([context, null_context])
        attention_mask = torch.cat([attention_mask, null_mask])
    scheduler.generator = generator
    scheduler.set_timesteps(num_steps)
    z = torch.randn((n, *latent_shape), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(z, t)
        tt = t.expand(inp.shape[0] * (2 if guided else 1))
        out = model.denoiser(torch.cat([inp, inp]) if guided else inp, tt, context, attention_mask)
        if guided:
            cond, uncond = out.chunk(2)
            out = cfg_combine(cond, uncond, guidance_scale)
        z = scheduler.step(out, t, z)
    model.train(was_training)
    return z


def sample_text2image(
    pipe: Text2ImagePipeline,
    prompts: list[str],
    sampler: str = "ddim",
    steps: int = 30,
    guidance_scale: float = 4.0,
    seed: int = 0,
    batch_size: int = 256,
    **scheduler_kwargs: Any,
) -> torch.Tensor:
    """Images [N, C, H, W] in [−1, 1] for ``prompts`` (decoded latents)."""
    unknown = sorted({w for p in prompts for w in pipe.tokenizer.unknown_words(p)})
    if unknown:
        raise ConfigError(
            f"prompt words not in the model's vocabulary: {', '.join(unknown)} "
            f"(known: {' '.join(pipe.tokenizer.vocab[3:])})"
        )
    sched = load_scheduler(sampler, base=pipe.scheduler, **scheduler_kwargs)
    g = torch.Generator().manual_seed(seed)
    latent_shape = pipe.autoencoder.latent_shape(pipe.image_shape)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = pipe.tokenizer.encode(prompts[i : i + batch_size])
        z = sample_latents(pipe.model, sched, steps, ids, mask, latent_shape, guidance_scale, g)
        out.append(pipe.autoencoder.images(z))
    return torch.cat(out)


@torch.no_grad()
def prompt_accuracy(
    classifier: ImageClassifier, images: torch.Tensor, asked: ImageDataset
) -> dict[str, float]:
    """Per-attribute accuracy of ``images`` against the attributes of the captions they were
    asked for (``asked``: the dataset rows whose captions were the prompts), and ``joint``:
    colour, shape and position all right."""
    pred = classifier.predict(images)
    truth = {"label": asked.labels, **asked.attributes}
    hits = {
        name: pred[head] == truth[head]
        for name, head in PROMPT_ATTRIBUTES.items()
        if head in pred and head in truth
    }
    out = {f"{k}_acc": float(v.float().mean()) for k, v in hits.items()}
    if all(k in hits for k in ("colour", "shape", "position")):
        joint = hits["colour"] & hits["shape"] & hits["position"]
        out["joint_acc"] = float(joint.float().mean())
    return out
