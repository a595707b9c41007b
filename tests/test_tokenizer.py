"""Tokenizer: BPE training, round trips, HF-format storage and chat-template parity with
`transformers` (the reference), for our default template and real-world-style ones."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from lmforge.tokenizer import (
    DEFAULT_CHAT_TEMPLATE,
    SpecialTokens,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

transformers = pytest.importorskip("transformers")

WORDS = "the a cat dog sat on mat and ran far away hello world quick brown fox jumps over lazy"
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  \n\ttabs\r\nCRLF",
    "Numbers: 12345 and 3.14159, year 2024!",
    "Unicode: naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト",
    "Emoji: 👩‍👩‍👧 🚀🔥 🇫🇷 👍🏽",
    "Specials inline: <|im_start|>user\nhi<|im_end|><|eos|>",
    "control \x00\x01\x7f bytes and a \u200b zero-width space",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "system", "content": "Be kind. ünïcödé 🚀"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?\n  Multi-line\n\n"},
        {"role": "assistant", "content": "  To get to the other side.  "},
        {"role": "user", "content": "<b>html</b> & \"quotes\" 'too'"},
    ],
    [  # None-valued keys are dropped and reasoning is aliased, as transformers does
        {"role": "user", "content": "Think first.", "name": None},
        {"role": "assistant", "content": "Done.", "reasoning": "hmm 🤔", "tool_calls": None},
    ],
]

# Llama-3.1 style: bos_token, `is defined` with a kwarg override, role alternation enforced
# with raise_exception, |trim, whitespace control.
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\nToday Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
        + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Uses namespace, loop.last, loop controls, |tojson with options, dict(), strftime_now, kwargs.
TOOLS_TEMPLATE = """{%- set ns = namespace(system='', turns=0) -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}{%- set ns.system = message.content -%}{%- continue -%}{%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
{%- endfor -%}
[SYS]{{ ns.system }}[/SYS]
{% if tools %}[TOOLS]{{ tools | tojson }}[/TOOLS]
{% endif %}
{% for message in messages if message.role != 'system' %}
{{ message.role | upper }}({{ loop.index }}/{{ ns.turns }}): {{ message.content }}
{%- if loop.last and message.role == 'assistant' %}{{ eos_token }}{% endif %}
{%- if not loop.last %}

{% endif %}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT:{% endif %}
META {{ {'n': messages | length, 'last': messages[-1]} | tojson(indent=2, sort_keys=True) }}
{{ dict(a=1) | tojson }} {{ custom_var | default('none') }} {{ strftime_now('%Y') }}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <é>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic small corpus: words, numbers, punctuation and a few unicode strings."""
    rng = random.Random(seed)
    words = WORDS.split()
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        + rng.choice([".", "!", "?", f" {rng.randint(0, 99999)}"])
        for _ in range(n)
    ]
    return lines + TEXTS[:5] * 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(), vocab_size=400, min_frequency=2)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    return folder


def hf_load(folder: Path):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def with_template(folder: Path, dest: Path, template: str, in_config) -> Path:
    """Copy ``folder`` to ``dest`` with ``template`` stored as chat_template.jinja (in_config
    False), as a config string (True) or as a config list of named templates ("list")."""
    shutil.copytree(folder, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    if in_config == "list":
        config["chat_template"] = [
            {"name": "rag", "template": "unused"},
            {"name": "default", "template": template},
        ]
    elif in_config:
        config["chat_template"] = template
    else:
        (dest / "chat_template.jinja").write_text(template)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


# -- training and round trips --------------------------------------------------------------


def test_vocab_and_special_tokens(tok: Tokenizer) -> None:
    assert len(tok) == tok.vocab_size == 400
    specials = SpecialTokens().all()
    assert [tok.token_to_id(t) for t in specials] == list(range(len(specials)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.stop_token_ids == [1, tok.token_to_id("<|im_end|>")]
    for token in specials:
        assert tok.encode(token) == [tok.token_to_id(token)]
        assert tok.id_to_token(tok.token_to_id(token)) == token
    assert tok.encode("x<|im_start|>y")[1] == tok.token_to_id("<|im_start|>")


@pytest.mark.parametrize("text", TEXTS + ["", " ", "\n\n\n", "a" * 1000, "٣٤٥ ¹²³ ½"])
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_every_byte_is_representable(tok: Tokenizer) -> None:
    text = "".join(chr(c) for c in range(1, 0x800)) + "\U0010ffff"
    assert tok.decode(tok.encode(text)) == text


def test_digits_split_individually(tok: Tokenizer) -> None:
    ids = tok.encode("12345 2024")
    pieces = [tok.decode([i]) for i in ids]
    assert pieces == ["1", "2", "3", "4", "5", " ", "2", "0", "2", "4"]


def test_bos_and_skip_special_tokens(tok: Tokenizer) -> None:
    plain = tok.encode("hello world")
    assert tok.encode("hello world", add_special_tokens=True) == [tok.bos_token_id, *plain]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.encode_batch(["hello world", "dog"]) == [plain, tok.encode("dog")]


def test_train_without_bos(tmp_path: Path) -> None:
    tok = Tokenizer.train(corpus(50), vocab_size=300, special_tokens=SpecialTokens(bos=None))
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.encode("cat", add_special_tokens=True) == tok.encode("cat")
    assert "<|bos|>" not in tok.apply_chat_template(CONVERSATIONS[0])
    tok.save(tmp_path)
    assert hf_load(tmp_path).encode("cat the dog") == tok.encode("cat the dog")


def test_train_rejects_bad_input() -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        Tokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        Tokenizer.train(["abc", b"bytes"], vocab_size=300)


# -- storage and transformers parity ----------------------------------------------------------


def test_saved_files(tok: Tokenizer, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["clean_up_tokenization_spaces"] is False
    assert config["added_tokens_decoder"]["0"]["content"] == "<|bos|>"
    assert "chat_template" not in config
    assert (saved / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
    assert not list(saved.glob(".*tmp"))  # no temp files left by the atomic writes


def test_transformers_loads_ours(tok: Tokenizer, saved: Path) -> None:
    hf = hf_load(saved)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf.encode(text) == tok.encode(text, add_special_tokens=True)
        assert hf.decode(tok.encode(text)) == text
    for name in ("bos", "eos", "pad"):
        assert getattr(hf, f"{name}_token") == getattr(tok, f"{name}_token")
        assert getattr(hf, f"{name}_token_id") == getattr(tok, f"{name}_token_id")
    assert len(hf) == len(tok)


def test_reload_is_identical(tok: Tokenizer, saved: Path) -> None:
    again = load_tokenizer(saved)
    assert [again.encode(t, True) for t in TEXTS] == [tok.encode(t, True) for t in TEXTS]
    assert again.special_tokens == tok.special_tokens
    assert again.chat_template == tok.chat_template


def test_load_transformers_save_pretrained(saved: Path, tmp_path: Path) -> None:
    hf = hf_load(saved)
    hf.chat_template = LLAMA3_TEMPLATE
    hf.save_pretrained(str(tmp_path))
    ours = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text)
    assert ours.bos_token_id == hf.bos_token_id and ours.eos_token_id == hf.eos_token_id
    for conversation in CONVERSATIONS:
        assert ours.apply_chat_template(conversation) == hf.apply_chat_template(
            conversation, tokenize=False
        )


def test_add_bos_token_flag_follows_transformers(saved: Path, tmp_path: Path) -> None:
    """With a tokenizer.json, its post-processor decides; config flags are ignored (as in HF)."""
    folder = with_template(saved, tmp_path / "t", DEFAULT_CHAT_TEMPLATE, False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, hf = load_tokenizer(folder), hf_load(folder)
    assert ours.encode("cat", add_special_tokens=True) == hf.encode("cat")
    assert ours.encode("cat", add_special_tokens=True)[0] == ours.bos_token_id


# -- chat templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["default", "llama3", "tools"])
@pytest.mark.parametrize("in_config", [False, True, "list"])
def test_chat_template_matches_transformers(saved, tmp_path, template, in_config) -> None:
    source = {"default": DEFAULT_CHAT_TEMPLATE, "llama3": LLAMA3_TEMPLATE}.get(template)
    folder = with_template(saved, tmp_path / "t", source or TOOLS_TEMPLATE, in_config)
    ours, hf = load_tokenizer(folder), hf_load(folder)
    extra = {"tools": {"tools": TOOLS, "custom_var": "x"}, "llama3": {"date_string": "1 Jan"}}
    extra = extra.get(template, {})
    for conversation in CONVERSATIONS:
        for gen in (False, True):
            want = hf.apply_chat_template(
                conversation, add_generation_prompt=gen, tokenize=False, **extra
            )
            assert (
                ours.apply_chat_template(conversation, add_generation_prompt=gen, **extra) == want
            )
            got_ids = ours.apply_chat_template(conversation, gen, tokenize=True, **extra)
            want_ids = hf.apply_chat_template(
                conversation, add_generation_prompt=gen, return_dict=False, **extra
            )
            assert got_ids == want_ids


def test_default_template_format(tok: Tokenizer) -> None:
    text = tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True)
    assert text == (
        "<|bos|><|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(CONVERSATIONS[1], tokenize=True)
    assert ids[0] == tok.bos_token_id and ids.count(tok.token_to_id("<|im_start|>")) == 3


def test_save_template_in_config(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path, chat_template_in_config=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    (tmp_path / "chat_template.jinja").unlink()
    assert load_tokenizer(tmp_path).chat_template == DEFAULT_CHAT_TEMPLATE


def test_template_errors(tok: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="unsupported role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    llama = Tokenizer(tok.backend, tok.special_tokens, LLAMA3_TEMPLATE)
    with pytest.raises(TokenizerError, match="roles must alternate"):
        llama.apply_chat_template([{"role": "user", "content": "a"}] * 2)
    broken = Tokenizer(tok.backend, tok.special_tokens, "{% for m in messages %}")
    with pytest.raises(TokenizerError, match="chat template line 1"):
        broken.apply_chat_template(CONVERSATIONS[0])
    sneaky = Tokenizer(tok.backend, tok.special_tokens, "{% set ns = namespace(_x=1) %}")
    with pytest.raises(TokenizerError, match="_x"):
        sneaky.apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(TokenizerError, match="no chat template"):
        Tokenizer(tok.backend, tok.special_tokens, None).apply_chat_template(CONVERSATIONS[0])


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([], "non-empty"),
        ("hello", "non-empty"),
        ([{"role": "user", "content": "a"}, "b"], r"messages\[1\]: expected a dict"),
        ([{"role": "user"}], r'messages\[0\]: field "content"'),
        (
            [{"role": "user", "content": "a"}, {"role": 3, "content": "b"}],
            r'messages\[1\]: field "role"',
        ),
        ([{"role": "user", "content": ["block"]}], r'messages\[0\]: field "content" .* list'),
    ],
)
def test_bad_messages(tok: Tokenizer, messages, where: str) -> None:
    with pytest.raises(TokenizerError, match=where):
        tok.apply_chat_template(messages)


# -- loading errors ---------------------------------------------------------------------------


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="nope: tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="tokenizer.json: not found"):
        load_tokenizer(tmp_path)


def test_malformed_json(saved: Path, tmp_path: Path) -> None:
    folder = with_template(saved, tmp_path / "t", DEFAULT_CHAT_TEMPLATE, False)
    (folder / "tokenizer_config.json").write_text('{\n  "bos_token": "<|bos|>",\n  oops\n}')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json:3:\d+: invalid JSON"):
        load_tokenizer(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0",\n\n"model": }')
    with pytest.raises(TokenizerError, match=r"tokenizer.json:3:\d+: invalid JSON"):
        load_tokenizer(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizers file"):
        load_tokenizer(folder)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("eos_token", 5, r'tokenizer_config.json: field "eos_token"'),
        ("chat_template", 5, r'tokenizer_config.json: field "chat_template"'),
        ("chat_template", [{"name": "x"}], r'field "chat_template\[0\]"'),
        ("chat_template", [{"name": "x", "template": "y"}], r'lacks "default"'),
    ],
)
def test_bad_config_fields(saved: Path, tmp_path: Path, field, value, match) -> None:
    folder = with_template(saved, tmp_path / "t", DEFAULT_CHAT_TEMPLATE, True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config[field] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=match):
        load_tokenizer(folder)


def test_special_token_dict_form(saved: Path, tmp_path: Path) -> None:
    folder = with_template(saved, tmp_path / "t", DEFAULT_CHAT_TEMPLATE, False)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = {"__type": "AddedToken", "content": "<|im_end|>", "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(folder)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == hf_load(folder).eos_token_id


# -- long texts in pieces: the same tokens, memory bounded by the piece ---------------------

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = ["a", "b", "é", "Z", "1", "23", " ", " ", "  ", "\t", "\n", "\n\n", ".", "'s",
                "!?", "\u00a0", "<|im_end|>", "中"]  # fmt: skip
    return "".join(rng.choice(alphabet) for _ in range(n))


def _llama3_style(texts) -> Tokenizer:
    """A Llama-3-style tokenizer (regex Split + byte-level, no regex of its own)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend, {}, None)


def test_whitespace_pieces_join_to_the_text_and_cut_only_between_words():
    from lmforge.tokenizer import whitespace_pieces

    rng = random.Random(0)
    for _ in range(300):
        text = _random_text(rng, rng.randint(0, 80))
        limit = rng.randint(1, 12)
        pieces = list(whitespace_pieces(text, limit))
        assert "".join(pieces) == text
        for before, after in zip(pieces, pieces[1:]):
            assert after[0] == " " and not before[-1].isspace() and not after[1].isspace()
        # a piece is over the limit only when it has no place to cut within the limit
        for piece in pieces[:-1] if len(pieces) > 1 else []:
            cuts = [j for j in range(2, min(limit, len(piece) - 2) + 1) if piece[j] == " "
                    and not piece[j - 1].isspace() and not piece[j + 1].isspace()]  # fmt: skip
            assert len(piece) <= limit or not cuts, (piece, limit)
    assert list(whitespace_pieces("aaaa bbbb cccc", 6)) == ["aaaa", " bbbb", " cccc"]
    assert list(whitespace_pieces("aaaaaaaa bb", 3)) == ["aaaaaaaa", " bb"]  # no cut in reach
    assert list(whitespace_pieces("", 4)) == [""]


@pytest.mark.parametrize("family", ["lmforge", "llama3"])
def test_pieces_give_the_tokens_of_the_whole_text(family, monkeypatch):
    import lmforge.tokenizer as tokenizing

    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS.split()) for _ in range(200)) for _ in range(5)]
    docs += [_random_text(rng, 400) for _ in range(20)] + TEXTS
    tok = Tokenizer.train(docs, vocab_size=400) if family == "lmforge" else _llama3_style(docs)
    assert tok.pieces_are_exact()
    monkeypatch.setattr(tokenizing, "PIECE_CHARS", 7)  # every document is long now
    for doc in docs:
        assert tok.encode_long(doc) == tok.encode(doc), repr(doc)
    if family == "lmforge":
        assert tok.encode_long(docs[0], True) == tok.encode(docs[0], True)


def test_training_in_pieces_gives_the_same_tokenizer(monkeypatch):
    import lmforge.tokenizer as tokenizing

    rng = random.Random(2)
    docs = [" ".join(rng.choice(WORDS.split()) for _ in range(300)) for _ in range(4)] + TEXTS
    whole = Tokenizer.train(docs, vocab_size=320)
    monkeypatch.setattr(tokenizing, "PIECE_CHARS", 16)
    assert Tokenizer.train(docs, vocab_size=320).backend.to_str() == whole.backend.to_str()


def test_tokenizers_that_prefix_every_text_encode_whole_texts(monkeypatch):
    """A SentencePiece-style normalizer (prepend ▁, spaces → ▁) and an eos post-processor:
    pieces would add a ▁ per piece, so `encode_long` must encode the text whole."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, normalizers, processors, trainers

    import lmforge.tokenizer as tokenizing

    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])  # fmt: skip
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])  # fmt: skip
    backend.train_from_iterator([WORDS] * 3, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok = Tokenizer(backend, {"bos_token": "<s>", "eos_token": "</s>"}, None)
    assert not tok.pieces_are_exact()
    monkeypatch.setattr(tokenizing, "PIECE_CHARS", 5)
    assert tok.encode_long(WORDS, True) == tok.encode(WORDS, True)
    assert tok.encode(WORDS, True)[0] == 1 and tok.encode(WORDS, True)[-1] == 2
