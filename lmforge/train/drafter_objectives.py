"""Training self-speculative drafters with the one `Trainer`: Medusa heads (Medusa-1 with a
frozen backbone, Medusa-2 jointly with the LM loss, optional self-distillation) and the
EAGLE layer (feature regression + cross-entropy on the target's own hidden states).

    config = load_config(None, ["model.init_from=runs/p/model", "data.paths=[text.jsonl]"],
                         DrafterConfig)
    summary = train_medusa(config)    # run folder: metrics.jsonl, training.png, medusa/
    summary = train_eagle(config)     # …, eagle/

The model the Trainer optimises is a wrapper (`MedusaModel` / `EagleModel`) holding the
target and the drafter, so checkpoints and exact resume work as for any run; only
parameters with ``requires_grad`` are optimised (the frozen backbone's are not). The
drafter is written to ``<out_dir>/medusa`` (`lmforge.models.medusa.save_medusa_heads`) or
``<out_dir>/eagle``; Medusa-2 also exports the fine-tuned backbone to ``<out_dir>/model``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.data.loader import PretrainLoader
from lmforge.io import atomic_path, atomic_write_json
from lmforge.models.eagle import EagleLayer, eagle_loss, save_eagle_layer
from lmforge.models.hf import load_model
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.medusa import (
    MedusaHeads,
    medusa_head_losses,
    medusa_loss_weights,
    save_medusa_heads,
)
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.loop import Trainer
from lmforge.train.objective import Batch, LossOutput, model_inputs
from lmforge.train.pretrain import token_file
from lmforge.train.run import init_model_dir, print_summary, training_run

__all__ = [
    "DrafterConfig",
    "DrafterTrainingModel",
    "EagleModel",
    "EagleObjective",
    "EagleSection",
    "MedusaModel",
    "MedusaObjective",
    "MedusaSection",
    "train_eagle",
    "train_medusa",
]


@dataclass
class MedusaSection:
    """Medusa heads and their loss (Cai et al. 2024, §2.2)."""

    num_heads: int = 3
    num_layers: int = 1  # residual blocks per head
    mode: Literal["medusa1", "medusa2"] = "medusa1"  # frozen backbone / joint training
    decay: float = 0.8  # λ_k = decay^k
    lambda0: float = 0.2  # medusa2: the heads' loss scale beside the LM loss
    self_distill: bool = False  # KL to the frozen base model's distribution, not labels


@dataclass
class EagleSection:
    """EAGLE's loss weight (Li et al. 2024, §4.2)."""

    cls_weight: float = 0.1


@dataclass
class DrafterConfig(RunConfig):
    medusa: MedusaSection = field(default_factory=MedusaSection)
    eagle: EagleSection = field(default_factory=EagleSection)


class DrafterTrainingModel(nn.Module):
    """The target and a drafter, with the Trainer's checkpoint hooks: ``config`` and
    ``save_weights_folder`` (``config.json`` and ``model.safetensors`` holding the trainable
    parameters only — the frozen target is reloaded from ``model.init_from`` on resume)."""

    def __init__(self, base: nn.Module, description: dict[str, Any]) -> None:
        super().__init__()
        self.base = base
        self.config = dict(description)

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", self.config)
        state = {k: p.detach().clone().contiguous().cpu()  # clones: tied weights stay savable
                 for k, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}  # fmt: skip
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        return folder


class MedusaModel(DrafterTrainingModel):
    """The target and its heads (what the Trainer optimises and checkpoints)."""

    def __init__(self, base: nn.Module, heads: MedusaHeads) -> None:
        super().__init__(base, {"drafter": "medusa", **heads.config_dict()})
        self.heads = heads


class EagleModel(DrafterTrainingModel):
    """The (frozen) target and the EAGLE layer."""

    def __init__(self, base: nn.Module, layer: EagleLayer) -> None:
        super().__init__(base, {"drafter": "eagle", **layer.config_dict()})
        self.layer = layer


class MedusaObjective:
    """Medusa-1: Σ_k λ_k L_k with a frozen backbone; Medusa-2: L_LM + λ_0 Σ_k λ_k L_k.
    Each L_k is head k's mean loss (token-weighted through the count of head 1's targets).
    ``teacher``: the frozen base model for self-distillation (None: labels)."""

    def __init__(self, section: MedusaSection, teacher: nn.Module | None = None) -> None:
        self.section, self.teacher = section, teacher

    def __call__(self, model: MedusaModel, batch: Batch) -> LossOutput:
        s, labels = self.section, batch["labels"]
        joint = s.mode == "medusa2"
        with torch.set_grad_enabled(joint and torch.is_grad_enabled()):
            hidden = model.base.model(**model_inputs(batch))
        head_logits = model.heads(hidden)
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(**model_inputs(batch)).logits
        losses, count = medusa_head_losses(head_logits, labels, teacher, batch.get("document_ids"))
        weights = medusa_loss_weights(len(losses), s.decay, s.lambda0 if joint else 1.0)
        heads_loss = sum(w * loss for w, loss in zip(weights, losses))
        lm_count = (labels[:, 1:] != IGNORE_INDEX).sum()
        metrics = {f"head{k}_loss": loss.detach() * count for k, loss in enumerate(losses, 1)}
        if joint:
            lm = model.base.lm_head(hidden)[:, :-1].flatten(0, 1).float()
            lm_loss = nn.functional.cross_entropy(
                lm, labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ) / lm_count.clamp_min(1)
            metrics["lm_loss"] = lm_loss.detach() * count
            heads_loss = heads_loss + lm_loss
        return LossOutput(heads_loss * count, count, metrics)


class EagleObjective:
    """EAGLE §4.2 on the frozen target's features: f̂_{i+1} = layer(e_{i+1}, f_i) against
    f_{i+1} (SmoothL1) and p_{i+2} (cross-entropy), over positions whose i+1 is a real
    token of the same row."""

    def __init__(self, section: EagleSection) -> None:
        self.section = section

    def __call__(self, model: EagleModel, batch: Batch) -> LossOutput:
        ids, labels = batch["input_ids"], batch["labels"]
        with torch.no_grad():
            feats = model.base.model(**model_inputs(batch))
        t = ids.shape[1]
        embeds = model.base.model.embed_tokens(ids[:, 1:]).detach()
        predicted, _ = model.layer(embeds, feats[:, :-1], torch.arange(t - 1, device=ids.device))
        valid = labels[:, 1:] != IGNORE_INDEX
        if "document_ids" in batch:  # f_i and token i+1 in the same packed document
            doc = batch["document_ids"]
            valid &= doc[:, 1:] == doc[:, :-1]
        loss, reg, cls = eagle_loss(predicted, feats[:, 1:], model.base.lm_head, valid,
                                    self.section.cls_weight)  # fmt: skip
        n = valid.sum()
        return LossOutput(loss * n, n, {"reg_loss": reg.detach() * n, "cls_loss": cls.detach() * n})


def _setup(config: DrafterConfig, what: str, dist, console):
    folder = init_model_dir(config, what)
    if not config.data.paths:
        raise ConfigError(f"{what} needs training text: data.paths (--data) is empty")
    tokenizer = load_tokenizer(folder)
    base = load_model(folder, dtype=torch.float32)
    run_dir = Path(config.out_dir)
    tokens = token_file(
        config, tokenizer, list(config.data.paths), run_dir / "data" / "train", dist
    )
    t = config.train
    loader = PretrainLoader(tokens.path, config.data.seq_len, t.batch_size, seed=t.seed,
                            rank=dist.rank, world_size=dist.world_size,
                            pad_id=tokenizer.pad_token_id or 0)  # fmt: skip
    console.print(f"[bold]{what}[/]: target {folder}, {tokens.num_tokens:,} training tokens")
    return folder, tokenizer, base, loader


def train_medusa(config: DrafterConfig, *, dist=None, console=None) -> dict[str, Any]:
    """Train Medusa heads on ``model.init_from`` (see the module docstring)."""
    s = config.medusa
    if s.num_heads < 1:
        raise ConfigError(f"medusa.num_heads={s.num_heads} must be ≥ 1")
    with training_run(config, dist, console) as (dist, console):
        folder, tokenizer, base, loader = _setup(config, "medusa train", dist, console)
        torch.manual_seed(config.train.seed)
        c = base.config
        heads = MedusaHeads(c.hidden_size, c.vocab_size, s.num_heads, s.num_layers, base.lm_head)
        teacher = copy.deepcopy(base).eval().requires_grad_(False) if s.self_distill else None
        base.requires_grad_(s.mode == "medusa2")
        model = MedusaModel(base, heads)
        trainer = Trainer(model, loader, config, objective=MedusaObjective(s, teacher),
                          tokenizer=tokenizer, run_dir=config.out_dir, dist=dist,
                          console=console)  # fmt: skip
        summary = trainer.fit()
        summary["medusa_dir"] = str(save_medusa_heads(heads, Path(config.out_dir) / "medusa"))
        if s.mode == "medusa2" and dist.is_main:
            from lmforge.models.hf import save_model

            summary["model_dir"] = str(save_model(base, Path(config.out_dir) / "model", tokenizer))
        print_summary(summary, console)
    return summary


def train_eagle(config: DrafterConfig, *, dist=None, console=None) -> dict[str, Any]:
    """Train an EAGLE layer on ``model.init_from``'s own features (frozen target)."""
    with training_run(config, dist, console) as (dist, console):
        folder, tokenizer, base, loader = _setup(config, "eagle train", dist, console)
        torch.manual_seed(config.train.seed)
        base.requires_grad_(False)
        layer = EagleLayer.for_model(base.config)
        model = EagleModel(base, layer)
        trainer = Trainer(model, loader, config, objective=EagleObjective(config.eagle),
                          tokenizer=tokenizer, run_dir=config.out_dir, dist=dist,
                          console=console)  # fmt: skip
        summary = trainer.fit()
        summary["eagle_dir"] = str(save_eagle_layer(layer, Path(config.out_dir) / "eagle"))
        print_summary(summary, console)
    return summary
