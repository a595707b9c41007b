"""Training the transformer prior over VQ codes through the one Trainer (``lmforge vqgan
prior``).

    config = load_config("recipes/vqgan-prior-digits.yaml", ["prior.vqgan=runs/vqgan-digits/model"],
                         PriorRunConfig)
    summary = train_code_prior(config)   # summary["model_dir"]: an HF folder + prior.json

The training images (the dataset the VQGAN was trained on, from its ``meta``) are encoded
once into raster code sequences; the prior is a fresh ``model.preset`` `CausalLM` sized to
the code vocabulary (`lmforge.generative.code_prior.PriorLayout`), trained with the
language-model loss. The run folder is the Trainer's plus, at every evaluation, a sample grid
``samples/step-XXXXXXXX.png`` (one row per class, sampled with the engine) and a line in
``samples.jsonl`` with the evaluation classifier's accuracy on ``prior.eval_samples``
class-conditional samples. ``model/`` is saved with `lmforge.save_model` like any LM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.config import ConfigError
from lmforge.diffusion.training import evaluation_classifier, write_sample_metrics
from lmforge.generative.code_prior import (
    CodeSequenceLoader,
    PriorLayout,
    decode_prior_samples,
    encode_codes,
    sample_codes,
    write_prior_info,
)
from lmforge.generative.vqgan import VQGAN, load_vqgan
from lmforge.models.hf import load_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.run import print_summary, training_run
from lmforge.vision.classifier import ImageClassifier
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.metrics import conditional_accuracy

__all__ = ["PriorRunConfig", "PriorSection", "evaluate_prior", "prior_model", "train_code_prior"]


@dataclass
class PriorSection:
    """The VQGAN whose codes are modelled, data sizes, label dropout, evaluation sampling."""

    vqgan: str = ""  # a saved VQGAN folder (lmforge vqgan train's <run>/model)
    num_train: int = 4000  # images of the VQGAN's dataset encoded for training
    num_eval: int = 500
    p_uncond: float = 0.1  # class dropped to "no class" (classifier-free guidance)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0  # guidance scale of the evaluation samples (1: none, the engine)
    samples_per_class: int = 4  # per class in each sample grid
    classifier_steps: int = 300  # > 0: the evaluation classifier; accuracy per evaluation
    eval_samples: int = 100  # class-conditional samples scored per evaluation


@dataclass
class PriorRunConfig(RunConfig):
    prior: PriorSection = field(default_factory=PriorSection)


def prior_model(config: PriorRunConfig, layout: PriorLayout) -> CausalLM:
    """``model.init_from`` (its vocabulary must fit the layout), else a fresh ``model.preset``
    with the code vocabulary and room for the prefix + codes (seeded by ``train.seed``)."""
    if config.model.init_from:
        model = load_model(config.model.init_from, dtype=torch.float32)
        if model.config.vocab_size < layout.vocab_size:
            raise ConfigError(
                f"model.init_from={config.model.init_from}: vocab {model.config.vocab_size} < "
                f"the {layout.vocab_size} ids of {layout.num_codes} codes + "
                f"{layout.num_classes + 1} class tokens"
            )
        return model
    overrides: dict[str, Any] = {
        "vocab_size": layout.vocab_size,
        "max_position_embeddings": layout.length + 1,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        **config.model.overrides,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return CausalLM(preset_config(config.model.preset, **overrides))


def evaluate_prior(
    model: CausalLM,
    vqgan: VQGAN,
    layout: PriorLayout,
    p: PriorSection,
    classifier: ImageClassifier | None,
    num: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``num`` class-conditional samples (classes cycled) decoded to images, their labels,
    and the classifier's accuracy on them (``cond_accuracy``) when a classifier is given."""
    labels = torch.arange(num) % layout.num_classes
    codes = sample_codes(
        model, layout, labels, num, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
        cfg_scale=p.cfg_scale, seed=seed,
    )  # fmt: skip
    images = decode_prior_samples(vqgan, codes)
    metrics = {}
    if classifier is not None:
        metrics["cond_accuracy"] = conditional_accuracy(classifier, images, labels)
    return images, labels, metrics


def train_code_prior(
    config: PriorRunConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train the prior of the module docstring; returns the Trainer's summary with
    ``model_dir`` and the last ``cond_accuracy``."""
    p = config.prior
    if not p.vqgan:
        raise ConfigError(
            "prior.vqgan is empty: name a VQGAN folder (lmforge vqgan train's model/)"
        )
    if not 0 <= p.p_uncond < 1:
        raise ConfigError(f"prior.p_uncond={p.p_uncond}: must be in [0, 1)")
    vqgan = load_vqgan(p.vqgan)
    meta = vqgan.meta
    with training_run(config, dist, console) as (dist, console):
        data = (meta["dataset"], meta["image_size"])
        train_set = load_image_dataset(
            *data, p.num_train, meta["data_seed"], "train", meta["channels"]
        )
        eval_set = load_image_dataset(
            *data, p.num_eval, meta["data_seed"], "test", meta["channels"]
        )
        layout = PriorLayout(vqgan.config.num_codes, train_set.num_classes, vqgan.config.grid)
        train_codes, eval_codes = (
            encode_codes(vqgan, train_set.images),
            encode_codes(vqgan, eval_set.images),
        )
        model = prior_model(config, layout)
        run_dir = Path(config.out_dir)
        classifier = None
        if p.classifier_steps > 0 and dist.is_main:
            classifier = evaluation_classifier(train_set, p.classifier_steps, run_dir, console)
        b, seed = config.train.batch_size, config.train.seed
        loader = CodeSequenceLoader(train_codes, train_set.labels, layout, b, seed, p.p_uncond)
        val = CodeSequenceLoader(eval_codes, eval_set.labels, layout, b, seed=12345)
        last: dict = {}

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            per = max(1, p.samples_per_class) * layout.num_classes
            num = max(per, p.eval_samples if classifier is not None else 0)
            with torch.random.fork_rng(devices=[]):
                images, labels, metrics = evaluate_prior(
                    model, vqgan, layout, p, classifier, num, seed=trainer.step
                )
            order = torch.argsort(labels[:per] * 10_000 + torch.arange(per), stable=True)
            path = run_dir / "samples" / f"step-{trainer.step:08d}.png"
            save_grid(images[:per][order], path, nrow=max(1, p.samples_per_class))
            if metrics:
                write_sample_metrics(run_dir, {"step": trainer.step, **metrics})
                last.update(metrics)
                trainer.console.print(
                    f"step {trainer.step}: samples cond_accuracy {metrics['cond_accuracy']:.3f}"
                )
            model.train()

        trainer = Trainer(model, loader, config, val_data=val, run_dir=run_dir, dist=dist,
                          console=console, callbacks=[on_step])  # fmt: skip
        console.print(
            f"[bold]code prior[/]: {model.num_parameters():,} parameters, "
            f"{layout.vocab_size} ids ({layout.num_codes} codes + {layout.num_classes} classes "
            f"+ no-class), sequences of 1 + {layout.length}, {len(train_codes)} training images"
        )
        summary = trainer.fit()
        summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
        if dist.is_main:
            write_prior_info(summary["model_dir"], layout, p.vqgan, train_set.class_names)
        summary.update(last)
        print_summary(summary, console)
    return summary
