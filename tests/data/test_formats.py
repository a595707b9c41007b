"""SFT formats: token ids and assistant masks equal `transformers`' own
(``return_assistant_tokens_mask``), prompt/completion and Alpaca layouts (through the chat
template by default, raw with ``format="raw"``), a template that breaks the prefix property
is an error, `load_sft_examples` validates and counts, and what SFT trains on Alpaca is what
the server's chat endpoint renders and answers."""

from __future__ import annotations

import json

import pytest

from lmforge.data.formats import (
    RAW_FALLBACK,
    Example,
    PrefixPropertyError,
    alpaca_prompt,
    alpaca_user_text,
    load_sft_examples,
    prompt_completion_messages,
    tokenize_conversation,
    tokenize_prompt_completion,
)
from lmforge.data.sources import DataError
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer

# ChatML with transformers' assistant-mask markers around each reply and its end of turn.
MARKED_CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "It is 6, of course."},
]


@pytest.fixture(scope="module")
def tok():
    texts = [m["content"] for m in CHAT] * 5 + ["Below is an instruction that describes a task"]
    tokenizer = Tokenizer.train(texts, vocab_size=320)
    tokenizer.chat_template = MARKED_CHATML
    return tokenizer


def targets(example: Example) -> list[int]:
    return [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]


def test_assistant_mask_equals_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in (CHAT, CHAT[1:3], CHAT[:4]):
        ref = reference.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        example = tokenize_conversation(messages, tok)
        assert example.input_ids == list(ref["input_ids"])
        expected = [i for i, m in enumerate(ref["assistant_masks"]) if m and i > 0]
        assert expected and len(expected) < len(example) / 2  # a real, partial mask
        assert targets(example) == expected
        assert all(example.labels[i] == example.input_ids[i] for i in expected)
    # The reply ends with the end-of-turn token the model must learn to stop on; no eos added.
    example = tokenize_conversation(CHAT, tok)
    im_end = tok.token_to_id("<|im_end|>")
    assert im_end in [example.input_ids[i] for i in targets(example)]
    assert tok.eos_token_id not in example.input_ids


def test_all_tokens_mode_and_train_from(tok):
    example = tokenize_conversation(CHAT, tok, assistant_only=False)
    assert targets(example) == list(range(1, len(example)))
    only_last = tokenize_conversation(CHAT, tok, train_from=3)
    both = tokenize_conversation(CHAT, tok)
    assert set(targets(only_last)) < set(targets(both))
    reply = tok.encode("It is 6, of course.<|im_end|>\n")
    assert [only_last.input_ids[i] for i in targets(only_last)] == reply


def test_template_breaking_the_prefix_property_is_an_error(tok):
    broken = Tokenizer(tok.backend, tok.special_tokens, chat_template=(
        "{% for m in messages %}{% if loop.last %}{{ m['content'] }}"
        "{% else %}[{{ m['content'] }}]{% endif %}{% endfor %}"
    ))  # fmt: skip
    with pytest.raises(PrefixPropertyError, match=r"messages\[2\]: the chat template breaks"):
        tokenize_conversation(CHAT, broken)
    assert targets(tokenize_conversation(CHAT, broken, assistant_only=False))


def test_prompt_completion_and_alpaca(tok):
    example = tokenize_prompt_completion("What is 2 + 2?", " 4", tok)
    head = tok.encode("What is 2 + 2?", add_special_tokens=True)
    tail = tok.encode(" 4") + [tok.eos_token_id]
    assert example.input_ids == head + tail
    assert targets(example) == list(range(len(head), len(head) + len(tail)))
    full = tokenize_prompt_completion("What is 2 + 2?", " 4", tok, assistant_only=False)
    assert targets(full) == list(range(1, len(full)))
    assert alpaca_prompt("Add.", "2 + 2") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 + 2\n\n### Response:\n"
    )
    assert alpaca_prompt("Add.").endswith("### Instruction:\nAdd.\n\n### Response:\n")


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_load_sft_examples_mixes_schemas_and_counts(tok, tmp_path):
    _jsonl(tmp_path / "a_chat.jsonl", [{"messages": CHAT}, {"messages": CHAT[:2]}])
    _jsonl(tmp_path / "b_pairs.jsonl", [
        {"prompt": "What is 2 + 2?", "completion": " 4"},
        {"prompt": CHAT[:2], "completion": CHAT[2:3]},
    ])  # fmt: skip
    _jsonl(tmp_path / "c_alpaca.jsonl", [{"instruction": "Add.", "input": "2+2", "output": "4"}])
    with pytest.raises(DataError, match=r"a_chat\.jsonl:2: no tokens to train on"):
        load_sft_examples([tmp_path], tok)
    examples, report = load_sft_examples([tmp_path], tok, skip_bad=True)
    assert len(examples) == 4 and report.kept == 4
    assert dict(report.skipped) == {"no loss tokens": 1}
    assert examples[0] == tokenize_conversation(CHAT, tok)
    assert examples[0].where.endswith("a_chat.jsonl:1")
    # string pairs and Alpaca: a user turn and an assistant turn through the chat template
    pair = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": " 4"}]
    assert prompt_completion_messages("What is 2 + 2?", " 4") == pair
    assert examples[1] == tokenize_conversation(pair, tok)
    assert examples[2] == tokenize_conversation(CHAT[:3], tok, train_from=2)
    assert alpaca_user_text("Add.", "2+2") == "Add.\n\n2+2" and alpaca_user_text("Add.") == "Add."
    alpaca = [{"role": "user", "content": "Add.\n\n2+2"}, {"role": "assistant", "content": "4"}]
    assert examples[3] == tokenize_conversation(alpaca, tok)
    # format="raw": the same records as plain text, as before
    raw, _ = load_sft_examples([tmp_path], tok, format="raw", skip_bad=True)
    assert raw[0] == examples[0] and raw[2] == examples[2]
    assert raw[1] == tokenize_prompt_completion("What is 2 + 2?", " 4", tok)
    assert raw[3] == tokenize_prompt_completion(alpaca_prompt("Add.", "2+2"), "4", tok)
    # a tokenizer without a chat template formats them raw, and says so in the report
    bare = Tokenizer(tok.backend, tok.special_tokens, chat_template=None)
    pairs, report = load_sft_examples([tmp_path / "c_alpaca.jsonl"], bare)
    assert pairs == raw[3:] and report.counts[RAW_FALLBACK] == 1
    assert RAW_FALLBACK in report.summary()
    with pytest.raises(ValueError, match="format='chatml': choose one of auto, raw"):
        load_sft_examples([tmp_path], tok, format="chatml")

    short, report = load_sft_examples([tmp_path], tok, skip_bad=True, max_len=12)
    assert all(len(e) <= 12 for e in short)
    assert report.counts["truncated to max_len"] >= 1
    assert report.kept == len(short)
    kept_counts = report.counts.get("dropped: no loss tokens left after truncation", 0)
    assert len(short) + kept_counts == 4
    with pytest.raises(DataError, match="tokens > max_len=12"):
        load_sft_examples([tmp_path], tok, skip_bad=True, max_len=12, too_long="error")


def test_load_sft_examples_rejects_preference_and_bad_roles(tok, tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: preference records .* are for DPO"):
        load_sft_examples([path], tok)
    bad = [{"messages": CHAT}, {"messages": [{"role": "robot", "content": "x"}]}]
    path = _jsonl(tmp_path / "r.jsonl", bad)
    examples, report = load_sft_examples([path], tok, skip_bad=True)
    assert len(examples) == 1 and dict(report.skipped) == {"bad role": 1}
    tool_chat = [*CHAT[:2], {"role": "tool", "content": "4"}, CHAT[2]]
    path = _jsonl(tmp_path / "t.jsonl", [{"messages": tool_chat}])
    tok_default = Tokenizer(tok.backend, tok.special_tokens)  # default template: no tool role
    with pytest.raises(DataError, match=r"t\.jsonl:1: .*unsupported role tool"):
        load_sft_examples([path], tok_default)


ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 + 2", "output": "The sum is 4."},
    {"instruction": "Say hello.", "input": "", "output": "Hello there!"},
    {"instruction": "Name a colour.", "output": "Blue."},
]


def test_alpaca_prompt_is_what_the_chat_endpoint_renders(tok, tmp_path):
    """Same token sequence: the part SFT does not train on (the prompt) is exactly what the
    server's chat path renders for the user message, and the targets are the reply and the
    end-of-turn token the server stops on."""
    from lmforge.serve.protocol import ChatMessage
    from lmforge.serve.translate import chat_prompt_ids

    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA, indent=2))
    examples, report = load_sft_examples([path], tok)
    assert len(examples) == 3 and report.kept == 3
    for record, example in zip(ALPACA, examples):
        start = targets(example)[0]
        assert targets(example) == list(range(start, len(example)))  # the reply, to the end
        user = alpaca_user_text(record["instruction"], record.get("input", ""))
        served = chat_prompt_ids(tok, [ChatMessage(role="user", content=user)])
        assert example.input_ids[:start] == served
        reply = example.input_ids[start:]
        assert reply == tok.encode(record["output"] + "<|im_end|>\n")
        assert reply[-2] in tok.stop_token_ids


def test_model_sft_on_alpaca_answers_through_the_chat_endpoint(tmp_path):
    """SFT a tiny model on an Alpaca JSON file until it knows the answers, then ask the
    served chat endpoint (`lmforge.serve.create_app`): greedy replies are the outputs."""
    import io

    import torch
    from fastapi.testclient import TestClient
    from rich.console import Console

    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.serve import AsyncEngine, ServerLimits, create_app
    from lmforge.serve.loading import load_engine
    from lmforge.train.config import load_config
    from lmforge.train.sft import train_sft

    texts = [v for r in ALPACA for v in r.values() if v] * 4
    tokenizer = Tokenizer.train(texts, vocab_size=320)
    cfg = preset_config("tiny", vocab_size=tokenizer.vocab_size, hidden_size=32,
                        intermediate_size=64, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    save_model(CausalLM(cfg), tmp_path / "base", tokenizer=tokenizer)
    data = tmp_path / "alpaca_data.json"
    data.write_text(json.dumps(ALPACA, indent=2))
    config = load_config(None, [
        f"model.init_from={json.dumps(str(tmp_path / 'base'))}", f"data.paths=[{data}]",
        f"out_dir={json.dumps(str(tmp_path / 'sft'))}", "data.seq_len=64", "data.val_fraction=0",
        "train.batch_size=3", "train.max_steps=40", "optim.lr=1e-2", "optim.warmup_steps=5",
        "optim.weight_decay=0", "train.eval_every=0", "train.save_every=0", "train.cpu_threads=1",
        "train.device=cpu", "train.precision=fp32",
        "log.progress=false", "log.plot=false",
    ])  # fmt: skip
    train_sft(config, console=Console(file=io.StringIO()))
    engine, tok, _, context = load_engine(tmp_path / "sft" / "model")
    limits = ServerLimits(context, 32, stop_token_ids=tuple(tok.stop_token_ids))  # as `serve`
    app = create_app(AsyncEngine(engine), tok, "tiny", limits)
    with TestClient(app) as client:
        for record in ALPACA:
            user = alpaca_user_text(record["instruction"], record.get("input", ""))
            response = client.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": user}],
                "temperature": 0, "max_tokens": 24,
            })  # fmt: skip
            assert response.status_code == 200, response.text
            choice = response.json()["choices"][0]
            assert choice["message"]["content"] == record["output"]
            assert choice["finish_reason"] == "stop"


def test_data_format_is_validated_in_the_config():
    import typing

    from lmforge.config import ConfigError
    from lmforge.data.formats import FORMATS
    from lmforge.train.config import DataSection, load_config

    assert typing.get_args(typing.get_type_hints(DataSection)["format"]) == FORMATS
    assert load_config(None, ["data.format=raw"]).data.format == "raw"
    with pytest.raises(ConfigError, match=r"data.format: 'chatml' is not one of \['auto', 'raw'"):
        load_config(None, ["data.format=chatml"])
