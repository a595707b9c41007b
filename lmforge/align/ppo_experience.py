"""PPO's experience stream: rollouts → advantages → micro-batches for the one training loop.

    data = PPOExperience(ac, prompts, rule_scorer("task"), cfg.ppo, tokenizer=tok,
                         micro_batch_size=8, grad_accum=1)
    Trainer(ac, data, cfg, objective=PPOObjective(cfg.ppo)).fit()

When its buffer is empty `PPOExperience` (the loop's ``train_data``) samples one completion
per prompt with the inference engine (the current weights; `lmforge.align.rollout`), scores
them (`lmforge.align.ppo_models`: `rule_scorer` or `RewardModelScorer`), recomputes old
log-probs, reference log-probs (`lmforge.align.reference`) and values with the training
forward, normalises and clips the scores (running std), shapes the token rewards with the KL
penalty (k1 in the reward, or k3 in the loss), and computes GAE advantages (whitened) and
returns (`lmforge.align.ppo`). It then yields ``ppo_epochs`` shuffled passes of
micro-batches; ``grad_accum`` consecutive micro-batches form one minibatch = one optimizer
step. ``state_dict`` holds the unfinished rollout itself, so a resumed run continues exactly.

Under torchrun (DDP) each rank samples its own ``rollout_batch_size`` prompts (rank r of W
takes the r-th slice of the W·``rollout_batch_size`` prompts of the step, seeded by their
place in the step), then the rows are gathered (`gather_rollout`) so that every rank shapes
the whole rollout — reward normalisation, advantage whitening and the logged statistics are
those of one process — and each micro-batch of ``micro × W`` rows of the shared shuffle is
split across the ranks: W processes make one process's update (``train.batch_size`` × W).
Under FSDP2 the actor-critic's parameters are shards: before each rollout the full weights are
gathered into a plain copy (`lmforge.align.rl_distributed.RolloutWeights`) that samples and
computes the old log-probs, values and (adapter) reference log-probs.

Reference policy: a frozen copy of the policy, or — when the policy carries a LoRA adapter —
the same model with the adapter disabled (no copy). None when ``kl_coef`` is 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.align.logprobs import masked_mean
from lmforge.align.ppo import RunningMeanStd, gae_advantages, kl_penalized_rewards, whiten
from lmforge.align.ppo_config import PPOSection, check_ppo_section
from lmforge.align.ppo_models import ActorCritic, PromptItem, Sample, Scorer, token_values
from lmforge.align.reference import (
    Reference,
    check_reference,
    make_reference,
    reference_model,
)
from lmforge.align.rl_distributed import RolloutWeights
from lmforge.align.rollout import (
    check_rollout_sampling,
    completion_batch,
    policy_logprobs,
    sample_completions,
    sha256_seed,
)
from lmforge.infer import SamplingParams
from lmforge.models.loss import IGNORE_INDEX, shifted_targets

__all__ = ["PPOExperience", "explained_variance", "gather_rollout", "rollout_sampling"]


def rollout_sampling(p: PPOSection) -> SamplingParams:
    """The rollouts' sampling settings: one completion per prompt of at most
    ``max_new_tokens`` tokens at ``temperature`` / ``top_p`` / ``top_k``, ending at a stop
    token or one of ``stop`` (kept in the completion)."""
    sampling = SamplingParams(n=1, max_tokens=p.max_new_tokens, temperature=p.temperature,
                              top_p=p.top_p, top_k=p.top_k, stop=tuple(p.stop))  # fmt: skip
    check_rollout_sampling(sampling)
    return sampling


_TOKEN_FIELDS = ("old_logps", "old_values", "advantages", "returns", "ref_logps")


class PPOExperience:
    """Endless PPO micro-batches for the training loop (see the module docstring).

    Args:
        model: the `ActorCritic` being trained (rollouts use its current weights).
        prompts: the prompt pool; each rollout draws ``rollout_batch_size`` of them (a seeded
            permutation per pass over the pool).
        scorer: ``samples -> scores`` (`rule_scorer`, `RewardModelScorer`, or your own).
        config: the `PPOSection`.
        tokenizer: decodes completions for the scorer and is the engine's (stop strings).
        micro_batch_size, grad_accum: rows per yielded batch and batches per optimizer step.
        reference: the reference policy (`lmforge.align.reference`: a frozen module or
            ``"adapter"``); default ``"auto"``: a frozen copy of the policy, or the policy with
            its adapters disabled when it has LoRA; None when ``kl_coef`` is 0.
        ptx_data: an endless iterable of packed LM batches (``input_ids``, ``labels``,
            ``position_ids``/``document_ids``) with state_dict (needed when ``ptx_coef`` > 0).
        rollout_weights: the `RolloutWeights` rollouts run on (default: ``model`` itself;
            under FSDP2 one made with ``copy_for_fsdp=True`` before the loop shards ``model``).
    """

    def __init__(
        self,
        model: ActorCritic,
        prompts: Sequence[PromptItem],
        scorer: Scorer,
        config: PPOSection,
        *,
        tokenizer: Any = None,
        micro_batch_size: int = 8,
        grad_accum: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        reference: Reference | Literal["auto"] = "auto",
        ptx_data: Any = None,
        pad_id: int = 0,
        rollout_weights: RolloutWeights | None = None,
    ) -> None:
        check_ppo_section(config, micro_batch_size, grad_accum)
        if not prompts:
            raise ValueError("PPOExperience needs at least one prompt")
        if config.ptx_coef > 0 and ptx_data is None:
            raise ValueError("ppo.ptx_coef > 0 needs ptx_data (an SFT / pretraining loader)")
        self.model, self.prompts, self.scorer, self.cfg = model, list(prompts), scorer, config
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self.micro, self.accum = micro_batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world_size
        self.ptx_data = ptx_data if config.ptx_coef > 0 else None
        self.weights = rollout_weights or RolloutWeights(model)
        self._ptx_iter = iter(self.ptx_data) if self.ptx_data is not None else None
        # Built now, before any step or resume changes the policy's weights.
        if config.kl_coef == 0:
            self.reference = None
        elif isinstance(reference, str) and reference == "auto":
            self.reference = make_reference(model.policy, config.kl_coef)
        else:
            check_reference(reference)
            self.reference = reference
        self.sampling = rollout_sampling(config)
        self.reward_stats = RunningMeanStd()
        self.rollouts = 0  # rollouts generated so far
        self.position = 0  # micro-batches of the current rollout handed out
        self.rows: list[dict[str, Any]] | None = None
        self.stats: dict[str, float] = {}
        self._stash: list[dict[str, torch.Tensor]] = []
        self._stash_key: tuple[int, int] | None = None
        self._ptx_start: Any = None

    # -------------------------------------------------------------- reference policy
    def reference_logprobs(
        self, batch: dict[str, torch.Tensor], policy: nn.Module | None = None
    ) -> torch.Tensor | None:
        """``[B, T]`` log-probs of the sampled tokens under the reference (None for β = 0);
        ``policy``: the module whose adapters an ``"adapter"`` reference disables (default:
        the trained policy; the gathered copy under FSDP2)."""
        if self.cfg.kl_coef == 0:
            return None
        if self.reference is None:
            raise ValueError("ppo.kl_coef > 0 needs a reference policy")
        policy, device = policy or self.model.policy, batch["input_ids"].device
        with reference_model(self.reference, policy, device) as ref:
            return policy_logprobs(ref, batch, self.cfg.temperature)

    # -------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self) -> None:
        """Sample, score and compute advantages for the next ``rollout_batch_size`` prompts."""
        cfg, r, n = self.cfg, self.rollouts, self.cfg.rollout_batch_size
        first = (r * self.world + self.rank) * n
        items = [self.prompts[self._prompt_index(first + i)] for i in range(n)]
        # seeded by the prompt's place in the whole step: W ranks sample what one process would
        seeds = [sha256_seed("sample", self.seed, 0, r, self.rank * n + i) for i in range(n)]
        ac = self.weights.refresh()  # the model itself, or the gathered copy under FSDP2
        policy = ac.policy
        was_training = self.model.training
        self.model.eval()
        ac.eval()
        try:
            prompt_ids = [list(i.prompt_ids) for i in items]
            done = sample_completions(policy, self.tokenizer, prompt_ids, self.sampling, seeds)
            samples = [Sample(item, c.completion_ids, c.text, c.finish_reason)
                       for item, c in zip(items, done, strict=True)]  # fmt: skip
            raw = torch.tensor(self.scorer(samples), dtype=torch.float32)
            if raw.shape != (n,):
                raise ValueError(f"the scorer returned {raw.numel()} scores for {n} samples")
            seqs = [list(s.item.prompt_ids) + s.completion_ids for s in samples]
            prompt_lens = [len(s.item.prompt_ids) for s in samples]
            device = next(ac.parameters()).device
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logps", "values", "ref")}
            width = max(len(s) for s in seqs)
            for lo in range(0, n, self.micro):
                batch = completion_batch(seqs[lo : lo + self.micro],
                                         prompt_lens[lo : lo + self.micro], self.pad_id, width)  # fmt: skip
                batch = {k: v.to(device) for k, v in batch.items()}
                parts["logps"].append(policy_logprobs(policy, batch, cfg.temperature))
                parts["values"].append(
                    token_values(ac.critic, batch["input_ids"], batch["attention_mask"])
                )
                ref = self.reference_logprobs(batch, policy)
                if ref is not None:
                    parts["ref"].append(ref)
        finally:
            self.model.train(was_training)
        logps = torch.cat(parts["logps"]).float()
        values = torch.cat(parts["values"]).float()
        ref = torch.cat(parts["ref"]).float() if parts["ref"] else None
        if self.world > 1:  # every rank shapes the whole step's rollout (global statistics)
            raw, logps, values, ref, seqs, prompt_lens = gather_rollout(
                raw, logps, values, ref, seqs, prompt_lens, device
            )
            width = max(len(s) for s in seqs)
        full = completion_batch(seqs, prompt_lens, self.pad_id, width)
        mask = (shifted_targets(full["labels"]) != IGNORE_INDEX).to(device)
        values = values * mask
        self._shape(raw.to(device), logps, values, ref, mask, seqs, prompt_lens)

    def _shape(self, raw, logps, values, ref, mask, seqs, prompt_lens) -> None:
        """Scores → token rewards → GAE advantages/returns; store the rows and statistics."""
        cfg = self.cfg
        scores = raw
        if cfg.reward_norm:
            self.reward_stats.update(raw)
            scores = self.reward_stats.normalize(raw, center=cfg.reward_center)
        if cfg.reward_clip:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        beta = 0.0 if cfg.kl_in_loss or ref is None else cfg.kl_coef
        rewards, _ = kl_penalized_rewards(scores.float(), logps, logps if ref is None else ref,
                                          mask, beta, cfg.kl_estimator)  # fmt: skip
        advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        lengths = mask.sum(-1).float()
        stats = {
            "reward": raw.float().mean().item(),
            "reward_std": raw.float().std(unbiased=False).item(),
            "score": scores.float().mean().item(),
            "response_length": lengths.mean().item(),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": masked_mean(values, mask).item(),
            "return_mean": masked_mean(returns, mask).item(),
        }
        if ref is not None:
            kl_seq = ((logps - ref) * mask).sum(-1)  # k1 summed over each response
            stats["kl_ref"] = kl_seq.mean().item()
        fields = {"old_logps": logps, "old_values": values, "advantages": advantages,
                  "returns": returns, "ref_logps": ref}  # fmt: skip
        rows = []
        for i, seq in enumerate(seqs):
            row: dict[str, Any] = {"input_ids": list(seq), "prompt_len": prompt_lens[i]}
            for key, tensor in fields.items():
                if tensor is not None:
                    row[key] = tensor[i, : len(seq)].detach().cpu().float()
            rows.append(row)
        self.rows, self.stats, self.position = rows, stats, 0
        self.rollouts += 1
        self._stash_key = None

    def _prompt_index(self, draw: int) -> int:
        epoch, pos = divmod(draw, len(self.prompts))
        g = torch.Generator().manual_seed(sha256_seed("prompts", self.seed, epoch))
        return int(torch.randperm(len(self.prompts), generator=g)[pos])

    # -------------------------------------------------------------- batches
    @property
    def micro_per_epoch(self) -> int:
        return self.cfg.rollout_batch_size // self.micro

    @property
    def micro_per_rollout(self) -> int:
        return self.micro_per_epoch * self.cfg.ppo_epochs

    def _rows_of(self, position: int) -> list[dict[str, Any]]:
        """Micro-batch ``position``'s rows: this rank's share of the step's micro-batch
        (``micro × world`` rows of a shuffle of the whole rollout, the same on every rank)."""
        epoch, k = divmod(position, self.micro_per_epoch)
        g = torch.Generator().manual_seed(
            sha256_seed("shuffle", self.seed, 0, self.rollouts, epoch)
        )
        order = torch.randperm(len(self.rows), generator=g).tolist()
        lo = k * self.micro * self.world + self.rank * self.micro
        return [self.rows[i] for i in order[lo : lo + self.micro]]

    def _ptx_for(self, position: int) -> tuple[dict[str, torch.Tensor], float, float]:
        """This micro-batch's ptx batch and the minibatch's global RL / ptx token counts."""
        minibatch = position // self.accum
        if self._stash_key != (self.rollouts, minibatch):
            self._ptx_start = self.ptx_data.state_dict()
            self._stash = [next(self._ptx_iter) for _ in range(self.accum)]
            start = minibatch * self.accum
            rl = sum(len(r["input_ids"]) - r["prompt_len"]
                     for p in range(start, start + self.accum) for r in self._rows_of(p))  # fmt: skip
            ptx = sum(
                int((shifted_targets(b["labels"]) != IGNORE_INDEX).sum()) for b in self._stash
            )
            totals = torch.tensor([float(rl), float(ptx)], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                from lmforge.train.distributed import all_reduce_sum

                totals = all_reduce_sum(totals.to(next(self.model.parameters()).device)).cpu()
            self._totals = (totals[0].item(), totals[1].item())
            self._stash_key = (self.rollouts, minibatch)
        return self._stash[position % self.accum], *self._totals

    def micro_batch(self, position: int) -> dict[str, Any]:
        """Micro-batch ``position`` of the current rollout (right-padded to its longest row)."""
        rows = self._rows_of(position)
        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, Any] = completion_batch([r["input_ids"] for r in rows],
                                                 [r["prompt_len"] for r in rows], self.pad_id,
                                                 width)  # fmt: skip
        for key in _TOKEN_FIELDS:
            if key in rows[0]:
                batch[key] = torch.stack([F.pad(r[key], (0, width - len(r[key]))) for r in rows])
        batch["rollout_stats"] = dict(self.stats)
        if self.ptx_data is not None:
            ptx, rl_total, ptx_total = self._ptx_for(position)
            for key in ("input_ids", "labels", "position_ids", "document_ids"):
                if key in ptx:
                    batch[f"ptx_{key}"] = ptx[key]
            batch["rl_tokens_total"] = torch.tensor(rl_total)
            batch["ptx_tokens_total"] = torch.tensor(ptx_total)
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if self.rows is None or self.position >= self.micro_per_rollout:
                self.rollout()
            batch = self.micro_batch(self.position)
            self.position += 1
            yield batch

    # -------------------------------------------------------------- exact resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-able: counters, reward statistics, the unfinished rollout's rows and the ptx
        loader's position (at the current minibatch's start if it is half consumed)."""
        live = self.rows is not None and self.position < self.micro_per_rollout
        state: dict[str, Any] = {
            "rollouts": self.rollouts,
            "position": self.position if live else 0,
            "reward_stats": self.reward_stats.state_dict(),
            "stats": dict(self.stats),
            "rows": None,
        }
        if live:
            state["rows"] = [
                {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                for r in self.rows
            ]
        if self.ptx_data is not None:
            mid = self._stash_key == (self.rollouts, self.position // self.accum)
            state["ptx"] = self._ptx_start if mid else self.ptx_data.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts = int(state["rollouts"])
        self.position = int(state["position"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.stats = dict(state.get("stats", {}))
        self.rows = None
        if state.get("rows") is not None:
            self.rows = [
                {
                    k: (torch.tensor(v, dtype=torch.float32) if k in _TOKEN_FIELDS else v)
                    for k, v in r.items()
                }  # fmt: skip
                for r in state["rows"]
            ]
        self._stash_key = None
        if self.ptx_data is not None and state.get("ptx") is not None:
            self.ptx_data.load_state_dict(state["ptx"])
            self._ptx_iter = iter(self.ptx_data)


def gather_rollout(raw, logps, values, ref, seqs, prompt_lens, device):
    """Every rank's rollout rows (scores, per-token log-probs / values / reference log-probs,
    sequences, prompt lengths) in rank order, right-padded to the longest (collective)."""
    from lmforge.train.distributed import all_gather_objects

    local = []
    for i, seq in enumerate(seqs):
        n = len(seq)
        local.append((list(seq), prompt_lens[i], float(raw[i]), logps[i, :n].cpu(),
                      values[i, :n].cpu(), None if ref is None else ref[i, :n].cpu()))  # fmt: skip
    rows = [row for part in all_gather_objects(local) for row in part]
    width = max(len(r[0]) for r in rows)

    def stack(j: int) -> torch.Tensor:
        return torch.stack([F.pad(r[j], (0, width - len(r[j]))) for r in rows]).to(device)

    return (torch.tensor([r[2] for r in rows], dtype=torch.float32), stack(3), stack(4),
            None if ref is None else stack(5), [r[0] for r in rows],
            [r[1] for r in rows])  # fmt: skip


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var(R − V) / Var(R)`` over the masked tokens (1: perfect critic; 0 when Var(R)=0)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    if var_r.item() < 1e-12:
        return 0.0
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)).square(), mask)
    return float(1.0 - var_d / var_r)
