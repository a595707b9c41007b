"""Next-token selection: temperature, top-k and top-p (nucleus) filtering, then a draw.

Each filter is a pure function on logits ``[..., V]`` that returns new logits, with removed
tokens set to ``-inf``; `sample_next_token` chains them in Hugging Face's order
(temperature → top-k → top-p) and either samples from the softmax or takes the argmax.
The filters match ``transformers``' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper`` (with ``min_tokens_to_keep=1``) value for value, ties included.
"""

from __future__ import annotations

import math

import torch

from lmforge.nn.cpp_ops import cpp_ops_available

FILTERED = float("-inf")


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    """Raise `ValueError` naming every out-of-range sampling argument."""
    errors = []
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        errors.append(f"temperature={temperature!r} must be a number ≥ 0")
    elif not (math.isfinite(temperature) and temperature >= 0):
        errors.append(f"temperature={temperature!r} must be finite and ≥ 0 (0 means greedy)")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        errors.append(f"top_k={top_k!r} must be an integer ≥ 0 (0 disables top-k)")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not (0 < top_p <= 1):
        errors.append(f"top_p={top_p!r} must be in (0, 1] (1 disables top-p)")
    if errors:
        raise ValueError("invalid sampling arguments: " + "; ".join(errors))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature`` > 0: below 1 sharpens the softmax, above 1 flattens
    it (sampling with temperature, as discussed by Holtzman et al. 2019)."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0 (use greedy decoding for 0)")
    return logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits per row, set the rest to ``-inf`` (top-k sampling,
    Fan, Lewis & Dauphin 2018, "Hierarchical Neural Story Generation").

    Every token tied with the k-th largest value is kept, so more than k may survive.
    ``top_k`` of 0, or ≥ the vocabulary size, leaves the logits unchanged.
    """
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer ≥ 0 (0 disables top-k)")
    if top_k == 0 or top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, FILTERED)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019, "The Curious Case of Neural Text
    Degeneration"): keep the smallest set of most likely tokens whose total
    probability reaches ``top_p``; set the rest to ``-inf``.

    As in ``transformers``: sort ascending, drop every token whose cumulative probability
    (itself included) is ≤ 1 − top_p, and always keep the most likely token. A group of
    tied logits that straddles the threshold is split in ``torch.sort``'s order — the same
    (unstable) sort HF uses, so results agree with HF's exactly. ``top_p`` = 1 is a no-op.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 disables top-p)")
    if top_p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1] = False  # the most likely token always survives
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, FILTERED)


def process_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature, then top-k, then top-p — HF's processor order. Its softmax is the
    distribution `sample_next_token` draws from."""
    logits = apply_temperature(logits, temperature)
    logits = apply_top_k(logits, top_k)
    return apply_top_p(logits, top_p)


def processed_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """The processed distribution softmax(temperature → top-k → top-p) over ``[..., V]``, in
    float32: what sampling draws from (speculative decoding processes target and draft
    distributions identically with it). ``temperature`` must be > 0."""
    return process_logits(logits.float(), temperature, top_k, top_p).softmax(-1)


def sample_next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``[B, V]``; returns ``[B]`` (int64).

    Greedy (argmax, lowest id on ties) when ``do_sample`` is false or ``temperature`` is 0;
    otherwise a draw from softmax(`process_logits`) using ``generator`` (global RNG if None).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    check_sampling_args(temperature, top_k, top_p)
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    probs = processed_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------- engine extras
def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p filtering (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"): drop
    tokens whose probability is below ``min_p`` × the top token's probability. As
    ``transformers``' ``MinPLogitsWarper``; ``min_p`` = 0 is a no-op."""
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p={min_p!r} must be in [0, 1] (0 disables min-p)")
    if min_p == 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, FILTERED)


def apply_repetition_penalty(
    logits: torch.Tensor, token_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, eq. in §4.1), HF style: for every token
    already present in ``token_ids`` (prompt and output), a positive logit is divided by
    ``penalty`` and a negative one multiplied by it. ``logits`` ``[..., V]``, ``token_ids``
    ``[..., L]``; 1 is a no-op."""
    if not penalty > 0:
        raise ValueError(f"repetition_penalty={penalty!r} must be > 0 (1 disables it)")
    if penalty == 1 or token_ids.shape[-1] == 0:
        return logits
    seen = logits.gather(-1, token_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, token_ids, seen)


def apply_presence_frequency_penalty(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: ``logit[j] − frequency · c[j] − presence · [c[j] > 0]`` where
    ``counts`` ``c`` ``[..., V]`` counts token j in the output so far."""
    if presence == 0 and frequency == 0:
        return logits
    counts = counts.to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def top_logprobs(
    logits: torch.Tensor, token_id: int, k: int
) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of a 1-D ``logits`` row: the value at ``token_id`` and the ``k`` largest
    (id, logprob) pairs, best first."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = logprobs.topk(min(k, logprobs.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist()))
    return float(logprobs[token_id]), top


def row_uniforms(
    generators: list[torch.Generator | None], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One float64 uniform in [0, 1) per row ``[B]``, row ``i`` from ``generators[i]`` (None:
    the global RNG) — what `inverse_cdf_sample` consumes. One draw per row from each row's
    own stream, so a seeded request's draws do not depend on its batch mates."""
    draws = [torch.rand(1, dtype=torch.float64, generator=g, device=device) for g in generators]
    return torch.cat(draws) if draws else torch.empty(0, dtype=torch.float64, device=device)


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """An exact draw from each row of ``probs`` ``[B, V]`` (unnormalised weights ≥ 0 are fine)
    by inversion: token ``i`` is chosen when ``F(i−1) ≤ u · F(V−1) < F(i)`` for the row's
    cumulative sums ``F`` (float64) and its uniform ``u`` ∈ [0, 1) (``uniforms`` ``[B]``), so
    P(i) = p_i / Σp, and a token of probability 0 is never chosen. The inverse-transform
    method (Devroye 1986, "Non-Uniform Random Variate Generation", §II.2): one uniform per
    row instead of ``torch.multinomial``'s one exponential per vocabulary entry. Returns
    ``[B]`` (int64)."""
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1:]
    # u · F(V−1) can round up to F(V−1); below it, the last token of probability > 0 is found.
    target = torch.minimum(uniforms.to(torch.float64)[:, None] * total, total.nextafter(total * 0))
    return torch.searchsorted(cdf, target, right=True)[:, 0]


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """``logits.argmax(-1).tolist()`` for rows ``[B, V]``: the first maximum of each row (the
    first NaN if it has one), through lmforge's C++ op on the CPU (``argmax_rows``:
    torch's CPU argmax compares one element at a time — 16 rows × 16,384 ≈ 340 µs), torch
    elsewhere."""
    if (
        logits.dim() == 2
        and logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and logits.shape[1] > 0
        and cpp_ops_available()
    ):
        return torch.ops.lmforge_ext.argmax_rows(logits.contiguous()).tolist()
    return logits.argmax(dim=-1).tolist()
