"""Training objectives on preference batches: the DPO family and the Bradley–Terry reward model.

    objective = PreferenceObjective("sigmoid", beta=0.1, reference=frozen_copy(model))
    trainer = Trainer(model, PreferenceLoader(pairs, 8, 512), config, objective=objective)

Both are `lmforge.train.objective.Objective`s: ``(model, batch) -> LossOutput`` with the *sum*
of per-pair losses and ``count`` = pairs, so the loop's global loss is the mean over every pair
of the global batch however it is split (micro-batches, accumulation, ranks). Metrics are
per-pair sums too (the loop reports them as means, in training and — ``val_``-prefixed, in
place of a perplexity — in validation): ``rewards/accuracy`` (share of pairs whose
chosen implicit reward is higher), ``rewards/margin``, ``rewards/chosen``, ``rewards/rejected``,
``logps/chosen``, ``logps/rejected``.

Sequence log-probabilities come from `lmforge.align.sequence_logps` (one forward pass over
all ``2B`` sequences of a batch, only completion positions through the output head).

The reference policy π_ref of DPO / IPO (`lmforge.align.reference`, shared with PPO and GRPO)
is, by ``reference``:

- a module: a frozen copy of the initial policy (`frozen_copy`);
- ``"adapter"``: the policy itself with its PEFT adapters disabled
  (`lmforge.peft.disable_adapters`) — the base model, no second copy in memory;
- None: the batch carries precomputed ``ref_logps`` (`precompute_reference_logps`), or the
  loss needs no reference (SimPO, ORPO).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from lmforge.align.dpo import DPO_LOSS_TYPES, PreferenceLoss, dpo_loss
from lmforge.align.orpo import orpo_loss
from lmforge.align.reference import (
    check_reference,
    reference_model,
)
from lmforge.align.reward_model import RewardModel, bradley_terry_loss
from lmforge.align.sequence_logps import sequence_logps
from lmforge.align.simpo import simpo_loss
from lmforge.train.objective import Batch, LossOutput

__all__ = [
    "LOSS_TYPES",
    "PreferenceObjective",
    "RewardModelObjective",
    "load_reward_model",
    "reward_model_for_export",
]

LOSS_TYPES = (*DPO_LOSS_TYPES, "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


class PreferenceObjective:
    """DPO (``sigmoid``; conservative DPO with ``label_smoothing``), IPO (``ipo``), SimPO,
    ORPO on preference batches, with the pure losses of `lmforge.align.dpo` / ``simpo`` /
    ``orpo``.

    Args:
        loss_type: one of `LOSS_TYPES`.
        beta: DPO / IPO β (IPO's τ), SimPO's β, ORPO's λ.
        label_smoothing: conservative DPO's ε (also SimPO's).
        gamma: SimPO's target margin γ.
        reference: frozen module, ``"adapter"``, or None (see the module docstring).
        length_groups: forward passes per padded batch (see `sequence_logps`).

    IPO uses length-averaged log-probs (TRL's per-token form; see `dpo_loss`); SimPO and ORPO
    need them by definition; DPO uses sums (Rafailov et al. eq. 7).

    Validation reports these metrics (``val_rewards/accuracy``, ``val_rewards/margin``,
    ``val_rewards/chosen``, …, means per pair) beside the loss, not a perplexity
    (``validation_metrics``, read by the loop's `evaluate`).
    """

    validation_metrics = True

    def __init__(
        self,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        *,
        label_smoothing: float = 0.0,
        gamma: float = 0.5,
        reference: nn.Module | str | None = None,
        length_groups: int = 1,
    ) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
        check_reference(reference)
        self.loss_type, self.beta = loss_type, beta
        self.label_smoothing, self.gamma = label_smoothing, gamma
        self.reference = None if loss_type in REFERENCE_FREE else reference
        self.average = loss_type != "sigmoid"
        self.length_groups = length_groups

    def reference_logps(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``[S]`` sequence log-probs under π_ref (summed; averaging happens in `loss`)."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference is None:
            raise ValueError(
                f"loss_type={self.loss_type!r} needs a reference policy: pass reference= "
                "(a frozen copy or 'adapter') or precompute ref_logps into the batches"
            )
        device = batch["input_ids"].device
        with torch.no_grad(), reference_model(self.reference, model, device) as ref:
            return sequence_logps(ref, batch, self.length_groups)[0]

    def loss(self, logps: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None):
        """The per-pair `PreferenceLoss` from ``[S]`` sequence log-probs (and the reference's)."""
        if self.average:
            logps = logps / lengths.clamp(min=1)
            ref = None if ref is None else ref / lengths.clamp(min=1)
        chosen, rejected = logps[0::2], logps[1::2]
        if self.loss_type == "simpo":
            return simpo_loss(chosen, rejected, self.beta, self.gamma, self.label_smoothing)
        if self.loss_type == "orpo":
            return orpo_loss(chosen, rejected, self.beta)
        return dpo_loss(chosen, rejected, ref[0::2], ref[1::2], self.beta, self.loss_type,
                        self.label_smoothing)  # fmt: skip

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        ref = None
        if self.loss_type not in REFERENCE_FREE:
            ref = self.reference_logps(model, batch)
        logps, lengths = sequence_logps(model, batch, self.length_groups)
        out: PreferenceLoss = self.loss(logps, lengths, ref)
        result = out.output()
        detached = logps.detach()
        result.metrics["logps/chosen"] = detached[0::2].sum()
        result.metrics["logps/rejected"] = detached[1::2].sum()
        return result


# ---------------------------------------------------------------------- reward model
class RewardModelObjective:
    """Bradley–Terry loss (`bradley_terry_loss`) of a `RewardModel` on padded preference
    batches (sequence ``2i`` chosen, ``2i + 1`` rejected; the reward is read at each
    sequence's last real token through ``attention_mask``). Validation reports the reward
    accuracy, margin and chosen / rejected rewards (``val_accuracy``, …), not a perplexity."""

    validation_metrics = True

    def __init__(self, margin: float = 0.0, center_coef: float = 0.0) -> None:
        self.margin, self.center_coef = margin, center_coef

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        if "attention_mask" not in batch:
            raise ValueError("reward-model batches must be padded (layout='padded')")
        rewards = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        return bradley_terry_loss(
            rewards[0::2], rewards[1::2], self.margin or None, center_coef=self.center_coef
        )


def reward_model_for_export(rm: RewardModel, pad_token_id: int | None) -> RewardModel:
    """Set ``rm.config`` so lmforge's HF export writes a folder that loads as
    ``<Family>ForSequenceClassification`` with ``num_labels=1``: architectures, one label, a
    pad token (HF needs one to find the last token of padded rows) and untied embeddings
    (there is no output embedding to tie)."""
    from lmforge.config import hf_architecture

    arch = hf_architecture(rm.config.model_type).replace("ForCausalLM", "ForSequenceClassification")
    extra = {**rm.config.hf_extra, "architectures": [arch], "id2label": {"0": "LABEL_0"},
             "label2id": {"LABEL_0": 0}}  # fmt: skip
    pad = rm.config.pad_token_id if rm.config.pad_token_id is not None else pad_token_id
    rm.config = dataclasses.replace(
        rm.config, hf_extra=extra, tie_word_embeddings=False, pad_token_id=pad
    )
    return rm


def load_reward_model(path: str | Path, dtype: torch.dtype | None = None) -> RewardModel:
    """A `RewardModel` from an HF ``…ForSequenceClassification`` folder (as `lmforge rm`
    writes, or transformers saves with ``num_labels=1``)."""
    from lmforge.config import ModelConfig
    from lmforge.models.hf import CheckpointError, read_state_dict

    folder = Path(path)
    config = ModelConfig.from_pretrained(folder)
    state = read_state_dict(folder)
    if "score.weight" not in state:
        raise CheckpointError(f"{folder}: no score.weight (not a reward / classification model)")
    if state["score.weight"].shape[0] != 1:
        raise CheckpointError(
            f"{folder}: score.weight has {state['score.weight'].shape[0]} outputs; a reward "
            "model has one (num_labels=1)"
        )
    rm = RewardModel(config)
    missing, unexpected = rm.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: missing {missing}, unexpected {unexpected}")
    return rm if dtype is None else rm.to(dtype)
