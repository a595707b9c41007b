"""`chat_loop` (the terminal chat behind `lmforge chat`): history, system message, seeds per
turn, and dropping the oldest turns to fit the context."""

from __future__ import annotations

import io

from lmforge.infer.engine import Engine
from lmforge.serve.terminal_chat import ChatSettings, chat_loop


def chat_settings(**kw) -> ChatSettings:
    return ChatSettings(**{"max_tokens": 8, "temperature": 0.0, **kw})


class _Recorder(Engine):
    def add_request(self, prompt_token_ids, params, request_id=None):
        self.prompts = [*getattr(self, "prompts", []), list(prompt_token_ids)]
        self.params = params
        return super().add_request(prompt_token_ids, params, request_id)


def test_chat_loop_history_system_and_context(model_dir):
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    engine = _Recorder(model, tok)
    out = io.StringIO()
    settings = chat_settings(system="Be brief.", seed=5, temperature=0.8, top_k=20)
    chat_loop(engine, tok, 256, settings, io.StringIO("one\n\ntwo\n"), out)
    first, second = (tok.decode(p) for p in engine.prompts)
    assert first.startswith("<|bos|><|im_start|>system\nBe brief.<|im_end|>")
    assert second.startswith(first) and second.endswith(
        "<|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"
    )
    assert engine.params.seed == 6 and engine.params.top_k == 20  # seed advances per turn
    # A context that fits one exchange only: the oldest turn is dropped.
    engine2 = _Recorder(model, tok)
    out2 = io.StringIO()
    chat_loop(engine2, tok, 40, chat_settings(max_tokens=8), io.StringIO("alpha\nbeta\n"), out2)
    assert "dropped the oldest turn" in out2.getvalue()
    assert "alpha" not in tok.decode(engine2.prompts[1])
    out3 = io.StringIO()
    chat_loop(engine2, tok, 40, chat_settings(), io.StringIO("word " * 60 + "\n"), out3)
    assert "message too long" in out3.getvalue()


def test_pick_adapter_switches_by_name_and_keeps_the_choice_on_an_unknown_one():
    from lmforge.serve.terminal_chat import pick_adapter

    out = io.StringIO()
    adapters = {"sql": 1, "chat": 2}
    assert pick_adapter("/lora chat", adapters, 0, out) == 2
    assert pick_adapter("/lora nope", adapters, 2, out) == 2
    assert pick_adapter("/lora", adapters, 2, out) == 0
    assert pick_adapter("", adapters, 1, out) == 1  # nothing asked: nothing said
    assert out.getvalue().splitlines() == [
        "(answering with LoRA adapter 'chat'; /lora NAME switches, /lora alone: the base model)",
        "(no LoRA adapter 'nope'; adapters: sql, chat)",
        "(answering with the base model)",
    ]
    assert pick_adapter("/lora x", {}, 0, out) == 0
    assert out.getvalue().endswith("adapters: none (start the chat with --lora NAME=DIR))\n")
