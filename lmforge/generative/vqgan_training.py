"""Training a VQGAN through the one Trainer (``lmforge vqgan train``).

    config = load_config("recipes/vqgan-digits.yaml", [], VQGANRunConfig)
    summary = train_vqgan(config)   # summary["model_dir"]: a `lmforge.generative.vqgan` folder

The evaluation classifier (`lmforge.vision.classifier`, trained once on the run's real
training images and kept in ``<run>/classifier``) is the perceptual loss's network — no
downloaded VGG — and later scores the prior's samples. The run folder is the Trainer's
(``metrics.jsonl`` with both players' losses, λ, code perplexity and usage; ``training.png``;
atomic checkpoints holding both players and the EMA codebook; exact resume) plus, at every
evaluation, ``reconstructions/step-XXXXXXXX.png`` (top row: held-out images; bottom row: their
reconstructions) and, at the end, ``vqgan_curves.png`` (both players' losses, the
reconstruction terms, code perplexity and λ per step). The summary adds the held-out reconstruction PSNR and the codebook usage
and perplexity over the whole test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.config import ConfigError
from lmforge.diffusion.training import evaluation_classifier
from lmforge.generative.perceptual import PerceptualLoss
from lmforge.generative.vq import code_counts, codebook_perplexity, codebook_usage
from lmforge.generative.vqgan import VQGAN, VQGANConfig, VQGANObjective, psnr, save_vqgan
from lmforge.io import atomic_path
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.metrics import METRICS_FILE, read_metrics
from lmforge.train.run import print_summary, training_run
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader

__all__ = [
    "CURVES_FILE",
    "VQGANRunConfig",
    "VQGANSection",
    "plot_vqgan_curves",
    "reconstruction_metrics",
    "train_vqgan",
]


@dataclass
class VQGANSection:
    """Data, network (`VQGANConfig` fields), loss weights and evaluation."""

    dataset: str = "digits"  # lmforge.vision.datasets name
    image_size: int = 16
    channels: int = 1  # glyph datasets: 1 (grey) or 3 (colour)
    num_train: int = 4000
    num_eval: int = 500
    data_seed: int = 0
    network: dict[str, Any] = field(default_factory=dict)  # VQGANConfig fields
    perceptual_weight: float = 1.0  # w_p (needs classifier_steps > 0)
    disc_weight: float = 0.5  # w_d (0: a plain VQ-VAE objective)
    disc_start: int = 0  # optimizer steps before the adversarial terms switch on
    classifier_steps: int = 300  # the classifier of the perceptual loss and of evaluation
    grid_images: int = 8  # held-out images in each reconstruction grid


@dataclass
class VQGANRunConfig(RunConfig):
    vqgan: VQGANSection = field(default_factory=VQGANSection)


def check_section(v: VQGANSection) -> None:
    if v.perceptual_weight > 0 and v.classifier_steps <= 0:
        raise ConfigError(
            f"vqgan.perceptual_weight={v.perceptual_weight} needs vqgan.classifier_steps > 0 "
            "(the perceptual loss runs on the evaluation classifier's features)"
        )
    for name in ("perceptual_weight", "disc_weight"):
        if getattr(v, name) < 0:
            raise ConfigError(f"vqgan.{name}={getattr(v, name)}: must be ≥ 0")


def network_config(v: VQGANSection, shape: tuple[int, int, int]) -> VQGANConfig:
    try:
        return VQGANConfig(**{**v.network, "channels": shape[0], "image_size": shape[1]})
    except TypeError as e:
        raise ConfigError(f"vqgan.network: {e}") from None


@torch.no_grad()
def reconstruction_metrics(
    model: VQGAN, images: torch.Tensor, batch_size: int = 256
) -> dict[str, float]:
    """Held-out PSNR (dB, mean over images), L1, and the usage / perplexity of the codes the
    images use (the whole set's histogram)."""
    was_training = model.training
    model.eval()
    psnrs, l1s, counts = [], [], torch.zeros(model.config.num_codes)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        x_rec, q = model(x)
        psnrs.append(psnr(x, x_rec.clamp(-1, 1)))
        l1s.append((x - x_rec).abs().flatten(1).mean(1))
        counts += code_counts(q.indices, model.config.num_codes).cpu()
    model.train(was_training)
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "l1": float(torch.cat(l1s).mean()),
        "codebook_usage": codebook_usage(counts),
        "code_perplexity": codebook_perplexity(counts),
    }


CURVES_FILE = "vqgan_curves.png"
CURVE_PANELS = (
    ("players (hinge)", ("g_loss", "d_loss")),
    ("reconstruction", ("l1", "perceptual", "val_l1", "val_perceptual")),
    ("codebook", ("code_perplexity", "val_code_perplexity")),
    ("adaptive weight λ", ("adaptive_weight",)),
)


def plot_vqgan_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Both players' losses, the reconstruction terms, the code perplexity and λ per step
    (``metrics.jsonl`` records) as one PNG, beside the Trainer's ``training.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.5 * len(CURVE_PANELS), 3.6))
    for ax, (title, keys) in zip(axes, CURVE_PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                style = "o-" if key.startswith("val_") else "-"
                ax.plot(*zip(*points), style, label=key, linewidth=1)
        ax.set(xlabel="step", title=title)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


@torch.no_grad()
def save_reconstructions(model: VQGAN, images: torch.Tensor, path: Path) -> Path:
    was_training = model.training
    model.eval()
    x_rec = model(images)[0].clamp(-1, 1)
    model.train(was_training)
    return save_grid(torch.cat([images, x_rec]), path, nrow=len(images))


def train_vqgan(
    config: VQGANRunConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train the VQGAN of ``config.vqgan`` (module docstring); returns the Trainer's summary
    with ``model_dir`` and the held-out ``psnr``, ``codebook_usage``, ``code_perplexity``."""
    v = config.vqgan
    check_section(v)
    with training_run(config, dist, console) as (dist, console):
        train_set = load_image_dataset(
            v.dataset, v.image_size, v.num_train, v.data_seed, "train", v.channels
        )
        eval_set = load_image_dataset(
            v.dataset, v.image_size, v.num_eval, v.data_seed, "test", v.channels
        )
        net = network_config(v, train_set.shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            model = VQGAN(net)
        run_dir = Path(config.out_dir)
        perceptual = None
        if v.classifier_steps > 0:
            classifier = evaluation_classifier(train_set, v.classifier_steps, run_dir, console)
            if v.perceptual_weight > 0:
                perceptual = PerceptualLoss(classifier).to(dist.device)
        objective = VQGANObjective(perceptual, v.perceptual_weight, v.disc_weight, v.disc_start)
        grid_images = eval_set.images[: v.grid_images]

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if dist.is_main and trainer.eval_due:
                path = run_dir / "reconstructions" / f"step-{trainer.step:08d}.png"
                save_reconstructions(model, grid_images.to(trainer.device), path)

        trainer = Trainer(
            model,
            ImageLoader(train_set, config.train.batch_size, config.train.seed),
            config,
            val_data=ImageLoader(eval_set, config.train.batch_size, seed=12345),
            objective=objective,
            run_dir=run_dir,
            dist=dist,
            console=console,
            callbacks=[on_step],
        )
        objective.step_fn = lambda: trainer.step
        c, h, w = train_set.shape
        gh, gw = net.grid
        console.print(
            f"[bold]vqgan[/]: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{v.dataset} {c}×{h}×{w} → {gh}×{gw} codes of {net.num_codes}, "
            f"perceptual {'on classifier features' if perceptual else 'off'}, "
            f"discriminator {'from step ' + str(v.disc_start) if model.discriminator else 'off'}"
        )
        summary = trainer.fit()
        if dist.is_main:
            model.cpu()
            with torch.random.fork_rng(devices=[]):
                summary.update(reconstruction_metrics(model, eval_set.images))
            console.print(
                f"held-out reconstruction PSNR {summary['psnr']:.2f} dB, codebook usage "
                f"{summary['codebook_usage']:.2f}, code perplexity "
                f"{summary['code_perplexity']:.1f} of {net.num_codes}"
            )
            meta = {
                "dataset": v.dataset,
                "data_seed": v.data_seed,
                "channels": c,
                "image_size": h,
                "class_names": train_set.class_names,
            }
            summary["model_dir"] = str(save_vqgan(model, run_dir / "model", meta))
            records = read_metrics(run_dir / METRICS_FILE)
            if records and config.log.plot:
                summary["curves"] = str(plot_vqgan_curves(records, run_dir / CURVES_FILE))
        print_summary(summary, console)
    return summary
