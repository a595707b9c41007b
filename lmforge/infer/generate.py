"""Batched autoregressive generation in Hugging Face's decoder-only style.

Greedy decoding is a thin wrapper over the inference `Engine` (paged KV cache, continuous
batching: each row runs unpadded and leaves the batch when it ends; `lmforge.infer.greedy`).
Beam search is `lmforge.infer.beam.beam_search`. Arguments are checked by
`lmforge.infer.checks`, as in every other decoding entry point. Sampling keeps a lockstep loop over a contiguous cache:

    prompt [B, T] (left-padded) ─ prefill once ─▶ logits of the last slot ─▶ pick token
          ▲                                                                     │
          └──── one-token forward, attention mask grows by one column ◀─────────┘

because HF draws one ``multinomial`` over the whole ``[B, V]`` batch per step, finished rows
included, and only that keeps the sampled tokens identical to ``transformers`` under the
same global seed (the engine instead gives every request its own RNG stream).

Conventions (as ``transformers``' ``generate``): prompts are left-padded and described by
``attention_mask`` (1 = token, 0 = padding); the result is prompt + new tokens
``[B, T + n]``; a row that has emitted an end-of-sequence token is finished and every
later token of it is ``pad_token_id``; the loop stops as soon as every row is finished, so
``n`` ≤ ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.infer.beam import beam_search
from lmforge.infer.checks import (
    check_input_ids,
    check_lengths,
    check_max_new_tokens,
    default_eos,
    default_pad,
    eos_ids,
    eval_mode,
    is_int,
    make_generator,
    pad_id,
    prompt_mask,
)
from lmforge.infer.greedy import greedy_generate
from lmforge.infer.sampling import check_sampling_args, sample_next_token
from lmforge.models.kv_cache import KVCache

if TYPE_CHECKING:
    from lmforge.models.transformer import CausalLM


def generate(
    model: CausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
) -> torch.LongTensor:
    """Continue each prompt of ``input_ids`` ``[B, T]`` by up to ``max_new_tokens`` tokens.

    Args:
        model: an lmforge `CausalLM` (run in eval mode; its module modes are restored).
        input_ids: ``[B, T]`` integer token ids, left-padded when prompts differ in length.
        attention_mask: ``[B, T]`` 1 for tokens, 0 for left padding. When omitted it is
            inferred as HF does: ``input_ids != pad_token_id`` if the pad token occurs in
            the prompts and is not an end-of-sequence token, otherwise all ones.
        max_new_tokens: upper bound on generated tokens (0 returns the prompt).
        do_sample: sample (with ``temperature``, ``top_k``, ``top_p``) instead of greedy
            argmax. ``temperature=0`` also means greedy.
        eos_token_id: an id or a list of ids that end a row; defaults to
            the model's ``generation_config`` (from ``generation_config.json``), then
            ``model.config.eos_token_id`` — as HF does.
        pad_token_id: filler after a row has ended; defaults to ``model.config.pad_token_id``,
            then to the first end-of-sequence id.
        generator: RNG for sampling. ``seed`` instead creates a private generator, so the
            result is reproducible and the global RNG is left untouched.
        min_new_tokens: end-of-sequence ids are suppressed until a row has this many tokens.
        num_beams: > 1 runs beam search (`lmforge.infer.beam.beam_search`) with
            ``length_penalty``, ``early_stopping`` and ``num_return_sequences``.
        num_return_sequences: rows returned per prompt (beam search, or independent
            samples when ``do_sample``; greedy decoding allows only 1, as in HF).

    Returns:
        ``[B·R, T + n]`` int64: the prompts followed by the ``n`` generated columns.
    """
    if num_beams != 1:
        if do_sample:
            raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
        return beam_search(
            model,
            input_ids,
            attention_mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    greedy = not do_sample or temperature == 0
    if not is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences={num_return_sequences!r} must be an integer ≥ 1")
    if greedy and num_return_sequences != 1:
        raise ValueError(
            "greedy decoding returns one sequence per prompt; num_return_sequences > 1 needs "
            "do_sample=True or num_beams ≥ num_return_sequences"
        )
    if not is_int(min_new_tokens) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens={min_new_tokens!r} must be an integer ≥ 0")
    check_sampling_args(temperature, top_k, top_p)
    check_max_new_tokens(max_new_tokens)
    config = model.config
    vocab_size = config.vocab_size
    if eos_token_id is None:
        eos_token_id = default_eos(model)
    eos = eos_ids(eos_token_id, vocab_size)
    pad = pad_id(pad_token_id, default_pad(model), eos, vocab_size)
    device = next(model.parameters()).device
    input_ids = check_input_ids(input_ids, vocab_size, device)
    mask = prompt_mask(input_ids, attention_mask, pad, eos)
    check_lengths(mask, max_new_tokens, config.max_position_embeddings)
    rng = make_generator(generator, seed, device)
    if num_return_sequences > 1:  # HF expands the prompts before sampling
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        mask = mask.repeat_interleave(num_return_sequences, dim=0)
    if max_new_tokens == 0:
        return input_ids.clone()
    if greedy:
        return greedy_generate(model, input_ids, mask, max_new_tokens, min_new_tokens, eos, pad)
    steps = iter(range(max_new_tokens))
    eos_index = None if eos is None else torch.tensor(eos, device=device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if next(steps) < min_new_tokens and eos_index is not None:
            logits = logits.index_fill(1, eos_index, float("-inf"))  # HF's MinNewTokens...
        return sample_next_token(logits, do_sample, temperature, top_k, top_p, rng)

    with eval_mode(model), torch.inference_mode():
        new_tokens = _decode(model, input_ids, mask, max_new_tokens, pick, eos, pad)
    # Concatenating outside inference mode returns an ordinary tensor, so the output can
    # feed a later forward that needs gradients (e.g. RL rollouts).
    return torch.cat([input_ids, new_tokens], dim=1)


def _decode(
    model: CausalLM,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    eos_ids: list[int] | None,
    pad_id: int | None,
) -> torch.Tensor:
    """Prefill the prompt once, then feed back one token per step; returns ``[B, n]``."""
    batch, prompt_len = input_ids.shape
    cache = KVCache.for_model(model, batch, prompt_len + max_new_tokens)
    out = model(input_ids, attention_mask=mask, cache=cache, logits_to_keep=1)
    eos = None if eos_ids is None else torch.tensor(eos_ids, device=input_ids.device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    tokens = []
    for step in range(max_new_tokens):
        token = pick(out.logits[:, -1].float())
        if eos is not None:
            token = torch.where(unfinished, token, pad_id)
            unfinished &= ~torch.isin(token, eos)
        tokens.append(token)
        if step + 1 == max_new_tokens or not bool(unfinished.any()):
            break
        mask = F.pad(mask, (0, 1), value=1)
        out = model(token[:, None], attention_mask=mask, cache=cache)
    return torch.stack(tokens, dim=1)
