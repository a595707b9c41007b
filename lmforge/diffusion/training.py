"""Training a denoiser through the one Trainer (``lmforge diffusion train``).

    config = load_config("recipes/diffusion-digits.yaml", ["train.max_steps=200"], DiffusionConfig)
    summary = train_diffusion(config)   # summary["model_dir"]: a `denoiser_io` folder

The run folder is the Trainer's (``metrics.jsonl``, ``training.png``, atomic checkpoints,
exact resume) plus, at every evaluation, ``samples/step-XXXXXXXX.png`` (a grid, one row per
class for a conditional model) and, when ``diffusion.classifier_steps`` > 0, a line in
``samples.jsonl`` with the conditional accuracy and the classifier-feature Fréchet distance
of those samples (the evaluation classifier is trained once on the real training images and
kept in ``<run>/classifier``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from lmforge.config import ConfigError
from lmforge.diffusion.denoiser_io import Denoiser, build_denoiser, load_denoiser, save_denoiser
from lmforge.diffusion.rectified_flow import reflow_loader, reflow_pairs
from lmforge.diffusion.sampling import sample_images
from lmforge.diffusion.scheduler_base import Scheduler
from lmforge.diffusion.schedulers import load_scheduler
from lmforge.diffusion.targets import TARGETS, DenoisingObjective
from lmforge.io import atomic_path, atomic_write_text
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.run import print_summary, training_run
from lmforge.vision.classifier import ImageClassifier, load_classifier, train_classifier
from lmforge.vision.datasets import ImageDataset, load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader
from lmforge.vision.metrics import classifier_frechet_distance, conditional_accuracy

__all__ = [
    "DiffusionConfig",
    "DiffusionSection",
    "METHODS",
    "check_section",
    "evaluate_samples",
    "evaluation_classifier",
    "write_sample_metrics",
    "load_reflow_teacher",
    "reflow_couplings",
    "train_diffusion",
    "training_scheduler",
]


@dataclass
class DiffusionSection:
    """Data, network, target, noise schedule and evaluation sampling."""

    dataset: str = "digits"  # lmforge.vision.datasets name
    image_size: int = 16
    channels: int = 1  # glyph datasets: 1 (grey) or 3 (colour)
    num_train: int = 4000
    num_eval: int = 500
    data_seed: int = 0
    denoiser: str = "unet"  # unet | dit
    unet: dict[str, Any] = field(default_factory=dict)  # UNetConfig fields
    dit: dict[str, Any] = field(default_factory=dict)  # DiTConfig fields
    target: str = "epsilon"  # epsilon | v_prediction | sample | flow
    conditional: bool = True
    p_uncond: float = 0.1  # classifier-free guidance: label dropout
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    flow_shift: float = 1.0
    sampler: str = "ddim"  # for evaluation grids: ddpm | ddim | euler | dpm++ | flow
    sample_steps: int = 20
    guidance_scale: float = 1.0
    samples_per_class: int = 4
    classifier_steps: int = 0  # > 0: train the evaluation classifier; metrics per eval
    eval_samples: int = 200  # samples scored per evaluation
    method: str = "denoiser"  # denoiser | nice | realnvp (normalizing flows: exact likelihood)
    nice: dict[str, Any] = field(default_factory=dict)  # NICEConfig fields (method=nice)
    realnvp: dict[str, Any] = field(default_factory=dict)  # RealNVPConfig fields
    reflow_from: str = ""  # a trained flow-target model folder: reflow it (Liu et al. 2023)
    reflow_pairs: int = 1000  # noise → sample couplings drawn from that model
    reflow_steps: int = 50  # Euler steps of the ODE that draws them
    reflow_guidance: float = 1.0  # guidance scale of the couplings (conditional models)


@dataclass
class DiffusionConfig(RunConfig):
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)


def training_scheduler(d: DiffusionSection) -> Scheduler:
    """The noise schedule the model trains under (saved with it): DDPM's table for the
    diffusion targets, flow-matching Euler for ``flow``."""
    if d.target == "flow":
        return load_scheduler(
            {
                "_class_name": "FlowMatchEulerDiscreteScheduler",
                "shift": d.flow_shift,
                "num_train_timesteps": d.num_train_timesteps,
            }
        )
    return load_scheduler(
        {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": d.num_train_timesteps,
            "beta_schedule": d.beta_schedule,
            "beta_start": d.beta_start,
            "beta_end": d.beta_end,
            "prediction_type": d.target,
            "clip_sample": True,
        }
    )


METHODS = ("denoiser", "nice", "realnvp")


def check_section(d: DiffusionSection) -> None:
    if d.method not in METHODS:
        raise ConfigError(f"diffusion.method={d.method!r}: expected one of {', '.join(METHODS)}")
    if d.target not in TARGETS:
        raise ConfigError(f"diffusion.target={d.target!r}: expected one of {', '.join(TARGETS)}")
    if d.target == "flow" and d.sampler not in ("flow", "flow-euler"):
        raise ConfigError("diffusion.target=flow samples with diffusion.sampler=flow")
    if not 0 <= d.p_uncond < 1:
        raise ConfigError(f"diffusion.p_uncond={d.p_uncond}: must be in [0, 1)")


def evaluate_samples(
    denoiser: Denoiser,
    sampler: str,
    steps: int,
    classifier: ImageClassifier | None,
    real: ImageDataset | None,
    num: int,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """``num`` samples (classes cycled for a conditional model) with ``sampler``; with a
    classifier: conditional accuracy, Fréchet distance to ``real``, seconds per image."""
    sched = load_scheduler(sampler, base=denoiser.scheduler)
    labels = None
    if denoiser.conditional:
        labels = torch.arange(num) % len(denoiser.class_names)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = sample_images(
        denoiser.model,
        sched,
        steps,
        labels=labels,
        num=num,
        shape=denoiser.image_shape,
        guidance_scale=guidance_scale,
        generator=g,
    )
    metrics = {"seconds_per_image": (time.perf_counter() - start) / num}
    if classifier is not None and real is not None:
        if labels is not None:
            metrics["cond_accuracy"] = conditional_accuracy(classifier, images, labels)
        metrics["frechet_classifier"] = classifier_frechet_distance(classifier, real.images, images)
    return images, labels, metrics


def grid_rows(images: torch.Tensor, labels: torch.Tensor | None, per_class: int) -> torch.Tensor:
    """Reorder so each grid row is one class (columns: samples of it)."""
    if labels is None:
        return images
    order = torch.argsort(labels * 10_000 + torch.arange(len(labels)), stable=True)
    return images[order]


def evaluation_classifier(
    train_set: ImageDataset, steps: int, run_dir: Path, console: Console
) -> ImageClassifier:
    """The run's evaluation classifier: ``<run>/classifier`` when a resumed run has it, else
    trained on the real training images for ``steps`` steps (outside the global RNG stream,
    so resuming draws the same) and saved there."""
    clf_dir = run_dir / "classifier"
    if (clf_dir / "classifier.json").is_file():
        return load_classifier(clf_dir)
    console.print(f"training the evaluation classifier ({steps} steps)")
    with torch.random.fork_rng(devices=[]):
        classifier = train_classifier(train_set, steps=steps)
    classifier.save(clf_dir)
    return classifier


def write_sample_metrics(run_dir: Path, line: dict[str, Any]) -> None:
    """Append ``line`` to ``<run>/samples.jsonl`` atomically, dropping lines of its step or
    later (a resumed run rewrites what it evaluates again)."""
    path = run_dir / "samples.jsonl"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    kept = [ln for ln in old.splitlines() if ln and json.loads(ln)["step"] < line["step"]]
    atomic_write_text(path, "".join(x + "\n" for x in [*kept, json.dumps(line)]))


def load_reflow_teacher(d: DiffusionSection) -> Denoiser:
    """The flow model ``d.reflow_from``; ``d``'s data and network fields are set from it, so
    the reflowed model is the same network on the same data."""
    teacher = load_denoiser(d.reflow_from)
    if teacher.target != "flow":
        raise ConfigError(
            f"diffusion.reflow_from={d.reflow_from!r}: a {teacher.target!r} model; "
            "reflow needs a flow-target (rectified-flow) model"
        )
    c, h, _ = teacher.image_shape
    d.dataset = teacher.meta.get("dataset", d.dataset)
    d.data_seed = int(teacher.meta.get("data_seed", d.data_seed))
    d.image_size, d.channels, d.target = h, c, "flow"
    d.denoiser = teacher.meta.get("kind", d.denoiser)
    d.conditional = teacher.conditional
    if d.sampler not in ("flow", "flow-euler"):
        d.sampler = "flow"
    d.flow_shift = float(getattr(teacher.scheduler.config, "shift", d.flow_shift))
    return teacher


def reflow_couplings(
    teacher: Denoiser, d: DiffusionSection, run_dir: Path, is_main: bool, console: Console
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(z, x̂ = ODE_teacher(z), labels): ``d.reflow_pairs`` couplings drawn once with a
    generator seeded by ``d.data_seed`` and kept in ``<run>/reflow_pairs.safetensors``, so a
    resumed run trains on exactly the same pairs."""
    path = run_dir / "reflow_pairs.safetensors"
    if path.is_file():
        saved = load_file(str(path))
        return saved["noise"], saved["samples"], saved.get("labels")
    labels = None
    if teacher.conditional:
        labels = torch.arange(d.reflow_pairs) % len(teacher.class_names)
    console.print(f"drawing {d.reflow_pairs} reflow couplings ({d.reflow_steps} Euler steps)")
    noise, samples = reflow_pairs(
        teacher.model,
        d.reflow_pairs,
        teacher.image_shape,
        d.reflow_steps,
        labels,
        d.reflow_guidance,
        torch.Generator().manual_seed(d.data_seed),
    )
    teacher.model.train()
    if is_main:
        tensors = {"noise": noise.contiguous(), "samples": samples.contiguous()}
        if labels is not None:
            tensors["labels"] = labels
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
    return noise, samples, labels


def train_diffusion(
    config: DiffusionConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train the denoiser described by ``config``; returns the Trainer's summary with
    ``model_dir`` (a `denoiser_io` folder) and the last sample metrics."""
    d = config.diffusion
    check_section(d)
    if d.method != "denoiser":
        raise ConfigError(
            f"diffusion.method={d.method!r}: a normalizing flow trains with "
            "lmforge.generative.flow_training.train_flow (lmforge diffusion train dispatches)"
        )
    teacher = load_reflow_teacher(d) if d.reflow_from else None
    with training_run(config, dist, console) as (dist, console):
        train_set = load_image_dataset(
            d.dataset, d.image_size, d.num_train, d.data_seed, "train", d.channels
        )
        eval_set = load_image_dataset(
            d.dataset, d.image_size, d.num_eval, d.data_seed, "test", d.channels
        )
        c, h, w = train_set.shape
        net_cfg = dict(d.unet if d.denoiser == "unet" else d.dit)
        net_cfg.update(sample_size=h, in_channels=c, out_channels=c)
        net_cfg["num_classes"] = train_set.num_classes if d.conditional else None
        if teacher is not None:  # reflow starts from the model it straightens (Algorithm 1)
            model = teacher.model.train()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.train.seed)
                model = build_denoiser(d.denoiser, net_cfg)
        sched = training_scheduler(d)
        objective = DenoisingObjective(
            d.target,
            getattr(sched, "alphas_cumprod", None),
            d.num_train_timesteps,
            d.p_uncond if d.conditional else 0.0,
            d.conditional,
            d.flow_shift,
        )
        loader = ImageLoader(train_set, config.train.batch_size, config.train.seed)
        run_dir = Path(config.out_dir)
        if teacher is not None:
            noise, pairs, labels = reflow_couplings(teacher, d, run_dir, dist.is_main, console)
            loader = reflow_loader(noise, pairs, labels, config.train.batch_size, config.train.seed)
        val = ImageLoader(eval_set, config.train.batch_size, seed=12345)
        denoiser = Denoiser(
            model,
            sched,
            d.target,
            (c, h, w),
            train_set.class_names,
            {"dataset": d.dataset, "data_seed": d.data_seed},
        )
        classifier = None
        if d.classifier_steps and dist.is_main:
            classifier = evaluation_classifier(train_set, d.classifier_steps, run_dir, console)

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            with torch.random.fork_rng(devices=[]):
                n = d.eval_samples if classifier is not None else 0
                per = d.samples_per_class * (train_set.num_classes if d.conditional else 4)
                images, labels, metrics = evaluate_samples(
                    denoiser,
                    d.sampler,
                    d.sample_steps,
                    classifier,
                    eval_set,
                    max(n, per),
                    d.guidance_scale,
                    seed=trainer.step,
                )
            keep = torch.arange(min(per, len(images)))
            save_grid(
                grid_rows(
                    images[keep], None if labels is None else labels[keep], d.samples_per_class
                ),
                run_dir / "samples" / f"step-{trainer.step:08d}.png",
                nrow=d.samples_per_class if d.conditional else None,
            )
            line = {"step": trainer.step, "sampler": d.sampler, "steps": d.sample_steps, **metrics}
            write_sample_metrics(run_dir, line)
            if "cond_accuracy" in metrics or "frechet_classifier" in metrics:
                trainer.console.print(
                    f"step {trainer.step}: samples "
                    + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                )

        trainer = Trainer(
            model,
            loader,
            config,
            val_data=val,
            objective=objective,
            run_dir=run_dir,
            dist=dist,
            console=console,
            callbacks=[on_step],
        )
        if teacher is not None:
            console.print(f"[bold]reflow[/] of {d.reflow_from}: {d.reflow_pairs} couplings")
        console.print(
            f"[bold]diffusion[/]: {d.denoiser} ({sum(p.numel() for p in model.parameters()):,} "
            f"parameters), target {d.target}, {d.dataset} {c}×{h}×{w}"
        )
        summary = trainer.fit()
        if dist.is_main:
            summary["model_dir"] = str(save_denoiser(denoiser, run_dir / "model"))
            samples = run_dir / "samples.jsonl"
            if samples.is_file():
                lines = samples.read_text(encoding="utf-8").splitlines()
                summary.update(
                    {
                        f"samples_{k}": v
                        for k, v in json.loads(lines[-1]).items()
                        if isinstance(v, float)
                    }
                )
        print_summary(summary, console)
    return summary
