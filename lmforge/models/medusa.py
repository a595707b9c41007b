"""Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with
Multiple Decoding Heads", arXiv:2401.10774): K extra heads on the model's last hidden state,
head k predicting the token k + 1 positions ahead (the LM head predicts the next one).

Head k, eq. (1) of §2.1.1:

    p_t^(k) = softmax(W_2^(k) · (SiLU(W_1^(k) · h_t) + h_t))

with W_1^(k) zero-initialised (the residual block starts as the identity) and W_2^(k)
initialised from the LM head, so an untrained head predicts what the LM head predicts.

Training (§2.2), on the hidden states of the model's own forward:

* Medusa-1 (frozen backbone): L = Σ_k λ_k · CE(p^(k)_t, y_{t+k+1}), λ_k = 0.8^k (k from 1;
  the paper's "λ_k … set to 0.8^k").
* Medusa-2 (joint): L = L_LM + λ_0 · Σ_k 0.8^k · L_k with λ_0 = 0.2 (the heads' loss scaled
  down so the backbone is not disturbed); optional self-distillation (§2.3.2) replaces the
  labels by the frozen base model's distribution (KL to its softmax).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.mtp import shift_left

__all__ = [
    "MEDUSA_CONFIG",
    "MEDUSA_WEIGHTS",
    "MedusaHeads",
    "load_medusa_heads",
    "MedusaResBlock",
    "medusa_head_losses",
    "medusa_loss_weights",
    "save_medusa_heads",
]

MEDUSA_CONFIG = "medusa_config.json"
MEDUSA_WEIGHTS = "medusa.safetensors"


class MedusaResBlock(nn.Module):
    """x + SiLU(W x + b), W zero-initialised (Medusa's ``ResBlock``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """``num_heads`` heads, each ``num_layers`` residual blocks and a vocabulary projection
    (no bias). ``forward(hidden [..., H]) → logits [K, ..., V]``.

    ``lm_head``: the model's LM head whose weight initialises every projection."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        lm_head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 0:
            raise ValueError(f"MedusaHeads needs num_heads ≥ 1 and num_layers ≥ 0, got "
                             f"{num_heads}, {num_layers}")  # fmt: skip
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.num_heads, self.num_layers = num_heads, num_layers
        self.blocks = nn.ModuleList(
            nn.Sequential(*[MedusaResBlock(hidden_size) for _ in range(num_layers)])
            for _ in range(num_heads)
        )
        self.projections = nn.ModuleList(
            nn.Linear(hidden_size, vocab_size, bias=False) for _ in range(num_heads)
        )
        if lm_head is not None:
            self.init_from_lm_head(lm_head)

    @torch.no_grad()
    def init_from_lm_head(self, lm_head: nn.Linear) -> None:
        if lm_head.weight.shape != (self.vocab_size, self.hidden_size):
            raise ValueError(f"lm_head weight {tuple(lm_head.weight.shape)} does not match "
                             f"[{self.vocab_size}, {self.hidden_size}]")  # fmt: skip
        for proj in self.projections:
            proj.weight.copy_(lm_head.weight)

    def config_dict(self) -> dict:
        return {"num_heads": self.num_heads, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size, "vocab_size": self.vocab_size}  # fmt: skip

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [proj(block(hidden)) for block, proj in zip(self.blocks, self.projections)]
        )

    @torch.no_grad()
    def stacked_weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Inference copies for `forward_one`: per residual layer the blocks' weights
        ``[K, H, H]`` (transposed) and biases ``[K, 1, H]``, and the projections ``[K, H, V]``
        (transposed). Rebuilt whenever a parameter changes (version counters)."""
        key = [(p.data_ptr(), p._version) for p in self.parameters()]
        cached = getattr(self, "_stacked", None)
        if cached is None or cached[0] != key:
            layers = [
                (
                    torch.stack([b[i].linear.weight.t() for b in self.blocks]).contiguous(),
                    torch.stack([b[i].linear.bias[None] for b in self.blocks]).contiguous(),
                )
                for i in range(self.num_layers)
            ]
            proj = torch.stack([p.weight.t() for p in self.projections]).contiguous()
            cached = self._stacked = (key, (layers, proj))
        return cached[1]

    def forward_stacked(self, hidden: torch.Tensor) -> torch.Tensor:
        """`forward` for hidden states ``[n, H]`` → ``[K, n, V]`` in a few batched matmuls
        (one per residual layer and one for all projections) instead of 2K + 1 module calls:
        every head's weights are read once for all n rows."""
        layers, proj = self.stacked_weights()
        x = hidden.expand(self.num_heads, *hidden.shape)
        for weight_t, bias in layers:
            x = x + F.silu(torch.baddbmm(bias, x, weight_t))
        return torch.bmm(x, proj)

    def forward_one(self, hidden: torch.Tensor) -> torch.Tensor:
        """`forward` for one hidden state ``[H]`` → ``[K, V]`` (`forward_stacked`)."""
        return self.forward_stacked(hidden[None])[:, 0]


def medusa_loss_weights(num_heads: int, decay: float = 0.8, scale: float = 1.0) -> list[float]:
    """λ_k = scale · decay^k for heads k = 1 … K (Medusa-1: scale 1; Medusa-2: scale 0.2)."""
    return [scale * decay**k for k in range(1, num_heads + 1)]


def medusa_head_losses(
    head_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-head mean losses and the number of scored positions of head 1.

    Args:
        head_logits: ``[K, B, T, V]`` from `MedusaHeads` on the hidden states of ``[B, T]``.
        labels: ``[B, T]`` token ids (-100 ignored); head k at position t is scored against
            ``labels[:, t + k + 1]``.
        teacher_logits: ``[B, T, V]`` of the base model (self-distillation): head k at t is
            then scored by KL(softmax(teacher[:, t + k]) ‖ p^(k)_t) — the base model's own
            next-token distribution at position t + k — instead of the label.
        doc_ids: ``[B, T]`` packed-document labels: head k at t is not scored when token
            t + k + 1 lies in another document than t (as the MTP depths,
            `lmforge.models.mtp.mtp_targets`; the hidden state at t has not seen it).
    """
    losses = []
    count = torch.zeros((), device=labels.device)
    for k in range(1, head_logits.shape[0] + 1):
        logits = head_logits[k - 1].float()
        target = shift_left(labels, k + 1, IGNORE_INDEX)  # labels[:, t + k + 1]
        if doc_ids is not None:  # the target must lie in position t's document
            target = target.masked_fill(doc_ids != shift_left(doc_ids, k + 1, -1), IGNORE_INDEX)
        valid = target != IGNORE_INDEX
        if k == 1:
            count = valid.sum()
        if teacher_logits is None:
            loss = F.cross_entropy(
                logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        else:
            teacher = shift_left(teacher_logits.float(), k).log_softmax(-1)
            kl = (teacher.exp() * (teacher - logits.log_softmax(-1))).sum(-1)
            loss = (kl * valid).sum()
        losses.append(loss / valid.sum().clamp_min(1))
    return losses, count


def save_medusa_heads(heads: MedusaHeads, folder: str | os.PathLike) -> Path:
    """``folder/medusa_config.json`` and ``folder/medusa.safetensors`` (atomic writes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
    with atomic_path(folder / MEDUSA_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(folder / MEDUSA_CONFIG, heads.config_dict())
    return folder


def load_medusa_heads(folder: str | os.PathLike) -> MedusaHeads:
    """Heads saved by `save_medusa_heads` (a missing file names itself)."""
    folder = Path(folder)
    cfg = read_json(folder / MEDUSA_CONFIG, "Medusa heads config")
    heads = MedusaHeads(cfg["hidden_size"], cfg["vocab_size"], cfg["num_heads"], cfg["num_layers"])
    heads.load_state_dict(load_file(str(folder / MEDUSA_WEIGHTS)))
    return heads.eval()
