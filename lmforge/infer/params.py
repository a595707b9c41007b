"""`SamplingParams`: how one request is decoded — the one sampling type of the engine, the
server, speculative decoding and RL rollouts (OpenAI / vLLM field names).

The processing order for a request's next-token logits (the engine's, HF's order):

    repetition / presence / frequency penalties → min_tokens (stop ids masked) → constraint
    mask → temperature → top-k → top-p → min-p → draw (``seed``: a private RNG per request)

``temperature = 0`` is greedy decoding (argmax). ``n`` asks for several completions of a
prompt: `lmforge.infer.Engine.generate` expands it into n requests (request k of a prompt
with seed s uses seed s + k); `Engine.add_request` serves one completion and refuses n ≠ 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmforge.infer.checks import is_int
from lmforge.infer.sampling import check_sampling_args


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI / vLLM names; see the module docstring)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 → greedy
    top_k: int = 0  # 0 → off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL style
    presence_penalty: float = 0.0  # OpenAI style
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()  # besides the model's EOS ids (unless ignore_eos)
    stop: tuple[str, ...] = ()  # stop strings; needs the engine's tokenizer; not in output
    ignore_eos: bool = False
    seed: int | None = None  # same seed → same output whatever else is in the batch
    logprobs: int | None = None  # None: none; 0: the sampled token's; k>0: plus top-k
    constraint: object | None = None  # a structured-generation Constraint
    min_tokens: int = 0  # stop tokens are masked until this many tokens were generated
    n: int = 1  # completions per prompt (add_request serves one; generate / rollouts expand n)
    # Text: True streams it (each report's ``new_text``, decoded incrementally every step);
    # False decodes it once, when the request finishes (its last report and final output
    # carry the whole text, earlier reports none): for callers that read only finished
    # text (RL rollouts). Stop strings need the text every step, so ``stop`` implies True.
    detokenize: bool = True
    # Speculative decoding (an Engine built with a drafter): per-request on/off and the
    # acceptance rule: "exact" (the target's distribution; greedy = target greedy) or
    # "typical" (Medusa's p(x) > min(ε, δ·exp(−H(p))): faster, NOT exact).
    speculative: bool = True
    acceptance: str = "exact"
    typical_epsilon: float = 0.09
    typical_delta: float = 0.3

    @property
    def greedy(self) -> bool:
        """Temperature 0: the next token is the argmax of the (penalised, masked) logits."""
        return self.temperature == 0

    def validate(self, vocab_size: int, has_tokenizer: bool) -> None:
        """Raise `ValueError` naming every bad field."""
        errors = []
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            errors.append(f"max_tokens={self.max_tokens!r} must be an integer ≥ 1")
        try:
            check_sampling_args(self.temperature, self.top_k, self.top_p)
        except ValueError as exc:
            errors.append(str(exc).removeprefix("invalid sampling arguments: "))
        if not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p <= 1:
            errors.append(f"min_p={self.min_p!r} must be in [0, 1]")
        rep = self.repetition_penalty
        if not isinstance(rep, (int, float)) or not (math.isfinite(rep) and rep > 0):
            errors.append(f"repetition_penalty={rep!r} must be > 0 (1 disables it)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                errors.append(f"{name}={value!r} must be a finite number")
        if isinstance(self.stop, str) or not isinstance(self.stop_token_ids, (tuple, list)):
            raise ValueError(
                f"SamplingParams.stop={self.stop!r} / stop_token_ids={self.stop_token_ids!r} "
                "must be tuples (e.g. stop=('###',), stop_token_ids=(2,))"
            )
        bad_ids = [i for i in self.stop_token_ids if not is_int(i) or not 0 <= i < vocab_size]
        if bad_ids:
            errors.append(f"stop_token_ids {bad_ids} must be token ids in [0, {vocab_size})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            errors.append(f"stop={self.stop!r} must be non-empty strings")
        if self.stop and not has_tokenizer:
            errors.append("stop strings need an Engine created with a tokenizer")
        if self.seed is not None and not is_int(self.seed):
            errors.append(f"seed={self.seed!r} must be an integer")
        if not is_int(self.min_tokens) or not self.min_tokens >= 0:
            errors.append(f"min_tokens={self.min_tokens!r} must be an integer ≥ 0")
        if not is_int(self.n) or self.n < 1:
            errors.append(f"n={self.n!r} must be an integer ≥ 1")
        if self.logprobs is not None and (not is_int(self.logprobs) or self.logprobs < 0):
            errors.append(f"logprobs={self.logprobs!r} must be None or an integer ≥ 0")
        if not isinstance(self.detokenize, bool):
            errors.append(f"detokenize={self.detokenize!r} must be True or False")
        if self.acceptance not in ("exact", "typical"):
            errors.append(f"acceptance={self.acceptance!r} must be 'exact' or 'typical'")
        for name in ("typical_epsilon", "typical_delta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                errors.append(f"{name}={value!r} must be in (0, 1]")
        if errors:
            raise ValueError("invalid SamplingParams: " + "; ".join(errors))
