"""Training the transformer prior over VQ codes through the one Trainer (``lmforge vqgan
prior``).

    config = load_config("recipes/vqgan-prior-digits.yaml", ["prior.vqgan=runs/vqgan-digits/model"],
                         PriorRunConfig)
    summary = train_code_prior(config)   # summary["model_dir"]: an HF folder + prior.json

The training images (the dataset the VQGAN was trained on, from its ``meta``) are encoded
once into raster code sequences; the prior is a fresh ``model.preset`` `CausalLM` sized to
the code vocabulary (`lmforge.generative.code_prior.PriorLayout`), trained with the
language-model loss. ``prior.condition`` is ``class`` (one class token) or ``caption`` (the
images' captions as a word-level prefix, `lmforge.diffusion.text_encoder.CaptionTokenizer`
built from the dataset's captions and saved in ``prior.json``). The run folder is the
Trainer's plus, at every evaluation, a sample grid ``samples/step-XXXXXXXX.png`` (one row per
class, or the first test captions; sampled with the engine) and a line in ``samples.jsonl``
with the evaluation classifier's accuracy on ``prior.eval_samples`` conditional samples (for
captions: the class of the image each test caption describes). ``model/`` is saved with
`lmforge.save_model` like any LM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.config import ConfigError
from lmforge.diffusion.text_encoder import CaptionTokenizer
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
    condition: str = "class"  # class | caption: the prefix tokens
    num_train: int = 4000  # images of the VQGAN's dataset encoded for training
    num_eval: int = 500
    p_uncond: float = 0.1  # prefix dropped to the null one (classifier-free guidance)
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
                f"{layout.vocab_size - layout.num_codes} prefix tokens"
            )
        return model
    overrides: dict[str, Any] = {
        "vocab_size": layout.vocab_size,
        "max_position_embeddings": layout.prefix_length + layout.length,
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
    captions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``num`` conditional samples decoded to images, their labels, and the classifier's
    accuracy on them (``cond_accuracy``) when a classifier is given. Class priors cycle the
    classes; caption priors take ``captions`` = (caption ids [M, P], the labels of the images
    they describe [M]), cycled."""
    if layout.captioned:
        if captions is None:
            raise ValueError("a caption prior's evaluation needs captions (ids, labels)")
        index = torch.arange(num) % len(captions[0])
        conditions, labels = captions[0][index], captions[1][index]
    else:
        labels = torch.arange(num) % layout.num_classes
        conditions = labels
    codes = sample_codes(
        model, layout, conditions, num, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
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
    if p.condition not in ("class", "caption"):
        raise ConfigError(f"prior.condition={p.condition!r}: expected class or caption")
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
        tokenizer = None
        train_cond, eval_cond = train_set.labels, eval_set.labels
        layout = PriorLayout(vqgan.config.num_codes, train_set.num_classes, vqgan.config.grid)
        if p.condition == "caption":
            tokenizer = CaptionTokenizer.from_captions(train_set.captions + eval_set.captions)
            train_cond = tokenizer.encode(train_set.captions)[0]
            eval_cond = tokenizer.encode(eval_set.captions)[0]
            layout = PriorLayout(
                vqgan.config.num_codes, train_set.num_classes, vqgan.config.grid,
                tokenizer.vocab_size, tokenizer.max_length,
            )  # fmt: skip
        eval_captions = (eval_cond, eval_set.labels) if tokenizer is not None else None
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
        loader = CodeSequenceLoader(train_codes, train_cond, layout, b, seed, p.p_uncond)
        val = CodeSequenceLoader(eval_codes, eval_cond, layout, b, seed=12345)
        last: dict = {}

        def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
            if not dist.is_main or not trainer.eval_due:
                return
            per = max(1, p.samples_per_class) * layout.num_classes
            num = max(per, p.eval_samples if classifier is not None else 0)
            with torch.random.fork_rng(devices=[]):
                images, labels, metrics = evaluate_prior(
                    model, vqgan, layout, p, classifier, num, seed=trainer.step,
                    captions=eval_captions,
                )  # fmt: skip
            order = torch.arange(per)  # caption priors: the first test captions in order
            if not layout.captioned:
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
        prefix = (
            f"{layout.caption_vocab} caption words" if layout.captioned
            else f"{layout.num_classes} classes + no-class"
        )  # fmt: skip
        console.print(
            f"[bold]code prior[/]: {model.num_parameters():,} parameters, "
            f"{layout.vocab_size} ids ({layout.num_codes} codes + {prefix}), sequences of "
            f"{layout.prefix_length} + {layout.length}, {len(train_codes)} training images"
        )
        summary = trainer.fit()
        summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
        if dist.is_main:
            write_prior_info(summary["model_dir"], layout, p.vqgan, train_set.class_names,
                             tokenizer.to_dict() if tokenizer is not None else None)  # fmt: skip
        summary.update(last)
        print_summary(summary, console)
    return summary
