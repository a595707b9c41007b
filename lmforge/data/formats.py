"""SFT formats: conversations, prompt/completion pairs and Alpaca instructions → token ids
with a loss mask.

    >>> examples, report = load_sft_examples(["chats.jsonl"], tokenizer)
    >>> examples[0].input_ids, examples[0].labels      # labels unshifted, -100 = no loss

**Conversations** render through the tokenizer's chat template. The assistant-only mask
(Ouyang et al., 2022 train on responses only) is found by rendering prefixes: for assistant
message i, the tokens of ``render(messages[:i], add_generation_prompt=True)`` must be a
prefix of the tokens of ``render(messages[:i+1])``, which must be a prefix of the whole
conversation's tokens; the tokens in between — the reply and the template's end-of-turn
marker (``<|im_end|>`` for ChatML) — are the targets. A template that re-renders earlier
turns differently once later ones exist breaks this property, and is reported as an error
naming the record and message rather than silently mis-masked. No eos is appended: the
template's end-of-turn token is what the model learns to stop on, as at inference.

**Prompt/completion** and **Alpaca** records (Taori et al., 2023) are, by default
(``format="auto"``), conversations too — what trains is what serves: the prompt (for
Alpaca the instruction, then a blank line and the input when there is one; `alpaca_user_text`)
is the user turn, the completion / output the assistant turn, rendered through the chat
template and trained on the assistant turn only. The prompt's tokens are then exactly what
``lmforge serve``'s chat endpoint renders for that user message (``add_generation_prompt``),
so the fine-tuned model answers `chat`, `serve` and the web page as it did in training.
Message-list pairs are one conversation, trained on the completion's assistant turns.

``format="raw"`` keeps the raw text form instead (for base models prompted through
``/v1/completions``): ``<bos> prompt completion <eos>`` with loss on the completion and eos,
Alpaca records with the original Stanford Alpaca prompt. A tokenizer without a chat
template formats them raw as well, and the report counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.data.sources import (
    ChatRecord,
    DataError,
    DataReport,
    InstructionRecord,
    PreferenceRecord,
    PromptCompletionRecord,
    Record,
    TextRecord,
    peak_rss_bytes,
    read_records,
)
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer, TokenizerError

# "auto"/"raw": the schema each file's fields show; the others force one schema. Every
# format but "raw" renders prompt/completion and Alpaca records through the chat template.
FORMATS = ("auto", "raw", "messages", "prompt_completion", "instruction", "text")
RAW_FALLBACK = "formatted raw: the tokenizer has no chat template"  # a report count

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class Example:
    """One training sequence: token ids and unshifted labels (-100 = no loss)."""

    input_ids: list[int]
    labels: list[int]
    where: str = field(default="", compare=False)  # the source record, for error messages

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        """Targets the model predicts (labels[1:] that are not -100)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


class PrefixPropertyError(DataError):
    """The chat template renders a conversation's prefix to tokens that are not a prefix of
    the whole conversation's tokens, so the assistant mask cannot be found safely."""


def _masked(ids: list[int], targets: list[tuple[int, int]]) -> list[int]:
    """Labels equal to ``ids`` inside the ``[start, end)`` spans of ``targets``, else -100;
    the first label is always -100 (nothing predicts the first token)."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in targets:
        labels[start:end] = ids[start:end]
    if labels:
        labels[0] = IGNORE_INDEX
    return labels


def tokenize_conversation(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    assistant_only: bool = True,
    train_from: int = 0,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Example:
    """Render ``messages`` with the chat template; targets are the assistant turns at index
    ``train_from`` or later (every token when ``assistant_only`` is False). Raises
    `PrefixPropertyError` when the template breaks the token prefix property (see module)."""
    messages = list(messages)

    def render(upto: int, generation_prompt: bool = False) -> list[int]:
        return tokenizer.apply_chat_template(
            messages[:upto], add_generation_prompt=generation_prompt, tokenize=True, tools=tools
        )

    ids = render(len(messages))
    if not assistant_only:
        return Example(ids, _masked(ids, [(0, len(ids))]))
    targets = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < train_from:
            continue
        prompt = render(i, generation_prompt=True) if i else []
        turn = render(i + 1)
        if turn[: len(prompt)] != prompt or ids[: len(turn)] != turn:
            raise PrefixPropertyError(
                f"messages[{i}]: the chat template breaks the token prefix property (rendering "
                "the conversation up to this assistant turn does not give a prefix of the whole "
                "conversation's tokens), so its loss mask cannot be found; use a template that "
                "renders earlier turns the same whatever follows, or assistant_only=False"
            )
        targets.append((len(prompt), len(turn)))
    return Example(ids, _masked(ids, targets))


def tokenize_prompt_completion(
    prompt: str, completion: str, tokenizer: Tokenizer, *, assistant_only: bool = True
) -> Example:
    """``<bos> prompt completion <eos>``: targets are the completion and eos (or all)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end completions with")
    head = tokenizer.encode(prompt, add_special_tokens=True)
    tail = [*tokenizer.encode(completion), tokenizer.eos_token_id]
    ids = head + tail
    start = len(head) if assistant_only else 0
    return Example(ids, _masked(ids, [(start, len(ids))]))


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 (Alpaca's name)
    """The Stanford Alpaca prompt (with or without the input section): the raw form."""
    if input:
        return ALPACA_PROMPT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def alpaca_user_text(instruction: str, input: str = "") -> str:  # noqa: A002
    """The user turn of an Alpaca record in chat form: the instruction, then a blank line
    and the input when there is one."""
    return f"{instruction}\n\n{input}" if input else instruction


def prompt_completion_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    """A string prompt/completion pair as a two-turn conversation (user → assistant)."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def record_to_example(
    record: Record,
    tokenizer: Tokenizer,
    *,
    assistant_only: bool = True,
    raw: bool = False,
) -> Example:
    """The SFT `Example` of a validated record (see `lmforge.data.sources`). String
    prompt/completion and Alpaca records render through the chat template as a user turn
    and an assistant turn, or as raw text with ``raw`` (see the module docstring)."""
    if isinstance(record, ChatRecord):
        example = tokenize_conversation(record.messages, tokenizer, assistant_only=assistant_only)
    elif isinstance(record, (PromptCompletionRecord, InstructionRecord)):
        example = _pair_example(record, tokenizer, assistant_only, raw)
    elif isinstance(record, TextRecord):  # continued pretraining: every token is a target
        ids = tokenizer.encode(record.text, add_special_tokens=True)
        ids += [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        example = Example(ids, _masked(ids, [(0, len(ids))]))
    elif isinstance(record, PreferenceRecord):
        raise DataError("preference records (prompt/chosen/rejected) are for DPO, not SFT")
    else:
        raise TypeError(f"not a record: {type(record).__name__}")
    example.where = record.where
    return example


def _pair_example(
    record: PromptCompletionRecord | InstructionRecord,
    tokenizer: Tokenizer,
    assistant_only: bool,
    raw: bool,
) -> Example:
    if isinstance(record, InstructionRecord):
        if raw:
            prompt = alpaca_prompt(record.instruction, record.input)
            return tokenize_prompt_completion(
                prompt, record.output, tokenizer, assistant_only=assistant_only
            )
        user = alpaca_user_text(record.instruction, record.input)
        messages = prompt_completion_messages(user, record.output)
        return tokenize_conversation(messages, tokenizer, assistant_only=assistant_only)
    prompt, completion = record.prompt, record.completion
    if isinstance(prompt, str) and isinstance(completion, str):
        if raw:
            return tokenize_prompt_completion(
                prompt, completion, tokenizer, assistant_only=assistant_only
            )
        messages = prompt_completion_messages(prompt, completion)
        return tokenize_conversation(messages, tokenizer, assistant_only=assistant_only)
    if isinstance(prompt, tuple) and isinstance(completion, tuple):
        return tokenize_conversation(
            [*prompt, *completion], tokenizer, assistant_only=assistant_only,
            train_from=len(prompt),
        )  # fmt: skip
    raise DataError("'prompt' and 'completion' must both be strings or both messages")


def load_sft_examples(
    paths: Sequence[str | Path],
    tokenizer: Tokenizer,
    *,
    format: str = "auto",  # noqa: A002 (the contract's name)
    assistant_only: bool = True,
    skip_bad: bool = False,
    max_len: int | None = None,
    too_long: str = "truncate",
) -> tuple[list[Example], DataReport]:
    """Read, validate and tokenize SFT data; returns the examples and a `DataReport`.

    Args:
        format: "auto" (the schema each file's fields show; prompt/completion and Alpaca
            records through the chat template), "raw" (the same schemas, those two as raw
            text), or one schema forced: "messages", "prompt_completion", "instruction"
            (Alpaca) or "text".
        assistant_only: loss on assistant replies / completions only (else on every token).
        skip_bad: skip (and count) malformed records and examples without any target,
            instead of raising `DataError` naming file, line and field.
        max_len: longest example kept whole; longer ones follow ``too_long``: "truncate"
            (counted), "drop" (counted) or "error".
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    if too_long not in ("truncate", "drop", "error"):
        raise ValueError(f"too_long={too_long!r}: choose 'truncate', 'drop' or 'error'")
    report = DataReport()
    examples = []
    no_template = tokenizer.chat_template is None
    raw = format == "raw" or no_template
    schema = "auto" if format == "raw" else format
    for record in read_records(paths, schema=schema, skip_bad=skip_bad, report=report):
        try:
            example = record_to_example(record, tokenizer, assistant_only=assistant_only, raw=raw)
            if example.num_loss_tokens == 0:
                raise DataError("no tokens to train on (no assistant reply / completion)")
            pair = isinstance(record, (PromptCompletionRecord, InstructionRecord))
            if no_template and format != "raw" and pair:
                report.count(RAW_FALLBACK)
        except (DataError, TokenizerError) as exc:
            reason = "template breaks prefix" if isinstance(exc, PrefixPropertyError) else None
            reason = reason or ("no loss tokens" if "no tokens to train" in str(exc) else None)
            _reject(report, skip_bad, reason or "cannot format", f"{record.where}: {exc}")
            continue
        if max_len is not None and len(example) > max_len:
            if too_long == "error":
                raise DataError(f"{record.where}: {len(example)} tokens > max_len={max_len}")
            if too_long == "drop":
                report.kept -= 1
                report.count("dropped: longer than max_len")
                continue
            example.input_ids = example.input_ids[:max_len]
            example.labels = example.labels[:max_len]
            report.count("truncated to max_len")
            if example.num_loss_tokens == 0:
                report.kept -= 1
                report.count("dropped: no loss tokens left after truncation")
                continue
        examples.append(example)
    report.peak_memory_bytes = peak_rss_bytes()
    return examples, report


def _reject(report: DataReport, skip_bad: bool, reason: str, message: str) -> None:
    if not skip_bad:
        raise DataError(message)
    report.kept -= 1  # read_records counted it as kept
    report.skip(reason, message)
