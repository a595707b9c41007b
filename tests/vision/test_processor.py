"""Qwen2-VL image processing against transformers' ``Qwen2VLImageProcessorPil``, the pixel
budget rule, image sources (file, bytes, data URL) and the errors for bad inputs."""

from __future__ import annotations

import base64
import io

import jinja2
import numpy as np
import pytest
import torch
from PIL import Image

from lmforge.chat_template import render_chat_template
from lmforge.vision.processor import (
    QWEN2_VL_CHAT_TEMPLATE,
    ImageInputError,
    ImageProcessor,
    ImageProcessorConfig,
    expand_image_placeholders,
    flatten_image_messages,
    load_image,
    message_images,
    save_preprocessor_config,
    smart_resize,
)

SIZES = [(50, 70), (20, 20), (333, 101), (90, 600)]  # upscaled, tiny, tall, downscaled


def random_images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def test_matches_transformers_qwen2_vl_image_processor():
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    budget = dict(shortest_edge=28 * 28 * 2, longest_edge=28 * 28 * 20)
    reference = pil.Qwen2VLImageProcessorPil(size=budget, patch_size=14)
    images = random_images()
    ref = reference(images=[Image.fromarray(i) for i in images], return_tensors="pt")
    config = ImageProcessorConfig(min_pixels=budget["shortest_edge"],
                                  max_pixels=budget["longest_edge"])  # fmt: skip
    pixel_values, grid = ImageProcessor(config)(images)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert pixel_values.shape == ref["pixel_values"].shape == (int(grid.prod(-1).sum()), 1176)
    assert (pixel_values - ref["pixel_values"]).abs().max() < 1e-5


def test_saved_preprocessor_config_loads_in_transformers_with_the_same_pixels(tmp_path):
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    config = ImageProcessorConfig(patch_size=4, merge_size=2, min_pixels=64, max_pixels=32 * 32,
                                  image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.3, 0.4))  # fmt: skip
    path = save_preprocessor_config(config, tmp_path)
    assert path == tmp_path / "preprocessor_config.json"
    reference = pil.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
    images = random_images(1)
    ref = reference(images=[Image.fromarray(i) for i in images], return_tensors="pt")
    pixel_values, grid = ImageProcessor(config)(images)
    assert torch.equal(grid, ref["image_grid_thw"])
    assert (pixel_values - ref["pixel_values"]).abs().max() < 1e-5


def test_smart_resize_keeps_the_budget_and_agrees_with_transformers():
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    factor, lo, hi = 28, 28 * 28 * 4, 28 * 28 * 64
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (27, 29), (333, 101), (5000, 30), (224, 224)]
    sizes += [tuple(int(x) for x in rng.integers(1, 3000, 2)) for _ in range(50)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        rh, rw = smart_resize(h, w, factor, lo, hi)
        assert (rh, rw) == pil.smart_resize(h, w, factor, lo, hi)
        assert rh % factor == 0 and rw % factor == 0
        assert rh * rw <= hi or min(rh, rw) == factor  # a side cannot go below one block


def test_smart_resize_refuses_extreme_aspect_ratio():
    with pytest.raises(ImageInputError, match="aspect ratio"):
        smart_resize(10, 3000, 28, 28 * 28, 28 * 28 * 100)


def test_sources_file_bytes_data_url_agree(tmp_path):
    img = random_images(1)[0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    data = buf.getvalue()
    (tmp_path / "a.png").write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    loaded = [np.asarray(load_image(s)) for s in (tmp_path / "a.png", data, url, img)]
    for other in loaded[1:]:
        assert np.array_equal(loaded[0], other)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ImageInputError, match="remote image URLs are not fetched"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ImageInputError, match="not a readable image"):
        load_image(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageInputError, match="invalid base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(ImageInputError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageInputError, match="image 1: .*over max_input_pixels"):
        ImageProcessor(ImageProcessorConfig(max_input_pixels=1000))(random_images()[1:3])
    with pytest.raises(ImageInputError, match="more images than placeholders"):
        expand_image_placeholders("<|image_pad|> hi", [4, 4])
    with pytest.raises(ValueError, match="cannot hold one"):
        ImageProcessorConfig(patch_size=14, max_pixels=100)


def test_placeholders_expand_per_image():
    text = "a<|image_pad|>b<|image_pad|>c"
    assert expand_image_placeholders(text, [2, 3]) == (
        "a" + "<|image_pad|>" * 2 + "b" + "<|image_pad|>" * 3 + "c"
    )


def test_flattened_messages_render_as_the_template_renders_parts():
    """Qwen2-VL's template on list-of-parts messages (rendered with plain Jinja, as
    transformers would) equals lmforge's rendering of the flattened messages."""
    messages = [
        {"role": "user", "content": [{"type": "image", "image": "x.png"},
                                     {"type": "text", "text": "what is it?"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": "a cat"},
    ]  # fmt: skip
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    expected = env.from_string(QWEN2_VL_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=True
    )
    ours = render_chat_template(QWEN2_VL_CHAT_TEMPLATE, flatten_image_messages(messages),
                                add_generation_prompt=True)  # fmt: skip
    assert ours == expected
    assert ours.count("<|image_pad|>") == 2
    assert message_images(messages) == ["x.png", "data:,"]
