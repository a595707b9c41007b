"""Policy rollouts for RL fine-tuning (PPO, GRPO): sample, lay out for training, score.

    sampling = SamplingParams(n=8, max_tokens=64, stop=("</answer>",))
    seeds = [request_seed(step, i) for i in range(len(prompts))]
    completions = sample_completions(model, tok, prompts, sampling, seeds)
    batch = rollout_tensors(completions, pad_id)
    old_logps = policy_logprobs(model, batch)

The one rollout toolkit of every RL trainer: PPO (`lmforge.align.ppo_experience`) and GRPO
(`lmforge.align.grpo_trainer`, with the group layer of `lmforge.align.rollout_groups`) sample,
seed, pad and score their rollouts with the functions here.

Sampling runs on lmforge's inference engine (`lmforge.infer.Engine`: paged KV cache,
continuous batching, one forward over the ragged batch per decoding step), one request per
completion with its own seed, so a completion does not depend on what else is in the batch.
By default a fresh engine is built per call (the engine's fused weight copies follow
optimizer steps, and a new engine starts with an empty prefix cache: KV blocks cached under
older weights must not be reused). A `RolloutEngine` instead keeps one engine alive across
a trainer's rollouts (its KV pool, its compiled decode step, which takes the weights as
inputs and so is not recompiled) and refreshes its weights before each rollout; it draws
with the engine's inverse-CDF sampler (exact, one uniform per row; other seeded streams
than ``torch.multinomial``'s). Text is decoded only when stop strings need it, or once
per finished completion. The requests of a group share their prompt's full KV blocks
through the prefix cache: the engine's scheduler prefills one copy of a prompt and admits
the others once its blocks are cached (`lmforge.infer.scheduler`). The settings
are the engine's own `SamplingParams` (``n``: the group size, ``max_tokens``: the most new
tokens per completion), checked for RL by `check_rollout_sampling`.

A completion keeps the token that stopped it (EOS / end of turn), so the policy is trained
to stop; stop *strings* (``SamplingParams.stop``, e.g. ``</answer>``) are handled here, not
by the engine: they end a completion right after the token that completes them and are kept
in it (the engine's own stop strings cut them off).

Training layout (`completion_batch`, `rollout_tensors`): prompt + completion, right-padded to
``[N, T]``; ``labels`` are -100 except on completion tokens (lmforge's unshifted convention),
so `policy_logprobs` (`lmforge.align.logprobs.model_logprobs`) gives the per-token log-probs
of exactly the sampled tokens and a mask of them. Right padding needs no attention mask for a
causal model (PPO passes one anyway; its critic reads every position).

Seeds: two stable schemes, one per trainer, kept apart because each fixes its trainer's
numbers: `request_seed` (GRPO's requests, R1 pass@1 evaluation) and `sha256_seed` (PPO's
requests, prompt order and minibatch shuffles).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lmforge.align.logprobs import model_logprobs
from lmforge.align.shared_prompt import shared_prompt_logprobs
from lmforge.infer import SamplingParams
from lmforge.infer.checks import eval_mode
from lmforge.models.loss import IGNORE_INDEX

__all__ = [
    "Completion",
    "RolloutEngine",
    "check_rollout_sampling",
    "completion_batch",
    "policy_logprobs",
    "request_seed",
    "right_pad",
    "rollout_tensors",
    "sample_completions",
    "sha256_seed",
]


@dataclass
class Completion:
    """One sampled completion. ``completion_ids`` include the stop token when one ended it;
    ``engine_logprobs`` (when asked for) are the engine's log p of each *sampled* token under
    the raw (temperature 1) distribution — the stop token has none."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finish_reason: str  # "stop" or "length"
    engine_logprobs: list[float] | None = None


def check_rollout_sampling(sampling: SamplingParams) -> None:
    """Raise `ValueError` unless ``sampling`` can drive RL rollouts: ``n`` ≥ 1 completions per
    prompt, ``max_tokens`` ≥ 1 (every completion has a token to train on) and a temperature
    > 0 (RL samples; greedy evaluation asks `sample_completions` for ``greedy``)."""
    if sampling.n < 1:
        raise ValueError(f"n={sampling.n} must be ≥ 1")
    if sampling.max_tokens < 1:
        raise ValueError(f"max_tokens={sampling.max_tokens} must be ≥ 1")
    if not sampling.temperature > 0:
        raise ValueError(f"temperature={sampling.temperature} must be > 0 for RL rollouts")


def request_seed(seed: int, *parts: int) -> int:
    """A stable 63-bit seed for one request from ``seed`` and its coordinates (GRPO's
    rollouts and evaluation): ``random.Random`` seeded with the joined string."""
    return random.Random(":".join(map(str, (seed, *parts)))).getrandbits(63)


def sha256_seed(*parts: object) -> int:
    """A stable 63-bit integer from ``parts`` (PPO's request seeds, prompt order and
    shuffles): the first 8 bytes of the joined string's SHA-256."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class RolloutEngine:
    """One inference `lmforge.infer.Engine` reused by every rollout of a training run
    (`sample_completions`' ``engine``): built at the first rollout, rebuilt only when a
    rollout needs more sequences, tokens or KV blocks than it has, or another model or
    tokenizer; before each rollout its weights are refreshed (`Engine.refresh_weights`:
    the prefix cache and fused copies are dropped). ``draw``: the engine's sampler
    (``"inverse_cdf"`` or ``"multinomial"``); ``compile_decode``: the engine's compiled
    decode step (`lmforge.infer.decode_step`: one compilation per shape bucket, at the first
    rollouts, then reused)."""

    def __init__(self, *, draw: str = "inverse_cdf", compile_decode: bool | str = False) -> None:
        self.draw, self.compile_decode = draw, compile_decode
        self.engine = None
        self.builds = 0

    def get(self, model: nn.Module, tokenizer: Any, max_num_seqs: int,
            max_num_batched_tokens: int, num_blocks: int):  # fmt: skip
        """An idle engine on ``model`` with at least these limits, weights refreshed."""
        from lmforge.infer import Engine

        e = self.engine
        if (
            e is not None
            and e.model is model
            and e.tokenizer is tokenizer
            and e.scheduler.max_num_seqs >= max_num_seqs
            and e.scheduler.max_num_batched_tokens >= max_num_batched_tokens
            and e.allocator.num_blocks >= num_blocks
        ):
            while e.has_unfinished():  # abort notices of the last rollout
                e.step()
            e.refresh_weights()
            return e
        self.engine = Engine(
            model,
            tokenizer,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            num_blocks=num_blocks,
            draw=self.draw,
            compile_decode=self.compile_decode,
        )
        self.builds += 1
        return self.engine


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: SamplingParams,
    seeds: Sequence[int],
    *,
    with_logprobs: bool = False,
    greedy: bool = False,
    max_num_seqs: int = 256,
    engine: RolloutEngine | None = None,
) -> list[Completion]:
    """One completion per prompt in ``prompts`` (repeat a prompt for a group), in order.

    ``seeds[i]`` seeds request i; ``greedy`` decodes at temperature 0 (evaluation). Of
    ``sampling`` each request takes everything but ``n`` (one completion per request),
    ``stop`` (stop strings are handled here) and ``seed``; its stop token ids are added to the
    tokenizer's. ``engine``: reuse its engine (default: a fresh one for this call).
    """
    from lmforge.infer import Engine

    check_rollout_sampling(sampling)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        return []
    longest = max(len(p) for p in prompts) + sampling.max_tokens
    limits = dict(
        max_num_seqs=min(max_num_seqs, len(prompts)),
        max_num_batched_tokens=max(2048, longest),
        num_blocks=min(len(prompts), max_num_seqs) * (-(-longest // 16) + 1) + 1,
    )
    if engine is None:
        engine = Engine(model, tokenizer, **limits)
    else:
        engine = engine.get(model, tokenizer, **limits)
    stop_ids = tuple(getattr(tokenizer, "stop_token_ids", ()) or ())
    stop_ids += tuple(i for i in sampling.stop_token_ids if i not in stop_ids)
    ids = [f"rollout-{next(_REQUEST_IDS)}" for _ in prompts]

    def add(i: int) -> None:
        params = replace(
            sampling,
            n=1,
            temperature=0.0 if greedy else sampling.temperature,
            stop=(),
            stop_token_ids=stop_ids,
            seed=int(seeds[i]),
            logprobs=0 if with_logprobs else None,
            detokenize=bool(sampling.stop),  # else the text is decoded once, when finished
        )
        engine.add_request(list(prompts[i]), params, request_id=ids[i])

    for i in range(len(prompts)):  # a group's copies share one prefill (the scheduler's)
        add(i)
    done: dict[str, Completion] = {}
    logprobs: dict[str, list[float]] = {i: [] for i in ids}
    while len(done) < len(ids):
        if not engine.has_unfinished():
            raise RuntimeError("the engine stopped before every rollout finished")
        for out in engine.step():
            rid = out.request_id
            if rid in done or rid not in logprobs:
                continue
            if out.logprobs:
                logprobs[rid].extend(lp.logprob for lp in out.logprobs)
            hit = _first_stop(out.text, sampling.stop)
            if hit is not None and out.finish_reason != "abort":
                tokens = list(out.token_ids)
                done[rid] = Completion(out.prompt_token_ids, tokens, out.text, "stop")
                engine.abort(rid)
            elif out.finished:
                tokens = list(out.token_ids)
                if out.finish_reason == "stop" and isinstance(out.stop_reason, int):
                    tokens.append(out.stop_reason)  # train the policy to stop
                done[rid] = Completion(out.prompt_token_ids, tokens, out.text, out.finish_reason)
    completions = [done[i] for i in ids]
    if with_logprobs:
        for rid, c in zip(ids, completions, strict=True):
            c.engine_logprobs = logprobs[rid][: len(c.completion_ids)]
    return completions


_REQUEST_IDS = itertools.count()  # rollout request ids, unique in the process


def _first_stop(text: str, stops: Sequence[str]) -> str | None:
    for stop in stops:
        if stop in text:
            return stop
    return None


# ---------------------------------------------------------------------- training layout
def right_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` ``[N, width]`` (default width: the longest sequence):
    ``seqs`` right-padded with ``pad_id``, the mask 1 on real tokens."""
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


def completion_batch(
    seqs: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    pad_id: int,
    width: int | None = None,
) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels`` ``[N, width]`` of prompt + completion
    sequences (`right_pad`); labels are -100 but on completion tokens (after each sequence's
    ``prompt_lens[i]`` prompt tokens)."""
    ids, mask = right_pad(seqs, pad_id, width)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, (seq, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        if len(seq) <= p:
            raise ValueError(f"completion {row} is empty (max_tokens ≥ 1 gives ≥ 1 token)")
        labels[row, p : len(seq)] = ids[row, p : len(seq)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def rollout_tensors(completions: Sequence[Completion], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``labels`` ``[N, T]`` (prompt + completion, right-padded with
    ``pad_id``; labels -100 but on completion tokens) and ``lengths`` ``[N]`` (completion
    tokens) — `completion_batch` without the attention mask a causal policy does not need."""
    if not completions:
        raise ValueError("no completions to lay out")
    seqs = [list(c.prompt_ids) + list(c.completion_ids) for c in completions]
    batch = completion_batch(seqs, [len(c.prompt_ids) for c in completions], pad_id)
    lengths = torch.tensor([len(c.completion_ids) for c in completions])
    return {"input_ids": batch["input_ids"], "labels": batch["labels"], "lengths": lengths}


@torch.no_grad()
def policy_logprobs(
    model: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """``[N, T]`` log-probs of the sampled tokens (logits positions, 0 elsewhere) — the
    same function the training objective evaluates, in eval mode and without gradients (old /
    reference policy). The batch's ``attention_mask`` is used when it has one. Each module's
    train/eval mode is restored afterwards (`lmforge.infer.checks.eval_mode`): a policy may
    share modules with a bigger model, e.g. PPO's actor-critic, whose modes are its own.
    Without an attention mask, completions that share a prompt (GRPO's groups) run it once
    (`lmforge.align.shared_prompt`, the same numbers)."""
    with eval_mode(model):
        if "attention_mask" not in batch:
            shared = shared_prompt_logprobs(
                model, batch["input_ids"], batch["labels"], temperature=temperature
            )
            if shared is not None:
                return shared[0]
        logps, _, _ = model_logprobs(
            model,
            batch["input_ids"],
            batch["labels"],
            attention_mask=batch.get("attention_mask"),
            temperature=temperature,
        )
    return logps
