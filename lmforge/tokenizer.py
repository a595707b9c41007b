"""Byte-level BPE tokenizer: train it, save/load it in Hugging Face format, render chat templates.

    >>> tok = Tokenizer.train(texts, vocab_size=4096)
    >>> tok.save("out/")                      # tokenizer.json, tokenizer_config.json, chat_template.jinja
    >>> tok = load_tokenizer("out/")          # also loads folders written by `transformers`
    >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    '<|bos|><|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'

The default chat format is ChatML: every turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``,
so ``<|im_end|>`` ends assistant turns and is a stop token beside ``<|eos|>`` (`stop_token_ids`).
Chat templates render exactly as `transformers` renders them (same Jinja environment, filters,
globals and variables), so a template behaves the same here, in `transformers` and in vLLM.

Long texts are trained on and encoded in pieces of at most ``PIECE_CHARS`` characters
(`whitespace_pieces`), so memory follows the piece, not the document (the Rust backend
keeps ~100 bytes per token of a text it encodes). A piece ends just before a single space
that sits between two non-space characters ("… fox" | " jumps …"): regex pre-tokenizers
(GPT-2's, Llama 3's, ours) never match across such a space, so the tokens are those of the
whole text. A tokenizer for which that does not hold (a normalizer or a pre-tokenizer that
adds a prefix to every text, as SentencePiece's does) is detected by `pieces_are_exact`
and encodes the whole text at once.

This file is long because `Tokenizer` is one type read top to bottom — training, HF-format
storage, encoding (whole and in pieces) and chat — with the helpers that read its folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from lmforge.chat_template import ChatTemplateError, render_chat_template
from lmforge.io import atomic_write_json, atomic_write_text, read_json

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "PIECE_CHARS",
    "SpecialTokens",
    "Tokenizer",
    "TokenizerError",
    "load_tokenizer",
    "whitespace_pieces",
]

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role ' + message['role'] + ' (use system, user or assistant)') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
# The special-token attributes `transformers` knows by name and passes to chat templates.
NAMED_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"
)  # fmt: skip
_UNBOUNDED_LENGTH = int(1e30)  # what `transformers` writes when a tokenizer has no length limit
_NAMED = ("name", "template")  # keys of one entry in a list of named chat templates
PIECE_CHARS = 1 << 16  # longest piece of a long text trained on / encoded at once
# Texts that check that cutting at such spaces keeps the tokens (`pieces_are_exact`).
_PIECE_PROBES = ("Hello world, it's 2024 now.", "a  b\tc\n\nd e", "x .y ...z 12 34",
                 "Ünïcödé wörds ünd Straße", "foo\u00a0bar baz?! ok")  # fmt: skip


class TokenizerError(ValueError):
    """A tokenizer folder, file, field, message or template is invalid."""


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Special tokens of a new tokenizer; they take ids 0, 1, ... in this order."""

    bos: str | None = "<|bos|>"
    eos: str | None = "<|eos|>"
    pad: str | None = "<|pad|>"
    extra: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")

    def named(self) -> dict[str, str]:
        """The named ones, keyed like `transformers` attributes (``bos_token``, ...)."""
        pairs = {"bos_token": self.bos, "eos_token": self.eos, "pad_token": self.pad}
        return {name: token for name, token in pairs.items() if token is not None}

    def all(self) -> list[str]:
        """Every special token, in id order, without duplicates."""
        return list(dict.fromkeys([*self.named().values(), *self.extra]))


class Tokenizer:
    """A `tokenizers.Tokenizer` plus its special tokens and chat template."""

    def __init__(
        self,
        backend: Backend,
        special_tokens: Mapping[str, str] | None = None,
        chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
        model_max_length: int = _UNBOUNDED_LENGTH,
    ) -> None:
        """Wrap ``backend``; ``special_tokens`` maps names like ``"bos_token"`` to token text."""
        self.backend = backend
        self.special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self._pieces_exact: bool | None = None  # `pieces_are_exact`, computed once
        for name, token in self.special_tokens.items():
            if name not in NAMED_SPECIAL_TOKENS:
                raise TokenizerError(f"unknown special token name {name!r}")
            if backend.token_to_id(token) is None:
                raise TokenizerError(f"{name} {token!r} is not in the vocabulary")

    # -- training and storage -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        min_frequency: int = 2,
        special_tokens: SpecialTokens = SpecialTokens(),  # noqa: B008 (frozen, so shared safely)
        chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    ) -> Tokenizer:
        """Train byte-level BPE on ``texts``: digits split one by one, all 256 bytes in the
        alphabet (so any text round-trips), special tokens first. ``encode(...,
        add_special_tokens=True)`` prepends the bos token, here and in `transformers`."""
        specials = special_tokens.all()
        if vocab_size < 256 + len(specials):
            raise TokenizerError(f"vocab_size={vocab_size} < 256 bytes + {len(specials)} specials")
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        pieces = (p for t in _checked_texts(texts) for p in whitespace_pieces(t, PIECE_CHARS))
        backend.train_from_iterator(pieces, trainer=trainer)
        if special_tokens.bos is not None:
            bos = special_tokens.bos
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos}:1 $B:1",
                special_tokens=[(bos, backend.token_to_id(bos))],
            )
        return cls(backend, special_tokens.named(), chat_template)

    def save(self, path: str | Path, chat_template_in_config: bool = False) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``
        atomically; ``chat_template_in_config`` also stores the template in the config, as
        older `transformers` did."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        config = self._config()
        if self.chat_template is not None:
            atomic_write_text(folder / TEMPLATE_FILE, self.chat_template)
            if chat_template_in_config:
                config["chat_template"] = self.chat_template
        else:
            (folder / TEMPLATE_FILE).unlink(missing_ok=True)  # a stale template would load back
        atomic_write_json(folder / CONFIG_FILE, config)

    def _config(self) -> dict[str, Any]:
        added = self.backend.get_added_tokens_decoder()
        named = set(self.special_tokens.values())
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {str(i): _added_token_json(t) for i, t in added.items()},
            "additional_special_tokens": [
                t.content for _, t in sorted(added.items()) if t.special and t.content not in named
            ],
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            **self.special_tokens,
        }

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load a folder written by `save` or by `transformers`' ``save_pretrained``."""
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: tokenizer folder not found")
        backend = _read_backend(folder / TOKENIZER_FILE)
        config_path = folder / CONFIG_FILE
        config = _read_json_object(config_path) if config_path.is_file() else {}
        special = {
            name: _token_text(config[name], name, config_path)
            for name in NAMED_SPECIAL_TOKENS
            if config.get(name) is not None
        }
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = extra.values() if isinstance(extra, dict) else extra
        extra = [_token_text(t, "additional_special_tokens", config_path) for t in extra]
        # Like `transformers`: named special tokens become special added tokens, even when the
        # BPE vocabulary already holds them, so they never split in text.
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in [*special.values(), *extra] if t not in known]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        template = _read_chat_template(folder, config, config_path)
        max_length = config.get("model_max_length")
        max_length = max_length if isinstance(max_length, int) else _UNBOUNDED_LENGTH
        return cls(backend, special, template, max_length)

    # -- encoding -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds the bos token (if any)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_long(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """`encode` in pieces of at most `PIECE_CHARS` characters (`whitespace_pieces`): the
        same ids, with memory bounded by the piece rather than the text (whole-text encoding
        when `pieces_are_exact` is false for this tokenizer)."""
        return [i for ids in self.encode_pieces(text, add_special_tokens) for i in ids]

    def encode_pieces(self, text: str, add_special_tokens: bool = False) -> Iterator[list[int]]:
        """The ids of `encode_long`, one list per piece (the special tokens ``add_special_tokens``
        adds come first and last), for callers that store ids as they come."""
        if not isinstance(text, str):
            raise TypeError(f"encode_long expects a str, got {type(text).__name__}")
        if len(text) <= PIECE_CHARS or not self.pieces_are_exact():
            yield self.encode(text, add_special_tokens)
            return
        head, tail = self._special_affixes() if add_special_tokens else ([], [])
        yield head
        for piece in whitespace_pieces(text, PIECE_CHARS):
            yield self.backend.encode(piece, add_special_tokens=False).ids
        yield tail

    def pieces_are_exact(self) -> bool:
        """Whether encoding texts in `whitespace_pieces` gives the ids of the whole text for
        this tokenizer (checked once on probe texts cut at every place a piece may end)."""
        cached = self._pieces_exact
        if cached is None:
            cached = all(
                self.encode(probe) == self.encode(probe[:cut]) + self.encode(probe[cut:])
                for probe in _PIECE_PROBES
                for cut in _cut_points(probe)
            )
            self._pieces_exact = cached
        return cached

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """The ids ``add_special_tokens`` puts before and after a text (bos, eos, …)."""
        plain = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        for at in range(len(full) - len(plain) + 1):
            if full[at : at + len(plain)] == plain:
                return full[:at], full[at + len(plain) :]
        raise TokenizerError("cannot tell which special tokens this tokenizer adds")

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        """`encode` for many texts at once (parallel in the Rust backend)."""
        texts = list(_checked_texts(texts))
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; exact inverse of `encode` for byte-level BPE."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token text of ``token_id``, or None when out of range."""
        return self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id_of(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of(self.pad_token)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: the eos token and the chat end-of-turn ``<|im_end|>``."""
        ids = [self.eos_token_id, self.token_to_id("<|im_end|>")]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render ``messages`` with the chat template exactly as `transformers` does; extra
        ``kwargs`` become template variables. ``tokenize=True`` returns the ids instead."""
        if self.chat_template is None:
            raise TokenizerError("this tokenizer has no chat template; set .chat_template")
        variables = {**self.special_tokens, **kwargs}  # kwargs override special tokens
        try:
            text = render_chat_template(
                self.chat_template,
                messages,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                documents=documents,
                **variables,
            )
        except ChatTemplateError as exc:
            raise TokenizerError(str(exc)) from exc
        return self.encode(text) if tokenize else text


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer in folder ``path`` (see `Tokenizer.from_dir`)."""
    return Tokenizer.from_dir(path)


# -- reading a folder ---------------------------------------------------------------------


def _read_backend(path: Path) -> Backend:
    if not path.is_file():
        raise TokenizerError(f"{path}: not found (a tokenizer folder needs {TOKENIZER_FILE})")
    try:
        return Backend.from_file(str(path))
    except Exception as exc:  # the Rust parser raises plain Exception
        _read_json_object(path)  # reports a JSON syntax error with its line and column
        raise TokenizerError(f"{path}: not a valid tokenizers file: {exc}") from exc


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = read_json(path)
    except (OSError, ValueError) as exc:
        raise TokenizerError(str(exc)) from exc
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _token_text(value: Any, field: str, path: Path) -> str:
    """Special tokens are stored as text or as an AddedToken dict with a "content" key."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f'{path}: field "{field}" must be a string or {{"content": ...}}')


def _read_chat_template(folder: Path, config: dict[str, Any], path: Path) -> str | None:
    """``chat_template.jinja`` wins (as in `transformers`); else the config's ``chat_template``,
    a string or a list of ``{"name", "template"}`` of which we take "default"."""
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise TokenizerError(f'{path}: field "chat_template" must be a string or a list')
    named = {}
    for i, item in enumerate(value):
        if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in _NAMED)):
            raise TokenizerError(f'{path}: field "chat_template[{i}]" needs "name" and "template"')
        named[item["name"]] = item["template"]
    if "default" not in named:
        raise TokenizerError(f'{path}: field "chat_template" lacks "default": {sorted(named)}')
    return named["default"]


def _added_token_json(token: AddedToken) -> dict[str, Any]:
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {name: getattr(token, name) for name in fields}


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(text).__name__}")
        yield text


_CUT = re.compile(r"(?<=\S) (?=\S)")  # a single space between two non-space characters


def _cut_points(text: str) -> list[int]:
    return [m.start() for m in _CUT.finditer(text)]


def whitespace_pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``max_chars`` characters, each cut just
    before a single space between two non-space characters (see the module docstring); a
    stretch longer than ``max_chars`` without such a space stays whole. Joined, the pieces
    are ``text``."""
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be at least 1")
    start = 0
    while len(text) - start > max_chars:
        window = text[start + 1 : start + max_chars + 1]
        cut = max(window.rfind(" "), 0)
        while cut > 0 and not (_is_cut(text, start + 1 + cut)):
            cut = window.rfind(" ", 0, cut)
            cut = max(cut, 0)
        if cut > 0:
            end = start + 1 + cut
        else:  # no place to cut within the window: the next place after it
            match = _CUT.search(text, start + max_chars + 1)
            if match is None:
                break
            end = match.start()
        yield text[start:end]
        start = end
    if start < len(text) or not text:
        yield text[start:]


def _is_cut(text: str, at: int) -> bool:
    return 0 < at < len(text) - 1 and not text[at - 1].isspace() and not text[at + 1].isspace()
