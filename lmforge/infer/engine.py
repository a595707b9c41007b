"""The inference engine: requests in, tokens out, one scheduler iteration per `Engine.step`.

    add_request ─▶ Scheduler (continuous batching, chunked prefill, preemption)
                       │ chunks of new tokens per sequence
                       ▼
    one forward over the flattened ragged batch [1, N]  (paged KV cache, no padding in GEMMs)
                       │ logits of each sequence whose chunk reached its last token
                       ▼
    per-request sampling (penalties → constraint → temperature/top-k/top-p/min-p → draw)
                       │
                       ▼
    stop checks (EOS / stop ids / stop strings / constraint / length) ─▶ RequestOutput

Used by ``model.generate``, the server, chat and RL rollouts. Not thread-safe: drive it
from one thread.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from lmforge.infer.cache import (
    BlockAllocator,
    PagedBatch,
    PagedKVCache,
    PrefillChunk,
    decode_groups,
)
from lmforge.infer.runner import InferenceRunner
from lmforge.infer.sampling import (
    apply_min_p,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    check_sampling_args,
    process_logits,
    top_logprobs,
)
from lmforge.infer.scheduler import ScheduledChunk, Scheduler, Sequence

# Default KV pool when num_blocks is not given: room for max_num_seqs full-length sequences,
# capped at this many bytes (memory is only touched when used).
DEFAULT_KV_CACHE_BYTES = 1 << 30


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

    def validate(self, vocab_size: int, has_tokenizer: bool) -> None:
        """Raise `ValueError` naming every bad field."""
        errors = []
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
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
        bad_ids = [i for i in self.stop_token_ids if not _is_int(i) or not 0 <= i < vocab_size]
        if bad_ids:
            errors.append(f"stop_token_ids {bad_ids} must be token ids in [0, {vocab_size})")
        if any(not isinstance(s, str) or not s for s in self.stop):
            errors.append(f"stop={self.stop!r} must be non-empty strings")
        if self.stop and not has_tokenizer:
            errors.append("stop strings need an Engine created with a tokenizer")
        if self.seed is not None and not _is_int(self.seed):
            errors.append(f"seed={self.seed!r} must be an integer")
        if not _is_int(self.min_tokens) or not self.min_tokens >= 0:
            errors.append(f"min_tokens={self.min_tokens!r} must be an integer ≥ 0")
        if not _is_int(self.n) or self.n < 1:
            errors.append(f"n={self.n!r} must be an integer ≥ 1")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            errors.append(f"logprobs={self.logprobs!r} must be None or an integer ≥ 0")
        if errors:
            raise ValueError("invalid SamplingParams: " + "; ".join(errors))


@dataclass
class TokenLogprob:
    """log p(token) under the model's raw next-token distribution, plus the ``top`` k."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class RequestOutput:
    """A request's progress after a step (see the engine contract in the module docstring).

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
class _Request(Sequence):
    """A `Sequence` plus its sampling and output state."""

    params: SamplingParams = field(default_factory=SamplingParams)
    generator: torch.Generator | None = None
    stop_ids: frozenset[int] = frozenset()
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    sent_text: int = 0  # characters of text already streamed
    # incremental detokenization: text of output_ids[:read_offset] is final (`settled`);
    # decoding restarts at prefix_offset, a few tokens back, for context
    settled: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    sent_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt :]

    def stop_id_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=device)


class Engine:
    """Paged-KV-cache, continuous-batching engine over an lmforge `CausalLM`.

    Args:
        model: the LM (its dtype/device are used for the cache).
        tokenizer: needed for text output and stop strings (``decode(ids, ...)``).
        block_size: tokens per KV block.
        num_blocks: KV pool size; default fits ``max_num_seqs`` full-length sequences,
            capped at `DEFAULT_KV_CACHE_BYTES`.
        max_num_seqs: most sequences in one step.
        max_num_batched_tokens: most tokens (prefill + decode) in one step.
        enable_prefix_caching: reuse full KV blocks of equal prefixes across requests.
        fused_weights: run the model through `InferenceRunner` (fused, pre-transposed copies
            of the linear weights: faster decoding, one extra copy of those weights in
            memory, shared by all engines on the model). None (default): on CPU only, where
            decoding is bound by GEMV speed and per-op overhead. Models the runner does not
            cover always use ``model.forward``.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        enable_prefix_caching: bool = True,
        fused_weights: bool | None = None,
    ) -> None:
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an integer ≥ 1")
        cfg = model.config
        p = next(model.parameters())
        self.model, self.tokenizer, self.config = model, tokenizer, cfg
        self.block_size = block_size
        self.device = p.device
        self.max_len = cfg.max_position_embeddings
        per_block = PagedKVCache.bytes_per_block(
            cfg.num_hidden_layers, block_size, cfg.num_key_value_heads, cfg.head_dim, p.dtype
        )
        if num_blocks is None:
            wanted = max_num_seqs * -(-self.max_len // block_size)
            num_blocks = max(1, min(wanted, DEFAULT_KV_CACHE_BYTES // per_block))
        self.cache = PagedKVCache(
            cfg.num_hidden_layers,
            num_blocks,
            block_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=p.dtype,
            device=p.device,
        )
        self.allocator = BlockAllocator(num_blocks, enable_prefix_caching)
        self.scheduler = Scheduler(self.allocator, block_size, max_num_seqs, max_num_batched_tokens)
        defaults = getattr(model, "generation_config", None) or {}
        eos = defaults.get("eos_token_id", cfg.eos_token_id)
        eos = [] if eos is None else [eos] if _is_int(eos) else list(eos)
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        if fused_weights is None:
            fused_weights = self.device.type == "cpu"
        self.runner = None
        if fused_weights and InferenceRunner.unsupported_reason(model) is None:
            self.runner = InferenceRunner.for_model(model)
            self.runner.invalidate()  # weights may have changed in ways versions do not show
        self.requests: dict[str, _Request] = {}
        self._pending: list[RequestOutput] = []  # abort notices for the next step
        self._ids = itertools.count()
        self.num_steps = 0
        self.num_generated = 0

    # ------------------------------------------------------------------ requests
    def refresh_weights(self) -> None:
        """Call after changing the model's weights while this engine lives (e.g. between
        RL steps): drops the prefix cache (its K/V came from the old weights) and the fused
        weight copies. A new `Engine` always starts from the current weights."""
        self.allocator.forget_prefixes()
        if self.runner is not None:
            self.runner.invalidate()

    def add_request(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> str:
        """Queue a prompt; returns its request id (a fresh one when not given)."""
        vocab = self.config.vocab_size
        prompt = list(prompt_token_ids)
        if not prompt:
            raise ValueError("prompt_token_ids is empty; every prompt needs ≥ 1 token")
        bad = [t for t in prompt if not _is_int(t) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt_token_ids contains {bad[:5]} outside [0, {vocab})")
        params.validate(vocab, self.tokenizer is not None)
        if params.n != 1:
            raise ValueError(
                f"add_request serves one completion, got n={params.n}; add one request per "
                "completion (each with its own seed)"
            )
        if len(prompt) + params.max_tokens > self.max_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's max_position_embeddings={self.max_len}"
            )
        blocks = -(-(len(prompt) + params.max_tokens) // self.block_size)
        if blocks > self.allocator.num_blocks:
            raise ValueError(
                f"prompt + max_tokens needs {blocks} KV blocks but the engine has only "
                f"{self.allocator.num_blocks}; raise num_blocks or lower max_tokens"
            )
        if request_id is None:
            request_id = f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.eos_ids
        req = _Request(
            request_id,
            prompt,
            len(prompt),
            params=params,
            generator=generator,
            stop_ids=frozenset(stop_ids),
        )
        self.requests[request_id] = req
        self.scheduler.add(req)
        return request_id

    def abort(self, request_id: str) -> None:
        """Stop a request; the next `step` reports it finished with reason ``"abort"``.
        Unknown or already finished ids are ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        self.scheduler.remove(req)
        req.finished, req.finish_reason = True, "abort"
        self._pending.append(self._output(req))

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending)

    # ------------------------------------------------------------------ step
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one scheduler iteration; returns the requests that produced a token, finished
        or were aborted since the last step."""
        outputs, self._pending = self._pending, []
        chunks = self.scheduler.schedule()
        if not chunks:
            return outputs
        self.num_steps += 1
        self.cache.zero_blocks(self.scheduler.new_blocks)
        # Single-token chunks first (batched decode), by context length (grouped attention).
        chunks.sort(key=lambda c: (c.num_tokens > 1, len(c.seq.block_ids)))
        logits, sampling = self._forward(chunks)
        self.scheduler.commit(chunks)
        tokens = self._sample(logits, sampling)
        for req, token, row in zip(sampling, tokens, logits):
            self._append(req, token, row)
            outputs.append(self._output(req))
            if req.finished:
                self.scheduler.remove(req)
                del self.requests[req.request_id]
        return outputs

    def _forward(self, chunks: list[ScheduledChunk]) -> tuple[torch.Tensor, list[_Request]]:
        """One model call over all chunks; logits ``[M, V]`` of the M sequences whose chunk
        ends at their last known token (those sample next)."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        sampling: list[_Request] = []
        decode: list[Sequence] = []
        prefills: list[PrefillChunk] = []
        for chunk in chunks:
            seq, n = chunk.seq, chunk.num_tokens
            start = seq.num_computed
            offset = len(ids)
            ids.extend(seq.tokens[start : start + n])
            positions.extend(range(start, start + n))
            table = seq.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if n == 1:
                decode.append(seq)
            else:
                prefills.append(PrefillChunk(offset, n, start, self._context_slots(seq, start + n)))
            if start + n == len(seq.tokens):
                keep.append(len(ids) - 1)
                sampling.append(seq)
        dev = self.device
        batch = PagedBatch(self.cache, torch.tensor(slots, device=dev), prefills=prefills)
        ids_t = torch.tensor(ids, device=dev)
        positions_t = torch.tensor(positions, device=dev)
        keep_t = torch.tensor(keep, dtype=torch.long, device=dev)
        if decode:
            widths = [len(s.block_ids) for s in decode]  # ascending (see `step`)
            tables = [s.block_ids + [0] * (widths[-1] - len(s.block_ids)) for s in decode]
            batch.num_decode = len(decode)
            batch.decode_blocks = torch.tensor(tables, device=dev)
            batch.decode_positions = positions_t[: len(decode)]
            batch.decode_lens = batch.decode_positions + 1
            batch.decode_groups = decode_groups(widths, [p + 1 for p in positions[: len(decode)]])
        if self.runner is not None and self.runner.sync():
            logits = self.runner(ids_t, positions_t, max(positions), batch, keep_t)
            return logits.float(), sampling
        out = self.model(
            ids_t[None], position_ids=positions_t[None], cache=batch, logits_to_keep=keep_t
        )
        return out.logits[0].float(), sampling

    def _context_slots(self, seq: Sequence, total: int) -> torch.Tensor | None:
        """All ``total`` context slots of ``seq`` (None when it has no cached past)."""
        if seq.num_computed == 0:
            return None
        bs = self.block_size
        blocks = torch.tensor(seq.block_ids, device=self.device)
        return (blocks[:, None] * bs + torch.arange(bs, device=self.device)).flatten()[:total]

    # ------------------------------------------------------------------ sampling
    def _sample(self, logits: torch.Tensor, reqs: list[_Request]) -> list[int]:
        if not reqs:
            return []
        if all(_is_plain_greedy(r.params) for r in reqs):
            return logits.argmax(dim=-1).tolist()
        return [self._sample_row(logits[i], req) for i, req in enumerate(reqs)]

    def _sample_row(self, row: torch.Tensor, req: _Request) -> int:
        """Penalties → constraint mask → temperature/top-k/top-p/min-p → draw (HF order)."""
        p = req.params
        if p.repetition_penalty != 1:
            seen = torch.tensor(req.tokens, device=row.device)
            row = apply_repetition_penalty(row, seen, p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            out = torch.tensor(req.output_ids, dtype=torch.long, device=row.device)
            counts = torch.bincount(out, minlength=row.shape[-1])
            row = apply_presence_frequency_penalty(
                row, counts, p.presence_penalty, p.frequency_penalty
            )
        if p.min_tokens and len(req.tokens) - req.num_prompt < p.min_tokens and req.stop_ids:
            # HF's MinNewTokensLengthLogitsProcessor: no stop token before min_tokens.
            row = row.index_fill(0, req.stop_id_tensor(row.device), float("-inf"))
        if p.constraint is not None:
            row = row.clone()
            p.constraint.mask_logits(row)
        if p.temperature == 0:
            return int(row.argmax())
        row = process_logits(row, p.temperature, p.top_k, p.top_p)
        row = apply_min_p(row, p.min_p)
        probs = row.softmax(dim=-1)
        return int(torch.multinomial(probs, 1, generator=req.generator))

    # ------------------------------------------------------------------ outputs
    def _append(self, req: _Request, token: int, raw_logits: torch.Tensor) -> None:
        """Record ``token`` and decide whether ``req`` is finished."""
        p = req.params
        self.num_generated += 1
        if token in req.stop_ids:
            req.finished, req.finish_reason, req.stop_reason = True, "stop", token
            return
        if p.logprobs is not None:
            lp, top = top_logprobs(raw_logits, token, p.logprobs)
            req.logprobs.append(TokenLogprob(token, lp, top))
        req.tokens.append(token)
        if p.constraint is not None:
            p.constraint.accept(token)
            if p.constraint.is_finished():
                req.finished, req.finish_reason = True, "stop"
        if self.tokenizer is not None:
            self._detokenize(req)
            if p.stop and self._apply_stop_strings(req):
                return
        if not req.finished and len(req.tokens) - req.num_prompt >= p.max_tokens:
            req.finished, req.finish_reason = True, "length"

    def _detokenize(self, req: _Request) -> None:
        """Update ``req.text`` by decoding only the tokens since the last settled point (plus
        the previous window for context) instead of the whole output each token: the new
        text is ``decode(ids[prefix:])`` minus ``decode(ids[prefix:read])``, settled once it
        does not end in a partial UTF-8 character (U+FFFD)."""
        ids = req.output_ids
        decode = self.tokenizer.decode
        before = decode(ids[req.prefix_offset : req.read_offset], skip_special_tokens=True)
        after = decode(ids[req.prefix_offset :], skip_special_tokens=True)
        if not after.startswith(before):  # a decoder that rewrites earlier text: from scratch
            req.settled, req.prefix_offset, req.read_offset = "", 0, 0
            req.text = decode(ids, skip_special_tokens=True)
            return
        new = after[len(before) :]
        req.text = req.settled + new
        if new and not new.endswith("\ufffd"):
            req.settled = req.text
            req.prefix_offset, req.read_offset = req.read_offset, len(ids)

    def _apply_stop_strings(self, req: _Request) -> bool:
        """End ``req`` at the earliest stop string in its text (searching only where a new
        match can be); the text and tokens keep what precedes it."""
        longest = max(len(s) for s in req.params.stop)
        search_from = max(0, req.sent_text - longest)
        found = [(req.text.find(s, search_from), s) for s in req.params.stop]
        found = [(i, s) for i, s in found if i >= 0]
        if not found:
            return False
        cut, stop = min(found)
        req.text = req.text[:cut]
        keep = len(req.output_ids)
        while (
            keep > 0
            and len(self.tokenizer.decode(req.output_ids[:keep], skip_special_tokens=True)) > cut
        ):
            keep -= 1
        del req.tokens[req.num_prompt + keep :]
        del req.logprobs[keep:]
        req.finished, req.finish_reason, req.stop_reason = True, "stop", stop
        return True

    def _safe_text_end(self, req: _Request) -> int:
        """How much of the text can be streamed: not a trailing partial UTF-8 character
        (decoded as U+FFFD) nor a suffix that may still grow into a stop string."""
        text = req.text
        if req.finished:
            return len(text)
        end = len(text)
        while end > 0 and text[end - 1] == "\ufffd":
            end -= 1
        hold = 0
        for stop in req.params.stop:
            for k in range(min(len(stop) - 1, end), hold, -1):
                if text[end - k : end] == stop[:k]:
                    hold = k
                    break
        return max(end - hold, req.sent_text)

    def _output(self, req: _Request) -> RequestOutput:
        out_ids = req.output_ids
        end = self._safe_text_end(req)
        new_text = req.text[req.sent_text : end]
        new_ids = out_ids[req.sent_tokens :]
        logprobs = req.logprobs[req.sent_tokens :] if req.params.logprobs is not None else None
        req.sent_text, req.sent_tokens = end, len(out_ids)
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.tokens[: req.num_prompt],
            token_ids=list(out_ids),
            new_token_ids=new_ids,
            text=req.text,
            new_text=new_text,
            logprobs=logprobs,
            finished=req.finished,
            finish_reason=req.finish_reason,
            stop_reason=req.stop_reason,
        )

    # ------------------------------------------------------------------ batch API
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion (alongside anything already queued); one final
        `RequestOutput` per prompt, in input order, with everything generated."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        reqs = [self.requests[i] for i in ids]
        while not all(r.finished for r in reqs):
            if not self.has_unfinished():
                raise RuntimeError("engine stopped before all requests finished")
            self.step()
        return [
            RequestOutput(
                request_id=r.request_id,
                prompt_token_ids=r.tokens[: r.num_prompt],
                token_ids=list(r.output_ids),
                new_token_ids=list(r.output_ids),
                text=r.text,
                new_text=r.text,
                logprobs=list(r.logprobs) if r.params.logprobs is not None else None,
                finished=True,
                finish_reason=r.finish_reason,
                stop_reason=r.stop_reason,
            )
            for r in reqs
        ]

    def stats(self) -> dict:
        """Counters: steps, generated tokens, preemptions, prefix-cache hits and blocks."""
        s = self.scheduler
        return {
            "num_steps": self.num_steps,
            "num_generated_tokens": self.num_generated,
            "num_preemptions": s.num_preemptions,
            "prefix_cache_hit_tokens": s.prefix_hit_tokens,
            "prefix_cache_query_tokens": s.prompt_tokens,
            "prefix_cache_hit_rate": s.prefix_hit_tokens / max(1, s.prompt_tokens),
            "num_blocks": self.allocator.num_blocks,
            "num_free_blocks": self.allocator.num_free,
            "num_cached_blocks": len(self.allocator.cached),
            "num_evicted_blocks": self.allocator.evictions,
            "num_running": len(s.running),
            "num_waiting": len(s.waiting),
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_plain_greedy(p: SamplingParams) -> bool:
    return (
        p.temperature == 0
        and p.repetition_penalty == 1
        and not p.presence_penalty
        and not p.frequency_penalty
        and p.constraint is None
        and not p.min_tokens
    )
