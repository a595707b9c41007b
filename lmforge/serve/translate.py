"""OpenAI requests → engine inputs (prompt ids, `SamplingParams`); engine outputs → OpenAI
response pieces. Pure functions, so every rule here is unit-tested without a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ToolDefinition,
)
from lmforge.serve.responses import ChatLogprobs, CompletionLogprobs, TokenLogprobEntry, TopLogprob
from lmforge.serve.tools import template_messages, tool_grammar

# JSON has no -inf; a masked-out token's logprob is reported as this (as vLLM does).
MIN_LOGPROB = -9999.0


@dataclass
class ServerLimits:
    """What one request may ask for. ``max_tokens`` caps generated tokens per choice;
    ``max_model_len`` caps prompt + generated tokens."""

    max_model_len: int
    max_tokens: int
    max_choices: int = 16  # n × number of prompts
    max_request_bytes: int = 1 << 20
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # Cheap bounds checked before any tokenization (None: derived by `prompt_char_bound`).
    max_prompt_chars: int | None = None
    max_messages: int | None = None
    # Vision tokens all images of one request may take (None: max_model_len).
    max_image_tokens: int | None = None


def prompt_char_bound(tokenizer: Any, max_model_len: int) -> int:
    """Characters beyond which a text surely has more than ``max_model_len`` tokens: no
    token covers more characters than the longest entry of the vocabulary, so a text of
    more than ``max_model_len × longest`` characters needs more than ``max_model_len``."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:  # not an lmforge Tokenizer: a generous cap of 64 characters a token
        return max_model_len * 64
    vocab = backend.get_vocab(with_added_tokens=True)
    longest = max((len(t) for t in vocab), default=1)
    return max_model_len * max(1, longest)


def check_prompt_size(texts: list[str], count: int, limits: ServerLimits, param: str) -> None:
    """Refuse, without tokenizing, a request whose ``count`` messages or whose total
    characters certainly exceed the context (see `prompt_char_bound`)."""
    if limits.max_messages is not None and count > limits.max_messages:
        raise APIError(
            f"{count} {param} is more than this server takes ({limits.max_messages})",
            param=param,
            code="context_length_exceeded",
        )
    chars = sum(len(t) for t in texts)
    if limits.max_prompt_chars is not None and chars > limits.max_prompt_chars:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, "
            f"your {param} hold {chars} characters, more than {limits.max_prompt_chars} "
            "(the most that can fit in it).",
            param=param,
            code="context_length_exceeded",
        )


# ---------------------------------------------------------------------- prompts
def chat_prompt_ids(
    tokenizer: Any, messages: list[ChatMessage], tools: list[ToolDefinition] | None = None
) -> list[int]:
    """Render ``messages`` (and ``tools``, see `lmforge.serve.tools`) with the tokenizer's chat
    template (``developer`` is read as ``system``), ready for the assistant's reply, and
    tokenize it. Slow for long prompts: the server calls it off the event loop."""
    plain, tool_dicts = template_messages(messages, tools, tokenizer.chat_template)
    try:
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tools=tool_dicts)
    except ValueError as exc:  # TokenizerError: no template, a role the template refuses
        raise APIError(f"cannot apply the chat template: {exc}", param="messages") from exc
    return tokenizer.encode(text)


def completion_prompt_ids(tokenizer: Any, prompt: str | list) -> list[list[int]]:
    """The prompts of a completions request, as token ids. Text gets the tokenizer's special
    prefix (bos) as `transformers` adds it; token-id prompts are used as given."""
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(tokenizer.encode(p, add_special_tokens=True))
            continue
        bad = [t for t in p if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise APIError(
                f"prompt[{i}]: token ids must be in [0, {tokenizer.vocab_size}), got {bad[0]}",
                param="prompt",
            )
        out.append(list(p))
    return out


def generation_budget(
    prompt_len: int, requested: int | None, limits: ServerLimits, prompt_param: str = "messages"
) -> int:
    """``max_tokens`` for one prompt: the requested value checked against the limits, or by
    default what fits in the context (at most ``limits.max_tokens``)."""
    if prompt_len == 0:
        raise APIError("the prompt is empty (0 tokens)", param=prompt_param)
    if prompt_len >= limits.max_model_len:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, "
            f"your prompt has {prompt_len} tokens, which leaves no room for a completion.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if requested is None:
        return min(limits.max_tokens, limits.max_model_len - prompt_len)
    if requested > limits.max_tokens:
        raise APIError(
            f"max_tokens={requested} is above this server's limit of {limits.max_tokens}",
            param="max_tokens",
        )
    if prompt_len + requested > limits.max_model_len:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, "
            f"you requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
            f"{requested} for the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def constraint_spec(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any] | None:
    """Keyword arguments for ``compile_constraint`` (after the tokenizer), or None."""
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        return {"json_schema": fmt.json_schema.schema_}
    if fmt is not None and fmt.type == "json_object":
        return {"json_object": True}
    if req.guided_regex is not None:
        return {"regex": req.guided_regex}
    if req.guided_grammar is not None:
        return {"ebnf": req.guided_grammar}
    mode = getattr(req, "tool_mode", None)
    if mode is not None:
        return {"lark": tool_grammar(req.tools, mode, req.parallel_tool_calls is not False)}
    return None


def constraint_param(req: ChatCompletionRequest | CompletionRequest) -> str:
    """The request field a bad constraint is reported against."""
    if req.response_format is not None:
        return "response_format"
    if req.guided_regex is not None:
        return "guided_regex"
    if req.guided_grammar is not None:
        return "guided_grammar"
    return "tools"


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    max_tokens: int,
    limits: ServerLimits,
    choice: int = 0,
    constraint: Any = None,
) -> Any:
    """The engine's `SamplingParams` for choice ``choice`` of ``req``. With a seed, choice i
    uses ``seed + i`` so that the ``n`` choices differ yet the whole answer is reproducible."""
    from lmforge.infer.params import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=max(req.top_k, 0),
        top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        stop_token_ids=tuple(limits.stop_token_ids),
        stop=tuple(req.stop),
        ignore_eos=req.ignore_eos,
        seed=None if req.seed is None else (req.seed + choice) % 2**64,
        logprobs=req.num_logprobs,
        constraint=constraint,
    )


# ---------------------------------------------------------------------- logprobs
def _clamp(logprob: float) -> float:
    return logprob if logprob >= MIN_LOGPROB else MIN_LOGPROB  # also maps nan to the floor


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer: Any, logprobs: list | None) -> ChatLogprobs | None:
    """OpenAI chat ``logprobs.content`` entries for engine `TokenLogprob`s."""
    if logprobs is None:
        return None

    def top(token_id: int, lp: float) -> TopLogprob:
        text = _token_text(tokenizer, token_id)
        return TopLogprob(token=text, logprob=_clamp(lp), bytes=list(text.encode("utf-8")))

    content = []
    for item in logprobs:
        head = top(item.token_id, item.logprob)
        content.append(
            TokenLogprobEntry(**head.model_dump(), top_logprobs=[top(t, lp) for t, lp in item.top])
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    tokenizer: Any, logprobs: list | None, start_offset: int = 0
) -> CompletionLogprobs | None:
    """Legacy completions ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``text_offset``) for engine `TokenLogprob`s; offsets start at ``start_offset``."""
    if logprobs is None:
        return None
    tokens, values, tops, offsets = [], [], [], []
    offset = start_offset
    for item in logprobs:
        text = _token_text(tokenizer, item.token_id)
        tokens.append(text)
        values.append(_clamp(item.logprob))
        tops.append({_token_text(tokenizer, t): _clamp(lp) for t, lp in item.top})
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
    )
