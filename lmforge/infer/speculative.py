"""Speculative decoding: a cheap drafter proposes k tokens, the target checks them in one forward.

This module holds the exact acceptance rules (shared with the engine) and the dense batch-1
loop `speculative_generate`; the drafts and drafters themselves (`Draft`, the `Drafter`
protocol, `ModelDrafter`, `DraftLengthSchedule`) are in `lmforge.infer.drafting` and are
importable from here too.

Speculative sampling (Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via
Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large Language Model
Decoding with Speculative Sampling", Algorithm 2):

    draft  x₁…x_k with xᵢ ~ qᵢ = q(· | context, x₁…xᵢ₋₁)             (k cheap forwards)
    target p₁…p_{k+1} from ONE forward over [last token, x₁…x_k]
    for i = 1…k: accept xᵢ with probability min(1, pᵢ(xᵢ) / qᵢ(xᵢ)); stop at the first reject
    on a reject at i: emit one token ~ norm(max(0, pᵢ − qᵢ))          (the residual)
    if all k pass:   emit a bonus token ~ p_{k+1}

Each round emits between 1 and k + 1 tokens, and every emitted token is distributed exactly
as target-only sampling would draw it (Leviathan et al., Theorem 3.5): for a draft token x,
q(x)·min(1, p(x)/q(x)) + (1 − Σ_y min(p(y), q(y)))·residual(x) = min(q, p)(x) + max(0, p − q)(x)
= p(x). Temperature, top-k and top-p are applied to both p and q (the *processed*
distributions), so the output follows the target's processed distribution exactly. Greedy
decoding accepts while the draft equals the target's argmax and so reproduces target-only
greedy decoding token for token.

The drafter is pluggable (`Drafter`): `ModelDrafter` runs a small causal LM with its own KV
cache; the self-drafters of `lmforge.infer.self_drafters` (MTP, Medusa, EAGLE) implement the
same two methods plus ``observe`` (the target's hidden states, which `speculative_generate`
then hands them after every forward). The engine (`lmforge.infer.speculation`) verifies
whole candidate trees in one forward; this dense loop verifies chains, so a tree draft is cut
to its first path (each node's first child: the top-ranked chain). Deterministic drafts
(no ``probs``: top-k candidates) are verified by drawing from the target and following the
draft while the draw matches (`lmforge.infer.tree_attention.verify_tree`, exact). Both KV
caches are rolled back (`KVCache.crop`) past rejected drafts. The draft length adapts (`DraftLengthSchedule`): one
more after a round where everything was accepted, one fewer after an early rejection.

Batch size 1: one sequence per call (acceptance lengths differ between rows, so batching
would need ragged per-row caches; the paged engine is the place for that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lmforge.infer.checks import (
    check_max_new_tokens,
    check_single_prompt,
    default_eos,
    eos_ids,
    eval_mode,
    is_int,
    make_generator,
)
from lmforge.infer.drafting import Draft, Drafter, DraftLengthSchedule, ModelDrafter
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import check_sampling_args, processed_probs
from lmforge.infer.tree_attention import chain_parents, verify_tree
from lmforge.models.kv_cache import KVCache

if TYPE_CHECKING:
    from lmforge.models.transformer import CausalLM

__all__ = [
    "SpeculativeOutput",
    "first_path",
    "residual_distribution",
    "speculative_generate",
    "verify_greedy",
    "verify_sampled",
]


# ---------------------------------------------------------------------- verification (pure)
def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)) over the last dim: the distribution to resample from after a
    rejection (Leviathan et al. 2023, §2.3). Where p ≤ q everywhere (p = q up to rounding, so
    a rejection has probability 0) it falls back to p."""
    residual = (p - q).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


def verify_sampled(
    p: torch.Tensor,
    q: torch.Tensor,
    draft: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative sampling's accept/reject step for one sequence.

    Args:
        p: ``[k + 1, V]`` target distributions at the k draft positions and the one after.
        q: ``[k, V]`` the distributions the drafts were drawn from.
        draft: ``[k]`` the drafted token ids.

    Returns:
        ``(n, token)``: the first n drafts are accepted (each with probability
        min(1, pᵢ(xᵢ)/qᵢ(xᵢ)), tested as u·qᵢ(xᵢ) < pᵢ(xᵢ) with u ~ U[0, 1)), then ``token``
        is drawn from the residual of position n (a rejection) or from p_{k+1} (all passed).
    """
    k = draft.shape[0]
    idx = torch.arange(k, device=draft.device)
    p_draft, q_draft = p[idx, draft], q[idx, draft]
    u = torch.rand(k, generator=generator, device=p.device, dtype=p.dtype)
    rejected = (u * q_draft >= p_draft).nonzero()
    n = int(rejected[0]) if len(rejected) else k
    dist = p[k] if n == k else residual_distribution(p[n], q[n])
    return n, int(torch.multinomial(dist, 1, generator=generator))


def verify_greedy(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[int, int]:
    """Greedy verification: accept drafts while each equals the target's argmax; the next
    token is the target's argmax after them. ``target_logits`` is ``[k + 1, V]``."""
    best = target_logits.argmax(-1)
    k = draft.shape[0]
    mismatch = (best[:k] != draft).nonzero()
    n = int(mismatch[0]) if len(mismatch) else k
    return n, int(best[n])


# ---------------------------------------------------------------------- the loop
@dataclass
class SpeculativeOutput:
    """``sequences`` ``[1, T + n]``: the prompt and the n generated tokens (ending with the
    end-of-sequence token if one was produced), with decoding statistics."""

    sequences: torch.Tensor
    num_new_tokens: int
    num_drafted: int
    num_accepted: int
    num_rounds: int  # verification rounds = target forwards after the prompt prefill
    num_target_forwards: int  # including the prefill (when the prompt has > 1 token)
    draft_lengths: list[int]

    @property
    def acceptance_rate(self) -> float:
        """Accepted ÷ drafted tokens (nan if nothing was drafted)."""
        return self.num_accepted / self.num_drafted if self.num_drafted else float("nan")

    @property
    def mean_accepted_length(self) -> float:
        """Accepted drafts per verification round."""
        return self.num_accepted / self.num_rounds if self.num_rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        """New tokens per target verification forward (1.0 for plain decoding)."""
        return self.num_new_tokens / self.num_rounds if self.num_rounds else 0.0


def speculative_generate(
    target: CausalLM,
    drafter: Drafter | CausalLM | None,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    *,
    num_draft_tokens: int | DraftLengthSchedule = 4,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> SpeculativeOutput:
    """Continue one prompt with ``target``, drafting with ``drafter``.

    Args:
        target: the lmforge `CausalLM` whose distribution the output follows.
        drafter: a `Drafter`, a small `CausalLM` with the same vocabulary (wrapped in a
            `ModelDrafter`), or None for plain target decoding through the same loop. A
            self-drafter (`lmforge.infer.self_drafters`: ``MTPDrafter(target)``,
            ``MedusaDrafter(heads)``, ``EagleDrafter(target, layer)``) receives the target's
            hidden states (``observe``); its trees are cut to their first path.
        input_ids: ``[T]`` or ``[1, T]`` prompt token ids (batch size 1).
        max_new_tokens: upper bound on generated tokens.
        num_draft_tokens: the starting draft length (adaptive between 1 and twice it), or a
            `DraftLengthSchedule`; 0 decodes without drafting.
        do_sample, temperature, top_k, top_p: as `lmforge.infer.generate`; applied
            identically to target and draft distributions. The drafter receives them as a
            `SamplingParams` (``temperature`` 0 when not ``do_sample``: greedy).
        eos_token_id: id(s) that end generation (defaults as ``generate``: the model's
            generation config, then its config).
        seed / generator: RNG for drafting and acceptance; ``seed`` makes a private one.
    """
    check_sampling_args(temperature, top_k, top_p)
    schedule = _schedule(num_draft_tokens)
    if drafter is None:
        schedule = DraftLengthSchedule(0, 0, 0, adaptive=False)
    elif not isinstance(drafter, Drafter):
        drafter = _model_drafter(drafter, target)
    check_max_new_tokens(max_new_tokens)
    device = next(target.parameters()).device
    prompt = check_single_prompt(input_ids, target.config, max_new_tokens, device)
    if eos_token_id is None:
        eos_token_id = default_eos(target)
    eos = set(eos_ids(eos_token_id, target.config.vocab_size) or ())
    rng = make_generator(generator, seed, device)
    sampling = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=temperature if do_sample else 0,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )

    max_len = len(prompt) + max_new_tokens + schedule.maximum
    cache = KVCache.for_model(target, 1, max_len)
    tokens = prompt.clone()
    stats = dict(drafted=0, accepted=0, rounds=0, forwards=0)
    lengths: list[int] = []
    k = schedule.initial
    observe = getattr(drafter, "observe", None)  # a self-drafter reads the target's features
    with eval_mode(target), eval_mode(getattr(drafter, "model", None)):
        if len(prompt) > 1:  # the cache holds every token but the last one
            with torch.inference_mode():
                if observe is None:
                    target(prompt[None, :-1], cache=cache, logits_to_keep=1)
                else:
                    observe(target.model(prompt[None, :-1], cache=cache)[0], 0)
            stats["forwards"] += 1
        while len(tokens) - len(prompt) < max_new_tokens:
            remaining = max_new_tokens - (len(tokens) - len(prompt))
            k_now = min(k, remaining - 1)
            draft = _propose(drafter, tokens, k_now, sampling, rng, target.config.vocab_size)
            n, token, hidden = _verify_round(target, cache, tokens, draft, sampling, rng,
                                             observe is not None)  # fmt: skip
            if drafter is not None and k_now > 0:
                drafter.feedback(n)
            if observe is not None:  # the last token's and the accepted drafts' features
                observe(hidden[: n + 1], len(tokens) - 1)
            cache.crop(len(tokens) + n)  # last token + accepted drafts; `token` is fed next
            stats["drafted"] += len(draft.tokens)
            stats["accepted"] += n
            stats["rounds"] += 1
            stats["forwards"] += 1
            lengths.append(len(draft.tokens))
            new = draft.tokens[:n].tolist() + [token]
            stop = next((i for i, t in enumerate(new) if t in eos), None)
            if stop is not None:
                new = new[: stop + 1]
            tokens = torch.cat([tokens, torch.tensor(new, device=device)])
            if stop is not None:
                break
            if k_now == k:  # a round cut short by max_new_tokens says nothing about k
                k = schedule.next(k, len(draft.tokens), n)

    return SpeculativeOutput(
        sequences=tokens[None].clone(),
        num_new_tokens=len(tokens) - len(prompt),
        num_drafted=stats["drafted"],
        num_accepted=stats["accepted"],
        num_rounds=stats["rounds"],
        num_target_forwards=stats["forwards"],
        draft_lengths=lengths,
    )


def _propose(drafter, tokens, k, sampling, rng, vocab_size) -> Draft:
    if k <= 0:
        return Draft(tokens.new_empty(0), None)
    draft = first_path(drafter.propose(tokens, k, sampling, rng))
    n = draft.tokens.shape[0]
    if draft.tokens.ndim != 1 or n > k:
        raise ValueError(
            f"drafter returned tokens of shape {tuple(draft.tokens.shape)}, need [≤{k}]"
        )
    deterministic_ok = hasattr(drafter, "observe") and draft.probs is None  # top-k candidates
    if (not sampling.greedy and n and not deterministic_ok
            and (draft.probs is None or draft.probs.shape != (n, vocab_size))):  # fmt: skip
        got = None if draft.probs is None else tuple(draft.probs.shape)
        raise ValueError(f"drafter returned probs {got}; sampling needs [{n}, {vocab_size}]")
    return draft


def first_path(draft: Draft) -> Draft:
    """A candidate tree cut to its first root-to-leaf path (from the root, each node's first
    child in the parents-first order: the top-ranked chain); a chain is returned as is."""
    if draft.parents is None:
        return draft
    path, node = [], -1
    for i, parent in enumerate(draft.parents):
        if parent == node:
            path.append(i)
            node = i
    index = torch.tensor(path, dtype=torch.long, device=draft.tokens.device)
    probs = None if draft.probs is None else draft.probs[index]
    return Draft(draft.tokens[index], probs, None)


def _verify_round(target, cache, tokens, draft, sampling, rng, want_hidden=False):
    """One target forward over [last token, drafts] → (accepted count, next token, the
    forward's final hidden states ``[1 + k, H]`` when ``want_hidden``, else None)."""
    feed = torch.cat([tokens[-1:], draft.tokens])
    hidden = None
    with torch.inference_mode():
        if want_hidden:
            hidden = target.model(feed[None], cache=cache)[0]
            logits = target.lm_head(hidden).float()
        else:
            logits = target(feed[None], cache=cache).logits[0].float()
    if sampling.greedy:
        return (*verify_greedy(logits, draft.tokens), hidden)
    p = processed_probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    if len(draft.tokens) == 0:
        return 0, int(torch.multinomial(p[0], 1, generator=rng)), hidden
    if draft.probs is None:  # deterministic candidates: draw from the target and follow
        path, token = verify_tree(p, draft.tokens.tolist(), chain_parents(len(draft.tokens)),
                                  lambda row: int(torch.multinomial(row, 1, generator=rng)))  # fmt: skip
        return len(path), token, hidden
    return (*verify_sampled(p, draft.probs.to(p), draft.tokens, rng), hidden)


# ---------------------------------------------------------------------- helpers
def _schedule(num_draft_tokens: int | DraftLengthSchedule) -> DraftLengthSchedule:
    if isinstance(num_draft_tokens, DraftLengthSchedule):
        return num_draft_tokens
    k = num_draft_tokens
    if not is_int(k) or k < 0:
        raise ValueError(f"num_draft_tokens={k!r} must be an integer ≥ 0 or a DraftLengthSchedule")
    return DraftLengthSchedule(k, min(1, k), 2 * k)


def _model_drafter(model, target) -> ModelDrafter:
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "parameters"):
        raise TypeError(
            f"drafter must be a Drafter or an lmforge CausalLM, got {type(model).__name__}"
        )
    if config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"draft vocab_size={config.vocab_size} differs from the target's "
            f"{target.config.vocab_size}; drafter and target must share a tokenizer"
        )
    return ModelDrafter(model)
