"""A scalar reward model on lmforge's transformer, and the Bradley–Terry pairwise loss.

`RewardModel` is the transformer body of `CausalLM` (``model.*``) with a ``score`` head,
``Linear(hidden, 1, bias=False)``, read at each row's last real token — the layout and
parameter names of Hugging Face's ``LlamaForSequenceClassification`` with ``num_labels=1``
(so its state dict loads there unchanged, and vice versa).

The loss (InstructGPT, Ouyang et al. 2022, eq. 1; Bradley & Terry 1952) for a pair with
chosen y_w and rejected y_l is ``−log σ(r(x, y_w) − r(x, y_l) − m)`` with an optional margin m
(Llama 2, Touvron et al. 2023, eq. 2). Rewards are only defined up to a constant, so an optional
centring term ``c · (r_w + r_l)²`` (Eisenstein et al. 2023; TRL's
``center_rewards_coefficient``) keeps them near zero. Accuracy is the fraction of pairs with
``r_w > r_l``. All per pair: the training-loop contribution is ``(losses.sum(), len(losses))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models.transformer import CausalLM, TransformerModel
from lmforge.train.objective import LossOutput

__all__ = ["RewardModel", "bradley_terry_loss", "last_token_index"]


def last_token_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """``[B]`` index of each row's last real token: the rightmost 1 of ``attention_mask``,
    else the rightmost token ≠ ``pad_token_id`` (HF's rule, for left or right padding), else
    the last position."""
    b, t = input_ids.shape
    if attention_mask is not None:
        real = attention_mask.bool()
    elif pad_token_id is not None:
        real = input_ids != pad_token_id
    else:
        return torch.full((b,), t - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(t, device=input_ids.device)
    return (positions * real).argmax(-1)


class RewardModel(nn.Module):
    """Transformer body + scalar ``score`` head; ``forward`` returns ``[B]`` rewards."""

    def __init__(self, config: ModelConfig, body: TransformerModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = body if body is not None else CausalLM(config).model
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / (config.hidden_size + 1) ** 0.5)

    @classmethod
    def from_causal_lm(cls, lm: CausalLM) -> RewardModel:
        """A reward model on ``lm``'s body (shared, not copied: pass a deep copy to keep the LM
        intact) with a fresh score head — InstructGPT initialises the RM from the SFT model."""
        return cls(lm.config, body=lm.model).to(next(lm.parameters()).device)

    def hidden_states(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """``[B, T, H]`` final hidden states (after the last norm); kwargs as
        `TransformerModel.forward` (packing, padding masks, activation checkpointing)."""
        return self.model(input_ids, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B]`` scalar rewards read at each row's last real token (`last_token_index`)."""
        hidden = self.hidden_states(
            input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        last = last_token_index(input_ids, attention_mask, self.config.pad_token_id)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.score(pooled).squeeze(-1)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> LossOutput:
    """Bradley–Terry pairwise loss (see the module docstring) as a `LossOutput`.

    Args:
        chosen_rewards, rejected_rewards: ``[B]`` scalar rewards.
        margin: optional per-pair (``[B]``) or shared margin m.
        center_coef: c ≥ 0, weight of the centring term ``(r_w + r_l)²``.

    Returns ``loss_sum`` = Σ per-pair losses, ``count`` = B, and metric sums ``accuracy``,
    ``margin`` (r_w − r_l), ``rewards/chosen``, ``rewards/rejected``.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.ndim != 1:
        raise ValueError(
            f"chosen {tuple(chosen_rewards.shape)} and rejected {tuple(rejected_rewards.shape)} "
            "rewards must both be [B]"
        )
    if center_coef < 0:
        raise ValueError(f"center_coef={center_coef} must be ≥ 0")
    diff = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(diff if margin is None else diff - margin)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards).square()
    d = diff.detach()
    metrics = {
        "accuracy": (d > 0).float().sum(),
        "margin": d.sum(),
        "rewards/chosen": chosen_rewards.detach().sum(),
        "rewards/rejected": rejected_rewards.detach().sum(),
    }
    return LossOutput(losses.sum(), losses.numel(), metrics)
