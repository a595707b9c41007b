"""Beam search, token for token as `transformers`' ``generate(num_beams=K, do_sample=False)``.

Per prompt it keeps two lists of K hypotheses: *running* ones (summed log-probabilities
log p(y | x), extended every step) and *finished* ones (ended by an end-of-sequence token or
by ``max_new_tokens``), scored with the length penalty of Wu et al. 2016 (GNMT, §7) in
Hugging Face's simplified form, with n the number of generated tokens (EOS included):

    score(y) = log p(y | x) / n ** length_penalty

Each step (one forward of the B·K running rows):

    log p(· | beam) + beam score ─▶ best 2·K of the K·V continuations (more with several EOS ids)
        ├─ those ending in EOS (or at max length) among the first K ─▶ merged into finished (top K)
        └─ the best K that did not end ─▶ next running beams (KV cache rows reordered to match)

Stopping (per HF): ``early_stopping=True`` stops a prompt once it has K finished
hypotheses; ``False`` also stops when the best running beam, normalised at its current
length, cannot beat the worst finished one; ``"never"`` assumes, when
``length_penalty > 0``, that the running beam could still grow to ``max_new_tokens``.

Layout (as HF): the prompts are left-padded ``[B, T]`` and the result is
``[B · num_return_sequences, T + n]``, the best ``num_return_sequences`` hypotheses of each
prompt in order of score, rows grouped by prompt; hypotheses shorter than the longest
returned one are filled with the pad id. The empty-slot and finished-candidate masking
use HF's additive ``-1e9`` in float32, so ties break identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.infer.checks import (
    check_input_ids,
    check_lengths,
    check_max_new_tokens,
    default_eos,
    default_pad,
    eos_ids,
    eval_mode,
    is_int,
    pad_id,
    prompt_mask,
)
from lmforge.infer.greedy import greedy_generate
from lmforge.models.kv_cache import KVCache

if TYPE_CHECKING:
    from lmforge.models.transformer import CausalLM

# HF's "impossible" score: added (not assigned) so float32 rounding and ties match it.
_NEG = -1.0e9
EarlyStopping = bool | str


@dataclass
class BeamSearchOutput:
    """``sequences`` ``[B·R, T + n]``; ``sequences_scores`` ``[B·R]``: each returned
    hypothesis' length-normalised score (HF's ``sequences_scores``; None when
    ``num_beams == 1``, which is greedy decoding)."""

    sequences: torch.LongTensor
    sequences_scores: torch.Tensor | None


def beam_search(
    model: CausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_beams: int,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    num_return_sequences: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> torch.LongTensor:
    """Beam-search continuations of ``input_ids``; see `beam_search_with_scores`."""
    return beam_search_with_scores(
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
    ).sequences


def beam_search_with_scores(
    model: CausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_beams: int,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
    early_stopping: EarlyStopping = False,
    num_return_sequences: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> BeamSearchOutput:
    """Beam search with Hugging Face semantics (module docstring).

    Args:
        model: an lmforge `CausalLM` (run in eval mode; module modes are restored).
        input_ids: ``[B, T]`` token ids, left-padded when prompts differ in length.
        attention_mask: ``[B, T]`` 1 = token, 0 = left padding; inferred as in `generate`.
        num_beams: K ≥ 1 hypotheses kept per prompt. ``1`` is greedy decoding, as in HF.
        max_new_tokens: at most this many generated tokens (0 returns the prompts).
        min_new_tokens: end-of-sequence ids are forbidden before this many new tokens.
        length_penalty: exponent α of the length normalisation ``n ** α``; > 0 favours
            longer hypotheses, < 0 shorter ones.
        early_stopping: ``True``, ``False`` or ``"never"`` (module docstring).
        num_return_sequences: R ≤ K best hypotheses returned per prompt.
        eos_token_id: an id or list of ids; defaults to ``model.generation_config``, then
            ``model.config.eos_token_id``. None: hypotheses end only at ``max_new_tokens``.
        pad_token_id: fill after a short hypothesis; defaults to the config's pad, then
            the first eos id. As in HF, a pad id of 0 (given or from the config) fills
            with the first eos id instead (``transformers`` tests the pad tensor's truth).

    Returns:
        `BeamSearchOutput` with ``sequences`` ``[B·R, T + n]`` int64 (prompt rows repeated
        R times, best first) and their scores.
    """
    _check_beam_args(
        num_beams, num_return_sequences, length_penalty, early_stopping, min_new_tokens
    )
    if num_beams == 1 and min_new_tokens:
        raise ValueError("min_new_tokens needs num_beams > 1 (generate has no such option)")
    check_max_new_tokens(max_new_tokens)
    config = model.config
    if eos_token_id is None:
        eos_token_id = default_eos(model)
    eos = eos_ids(eos_token_id, config.vocab_size)
    pad = pad_id(pad_token_id, default_pad(model), eos, config.vocab_size)
    device = next(model.parameters()).device
    input_ids = check_input_ids(input_ids, config.vocab_size, device)
    mask = prompt_mask(input_ids, attention_mask, pad, eos)
    check_lengths(mask, max_new_tokens, config.max_position_embeddings)
    if num_beams == 1:  # HF decodes greedily here; the beam algorithm would differ at EOS
        sequences = greedy_generate(model, input_ids, mask, max_new_tokens, 0, eos, pad)
        return BeamSearchOutput(sequences=sequences, sequences_scores=None)
    if max_new_tokens == 0:
        return BeamSearchOutput(
            sequences=input_ids.repeat_interleave(num_return_sequences, dim=0),
            sequences_scores=torch.zeros(input_ids.shape[0] * num_return_sequences, device=device),
        )
    # HF fills with `pad or eos[0]`: a pad id of 0 is falsy there. Without eos ids every
    # hypothesis runs to max_new_tokens, so the fill never shows.
    fill = (pad or eos[0]) if eos is not None else 0
    settings = _Settings(
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        length_penalty=float(length_penalty),
        early_stopping=early_stopping,
        eos=None if eos is None else torch.tensor(eos, device=device),
    )
    with eval_mode(model), torch.inference_mode():
        beams = _search(model, input_ids, mask, settings, fill)
    r = num_return_sequences
    lengths = beams.finished_lengths[:, :r].flatten()
    width = input_ids.shape[1] + int(lengths.max())
    sequences = beams.finished[:, :r].flatten(0, 1)[:, :width]
    scores = beams.finished_scores[:, :r].flatten()
    # Cloning outside inference mode gives ordinary tensors (usable in autograd later).
    return BeamSearchOutput(sequences=sequences.clone(), sequences_scores=scores.clone())


# ---------------------------------------------------------------------- the search
@dataclass
class _Settings:
    num_beams: int
    max_new_tokens: int
    min_new_tokens: int
    length_penalty: float
    early_stopping: EarlyStopping
    eos: torch.Tensor | None


@dataclass
class _Beams:
    """Search state for B prompts × K beams; token buffers are ``[B, K, T + max_new]``."""

    running: torch.Tensor  # prompt + tokens of the live hypotheses
    running_scores: torch.Tensor  # [B, K] summed log-probs; _NEG marks an empty slot
    finished: torch.Tensor  # the best ended hypotheses, best first
    finished_scores: torch.Tensor  # [B, K] length-normalised; _NEG: empty
    finished_lengths: torch.Tensor  # [B, K] generated tokens of each finished hypothesis
    is_finished: torch.Tensor  # [B, K] the slot holds a real finished hypothesis
    may_improve: torch.Tensor  # [B, 1] running beams could still beat a finished one


def _search(model, input_ids, mask, s: _Settings, fill: int) -> _Beams:
    batch, prompt_len = input_ids.shape
    k, device = s.num_beams, input_ids.device
    beams = _initial_beams(input_ids, k, prompt_len + s.max_new_tokens, fill)
    # Prefill each prompt once, then copy its cache rows (and logits) to its K beams.
    cache = KVCache.for_model(model, batch, prompt_len + s.max_new_tokens)
    logits = model(input_ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]
    to_beams = torch.arange(batch, device=device).repeat_interleave(k)
    cache.reorder(to_beams)
    logits, mask = logits[to_beams], mask[to_beams]
    n_candidates = max(2, 1 + (0 if s.eos is None else len(s.eos))) * k
    for step in range(s.max_new_tokens):
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if s.eos is not None and step < s.min_new_tokens:
            log_probs[:, s.eos] = -float("inf")
        beams, parents, stop = _advance(beams, log_probs, step, prompt_len, n_candidates, s)
        if stop:
            break
        cache.reorder((parents + torch.arange(batch, device=device)[:, None] * k).flatten())
        mask = F.pad(mask, (0, 1), value=1)
        tokens = beams.running[:, :, prompt_len + step].reshape(-1, 1)
        logits = model(tokens, attention_mask=mask, cache=cache).logits[:, -1]
    return beams


def _initial_beams(input_ids: torch.Tensor, k: int, max_len: int, fill: int) -> _Beams:
    batch, prompt_len = input_ids.shape
    running = input_ids.new_full((batch, k, max_len), fill)
    running[:, :, :prompt_len] = input_ids[:, None]
    # Only beam 0 is live at first, so the K beams do not all pick the same token.
    running_scores = torch.zeros(batch, k, device=input_ids.device)
    running_scores[:, 1:] = _NEG
    return _Beams(
        running=running,
        running_scores=running_scores,
        finished=running.clone(),
        finished_scores=torch.full_like(running_scores, _NEG),
        finished_lengths=torch.zeros(batch, k, dtype=torch.long, device=input_ids.device),
        is_finished=torch.zeros(batch, k, dtype=torch.bool, device=input_ids.device),
        may_improve=torch.ones(batch, 1, dtype=torch.bool, device=input_ids.device),
    )


def _advance(
    beams: _Beams,
    log_probs: torch.Tensor,
    step: int,
    prompt_len: int,
    n_candidates: int,
    s: _Settings,
) -> tuple[_Beams, torch.Tensor, bool]:
    """One beam-search step given the running rows' next-token log-probs ``[B·K, V]``.

    Returns the new state, each new running beam's parent beam ``[B, K]`` (to reorder the
    KV cache) and whether the whole search is over."""
    batch, k, _ = beams.running.shape
    pos = prompt_len + step
    totals = log_probs.view(batch, k, -1) + beams.running_scores[:, :, None]
    cand_scores, flat = torch.topk(totals.view(batch, -1), n_candidates)
    vocab = log_probs.shape[-1]
    cand_parent, cand_token = flat // vocab, flat % vocab
    cand_seqs = _gather(beams.running, cand_parent)
    cand_seqs[:, :, pos] = cand_token
    ended = _ends(cand_token, s.eos, last_step=step + 1 == s.max_new_tokens)

    # Next running beams: the best K candidates that did not end.
    live_scores = cand_scores + ended.float() * _NEG
    keep = torch.topk(live_scores, k).indices
    running = _gather(cand_seqs, keep)
    running_scores = _gather(live_scores, keep)
    parents = _gather(cand_parent, keep)

    finished, finished_scores, finished_lengths, is_finished = _merge_finished(
        beams, cand_seqs, cand_scores, ended, step + 1, s
    )
    may_improve = _may_still_improve(
        beams.may_improve, running_scores, finished_scores, is_finished, step + 1, s
    )
    # Over when no prompt can improve, every list is final, or no candidate can continue
    # (one host sync per step).
    stop = ~may_improve.any() | ended.all()
    if s.early_stopping is True:
        stop |= is_finished.all()
    new = _Beams(
        running,
        running_scores,
        finished,
        finished_scores,
        finished_lengths,
        is_finished,
        may_improve,
    )
    return new, parents, bool(stop)


def _ends(tokens: torch.Tensor, eos: torch.Tensor | None, last_step: bool) -> torch.Tensor:
    """Which candidates end their hypothesis: an EOS token, or the length limit."""
    if last_step:
        return torch.ones_like(tokens, dtype=torch.bool)
    if eos is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, eos)


def _merge_finished(beams: _Beams, cand_seqs, cand_scores, ended, n_generated: int, s: _Settings):
    """Add this step's ended candidates (only those among the first K, as HF) to the
    finished hypotheses, normalised by ``n_generated ** length_penalty``; keep the best K."""
    batch, k = beams.finished_scores.shape
    top_k = torch.zeros_like(ended)
    top_k[:, :k] = True
    new_finished = ended & top_k
    scores = cand_scores / (n_generated**s.length_penalty)
    full = beams.is_finished.all(dim=-1, keepdim=True) & (s.early_stopping is True)
    scores += full.float() * _NEG  # with early_stopping=True a full list is final
    scores += (~beams.may_improve).float() * _NEG
    scores += (~new_finished) * _NEG  # live candidates are not finished hypotheses
    lengths = torch.full_like(cand_seqs[:, :, 0], n_generated)
    merged_scores = torch.cat([beams.finished_scores, scores], dim=1)
    best = torch.topk(merged_scores, k).indices
    return (
        _gather(torch.cat([beams.finished, cand_seqs], dim=1), best),
        _gather(merged_scores, best),
        _gather(torch.cat([beams.finished_lengths, lengths], dim=1), best),
        _gather(torch.cat([beams.is_finished, new_finished], dim=1), best),
    )


def _may_still_improve(
    may_improve, running_scores, finished_scores, is_finished, n_generated: int, s: _Settings
) -> torch.Tensor:
    """HF's early-stop heuristic: can the best running beam still beat the worst finished
    hypothesis? It is judged at its current length, or (``"never"`` with a positive length
    penalty) at the longest length it could reach. Once false, it stays false."""
    if s.early_stopping == "never" and s.length_penalty > 0.0:
        best_length = s.max_new_tokens
    else:
        best_length = n_generated
    best_running = running_scores[:, :1] / (best_length**s.length_penalty)
    worst = finished_scores.min(dim=1, keepdim=True).values
    worst_finished = torch.where(is_finished, worst, _NEG)
    return may_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select along the beam dimension: ``tensor[b, index[b, j], ...]``."""
    while index.ndim < tensor.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


# ---------------------------------------------------------------------- validation
def _check_beam_args(
    num_beams, num_return_sequences, length_penalty, early_stopping, min_new_tokens
) -> None:
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} must be an integer ≥ 1")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences!r} must be an integer in "
            f"[1, num_beams={num_beams}] (beam search returns its best hypotheses)"
        )
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty={length_penalty!r} must be a number")
    if length_penalty != length_penalty or abs(length_penalty) == float("inf"):
        raise ValueError(f"length_penalty={length_penalty!r} must be finite")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    if not is_int(min_new_tokens) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens={min_new_tokens!r} must be an integer ≥ 0")
