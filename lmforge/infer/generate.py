"""Batched autoregressive generation in Hugging Face's decoder-only style.

Greedy decoding is a thin wrapper over the inference `Engine` (paged KV cache, continuous
batching: each row runs unpadded and leaves the batch when it ends). Beam search is
`lmforge.infer.beam.beam_search`. Sampling keeps a lockstep loop over a contiguous cache:

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.infer.engine import Engine, SamplingParams
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
        from lmforge.infer.beam import beam_search

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
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences={num_return_sequences!r} must be an integer ≥ 1")
    if greedy and num_return_sequences != 1:
        raise ValueError(
            "greedy decoding returns one sequence per prompt; num_return_sequences > 1 needs "
            "do_sample=True or num_beams ≥ num_return_sequences"
        )
    if not _is_int(min_new_tokens) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens={min_new_tokens!r} must be an integer ≥ 0")
    check_sampling_args(temperature, top_k, top_p)
    _check_max_new_tokens(max_new_tokens)
    config = model.config
    vocab_size = config.vocab_size
    defaults = getattr(model, "generation_config", None) or {}
    if eos_token_id is None:
        eos_token_id = defaults.get("eos_token_id", config.eos_token_id)
    eos_ids = _eos_ids(eos_token_id, vocab_size)
    pad_id = _pad_id(
        pad_token_id, defaults.get("pad_token_id", config.pad_token_id), eos_ids, vocab_size
    )
    device = next(model.parameters()).device
    input_ids = _check_input_ids(input_ids, vocab_size, device)
    mask = _prompt_mask(input_ids, attention_mask, pad_id, eos_ids)
    _check_lengths(mask, max_new_tokens, config.max_position_embeddings)
    rng = _make_generator(generator, seed, device)
    if num_return_sequences > 1:  # HF expands the prompts before sampling
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        mask = mask.repeat_interleave(num_return_sequences, dim=0)
    if max_new_tokens == 0:
        return input_ids.clone()
    if greedy:
        with _eval_mode(model):
            new_tokens = _engine_greedy(
                model, input_ids, mask, max_new_tokens, min_new_tokens, eos_ids, pad_id
            )
        return torch.cat([input_ids, new_tokens], dim=1)
    steps = iter(range(max_new_tokens))
    eos_index = None if eos_ids is None else torch.tensor(eos_ids, device=device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if next(steps) < min_new_tokens and eos_index is not None:
            logits = logits.index_fill(1, eos_index, float("-inf"))  # HF's MinNewTokens...
        return sample_next_token(logits, do_sample, temperature, top_k, top_p, rng)

    with _eval_mode(model), torch.inference_mode():
        new_tokens = _decode(model, input_ids, mask, max_new_tokens, pick, eos_ids, pad_id)
    # Concatenating outside inference mode returns an ordinary tensor, so the output can
    # feed a later forward that needs gradients (e.g. RL rollouts).
    return torch.cat([input_ids, new_tokens], dim=1)


def _engine_greedy(
    model, input_ids, mask, max_new_tokens, min_new_tokens, eos_ids, pad_id
) -> torch.Tensor:
    """Greedy rows through the `Engine`: each prompt unpadded (positions from 0, as HF derives
    them from the mask); a row's eos is kept, then ``pad_id`` fills it to the longest row."""
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    params = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=0,
        ignore_eos=True,  # the ids that end a row are exactly ``eos_ids``
        stop_token_ids=tuple(eos_ids or ()),
        min_tokens=min_new_tokens,
    )
    block_size = 16
    per_row = -(-(input_ids.shape[1] + max_new_tokens) // block_size)
    engine = Engine(
        model,
        block_size=block_size,
        num_blocks=len(prompts) * per_row,
        max_num_seqs=len(prompts),
        max_num_batched_tokens=max(2048, input_ids.shape[1]),
    )
    rows = []
    for out in engine.generate(prompts, params):
        ended = [out.stop_reason] if out.finish_reason == "stop" else []
        rows.append(out.token_ids + ended)
    width = max(len(r) for r in rows)
    filled = [r + [pad_id] * (width - len(r)) for r in rows]
    return torch.tensor(filled, dtype=torch.long, device=input_ids.device)


def _decode(model, input_ids, mask, max_new_tokens, pick, eos_ids, pad_id) -> torch.Tensor:
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


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# ---------------------------------------------------------------------- validation
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer ≥ 0")


def _check_token_id(name: str, value: object, vocab_size: int) -> int:
    if not _is_int(value) or not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value!r} must be a token id in [0, {vocab_size})")
    return value


def _eos_ids(eos: int | Sequence[int] | None, vocab_size: int) -> list[int] | None:
    """Normalise an id or a list of ids to a non-empty list (or None: never stop early)."""
    if eos is None:
        return None
    ids = [eos] if _is_int(eos) else eos
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"eos_token_id={eos!r} must be an int or a list of ints")
    checked = [_check_token_id("eos_token_id", i, vocab_size) for i in ids]
    return checked or None


def _pad_id(
    pad_token_id: int | None, config_pad: int | None, eos_ids: list[int] | None, vocab_size: int
) -> int | None:
    """Explicit pad, else the config's, else the first eos id (HF's fallback)."""
    if pad_token_id is not None:
        return _check_token_id("pad_token_id", pad_token_id, vocab_size)
    if config_pad is not None:
        return _check_token_id("model.config.pad_token_id", config_pad, vocab_size)
    return None if eos_ids is None else eos_ids[0]


def _check_input_ids(input_ids: torch.Tensor, vocab_size: int, device: torch.device):
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.ndim != 2:
        hint = " (add a batch dimension: input_ids[None])" if input_ids.ndim == 1 else ""
        raise ValueError(f"input_ids must be [batch, seq_len], got {tuple(input_ids.shape)}{hint}")
    if input_ids.dtype not in _INT_DTYPES:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}; every prompt needs ≥ 1 token (e.g. BOS)"
        )
    if input_ids.device != device:
        raise ValueError(
            f"input_ids is on {input_ids.device} but the model is on {device}; "
            f"move it with input_ids.to({str(device)!r})"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"input_ids contains ids in [{lo}, {hi}], outside [0, {vocab_size})")
    return input_ids.long()


def _prompt_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pad_id: int | None,
    eos_ids: list[int] | None,
) -> torch.Tensor:
    """The prompt's ``[B, T]`` 0/1 int64 mask, checked to be left padding."""
    if attention_mask is None:
        mask = torch.ones_like(input_ids)
        pad_is_eos = eos_ids is not None and pad_id in eos_ids
        if pad_id is not None and not pad_is_eos and bool((input_ids == pad_id).any()):
            mask = (input_ids != pad_id).long()
    else:
        mask = _check_attention_mask(attention_mask, input_ids)
    empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt rows {empty} are all padding (attention_mask is all 0)")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        right = (mask[:, -1] == 0).nonzero().flatten().tolist()
        what = f"right padding in rows {right}" if right else "gaps in the attention mask"
        raise ValueError(
            f"{what}: decoder-only generation needs left-padded prompts (each attention_mask "
            "row 0…0 1…1); with a HF tokenizer set tokenizer.padding_side = 'left'"
        )
    return mask


def _check_attention_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
            f"{tuple(input_ids.shape)}; they must match"
        )
    if attention_mask.device != input_ids.device:
        raise ValueError(
            f"attention_mask is on {attention_mask.device}, input_ids on {input_ids.device}"
        )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token)")
    return attention_mask.long()


def _check_lengths(mask: torch.Tensor, max_new_tokens: int, max_positions: int) -> None:
    """Refuse positions the model was never trained on (RoPE would silently extrapolate)."""
    longest = int(mask.sum(dim=1).max())
    if longest > max_positions:
        raise ValueError(
            f"prompt of {longest} tokens exceeds the model's max_position_embeddings="
            f"{max_positions}; truncate it"
        )
    if longest + max_new_tokens > max_positions:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_position_embeddings={max_positions}; use max_new_tokens ≤ "
            f"{max_positions - longest}"
        )


def _make_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator | None:
    if seed is not None and generator is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        if not _is_int(seed):
            raise ValueError(f"seed={seed!r} must be an integer")
        return torch.Generator(device=device).manual_seed(seed)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}")
    return generator
