"""Bradley–Terry reward modelling from an `RMConfig` (``lmforge rm``): a scalar head on an
HF model (InstructGPT: the reward model starts from the SFT model), trained on preference
pairs through the one `Trainer`.

    config = load_config("recipes/rm-tiny.yaml", ['model.init_from="runs/sft/model"'], RMConfig)
    summary = train_rm(config)     # summary["model_dir"]: loads in transformers as
                                   # LlamaForSequenceClassification (num_labels=1)

Data and the run folder are as for `lmforge.align.dpo_trainer.train_dpo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console

from lmforge.align.dpo_trainer import fit_preference, preference_loaders, preference_pairs
from lmforge.align.preference_objective import RewardModelObjective, reward_model_for_export
from lmforge.align.reward_model import RewardModel
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.run import check_vocab, init_model_dir, training_run


@dataclass
class RMSection:
    """Bradley–Terry reward-model options."""

    margin: float = 0.0  # required reward gap m (Llama 2)
    center_coef: float = 0.0  # weight of (r_w + r_l)² (keeps rewards near 0)


@dataclass
class RMConfig(RunConfig):
    rm: RMSection = field(default_factory=RMSection)


def train_rm(
    config: RMConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train a reward model from ``model.init_from`` on preference pairs; returns the
    Trainer's summary with ``model_dir`` (an HF sequence classifier)."""
    with training_run(config, dist, console) as (dist, console):
        model_dir = init_model_dir(config, "rm")
        tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
        pairs, val_pairs = preference_pairs(config, dist, console, tokenizer)
        lm = load_model(model_dir, dtype=torch.float32)
        check_vocab(model_dir, tokenizer, lm.config.vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            rm = RewardModel.from_causal_lm(lm)  # InstructGPT: the RM starts from the SFT model
        pad = tokenizer.pad_token_id
        pad = pad if pad is not None else tokenizer.eos_token_id
        reward_model_for_export(rm, pad)
        loader, val = preference_loaders(config, dist, pairs, val_pairs, "padded", pad or 0)
        objective = RewardModelObjective(config.rm.margin, config.rm.center_coef)
        console.print(
            f"[bold]objective[/]: Bradley-Terry, {config.train.batch_size} pairs per batch"
        )
        summary = fit_preference(config, rm, tokenizer, loader, val, objective, dist, console)
    return summary
