"""PPO for language models with the "PPO-max" set of tricks (Zheng et al. 2023, "Secrets of
RLHF in Large Language Models, Part I: PPO").

One rollout gives, per completion token t (``mask`` marks completion tokens, contiguous per row):
log-probs under the sampling policy (``old_logps``) and the reference (``ref_logps``), value
estimates (``old_values``) and one scalar score per sequence from the reward model or a rule.

1. Reward shaping: `RunningMeanStd` normalises the scores by a running std (PPO-max §5.3.1,
   reward scaling) and clips them to ±``clip``; `kl_penalized_rewards` makes the token rewards
   ``r_t = −β·KL_t`` plus the score on the last token (Ziegler et al. 2019; InstructGPT eq. 2),
   with KL_t from `lmforge.align.logprobs.kl_estimate` (k1 by default). Alternatively the k3 KL
   goes in the loss (``kl_coef`` of `ppo_loss`) and the rewards carry the score only.
2. `gae_advantages`: generalised advantage estimation (Schulman et al. 2016, eq. 16),
   ``δ_t = r_t + γ V_{t+1} − V_t``, ``A_t = Σ_l (γλ)^l δ_{t+l}``, returns ``A_t + V_t``;
   `whiten` normalises the advantages over the batch's tokens (PPO-max §5.3.2).
3. `ppo_loss`: the clipped surrogate (Schulman et al. 2017, eq. 7), the clipped value loss
   (PPO2's ``max`` of clipped and unclipped squared errors), an entropy bonus and the k3 KL.

Units for the training loop: every term of `ppo_loss` is a per-completion-token mean, so it
returns ``loss_sum`` = Σ over completion tokens and ``count`` = number of completion tokens.
PPO-ptx (InstructGPT eq. 2) adds ``γ_ptx`` times the mean pretraining NLL, whose units are
pretraining tokens; `ptx_loss_sum` rescales a micro-batch's NLL sum by the ratio of the global
counts so that the loop's Σ loss_sum / Σ count is exactly ``L_ppo + γ_ptx · L_ptx``.
"""

from __future__ import annotations

import torch

from lmforge.align.logprobs import kl_estimate, masked_mean, masked_sum
from lmforge.train.objective import LossOutput

__all__ = [
    "RunningMeanStd",
    "gae_advantages",
    "kl_penalized_rewards",
    "ppo_loss",
    "ptx_loss_sum",
    "whiten",
]


class RunningMeanStd:
    """Running mean and variance of a stream of scalars (Chan et al.'s parallel form of
    Welford's algorithm), for reward normalisation across PPO iterations.

    ``normalize(x)`` divides by the running std (and subtracts the running mean when
    ``center``), then clips to ±``clip`` (PPO-max: scale, then clip).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.eps = eps

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return (self.var + self.eps) ** 0.5

    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of values into the running statistics."""
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, x: torch.Tensor, center: bool = False, clip: float | None = None):
        """``(x − mean?) / std``, clipped to ±``clip`` when given."""
        out = (x - self.mean) / self.std if center else x / self.std
        return out.clamp(-clip, clip) if clip is not None else out

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), state["mean"], state["m2"]


def kl_penalized_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards ``r_t = −β·KL_t`` plus ``scores[b]`` at each row's last completion token.

    Args:
        scores: ``[B]`` sequence scores (already normalised/clipped if wanted).
        logps, ref_logps: ``[B, T]`` sampled tokens' log-probs under the policy and reference.
        mask: ``[B, T]`` completion tokens (each row needs at least one).
        kl_coef: β.
        estimator: "k1" (InstructGPT), "k2" or "k3" (`kl_estimate`).

    Returns ``(rewards, kl)``, both ``[B, T]`` and 0 outside the mask.
    """
    mask = mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("every row needs at least one completion token in mask")
    kl = kl_estimate(logps, ref_logps, estimator).masked_fill(~mask, 0.0)
    rewards = -kl_coef * kl
    t = mask.shape[1]
    last = (torch.arange(t, device=mask.device) * mask).argmax(-1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards = rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)
    return rewards, kl


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(γ, λ) advantages and returns ``A + V``, ``[B, T]``, 0 outside ``mask``.

    The episode of row b is its masked positions (contiguous); the value after its last token
    is 0 (terminal), so ``δ_last = r_last − V_last``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    t_len = values.shape[1]
    for t in reversed(range(t_len)):
        next_value = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    return advantages, (advantages + values) * mask


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x − mean) / std`` over the masked entries (population std); 0 outside the mask.
    With ``shift_mean=False`` the mean is added back (scale only)."""
    mask = mask.bool()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).square(), mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out.masked_fill(~mask, 0.0)


def ppo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    old_values: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    value_clip_eps: float | None = 0.2,
    vf_coef: float = 0.5,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> LossOutput:
    """PPO loss per completion token, summed, with the token count (see the module docstring).

    Per token (``ρ = exp(logps − old_logps)``):

        L_t = −min(ρ A, clip(ρ, 1 ± ε) A)                                    (policy)
            + c_v · ½ max((V − R)², (old_V + clip(V − old_V, ±ε_v) − R)²)     (value)
            − c_H · H_t                                                      (entropy bonus)
            + β · k3(π, π_ref)                                               (KL in the loss)

    Args:
        logps: ``[B, T]`` current policy log-probs of the sampled tokens (with grad).
        old_logps: ``[B, T]`` the sampling policy's (detached).
        advantages: ``[B, T]`` (GAE, usually whitened).
        mask: ``[B, T]`` completion tokens.
        values, old_values, returns: ``[B, T]`` value-head outputs now / at rollout and the
            GAE returns; omit all three for a critic-free loss.
        clip_eps: ε of the ratio clip. value_clip_eps: ε_v, or None for an unclipped value loss.
        vf_coef: c_v. entropy: ``[B, T]`` per-token policy entropy; entropy_coef: c_H.
        ref_logps, kl_coef: reference log-probs and β for the k3 KL term (β = 0: none).

    Metric sums (per token): ``policy_loss``, ``value_loss``, ``clip_frac`` (tokens where the
    clip is active), ``approx_kl`` (k3 of old → new, a step-size monitor), ``entropy``, ``kl``.
    """
    mask = mask.bool()
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    policy = -torch.min(ratio * advantages, clipped * advantages)
    per_token = policy
    metrics: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        metrics["policy_loss"] = masked_sum(policy.detach(), mask)
        clip_active = (ratio * advantages > clipped * advantages).float()
        metrics["clip_frac"] = masked_sum(clip_active, mask)
        metrics["approx_kl"] = masked_sum(torch.expm1(-log_ratio) + log_ratio, mask)
    if values is not None:
        if old_values is None or returns is None:
            raise ValueError("a value loss needs values, old_values and returns")
        value_loss = (values - returns).square()
        if value_clip_eps is not None:
            v_clipped = old_values + (values - old_values).clamp(-value_clip_eps, value_clip_eps)
            value_loss = torch.max(value_loss, (v_clipped - returns).square())
        value_loss = 0.5 * value_loss
        per_token = per_token + vf_coef * value_loss
        metrics["value_loss"] = masked_sum(value_loss.detach(), mask)
    if entropy is not None:
        if entropy_coef:
            per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = masked_sum(entropy.detach(), mask)
    if kl_coef:
        if ref_logps is None:
            raise ValueError("kl_coef > 0 needs ref_logps")
        kl = kl_estimate(logps, ref_logps, "k3")
        per_token = per_token + kl_coef * kl
        metrics["kl"] = masked_sum(kl.detach(), mask)
    return LossOutput(masked_sum(per_token, mask), mask.sum(), metrics)


def ptx_loss_sum(
    ptx_nll_sum: torch.Tensor,
    ptx_coef: float,
    rl_tokens_total: int | torch.Tensor,
    ptx_tokens_total: int | torch.Tensor,
) -> torch.Tensor:
    """PPO-ptx: a micro-batch's pretraining NLL sum, rescaled to add to `ppo_loss`'s sum.

    With the global counts ``N_rl`` (completion tokens of the whole PPO batch) and ``N_ptx``
    (pretraining tokens of the whole batch), adding ``γ · (N_rl / N_ptx) · Σ_mb NLL`` to each
    micro-batch's loss_sum makes the loop's ``Σ loss_sum / N_rl`` equal
    ``L_ppo + γ · (Σ NLL / N_ptx)`` however the batch is split (InstructGPT eq. 2, γ = ptx_coef).
    """
    ptx_tokens_total = torch.as_tensor(ptx_tokens_total, dtype=torch.float64).clamp(min=1)
    scale = float(torch.as_tensor(rl_tokens_total, dtype=torch.float64) / ptx_tokens_total)
    return ptx_coef * scale * ptx_nll_sum
