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


def test_chat_loop_images_ride_with_the_first_turn_until_it_is_dropped(vlm_model_dir):
    from PIL import Image

    from lmforge.infer.multimodal import ImageInputs
    from lmforge.models.hf import load_model
    from lmforge.serve.images import image_processor_for
    from lmforge.tokenizer import load_tokenizer
    from lmforge.vision.processor import IMAGE_PAD

    class ImageRecorder(Engine):
        def add_request(self, prompt_token_ids, params, request_id=None, images=None):
            self.sent = [*getattr(self, "sent", []), (list(prompt_token_ids), images)]
            return super().add_request(prompt_token_ids, params, request_id, images=images)

    model, tok = load_model(vlm_model_dir).eval(), load_tokenizer(vlm_model_dir)
    processor = image_processor_for(model, vlm_model_dir)
    pv, grid = processor([Image.new("RGB", (16, 16), (200, 0, 0))])  # 4 image tokens
    images = (ImageInputs(pv, grid), processor.tokens_per_image(grid))
    engine = ImageRecorder(model, tok)
    pad = tok.token_to_id(IMAGE_PAD)
    lines = "colour?\nshape?\n/reset\ncolour?\n"
    chat_loop(engine, tok, 256, chat_settings(), io.StringIO(lines), io.StringIO(), images=images)
    assert [ids.count(pad) for ids, _ in engine.sent] == [4, 4, 4]
    assert all(im is images[0] for _, im in engine.sent)
    # A context of one exchange: the image turn is dropped, and its images with it.
    engine = ImageRecorder(model, tok)
    out = io.StringIO()
    chat_loop(engine, tok, 60, chat_settings(max_tokens=8), io.StringIO("colour?\nshape?\n"), out,
              images=images)  # fmt: skip
    assert "dropped the oldest turn" in out.getvalue()
    (first, im1), (second, im2) = engine.sent
    assert first.count(pad) == 4 and im1 is images[0]
    assert second.count(pad) == 0 and im2 is None
