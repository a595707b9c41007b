"""Maximum-likelihood training of normalizing flows through the one Trainer.

The objective is the dequantised negative log-likelihood (Theis et al. 2016, §3.1;
Dinh et al. 2017, §4.1): x + u with u ~ U(0, w) per dimension (w = 2/255, the 8-bit grid of
[-1, 1]), loss = −log p(x + u) per image; bits/dim follow from `lmforge.vision.metrics`.

``train_flow`` is ``lmforge diffusion train`` with ``diffusion.method: nice | realnvp``:

    config = load_config("recipes/realnvp-digits.yaml", [], DiffusionConfig)
    summary = train_flow(config)   # summary["model_dir"]: a `flow_io` folder

The run folder is the Trainer's (``metrics.jsonl`` with ``val_loss`` and ``val_bits_per_dim``
on the held-out split, ``training.png``, atomic checkpoints, exact resume) plus a sample grid
``samples/step-XXXXXXXX.png`` at every evaluation and, when ``diffusion.classifier_steps`` >
0, a line in ``samples.jsonl`` with the classifier-feature Fréchet distance of
``diffusion.eval_samples`` samples to the held-out images; the summary adds the held-out
bits/dim of the whole test split (``test_bits_per_dim``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.training import (
    DiffusionConfig,
    check_section,
    evaluation_classifier,
    write_sample_metrics,
)
from lmforge.generative.flow_io import read_flow_config, save_flow
from lmforge.generative.nice import NICE, NICEConfig
from lmforge.generative.realnvp import RealNVP, RealNVPConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.objective import LossOutput
from lmforge.train.run import print_summary, training_run
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.loader import ImageLoader
from lmforge.vision.metrics import bits_per_dim, classifier_frechet_distance

BIN_WIDTH = 2 / 255

FLOW_KINDS = ("nice", "realnvp")

__all__ = [
    "BIN_WIDTH",
    "FLOW_KINDS",
    "FlowNLLObjective",
    "build_flow",
    "dequantize",
    "flow_bits_per_dim",
    "load_flow",
    "sample_flow",
    "train_flow",
]


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(0, w): a continuous density's likelihood lower-bounds the discrete one."""
    u = torch.rand(x.shape, generator=generator, device=x.device if generator is None else "cpu")
    return x + BIN_WIDTH * u.to(x.device)


class FlowNLLObjective:
    """``objective(model, {"images"}) -> LossOutput(Σ −log p(x + u), B)`` with metric
    ``bits_per_dim`` (per image, `lmforge.vision.metrics.bits_per_dim`); validation reports
    ``val_loss`` (nats per image) and ``val_bits_per_dim``, not a perplexity."""

    validation_metrics = True

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        x = dequantize(batch["images"])
        nll = -model.log_prob(x)
        dims = x[0].numel()
        bpd = (nll.detach().double() - dims * math.log(BIN_WIDTH)) / (dims * math.log(2))
        return LossOutput(nll.sum(), x.shape[0], {"bits_per_dim": bpd.sum()})


@torch.no_grad()
def flow_bits_per_dim(
    model: nn.Module, images: torch.Tensor, batch_size: int = 256, seed: int = 0
) -> float:
    """Test bits/dim of a flow on ``images`` (one dequantisation draw, seeded)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    nll = []
    for i in range(0, len(images), batch_size):
        x = dequantize(images[i : i + batch_size], g)
        nll.append(-model.log_prob(x))
    return bits_per_dim(torch.cat(nll), images[0].numel(), BIN_WIDTH)


def build_flow(kind: str, config: dict[str, Any]) -> nn.Module:
    """A fresh ``nice`` or ``realnvp`` from its config fields."""
    try:
        if kind == "nice":
            return NICE(NICEConfig(**config))
        if kind == "realnvp":
            return RealNVP(RealNVPConfig(**config))
    except TypeError as e:
        raise ConfigError(f"diffusion.{kind}: {e}") from None
    raise ConfigError(f"flow {kind!r}: expected one of {', '.join(FLOW_KINDS)}")


def load_flow(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(the flow in eval mode, its meta) from a `flow_io` folder (a saved model or a
    checkpoint)."""
    kind, config, meta = read_flow_config(folder)
    model = build_flow(kind, config)
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval(), meta


@torch.no_grad()
def sample_flow(model: nn.Module, num: int, seed: int = 0) -> torch.Tensor:
    """``num`` images x = f⁻¹(h), h from the prior (seeded), clamped to [-1, 1] (a NaN of an
    untrained flow shows as 0)."""
    was_training = model.training
    model.eval()
    images = model.sample(num, generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    return images.view(num, *model.config.shape).nan_to_num(0.0, 1.0, -1.0).clamp(-1, 1)


def train_flow(
    config: DiffusionConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train the normalizing flow ``config.diffusion.method`` (module docstring); returns the
    Trainer's summary with ``model_dir`` and ``test_bits_per_dim``."""
    d = config.diffusion
    check_section(d)
    if d.method not in FLOW_KINDS:
        raise ConfigError(f"diffusion.method={d.method!r}: train_flow trains nice or realnvp")
    with training_run(config, dist, console) as (dist, console):
        train_set = load_image_dataset(
            d.dataset, d.image_size, d.num_train, d.data_seed, "train", d.channels
        )
        eval_set = load_image_dataset(
            d.dataset, d.image_size, d.num_eval, d.data_seed, "test", d.channels
        )
        net_cfg = {**(d.nice if d.method == "nice" else d.realnvp), "shape": list(train_set.shape)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            model = build_flow(d.method, net_cfg)
        run_dir = Path(config.out_dir)
        grid_size = max(1, d.samples_per_class) * 4
        classifier = None
        if d.classifier_steps and dist.is_main:
            classifier = evaluation_classifier(train_set, d.classifier_steps, run_dir, console)

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            n = max(grid_size, d.eval_samples if classifier is not None else 0)
            start = time.perf_counter()
            images = sample_flow(model, n, seed=trainer.step)
            seconds = (time.perf_counter() - start) / n
            save_grid(images[:grid_size], run_dir / "samples" / f"step-{trainer.step:08d}.png")
            if classifier is not None:
                fd = classifier_frechet_distance(classifier, eval_set.images, images)
                write_sample_metrics(
                    run_dir,
                    {"step": trainer.step, "sampler": d.method, "steps": 1,
                     "seconds_per_image": seconds, "frechet_classifier": fd},
                )  # fmt: skip
                trainer.console.print(f"step {trainer.step}: samples frechet_classifier {fd:.4g}")

        trainer = Trainer(
            model,
            ImageLoader(train_set, config.train.batch_size, config.train.seed),
            config,
            val_data=ImageLoader(eval_set, config.train.batch_size, seed=12345),
            objective=FlowNLLObjective(),
            run_dir=run_dir,
            dist=dist,
            console=console,
            callbacks=[on_step],
        )
        c, h, w = train_set.shape
        console.print(
            f"[bold]{d.method}[/]: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{d.dataset} {c}×{h}×{w}, exact likelihood"
        )
        summary = trainer.fit()
        if dist.is_main:
            with torch.random.fork_rng(devices=[]):
                summary["test_bits_per_dim"] = flow_bits_per_dim(model, eval_set.images)
            console.print(
                f"held-out bits/dim {summary['test_bits_per_dim']:.4f} "
                f"({len(eval_set)} test images, one dequantisation draw)"
            )
            meta = {
                "dataset": d.dataset,
                "data_seed": d.data_seed,
                "class_names": train_set.class_names,
            }
            summary["model_dir"] = str(save_flow(model, run_dir / "model", meta))
        print_summary(summary, console)
    return summary
