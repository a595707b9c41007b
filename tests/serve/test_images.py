"""Images in chat requests (`lmforge.serve.images`): the rules on their own, then a real
``lmforge serve`` of a tiny vision-language model driven by the `openai` client — answers
equal the engine's offline greedy answer for the same image, and every bad image is a 400
that says what is wrong."""

from __future__ import annotations

import base64

import openai
import pytest

from lmforge.serve.images import (
    image_processor_for,
    processor_config_from_hf,
    request_images,
)
from lmforge.serve.protocol import APIError, ChatCompletionRequest
from lmforge.serve.translate import ServerLimits
from lmforge.vision.processor import IMAGE_PAD, VISION_END, VISION_START

MODEL = "tiny-vlm"


def chat(*parts: dict, role: str = "user") -> ChatCompletionRequest:
    return ChatCompletionRequest(model=MODEL, messages=[{"role": role, "content": list(parts)}])


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


@pytest.fixture(scope="module")
def processor(vlm_model_dir):
    from lmforge.models.hf import load_model

    return image_processor_for(load_model(vlm_model_dir), vlm_model_dir)


# ---------------------------------------------------------------------- the rules
def test_processor_config_from_preprocessor_json(vlm_model_dir, processor):
    c = processor.config
    assert (c.patch_size, c.merge_size, c.min_pixels, c.max_pixels) == (4, 2, 64, 1024)
    vision = type("V", (), {"patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2})
    newer = processor_config_from_hf({"size": {"shortest_edge": 3136, "longest_edge": 12544}},
                                     vision)  # fmt: skip
    assert (newer.patch_size, newer.min_pixels, newer.max_pixels) == (14, 3136, 12544)
    older = processor_config_from_hf({"size": {"min_pixels": 784, "max_pixels": 6272}}, vision)
    assert (older.min_pixels, older.max_pixels) == (784, 6272)


def test_preprocessor_config_written_by_transformers_gives_its_pixels(tmp_path):
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    from PIL import Image

    hf = transformers.Qwen2VLImageProcessorPil(min_pixels=64, max_pixels=1024, patch_size=4)
    hf.save_pretrained(tmp_path)
    vision = SimpleNamespace(patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
    ours = image_processor_for(SimpleNamespace(config=SimpleNamespace(vision=vision)), tmp_path)
    image = Image.effect_noise((20, 28), 60).convert("RGB")
    want = hf(images=[image], return_tensors="pt")
    pixel_values, grid = ours([image])
    assert grid.tolist() == want["image_grid_thw"].tolist()
    assert (pixel_values - want["pixel_values"]).abs().max() < 1e-5


def test_image_parts_become_expanded_placeholders(processor, data_url):
    body = chat(text_part("what colour? "), image_part(data_url((16, 16), (200, 0, 0))),
                image_part(data_url((32, 16), (0, 0, 200))))  # fmt: skip
    messages, images = request_images(processor, body.messages, ServerLimits(256, 16))
    # 16 × 16 px → 2 × 2 merged tokens; 32 × 16 → 4 × 2 (patch 4, merge 2)
    assert messages[0].content == (
        "what colour? " + VISION_START + IMAGE_PAD * 4 + VISION_END
        + VISION_START + IMAGE_PAD * 8 + VISION_END
    )  # fmt: skip
    assert images.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 8]]
    assert images.pixel_values.shape == (16 + 32, 3 * 2 * 4 * 4)
    plain = chat(text_part("no image"))
    assert request_images(processor, plain.messages, ServerLimits(256, 16))[1] is None


@pytest.mark.parametrize(
    "url, words",
    [
        ("https://example.org/cat.png", "remote image URLs are not fetched"),
        (
            "data:image/png;base64," + base64.b64encode(b"not a png").decode(),
            "not a readable image",
        ),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("cat.png", "expected a data URL"),
    ],
)
def test_bad_image_urls_are_400s_naming_the_part(processor, url, words):
    body = chat(text_part("hi"), image_part(url))
    with pytest.raises(APIError, match=words) as err:
        request_images(processor, body.messages, ServerLimits(256, 16))
    assert err.value.status == 400 and err.value.param.startswith("messages.0.content.1.image_url")


def test_image_budget_and_models_without_vision(processor, data_url):
    body = chat(
        image_part(data_url((32, 32), (9, 9, 9))), image_part(data_url((32, 32), (9, 9, 9)))
    )
    with pytest.raises(APIError, match=r"need 32 vision tokens .* limit of 20") as err:
        request_images(processor, body.messages, ServerLimits(256, 16, max_image_tokens=20))
    assert err.value.code == "context_length_exceeded" and err.value.param.endswith("1.image_url")
    with pytest.raises(APIError, match="does not take images"):
        request_images(None, body.messages, ServerLimits(256, 16))
    reply = chat(image_part(data_url((8, 8), (1, 1, 1))), role="assistant")
    with pytest.raises(APIError, match="user messages only"):
        request_images(processor, reply.messages, ServerLimits(256, 16))


# ---------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def client(vlm_server):
    return openai.OpenAI(base_url=vlm_server + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(vlm_model_dir, processor):
    """``offline(question, [data_url…], max_tokens)``: the engine's greedy reply, built
    without the server (the VQA prompt encoder of `lmforge.vision.vlm_data`)."""
    from lmforge.infer.engine import Engine
    from lmforge.infer.multimodal import ImageInputs
    from lmforge.infer.params import SamplingParams
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer
    from lmforge.vision.vlm_data import encode_prompt

    model, tok = load_model(vlm_model_dir).eval(), load_tokenizer(vlm_model_dir)
    engine = Engine(model, tok)

    def reply(question: str, urls: list[str], max_tokens: int) -> tuple[str, int]:
        content = [{"type": "image"} for _ in urls] + [{"type": "text", "text": question}]
        ids, pv, grid = encode_prompt(tok, processor, [{"role": "user", "content": content}], urls)
        params = SamplingParams(max_tokens=max_tokens, temperature=0,
                                stop_token_ids=tuple(tok.stop_token_ids))  # fmt: skip
        out = engine.generate([ids], params, images=[ImageInputs(pv, grid)])[0]
        return out.text, len(ids)

    return reply


def ask(client, question: str, urls: list[str], max_tokens: int = 8, **kw):
    content = [image_part(u) for u in urls] + [text_part(question)]
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        temperature=0, **kw,
    )  # fmt: skip


def test_server_answers_image_questions_like_the_engine(client, offline, data_url):
    red, blue = data_url((16, 16), (220, 10, 10)), data_url((24, 16), (10, 10, 220))
    answers = set()
    for urls in ([red], [blue], [red, blue]):
        r = ask(client, "What colour is the shape?", urls)
        text, prompt_tokens = offline("What colour is the shape?", urls, 8)
        assert r.choices[0].message.content == text
        assert r.usage.prompt_tokens == prompt_tokens  # image tokens counted in the prompt
        answers.add(text)
    assert len(answers) > 1, "the images should change this model's answers"
    stream = ask(client, "What colour is the shape?", [red], stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == offline("What colour is the shape?", [red], 8)[0]
    # A text-only chat on the same server works as always.
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert plain.choices[0].finish_reason in ("stop", "length")


def bad_request(client, content, match: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4
        )
    assert match in err.value.message, err.value.message
    return err.value


def test_server_refuses_bad_images_with_400(client, data_url):
    bad_request(client, [image_part("https://example.org/cat.png"), text_part("?")],
                "remote image URLs are not fetched")  # fmt: skip
    corrupt = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff garbage").decode()
    bad_request(client, [image_part(corrupt), text_part("?")], "not a readable image")
    big = data_url((32, 32), (5, 5, 5))  # 16 tokens each; the server allows 24 per request
    err = bad_request(client, [image_part(big), image_part(big)], "limit of 24")
    assert err.body["code"] == "context_length_exceeded"
    # A typed placeholder token besides the image: placeholders and images disagree.
    bad_request(client, [image_part(big), text_part("look " + IMAGE_PAD)], "placeholder")
    bad_request(client, [text_part(IMAGE_PAD * 3)], "no images")
    bad_request(client, [{"type": "image_url", "image_url": {"href": "x"}}], "image_url.url")
    # the server still answers
    assert ask(client, "?", [data_url((8, 8), (1, 2, 3))], max_tokens=2).choices


def test_page_json_is_accepted(vlm_server, http_json, data_url):
    """The body the web chat page sends for a message with an uploaded image."""
    body = {
        "model": MODEL, "stream": False, "temperature": 0, "max_tokens": 4,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": data_url((16, 16), (0, 200, 0))}}]}],
    }  # fmt: skip
    status, out = http_json("POST", vlm_server + "/v1/chat/completions", body)
    assert status == 200, out
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["prompt_tokens"] > 4  # the image's 4 placeholder tokens and more
