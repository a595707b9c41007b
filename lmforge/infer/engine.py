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

With a `SpeculativeConfig` each decoding request drafts with its own `Drafter` (a draft
model, MTP modules, Medusa heads, an EAGLE layer) and the same forward verifies the drafts
(``speculation.py``); per request it can be switched off (``SamplingParams.speculative``).

With a vision-language model a request may carry images (``add_request(…, images=…)``):
their features are computed once per request and spliced in at the placeholder tokens,
with M-RoPE positions and image-aware prefix caching (``multimodal.py``).

This file is long because the step's forward, sampling and speculative verification share
the per-chunk row bookkeeping; the speculative rules themselves live in ``speculation.py``.

Used by ``lmforge.generate`` (greedy rows), the server, chat and RL rollouts. Not
thread-safe: drive it from one thread. The pieces live beside it: `SamplingParams`
(``params.py``), the scheduler and paged cache, the fused-weight runner, a request's
bookkeeping and reports (``request.py``) and its text (``detokenize.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Protocol

import torch

from lmforge.infer.cache import (
    BlockAllocator,
    PagedKVCache,
    PrefillChunk,
    decode_groups,
)
from lmforge.infer.checks import check_prompt_tokens, default_eos, is_int, make_generator
from lmforge.infer.decode_step import CompiledDecode, bucket
from lmforge.infer.detokenize import IncrementalDetokenizer
from lmforge.infer.drafting import Draft
from lmforge.infer.int8_gemm import int8_enabled
from lmforge.infer.multimodal import (
    ImageInputs,
    MultimodalBatch,
    is_multimodal_model,
    request_images,
)
from lmforge.infer.params import SamplingParams
from lmforge.infer.request import Request, RequestOutput, TokenLogprob
from lmforge.infer.runner import InferenceRunner
from lmforge.infer.sampling import (
    apply_min_p,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    greedy_tokens,
    inverse_cdf_sample,
    process_logits,
    row_uniforms,
    top_logprobs,
)
from lmforge.infer.scheduler import ScheduledChunk, Scheduler, Sequence
from lmforge.infer.speculation import (
    SpeculationStats,
    SpeculativeConfig,
    compact_kv,
    draft_depth,
    speculation_eligible,
    verify_draft,
)
from lmforge.infer.speculative_batch import propose_batch
from lmforge.infer.tree_attention import TreePagedBatch, chain_parents, node_depths, tree_mask
from lmforge.nn.huge_pages import move_to_huge_pages

__all__ = [
    "DEFAULT_KV_CACHE_BYTES",
    "AdapterRouter",
    "Engine",
    "mark_weights_changed",
]

# Default KV pool when num_blocks is not given: room for max_num_seqs full-length sequences,
# capped at this many bytes (memory is only touched when used).
DEFAULT_KV_CACHE_BYTES = 1 << 30


class AdapterRouter(Protocol):
    """Per-token LoRA adapters for one batch (`lmforge.peft.multi_lora.LoraRouter`): the
    engine calls ``select(ids)`` with one adapter index per token of the next forward
    (0: the base model; i: adapter i) and ``select(None)`` after it."""

    num_adapters: int

    def select(self, token_adapters: torch.Tensor | None) -> None: ...


def _sampling_rows(decode: list, starts: list[int]) -> list[int] | None:
    """The rows of a pure decode step that sample (None: all of them). Every sequence
    samples unless its 1-token chunk is a prompt token short of the prompt's last one
    (chunked prefill)."""
    last = [p + 1 == len(s.tokens) for s, p in zip(decode, starts)]
    return None if all(last) else [i for i, is_last in enumerate(last) if is_last]


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
            memory, shared by all engines on the model). None (default): on CPU, where
            decoding is bound by GEMV speed and per-op overhead, and wherever
            ``compile_decode`` is asked for (it reads those copies). Models the runner does
            not cover always use ``model.forward``.
        speculative: draft-and-verify decoding (`lmforge.infer.speculation`); statistics
            in ``stats()`` and ``spec_stats``.
        compile_decode: run steps where every sequence decodes one token through
            `lmforge.infer.decode_step.CompiledDecode` (the fused runner's math as one
            ``torch.compile``-d function per shape bucket, paged attention reading the cache
            in place); needs the fused runner and a model it covers, else ignored. Each new
            bucket costs a compilation (seconds to a minute on a CPU), so it pays off for
            long runs. ``"eager"``: the same function uncompiled (tests). On a CUDA device
            each bucket's step is also captured as a CUDA graph and replayed (one launch per
            step; with ``"eager"`` that needs no compilation).
        draw: how a sampled row's token is drawn from its processed distribution, both
            exact: ``"multinomial"`` (default: ``torch.multinomial`` with the request's
            generator, one exponential per vocabulary entry — the draw speculative
            verification also makes, so a seeded request equals its speculative run token
            for token) or ``"inverse_cdf"`` (`lmforge.infer.sampling.inverse_cdf_sample`: one
            uniform per row from the request's generator and one cumsum + searchsorted
            over the batch — much cheaper, other seeded streams; RL rollouts use it).
        huge_pages: on a CPU, move the model's large weights into transparent huge pages
            first (`lmforge.nn.huge_pages.move_to_huge_pages`: in place, values and
            ``Parameter`` objects unchanged; fewer TLB misses while a decode step streams
            them: ≈ 7–15 % faster one-row products), and keep the KV pool in them
            (`PagedKVCache`'s ``huge_pages``). No-op where the OS does not offer them.
        kv_cache_dtype: the K/V cache's dtype (None: the model's). ``torch.float16`` or
            ``torch.bfloat16`` beside an fp32 model halves the cache (twice the tokens in
            the same memory, half the bytes each decode step's attention reads — llama.cpp's
            default KV type is f16): K/V are rounded when written and widened when read,
            the arithmetic stays fp32. The compiled decode step needs the model's dtype
            (``compile_decode`` is then ignored).
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
        adapters: AdapterRouter | None = None,
        speculative: SpeculativeConfig | None = None,
        compile_decode: bool | str = False,
        draw: str = "multinomial",
        huge_pages: bool = True,
        kv_cache_dtype: torch.dtype | None = None,
    ) -> None:
        if not is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an integer ≥ 1")
        if draw not in ("multinomial", "inverse_cdf"):
            raise ValueError(f"draw={draw!r} must be 'multinomial' or 'inverse_cdf'")
        self.draw = draw
        if compile_decode not in (True, False, "eager"):
            raise ValueError(f"compile_decode={compile_decode!r} must be True, False or 'eager'")
        cfg = model.config
        p = next(model.parameters())
        kv_dtype = p.dtype if kv_cache_dtype is None else kv_cache_dtype
        if not isinstance(kv_dtype, torch.dtype) or not kv_dtype.is_floating_point:
            raise ValueError(
                f"kv_cache_dtype={kv_cache_dtype!r} must be a floating torch.dtype "
                "(torch.float32, torch.float16, torch.bfloat16)"
            )
        self.model, self.tokenizer, self.config = model, tokenizer, cfg
        if huge_pages and p.device.type == "cpu":
            move_to_huge_pages(model)
        self.block_size = block_size
        self.device = p.device
        self.max_len = cfg.max_position_embeddings
        # MLA caches one latent per token that is its own value: a K-only pool.
        key_only = bool(getattr(cfg, "use_mla", False))
        per_block = PagedKVCache.bytes_per_block(
            cfg.num_hidden_layers, block_size, cfg.num_key_value_heads, cfg.head_dim, kv_dtype,
            key_only,
        )  # fmt: skip
        if num_blocks is None:
            wanted = max_num_seqs * -(-self.max_len // block_size)
            num_blocks = max(1, min(wanted, DEFAULT_KV_CACHE_BYTES // per_block))
        self.cache = PagedKVCache(
            cfg.num_hidden_layers,
            num_blocks,
            block_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=kv_dtype,
            device=p.device,
            key_only=key_only,
            spare_blocks=1 if compile_decode else 0,
            huge_pages=huge_pages,
        )
        self.allocator = BlockAllocator(num_blocks, enable_prefix_caching)
        self.scheduler = Scheduler(self.allocator, block_size, max_num_seqs, max_num_batched_tokens)
        eos = default_eos(model)
        eos = [] if eos is None else [eos] if is_int(eos) else list(eos)
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self.adapters = adapters
        if fused_weights is None:  # the compiled step reads the runner's copies
            fused_weights = (self.device.type == "cpu" or bool(compile_decode)) and adapters is None
        self.runner = None
        mark_weights_changed(model)  # they may have changed in ways versions do not show
        if fused_weights and InferenceRunner.unsupported_reason(model) is None:
            self.runner = InferenceRunner.for_model(model)
            self.runner.invalidate()
        self.compile_decode = compile_decode if self.runner is not None else False
        self.compiled: CompiledDecode | None = None  # built at the first pure-decode step
        self._checked: tuple = (None, False)  # (runner weight copies, supported?)
        self.multimodal = is_multimodal_model(model)  # images: lmforge.infer.multimodal
        if self.multimodal and speculative is not None:
            raise ValueError("speculative decoding does not support vision-language models")
        self.speculative = speculative
        self.spec_stats = SpeculationStats()
        self._drafts: dict[Request, Draft] = {}  # sliding windows: `TreePagedBatch` masks
        self.requests: dict[str, Request] = {}
        self._pending: list[RequestOutput] = []  # abort notices for the next step
        self._ids = itertools.count()
        self.num_steps = 0
        # inside `generate`: the weights are checked at its first step only (`_forward`)
        self._held_sync: bool | None = None
        self._holding = False
        self.num_generated = 0

    # ------------------------------------------------------------------ requests
    def refresh_weights(self) -> None:
        """Call after changing the model's weights while this engine lives (e.g. between
        RL steps): drops the prefix cache (its K/V came from the old weights), the fused
        weight copies and MLA's absorbed weights (`mark_weights_changed`). A new `Engine`
        always starts from the current weights."""
        self.allocator.forget_prefixes()
        mark_weights_changed(self.model)
        if self.runner is not None:
            self.runner.invalidate()

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        adapter: int = 0,
        images: ImageInputs | None = None,
    ) -> str:
        """Queue a prompt; returns its request id (a fresh one when not given). ``adapter``:
        the LoRA adapter of the engine's router that decodes it (0: the base model).
        ``images``: a vision-language model's images, one placeholder token per merged image
        token in the prompt (`lmforge.infer.multimodal`)."""
        num_adapters = 0 if self.adapters is None else self.adapters.num_adapters
        if not is_int(adapter) or not 0 <= adapter <= num_adapters:
            raise ValueError(f"adapter={adapter!r}: this engine has {num_adapters} adapter(s)")
        vocab = self.config.vocab_size
        prompt = check_prompt_tokens(prompt_token_ids, vocab)
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
        req_images = request_images(self.model, prompt, images)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.eos_ids
        req = Request(
            request_id,
            prompt,
            len(prompt),
            params=params,
            generator=make_generator(None, params.seed, self.device),
            stop_ids=frozenset(stop_ids),
            detokenizer=None if self.tokenizer is None else IncrementalDetokenizer(self.tokenizer),
            adapter=adapter,
            images=req_images,
            image_spans=() if req_images is None else req_images.block_spans,
            stream_text=self.tokenizer is not None and (params.detokenize or bool(params.stop)),
            sample_key=_batch_key(params),
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
        req.finish("abort")
        self._pending.append(req.delta_output())

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending)

    # ------------------------------------------------------------------ step
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one scheduler iteration; returns the requests that produced a token, finished
        or were aborted since the last step."""
        outputs, self._pending = self._pending, []
        if self.speculative is not None:
            self._propose_drafts()
        chunks = self.scheduler.schedule()
        if self._drafts:
            self._fit_drafts(chunks)
        if not chunks:
            return outputs
        self.num_steps += 1
        self.cache.zero_blocks(self.scheduler.new_blocks)
        # Single-token chunks first (batched decode), by context length (grouped attention).
        chunks.sort(key=lambda c: (c.num_tokens > 1, len(c.seq.block_ids)))
        logits, hidden, sampling, spans, offsets = self._forward(chunks)
        verified = self._verify(chunks, logits, sampling, spans) if self._drafts else {}
        self.scheduler.commit(chunks)
        if verified or logits.shape[0] != len(sampling):
            plain = [i for i, req in enumerate(sampling) if req not in verified]
            reqs = [sampling[i] for i in plain]
            rows = logits[[spans[i][0] for i in plain]]
        else:  # every sampling request has one kept row, in order
            plain, reqs, rows = range(len(sampling)), sampling, logits
        drawn = self._sample(rows, reqs)
        tokens = dict(zip(plain, drawn))
        logprobs = self._token_logprobs(rows, reqs, drawn, plain)
        for i, req in enumerate(sampling):
            if req in verified:
                root, path, emitted = verified[req]
                del req.tokens[root + 1 :]
                for token, row in emitted:
                    if not req.finished:
                        self._append(req, token, logits[spans[i][0] + row])
            else:
                self._append(req, tokens[i], None, logprobs.get(i))
            outputs.append(req.delta_output())
            if req.finished:
                self.scheduler.remove(req)
                del self.requests[req.request_id]
        if hidden is not None:
            self._observe(chunks, hidden, offsets, verified)
        return outputs

    # ------------------------------------------------------------------ speculation
    def _propose_drafts(self) -> None:
        """Step 1 of `lmforge.infer.speculation`: draft for every decoding request, in one
        `propose_batch` call (drafters that share weights — MTP, EAGLE, a draft model — run
        their forwards for all requests together; the drafts equal per-request ones)."""
        spec, todo = self.speculative, []
        for req in self.scheduler.running:
            if req.finished or len(req.tokens) - req.num_computed != 1:
                continue
            if not speculation_eligible(req.params):
                continue
            if req.drafter is None:
                req.drafter, req.draft_length = spec.drafter(), spec.schedule.initial
            remaining = req.params.max_tokens - req.num_generated
            depth = min(req.draft_length, remaining - 1, self.max_len - len(req.tokens))
            if depth > 0:
                todo.append((req, depth, remaining))
        if not todo:
            return
        drafts = self._draft(
            [req for req, _, _ in todo],
            [torch.tensor(req.tokens, device=self.device) for req, _, _ in todo],
            [depth for _, depth, _ in todo],
        )
        for (req, depth, remaining), draft in zip(todo, drafts):
            draft = draft.truncate(min(draft.num_nodes, remaining))
            if draft.num_nodes == 0:
                continue
            if draft_depth(draft) > depth:
                raise ValueError(
                    f"drafter returned a draft of depth {draft_depth(draft)} > {depth}"
                )
            req.tokens.extend(draft.tokens.tolist())
            self._drafts[req] = draft

    def _draft(
        self, reqs: list[Request], contexts: list[torch.Tensor], depths: list[int]
    ) -> list[Draft]:
        """The drafts of ``reqs`` (their tokens so far, at most ``depths`` deep), in one
        `propose_batch` call."""
        return propose_batch(
            [req.drafter for req in reqs], contexts, depths,
            [req.params for req in reqs], [req.generator for req in reqs],
        )  # fmt: skip

    def _fit_drafts(self, chunks: list[ScheduledChunk]) -> None:
        """Step 2: drop the drafts (or their tail) the scheduler did not fit this step."""
        scheduled = {c.seq: c for c in chunks}
        for req, draft in list(self._drafts.items()):
            chunk = scheduled.get(req)
            root = len(req.tokens) - draft.num_nodes - 1
            keep = 0 if chunk is None else chunk.num_tokens - 1
            if keep >= draft.num_nodes:
                continue
            del req.tokens[root + 1 + keep :]
            if keep == 0:
                del self._drafts[req]
                req.drafter.feedback(0)
            else:
                self._drafts[req] = draft.truncate(keep)

    def _verify(self, chunks, logits, sampling, spans) -> dict:
        """Steps 3–4: accept a path per draft, move its K/V, keep only accepted tokens for the
        commit. Returns ``{request: (root index, path, [(token, logits row)…])}``."""
        by_seq = {c.seq: c for c in chunks}
        verified = {}
        bs = self.block_size
        for req, (row0, count) in zip(sampling, spans):
            draft = self._drafts.pop(req, None)
            if draft is None:
                continue
            rows = logits[row0 : row0 + count]
            path, token = verify_draft(rows, draft, req.params, req.generator)
            root = req.num_computed
            table = req.block_ids
            slots = [table[p // bs] * bs + p % bs for p in range(root + 1, root + count)]
            compact_kv(self.cache, [slots[i] for i in path], slots[: len(path)])
            accepted = [int(draft.tokens[i]) for i in path]
            del req.tokens[root + 1 :]
            req.tokens.extend(accepted)
            by_seq[req].num_tokens = 1 + len(path)
            req.drafter.feedback(len(path))
            depth = draft_depth(draft)
            self.spec_stats.record(depth, draft.num_nodes, len(path))
            if depth == req.draft_length:  # a round cut short says nothing about the length
                req.draft_length = self.speculative.schedule.next(depth, depth, len(path))
            parent_rows = [0] + [1 + i for i in path]
            emitted = list(zip(accepted + [token], parent_rows))
            verified[req] = (root, path, emitted)
        return verified

    def _observe(self, chunks, hidden, offsets, verified) -> None:
        """Hand each self-drafter the target's hidden states of its committed rows."""
        for chunk in chunks:
            req = chunk.seq
            observe = getattr(req.drafter, "observe", None)
            if req.finished or (observe is None and req.drafter is not None):
                continue
            if req.drafter is None:  # prefill before the first draft: build it now
                if not speculation_eligible(req.params):
                    continue
                req.drafter = self.speculative.drafter()
                req.draft_length = self.speculative.schedule.initial
                observe = getattr(req.drafter, "observe", None)
                if observe is None:
                    continue
            offset = offsets[req]
            start = req.num_computed - chunk.num_tokens
            if req in verified:
                rows = [offset] + [offset + 1 + i for i in verified[req][1]]
            else:
                rows = list(range(offset, offset + chunk.num_tokens))
            observe(hidden[rows], start)

    def _int8_rows(self) -> bool:
        """Whether the fused runner's int8 products of several rows (prefill, and decode steps
        outside the compiled step) multiply int8 × int8: with ``compile_decode``, whose
        multi-row int8 products do (`CompiledDecode.int8_gemm`), so that one engine quantises
        its activations everywhere or nowhere; the default engine keeps fp32 activations (its
        multi-token steps bit-equal to ``model.forward``). 30m int8, 16 requests of 64 + 64 tokens, 2 threads, compiled step,
        alternated on a busy machine: the prefill of the 1,024 prompt tokens 385 → 214 ms,
        the whole run 1,298 → 1,602 tok/s."""
        if not self.compile_decode:
            return False
        if self.compiled is not None:
            return bool(self.compiled.int8_gemm)
        return self.device.type == "cpu" and int8_enabled()

    def _forward(self, chunks: list[ScheduledChunk]):
        """One model call over all chunks. Returns logits ``[M, V]`` of the kept rows, the
        hidden states ``[N, H]`` of all rows (None without speculation), the requests that
        sample next (their chunk ends at their last known token), each one's ``(first kept
        row, rows)`` — all rows of a draft chunk, else one — and each chunk's flat offset."""
        pure_decode = not self._drafts and not self.multimodal and chunks[-1].num_tokens == 1
        want_hidden = self.speculative is not None
        if self._held_sync is not None:
            fused = self._held_sync
        else:
            fused = self.runner is not None and self.runner.sync()
            if self._holding:
                self._held_sync = fused
        if fused and pure_decode and not want_hidden:
            compiled = self._compiled_decode()
            if compiled is not None:
                return self._compiled_forward(chunks, compiled)
        if pure_decode:
            inputs = self._decode_inputs(chunks)  # all single-token chunks (sorted first)
        else:
            inputs = self._ragged_inputs(chunks)
        ids_t, positions_t, keep_t, batch = inputs.ids, inputs.positions, inputs.keep, inputs.batch
        sampling, spans, offsets = inputs.sampling, inputs.spans, inputs.offsets
        dev, max_position, mm = self.device, inputs.max_position, inputs.multimodal
        hidden = None
        if fused:
            int8_rows = self._int8_rows()
            if want_hidden:
                logits, hidden = self.runner(
                    ids_t, positions_t, max_position, batch, keep_t, True, int8_rows
                )
            else:
                logits = self.runner(
                    ids_t, positions_t, max_position, batch, keep_t, False, int8_rows
                )
            return logits.float(), hidden, sampling, spans, offsets
        if self.adapters is not None:
            self.adapters.select(torch.tensor(inputs.token_adapters, device=dev))
        try:
            if mm is not None:
                logits = mm.logits(ids_t, batch, keep_t)
            elif want_hidden:  # the body, then the head on the kept rows
                hidden = self.model.model(ids_t[None], position_ids=positions_t[None], cache=batch)
                logits, hidden = self.model.lm_head(hidden[0, keep_t]), hidden[0]
            else:
                out = self.model(
                    ids_t[None], position_ids=positions_t[None], cache=batch, logits_to_keep=keep_t
                )
                logits = out.logits[0]
        finally:
            if self.adapters is not None:
                self.adapters.select(None)
        return logits.float(), hidden, sampling, spans, offsets

    def _compiled_forward(self, chunks: list[ScheduledChunk], compiled: CompiledDecode):
        """`_forward` of a pure decode step (one token per chunk, no drafts) through the
        compiled step: its inputs built from Python lists — tables padded to their bucket's
        width with the spare block, slots ``table[pos // bs] · bs + pos % bs`` — in one
        tensor per input (the step's only host-side tensor ops)."""
        dev, bs, spare = self.device, self.block_size, compiled.spare_block
        decode = [c.seq for c in chunks]
        starts = [s.num_computed for s in decode]
        width = bucket(len(decode[-1].block_ids))  # widths ascending (see `step`)
        tables = [s.block_ids + [spare] * (width - len(s.block_ids)) for s in decode]
        slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, starts)]
        logits = compiled(
            torch.tensor([s.tokens[p] for s, p in zip(decode, starts)], device=dev),
            torch.tensor(starts, device=dev), torch.tensor(tables, device=dev),
            torch.tensor(slots, device=dev),
        )  # fmt: skip
        rows = _sampling_rows(decode, starts)
        sampling: list[Request] = decode
        if rows is not None:
            sampling, logits = [decode[i] for i in rows], logits[rows]
        spans = [(i, 1) for i in range(len(sampling))]
        return logits.float(), None, sampling, spans, {s: i for i, s in enumerate(decode)}

    def _ragged_inputs(self, chunks: list[ScheduledChunk]) -> _StepInputs:
        """`_forward`'s inputs (`_StepInputs`) for any mix of chunks (prefill, drafts,
        images), built chunk by chunk."""
        bs = self.block_size
        ids: list[int] = []
        token_adapters: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        sampling: list[Request] = []
        spans: list[tuple[int, int]] = []
        offsets: dict[Sequence, int] = {}
        decode: list[Sequence] = []
        prefills: list[PrefillChunk] = []
        trees: dict[int, torch.Tensor] = {}
        mm = MultimodalBatch(self.model) if self.multimodal else None
        for chunk in chunks:
            seq, n = chunk.seq, chunk.num_tokens
            start = seq.num_computed
            offset = offsets[seq] = len(ids)
            if mm is not None:  # image features and M-RoPE ids (positions stay cache indices)
                mm.add(seq.images, start, n, offset)
            ids.extend(seq.tokens[start : start + n])
            token_adapters.extend([seq.adapter] * n)
            draft = self._drafts.get(seq)
            if draft is None:
                positions.extend(range(start, start + n))
            else:  # [root, nodes…] at depth-based positions
                parents = draft.parents or chain_parents(draft.num_nodes)
                positions.extend(start + d for d in [0, *node_depths(parents)])
                if draft.parents is not None:
                    trees[offset] = tree_mask(parents, self.device)
            table = seq.block_ids
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if n == 1:
                decode.append(seq)
            else:
                prefills.append(PrefillChunk(offset, n, start, self._context_slots(seq, start + n)))
            if draft is not None:
                spans.append((len(keep), n))
                keep.extend(range(offset, offset + n))
                sampling.append(seq)
            elif start + n == len(seq.tokens):
                spans.append((len(keep), 1))
                keep.append(len(ids) - 1)
                sampling.append(seq)
        dev = self.device
        batch = TreePagedBatch(self.cache, torch.tensor(slots, device=dev), prefills=prefills)
        batch.tree_masks = trees
        positions_t = torch.tensor(positions, device=dev)
        plain = mm is None and all(self._drafts.get(seq) is None for seq in offsets)
        if prefills and plain and dev.type == "cpu":  # every token a causal row of its own
            batch.step_rows = _step_rows(chunks, positions_t)
        padding = None
        if decode:
            widths = [len(s.block_ids) for s in decode]  # ascending (see `step`)
            tables, padding = self._decode_tables(decode, widths)
            lengths = [p + 1 for p in positions[: len(decode)]]
            _set_decode(batch, tables, positions_t[: len(decode)], decode_groups(widths, lengths))
        return _StepInputs(
            torch.tensor(ids, device=dev), positions_t, torch.tensor(keep, dtype=torch.long,
            device=dev), batch, sampling, spans, offsets, max(positions), padding, mm,
            token_adapters,
        )  # fmt: skip

    def _decode_inputs(self, chunks: list[ScheduledChunk]) -> _StepInputs:
        """`_ragged_inputs` when every chunk is one token without a draft (a pure decode
        step): one list read per sequence (the KV slot ``table[pos // bs] · bs + pos % bs``
        too: one Python expression per row, cheaper than five tensor ops over the batch up
        to hundreds of rows), then the block tables."""
        dev, bs = self.device, self.block_size
        decode = [c.seq for c in chunks]
        starts = [s.num_computed for s in decode]
        ids = [s.tokens[p] for s, p in zip(decode, starts)]
        widths = [len(s.block_ids) for s in decode]  # ascending (see `step`)
        slots = [s.block_ids[p // bs] * bs + p % bs for s, p in zip(decode, starts)]
        positions = torch.tensor(starts, device=dev)
        tables, padding = self._decode_tables(decode, widths)
        batch = TreePagedBatch(self.cache, torch.tensor(slots, device=dev), prefills=[])
        batch.tree_masks = {}
        _set_decode(batch, tables, positions, decode_groups(widths, [p + 1 for p in starts]))
        rows = _sampling_rows(decode, starts)
        if rows is None:
            sampling: list[Request] = decode
            keep = torch.arange(len(decode), device=dev)
        else:
            sampling = [decode[i] for i in rows]
            keep = torch.tensor(rows, dtype=torch.long, device=dev)
        adapters = [s.adapter for s in decode] if self.adapters is not None else []
        return _StepInputs(
            torch.tensor(ids, device=dev), positions, keep, batch, sampling,
            [(i, 1) for i in range(len(sampling))], {s: i for i, s in enumerate(decode)},
            max(starts), padding, None, adapters,
        )  # fmt: skip

    def _decode_tables(
        self, decode: list[Sequence], widths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block tables ``[B, W]`` of the decoding sequences (``widths`` ascending), built from
        one flat list by a masked scatter, padded with block 0; and the padding mask (None
        when every table is full width)."""
        dev, width = self.device, widths[-1]
        flat = list(itertools.chain.from_iterable(s.block_ids for s in decode))
        flat_t = torch.tensor(flat, dtype=torch.long, device=dev)
        if widths[0] == width:
            return flat_t.view(len(decode), width), None
        counts = torch.tensor(widths, device=dev)
        padding = torch.arange(width, device=dev)[None, :] >= counts[:, None]
        tables = torch.zeros(len(decode), width, dtype=torch.long, device=dev)
        return tables.masked_scatter_(~padding, flat_t), padding

    def _compiled_decode(self) -> CompiledDecode | None:
        """The compiled decode step, when asked for and the (synced) runner allows it."""
        if not self.compile_decode:
            return None
        if self._checked[0] is not self.runner.layers:  # rebuilt copies: check again
            reason = CompiledDecode.unsupported_reason(self.runner, self.cache)
            self._checked = (self.runner.layers, reason is None)
        if not self._checked[1]:
            return None
        if self.compiled is None:
            compile_ = self.compile_decode != "eager"
            self.compiled = CompiledDecode(self.runner, self.cache, compile=compile_)
        return self.compiled

    def _context_slots(self, seq: Sequence, total: int) -> torch.Tensor | None:
        """All ``total`` context slots of ``seq`` (None when it has no cached past)."""
        if seq.num_computed == 0:
            return None
        bs = self.block_size
        blocks = torch.tensor(seq.block_ids, device=self.device)
        return (blocks[:, None] * bs + torch.arange(bs, device=self.device)).flatten()[:total]

    # ------------------------------------------------------------------ sampling
    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> list[int]:
        """One token per row. Rows without penalties, constraints or ``min_tokens`` that
        share temperature / top-k / top-p / min-p are processed as one batch (a GRPO group
        is one such batch), then each row draws with its own generator (``self.draw``) — the
        same values and random stream as `_sample_row`; with ``"inverse_cdf"`` the draw is
        one batched op and the tokens reach the host in one ``tolist``."""
        if not reqs:
            return []
        if all(r.sample_key is _GREEDY_KEY for r in reqs):
            return greedy_tokens(logits)
        groups: dict[tuple, list[int]] = {}
        single: list[int] = []
        for i, req in enumerate(reqs):
            key = req.sample_key
            if key is None:
                single.append(i)
            else:
                groups.setdefault(key, []).append(i)
        tokens: list[int] = [0] * len(reqs)
        for i in single:  # first, as ever (rows without a seed share the global RNG)
            tokens[i] = self._sample_row(logits[i], reqs[i])
        order: list[int] = []
        picked: list[torch.Tensor] = []
        for (temperature, top_k, top_p, min_p), rows in groups.items():
            block = logits if len(rows) == len(reqs) else logits[rows]
            if temperature == 0:
                picked.append(block.argmax(dim=-1))
            else:
                probs = apply_min_p(process_logits(block, temperature, top_k, top_p), min_p)
                picked.append(self._draw(probs.softmax(dim=-1), [reqs[i] for i in rows]))
            order.extend(rows)
        drawn = torch.cat(picked).tolist() if picked else []
        for i, token in zip(order, drawn):
            tokens[i] = token
        return tokens

    def _sample_row(self, row: torch.Tensor, req: Request) -> int:
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
        if p.min_tokens and req.num_generated < p.min_tokens and req.stop_ids:
            # HF's MinNewTokensLengthLogitsProcessor: no stop token before min_tokens.
            row = row.index_fill(0, req.stop_id_tensor(row.device), float("-inf"))
        if p.constraint is not None:
            row = row.clone()
            p.constraint.mask_logits(row)
        if p.temperature == 0:
            return int(row.argmax())
        row = process_logits(row, p.temperature, p.top_k, p.top_p)
        row = apply_min_p(row, p.min_p)
        return int(self._draw(row.softmax(dim=-1)[None], [req])[0])

    def _draw(self, probs: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """One token ``[B]`` per row of ``probs`` ``[B, V]``, row i with ``reqs[i]``'s
        generator (see ``draw`` in the class docstring)."""
        if self.draw == "inverse_cdf":
            return inverse_cdf_sample(
                probs, row_uniforms([r.generator for r in reqs], probs.device)
            )
        return torch.cat(
            [torch.multinomial(p, 1, generator=r.generator) for p, r in zip(probs, reqs)]
        )

    # ------------------------------------------------------------------ outputs
    def _token_logprobs(
        self, logits: torch.Tensor, reqs: list[Request], tokens: list[int], index
    ) -> dict[int, TokenLogprob]:
        """`top_logprobs` of every row whose request asks for log-probs, as one batch (one
        log-softmax, one gather, one top-k): ``{index[j]: TokenLogprob}`` for row j."""
        rows = [j for j, req in enumerate(reqs) if req.params.logprobs is not None]
        if not rows:
            return {}
        block = logits if len(rows) == len(reqs) else logits[rows]
        logp = torch.log_softmax(block.float(), dim=-1)
        picked = torch.tensor([tokens[j] for j in rows], device=logp.device)
        values = logp.gather(1, picked[:, None])[:, 0].tolist()
        ks = [reqs[j].params.logprobs for j in rows]
        k = min(max(ks), logp.shape[-1])
        top_v, top_i = logp.topk(k, dim=-1) if k > 0 else (logp[:, :0], logp[:, :0].long())
        top_v, top_i = top_v.tolist(), top_i.tolist()
        return {
            index[j]: TokenLogprob(tokens[j], lp, list(zip(ids[:kj], vals[:kj])))
            for j, lp, ids, vals, kj in zip(rows, values, top_i, top_v, ks)
        }

    def _append(
        self,
        req: Request,
        token: int,
        raw_logits: torch.Tensor | None,
        logprob: TokenLogprob | None = None,
    ) -> None:
        """Record ``token`` and decide whether ``req`` is finished. ``logprob``: the token's
        `TokenLogprob` when computed already, else from ``raw_logits`` (when asked for)."""
        p = req.params
        self.num_generated += 1
        if token in req.stop_ids:
            req.finish("stop", token)
            return
        if p.logprobs is not None:
            if logprob is None:
                lp, top = top_logprobs(raw_logits, token, p.logprobs)
                logprob = TokenLogprob(token, lp, top)
            req.logprobs.append(logprob)
        req.tokens.append(token)
        if p.constraint is not None:
            p.constraint.accept(token)
            if p.constraint.is_finished():
                req.finish("stop")
        if req.stream_text:
            req.update_text()
            if p.stop and req.apply_stop_strings():
                return
        if not req.finished and req.num_generated >= p.max_tokens:
            req.finish("length")

    # ------------------------------------------------------------------ batch API
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        images: list[ImageInputs | None] | None = None,
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion (alongside anything already queued) and return the
        final `RequestOutput` of each, with everything generated.

        The model's weights are read as they are at the call's first step (change them
        between calls, not from another thread during one). ``params`` is one
        `SamplingParams` for all prompts or one per prompt. A prompt whose
        params ask for ``n`` > 1 completions becomes n requests; outputs are prompt-major (the
        n completions of prompt 0, then those of prompt 1, …). With a ``seed`` s, completion k
        of a prompt uses seed s + k (k = 0…n−1), so the completions differ yet are
        reproducible; with n = 1 the params are used as given. ``images``: each prompt's
        images (None: text only), for a vision-language model.
        """
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        images = [None] * len(prompts) if images is None else images
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} entries in images")
        requests = [
            (p, one, im) for p, sp, im in zip(prompts, params, images) for one in self._expand(sp)
        ]
        ids = [self.add_request(p, sp, images=im) for p, sp, im in requests]
        reqs = [self.requests[i] for i in ids]
        # Nothing in this loop can change the model's weights: check them (and rebuild the
        # runner's copies if they changed) at the first step only, not every step (the
        # check is ≈ 30 µs for the 30m preset, 2 % of a decode step).
        self._holding, self._held_sync = True, None
        try:
            while not all(r.finished for r in reqs):
                if not self.has_unfinished():
                    raise RuntimeError("engine stopped before all requests finished")
                self.step()
        finally:
            self._holding, self._held_sync = False, None
        return [r.final_output() for r in reqs]

    def _expand(self, params: SamplingParams) -> list[SamplingParams]:
        """One `SamplingParams` per completion: ``n`` copies with n = 1 and seeds s + k."""
        if params.n == 1:
            return [params]
        params.validate(self.config.vocab_size, self.tokenizer is not None)
        if params.constraint is not None:
            raise ValueError(
                f"n={params.n} with a constraint: a Constraint holds one request's state; "
                "pass one SamplingParams (with its own constraint) per completion"
            )
        seed = params.seed
        return [
            dataclasses.replace(params, n=1, seed=None if seed is None else seed + k)
            for k in range(params.n)
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
            **(self.spec_stats.as_dict() if self.speculative is not None else {}),
        }


@dataclasses.dataclass
class _StepInputs:
    """What `Engine._forward` runs: flat token ids, positions and kept rows, the paged batch,
    the requests that sample (with their ``(first kept row, rows)`` spans), each sequence's
    flat offset, the largest position, the decode tables' padding mask (None: none), the
    multimodal batch (None: text) and each token's LoRA adapter (empty without adapters)."""

    ids: torch.Tensor
    positions: torch.Tensor
    keep: torch.Tensor
    batch: TreePagedBatch
    sampling: list[Request]
    spans: list[tuple[int, int]]
    offsets: dict[Sequence, int]
    max_position: int
    table_padding: torch.Tensor | None
    multimodal: MultimodalBatch | None
    token_adapters: list[int]


def _step_rows(chunks: list[ScheduledChunk], positions: torch.Tensor) -> tuple:
    """Every token of a step of plain causal chunks as a row of its own (`PagedBatch`'s
    ``step_rows``): its sequence's block table (padded with block 0) and its visible length
    (position + 1), int64."""
    width = max(len(c.seq.block_ids) for c in chunks)
    tables = torch.tensor([c.seq.block_ids + [0] * (width - len(c.seq.block_ids)) for c in chunks])
    counts = torch.tensor([c.num_tokens for c in chunks])
    return tables.repeat_interleave(counts, 0), (positions + 1).to(torch.int64)


def _set_decode(
    batch: TreePagedBatch, tables: torch.Tensor, positions: torch.Tensor, groups: list
) -> None:
    """The decode rows' fields of ``batch``: block tables, positions, lengths, groups."""
    batch.num_decode = tables.shape[0]
    batch.decode_blocks, batch.decode_positions = tables, positions
    batch.decode_lens = positions + 1
    batch.decode_groups = groups


def mark_weights_changed(model: torch.nn.Module) -> None:
    """Bump every parameter's version counter, so that caches keyed on versions rebuild:
    `InferenceRunner`'s fused copies and MLA's absorbed ``W_UK``/``W_UV``
    (`lmforge.nn.mla.MultiHeadLatentAttention.absorbed_weights`). In-place writes that skip
    autograd (torch's fused CPU AdamW, ``p.data.copy_``) leave the counters as they were."""
    params = [p for p in model.parameters() if not p.is_inference()]
    if params:
        with torch.inference_mode(False):
            torch.autograd.graph.increment_version(params)


_GREEDY_KEY = (0, 0, 1.0, 0.0)  # plain greedy rows: one batched argmax


def _batch_key(p: SamplingParams) -> tuple | None:
    """What a row's draw depends on besides its logits and generator, when it can be
    processed with others (None: it needs `Engine._sample_row`; `_GREEDY_KEY` itself for
    every plain greedy row); computed once per request (``Request.sample_key``)."""
    if (
        p.repetition_penalty != 1
        or p.presence_penalty
        or p.frequency_penalty
        or p.constraint is not None
        or p.min_tokens
    ):
        return None
    if p.temperature == 0:
        return _GREEDY_KEY
    return (p.temperature, p.top_k, p.top_p, p.min_p)
