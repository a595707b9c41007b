"""The agent's GRPO objective on a packed rollout batch (`lmforge.agents.rl`'s `AgentRollouts`):
the clipped surrogate over the sampled tokens and the pointer's choices, and an optional KL
penalty to a reference policy (the SFT agent).

    out = agent_pg_objective(model, batch)      # LossOutput(−Σ J, count, metrics)

Per sampled token t and pointer choice q, with advantage Â (GRPO, Shao et al. 2024 eq. 3):

    J_t = min(r_t Â, clip(r_t, 1 − ε, 1 + ε) Â) − β · KL_t,    r_t = π(o_t | o_<t) / π_old(o_t | o_<t)
    J_q = min(ρ_q Â, clip(ρ_q, 1 − ε, 1 + ε) Â) − β · KL_q,    ρ_q = p(k_q | h_q) / p_old(k_q | h_q)
    KL = π_ref/π − 1 − log(π_ref/π)    at the sampled token / chosen image token

(the k3 estimator of KL(π ‖ π_ref), DeepSeekMath eq. 4; `lmforge.align.logprobs.kl_estimate`).
β = ``rl.kl_coef``; the reference log-probs ride in the batch (``ref_logprobs``, and
``pointer_ref`` for the pointer's choices), computed once per rollout by `reference_scores`
from a frozen copy of the starting policy. p(· | h_q) is the pointer head's softmax over the
screenshot's tokens at query q (`VisionLanguageModel.pointer_logits`, recomputed on the packed
batch). The loss is −Σ J over tokens and choices, counted one element each (``pointer_share``
logs the choices' share); with ``pointer_weight`` w in the batch (``rl.pointer_weight``) each
choice's term counts w times (−Σ_t J_t − w Σ_q J_q; the count is unchanged); ``logprob_gap`` / ``pointer_gap`` (mean |log π − log π_old|) check
that the ratio starts at 1; ``kl`` is the mean KL term when β > 0.
"""

from __future__ import annotations

import torch

from lmforge.align.logprobs import kl_estimate
from lmforge.align.reference import Reference, reference_model
from lmforge.models.loss import IGNORE_INDEX
from lmforge.train.distributed import unwrap
from lmforge.train.objective import LossOutput


def clipped_surrogate(
    logps: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, eps: float
) -> torch.Tensor:
    """min(r·A, clip(r, 1 − ε, 1 + ε)·A) elementwise, r = exp(log π − log π_old)."""
    ratio = torch.exp(logps - old)
    return torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)


def batch_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model``'s log-probs of the batch's labelled tokens ``[B, T − 1]`` (at the label's
    position, 0 where unlabelled) and, with a pointer head and choices, of each recorded
    pointer choice ``[Q]`` (None otherwise)."""
    core = unwrap(model)  # DDP / FSDP wrap it: the pointer head is the model's own module
    pointing = getattr(core, "pointer_head", None) is not None and "pointer_index" in batch
    out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], document_ids=batch["document_ids"],
                output_hidden_states=pointing)  # fmt: skip
    labels = batch["labels"][:, 1:]
    logps = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if not pointing or not batch["pointer_index"].numel():
        return logps, None
    logits, _ = core.pointer_logits(out.hidden_states, batch["input_ids"], batch["image_grid_thw"],
                                    batch["pointer_queries"], batch["pointer_images"].tolist())  # fmt: skip
    pointer = torch.log_softmax(logits.float(), -1)
    return logps, pointer.gather(-1, batch["pointer_index"].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def reference_scores(
    reference: Reference, batch: dict[str, torch.Tensor], policy: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """``ref_logprobs`` ``[B, T]`` (aligned with ``labels``, NaN where unlabelled) and
    ``pointer_ref`` ``[Q]``: the reference policy's log-probs of what was sampled — the frozen
    copy, or ``policy`` with its adapters disabled (`lmforge.align.reference.reference_model`)."""
    with reference_model(reference, policy) as model:
        device = next(model.parameters()).device
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        was_training = model.training
        model.eval()
        try:
            logps, pointer = batch_scores(model, moved)
        finally:
            model.train(was_training)
    ref = torch.full(batch["labels"].shape, float("nan"))
    ref[:, 1:] = torch.where(batch["labels"][:, 1:] != IGNORE_INDEX, logps.cpu(), float("nan"))
    out = {"ref_logprobs": ref}
    if "pointer_index" in batch:
        none = torch.zeros(batch["pointer_index"].shape)
        out["pointer_ref"] = none if pointer is None else pointer.cpu()
    return out


def agent_pg_objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """−Σ J over the sampled tokens and pointer choices (the module docstring), π_old the
    engine's log-probs (the current, detached, where there is none), and their count; logs
    the rollout's reward and success, ``logprob_gap`` (and ``pointer_gap``, ``kl``)."""
    core = unwrap(model)
    pointing = getattr(core, "pointer_head", None) is not None and "pointer_index" in batch
    logps, pointer = batch_scores(model, batch)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    old = batch["old_logprobs"][:, 1:]
    scored = mask & ~torch.isnan(old)
    old = torch.where(scored, old, logps.detach())
    eps, beta = float(batch["clip_eps"]), float(batch.get("kl_coef", 0.0))
    terms = clipped_surrogate(logps, old, batch["advantages"][:, 1:], eps)
    kl_sum = torch.zeros((), device=logps.device)
    if beta:
        ref = torch.where(mask, batch["ref_logprobs"][:, 1:].to(logps), logps.detach())
        kl = kl_estimate(logps, ref, "k3")
        terms = terms - beta * kl
        kl_sum = (kl.detach() * mask).sum()
    loss_sum = -(terms * mask).sum()
    count = mask.sum()
    gap = ((logps.detach() - old).abs() * scored).sum() / scored.sum().clamp(min=1)
    pointer_metrics = {}
    if pointing:
        choices = batch["pointer_index"].numel()
        pointer_gap = torch.zeros((), device=count.device)
        if pointer is not None:
            p_old = batch["pointer_old"].to(pointer)
            p_terms = clipped_surrogate(
                pointer, p_old, batch["pointer_advantages"].to(pointer), eps
            )
            if beta:
                p_kl = kl_estimate(pointer, batch["pointer_ref"].to(pointer), "k3")
                p_terms = p_terms - beta * p_kl
                kl_sum = kl_sum + p_kl.detach().sum()
            loss_sum = loss_sum - float(batch.get("pointer_weight", 1.0)) * p_terms.sum()
            pointer_gap = (pointer.detach() - p_old).abs().mean()
        else:  # the head still takes part in the graph (DDP expects every parameter's grad)
            loss_sum = loss_sum + 0.0 * sum(p.sum() for p in core.pointer_head.parameters())
        count = count + choices
        # pointer_share: the pointer choices' share of the loss's elements
        pointer_metrics = {"pointer_gap": pointer_gap * count,
                           "pointer_share": torch.tensor(float(choices), device=count.device)}  # fmt: skip
    metrics = {"episode_reward": batch["rollout_reward"] * count,
               "episode_success": batch["rollout_success"] * count,
               "logprob_gap": gap * count, **pointer_metrics}  # fmt: skip
    for key in ("guided", "draws", "expert_steps", "screen_hits", "state_match"):  # rollout stats
        if f"rollout_{key}" in batch:
            metrics[key] = batch[f"rollout_{key}"] * count
    if beta:
        metrics["kl"] = kl_sum  # summed: the Trainer divides by the count, a mean per element
    return LossOutput(loss_sum, count, metrics)


__all__ = ["agent_pg_objective", "batch_scores", "clipped_surrogate", "reference_scores"]
