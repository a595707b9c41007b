"""A request's bookkeeping inside the engine: its tokens (a scheduler `Sequence`), sampling
state, text, what has been streamed, and the `RequestOutput` reports built from them.

The engine streams each request as deltas: every `Engine.step` reports the tokens and text
produced since the last report (`Request.delta_output`); `Engine.generate` returns one
`Request.final_output` per request with everything at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.infer.detokenize import (
    IncrementalDetokenizer,
    find_stop_string,
    streamable_end,
    tokens_before,
)
from lmforge.infer.multimodal import RequestImages
from lmforge.infer.params import SamplingParams
from lmforge.infer.scheduler import Sequence


@dataclass
class TokenLogprob:
    """log p(token) under the model's raw next-token distribution, plus the ``top`` k."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class RequestOutput:
    """A request's progress after a step (see the engine contract in `lmforge.infer.engine`).

    ``stop_reason`` says what ended a ``"stop"``: the stop/EOS token id, the stop string, or
    None (constraint finished).
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str
    new_text: str
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass(eq=False)
class Request(Sequence):
    """A `Sequence` plus its sampling and output state."""

    params: SamplingParams = field(default_factory=SamplingParams)
    generator: torch.Generator | None = None
    stop_ids: frozenset[int] = frozenset()
    logprobs: list[TokenLogprob] = field(default_factory=list)
    detokenizer: IncrementalDetokenizer | None = None  # None: no tokenizer, no text
    text: str = ""
    sent_text: int = 0  # characters of text already streamed
    sent_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    drafter: object | None = None  # speculative decoding: this request's Drafter
    draft_length: int = 0  # its current (adaptive) draft length / tree depth
    images: RequestImages | None = None  # a vision-language request's images
    # Text decoded every step (``params.detokenize`` or stop strings, and a tokenizer);
    # otherwise once, when the request finishes.
    stream_text: bool = True
    # How the engine batches this request's draws (`lmforge.infer.engine`), fixed at add.
    sample_key: tuple | None = None

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt :]

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.num_prompt

    def stop_id_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=device)

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.finished, self.finish_reason, self.stop_reason = True, reason, stop_reason

    # ------------------------------------------------------------------ text
    def update_text(self) -> None:
        """Extend ``text`` to the tokens generated so far (no-op without a tokenizer)."""
        if self.detokenizer is not None:
            self.text = self.detokenizer.update(self.output_ids)

    def apply_stop_strings(self) -> bool:
        """End the request at the earliest stop string in its text; the text and tokens keep
        what precedes it. True if one was found."""
        hit = find_stop_string(self.text, self.params.stop, self.sent_text)
        if hit is None:
            return False
        cut, stop = hit
        self.text = self.text[:cut]
        keep = tokens_before(self.output_ids, cut, self.detokenizer.decode)
        del self.tokens[self.num_prompt + keep :]
        del self.logprobs[keep:]
        self.finish("stop", stop)
        return True

    # ------------------------------------------------------------------ reports
    def delta_output(self) -> RequestOutput:
        """What is new since the last report (text held back while it may still change);
        marks it as sent."""
        out_ids = self.output_ids
        if self.stream_text:
            end = streamable_end(self.text, self.params.stop, self.sent_text, self.finished)
        elif self.finished:  # text decoded once, now
            self.update_text()
            end = len(self.text)
        else:
            end = self.sent_text
        new_text = self.text[self.sent_text : end]
        new_ids = out_ids[self.sent_tokens :]
        logprobs = self.logprobs[self.sent_tokens :] if self.params.logprobs is not None else None
        self.sent_text, self.sent_tokens = end, len(out_ids)
        return self._report(new_ids, new_text, logprobs, out_ids)

    def final_output(self) -> RequestOutput:
        """Everything the finished request produced, as one report."""
        if not self.stream_text:
            self.update_text()
        logprobs = list(self.logprobs) if self.params.logprobs is not None else None
        out_ids = self.output_ids
        return self._report(list(out_ids), self.text, logprobs, out_ids)

    def _report(
        self,
        new_ids: list[int],
        new_text: str,
        logprobs: list[TokenLogprob] | None,
        out_ids: list[int],
    ) -> RequestOutput:
        """``out_ids``: a fresh copy of the output ids (the report keeps it)."""
        return RequestOutput(
            request_id=self.request_id,
            prompt_token_ids=self.tokens[: self.num_prompt],
            token_ids=out_ids,
            new_token_ids=new_ids,
            text=self.text,
            new_text=new_text,
            logprobs=logprobs,
            finished=self.finished,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )
