"""Input checks and shared set-up for every decoding entry point.

`generate`, `beam_search`, `speculative_generate` and the `Engine` take prompts, end-of-sequence
ids, a pad id, seeds and a model; this module is the one place that normalises and checks them,
so each bad input gets the same clear error wherever it is passed:

    default_eos / default_pad      the model's ids: ``generation_config`` first, then its config
    eos_ids / pad_id               an id or a list of ids → a checked list (HF's fallbacks)
    check_input_ids / prompt_mask  a left-padded batch ``[B, T]`` and its 0/1 mask
    check_single_prompt            one sequence ``[T]`` or ``[1, T]`` (speculative decoding)
    check_prompt_tokens            a list of ids (the engine's requests)
    check_lengths                  prompt + new tokens within ``max_position_embeddings``
    make_generator                 ``seed`` or ``generator`` → a private RNG (or None)
    eval_mode                      eval mode for a call; every module's own mode restored
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_max_new_tokens(max_new_tokens: int) -> None:
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer ≥ 0")


def check_token_id(name: str, value: object, vocab_size: int) -> int:
    """``value`` if it is a token id in ``[0, vocab_size)``; `ValueError` naming ``name``."""
    if not is_int(value) or not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value!r} must be a token id in [0, {vocab_size})")
    return value


# ---------------------------------------------------------------------- special ids
def default_eos(model: Any) -> int | Sequence[int] | None:
    """The model's end-of-sequence id(s): its ``generation_config`` (from
    ``generation_config.json``), then ``model.config.eos_token_id`` — as HF does. Unchecked."""
    defaults = getattr(model, "generation_config", None) or {}
    return defaults.get("eos_token_id", model.config.eos_token_id)


def default_pad(model: Any) -> int | None:
    """The model's pad id: its ``generation_config``, then ``model.config``. Unchecked."""
    defaults = getattr(model, "generation_config", None) or {}
    return defaults.get("pad_token_id", model.config.pad_token_id)


def eos_ids(eos: int | Sequence[int] | None, vocab_size: int) -> list[int] | None:
    """Normalise an id or a list of ids to a non-empty list (or None: never stop early)."""
    if eos is None:
        return None
    ids = [eos] if is_int(eos) else eos
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"eos_token_id={eos!r} must be an int or a list of ints")
    checked = [check_token_id("eos_token_id", i, vocab_size) for i in ids]
    return checked or None


def pad_id(
    pad_token_id: int | None, config_pad: int | None, eos_ids: list[int] | None, vocab_size: int
) -> int | None:
    """Explicit pad, else the config's, else the first eos id (HF's fallback)."""
    if pad_token_id is not None:
        return check_token_id("pad_token_id", pad_token_id, vocab_size)
    if config_pad is not None:
        return check_token_id("model.config.pad_token_id", config_pad, vocab_size)
    return None if eos_ids is None else eos_ids[0]


# ---------------------------------------------------------------------- prompts
def check_id_range(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Every id of a non-empty ``input_ids`` lies in ``[0, vocab_size)``."""
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"input_ids contains ids in [{lo}, {hi}], outside [0, {vocab_size})")


def check_input_ids(
    input_ids: torch.Tensor, vocab_size: int, device: torch.device
) -> torch.LongTensor:
    """A ``[B, T]`` integer batch on the model's ``device``, returned as int64."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.ndim != 2:
        hint = " (add a batch dimension: input_ids[None])" if input_ids.ndim == 1 else ""
        raise ValueError(f"input_ids must be [batch, seq_len], got {tuple(input_ids.shape)}{hint}")
    if input_ids.dtype not in INT_DTYPES:
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
    check_id_range(input_ids, vocab_size)
    return input_ids.long()


def check_single_prompt(
    input_ids: torch.Tensor, config: Any, max_new_tokens: int, device: torch.device
) -> torch.LongTensor:
    """One sequence ``[T]`` or ``[1, T]`` that fits ``max_new_tokens`` more positions;
    returned as ``[T]`` int64 on ``device``."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.ndim == 2:
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"speculative decoding runs one sequence (batch size 1); input_ids has "
                f"shape {tuple(input_ids.shape)}"
            )
        input_ids = input_ids[0]
    if input_ids.ndim != 1 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be [T] or [1, T] with T ≥ 1, got {tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    check_id_range(input_ids, config.vocab_size)
    if len(input_ids) + max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"prompt ({len(input_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    return input_ids.to(device=device, dtype=torch.long)


def check_prompt_tokens(prompt_token_ids: Sequence[int], vocab_size: int) -> list[int]:
    """A non-empty list of token ids in ``[0, vocab_size)`` (an engine request's prompt)."""
    prompt = list(prompt_token_ids)
    if not prompt:
        raise ValueError("prompt_token_ids is empty; every prompt needs ≥ 1 token")
    bad = [t for t in prompt if not is_int(t) or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt_token_ids contains {bad[:5]} outside [0, {vocab_size})")
    return prompt


def prompt_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pad_id: int | None,
    eos_ids: list[int] | None,
) -> torch.Tensor:
    """The prompt's ``[B, T]`` 0/1 int64 mask, checked to be left padding. Without
    ``attention_mask`` it is inferred as HF does: ``input_ids != pad_id`` if the pad token
    occurs in the prompts and is not an end-of-sequence token, otherwise all ones."""
    if attention_mask is None:
        mask = torch.ones_like(input_ids)
        pad_is_eos = eos_ids is not None and pad_id in eos_ids
        if pad_id is not None and not pad_is_eos and bool((input_ids == pad_id).any()):
            mask = (input_ids != pad_id).long()
    else:
        mask = check_attention_mask(attention_mask, input_ids)
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


def check_attention_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """A 0/1 tensor shaped and placed like ``input_ids``, returned as int64."""
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


def check_lengths(mask: torch.Tensor, max_new_tokens: int, max_positions: int) -> None:
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


# ---------------------------------------------------------------------- rng and modes
def make_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator | None:
    """``seed`` → a private generator on ``device`` (the global RNG is left alone); else
    ``generator`` (checked to be on the model's device type); else None (global RNG)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        if not is_int(seed):
            raise ValueError(f"seed={seed!r} must be an integer")
        return torch.Generator(device=device).manual_seed(seed)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}")
    return generator


@contextmanager
def eval_mode(model: torch.nn.Module | None) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode; restore each one's own mode afterwards.
    ``None`` does nothing (an optional second model, e.g. a drafter without one)."""
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
