"""Images in chat requests: OpenAI ``image_url`` content parts → the engine's image inputs,
with every problem a 400 that names the part.

    processor = image_processor_for(model, folder)       # preprocessor_config.json, or defaults
    messages, images = request_images(processor, body.messages, limits)
    prompt = chat_prompt_ids(tokenizer, messages)        # placeholders already expanded

Only ``data:image/...;base64,...`` URLs are accepted: the server never downloads, so an
``http(s)://`` URL is refused. Each image is decoded and processed like Qwen2-VL's processor
(`lmforge.vision.processor`); its part in the message becomes
``<|vision_start|>`` + one ``<|image_pad|>`` per merged image token + ``<|vision_end|>`` — what
Qwen2-VL's chat template and processor produce together — so the chat template renders a
plain string. A request's images may hold at most ``ServerLimits.max_image_tokens`` vision
tokens (default: the context length).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmforge.infer.multimodal import ImageInputs
from lmforge.serve.protocol import APIError, ChatMessage, ImagePart
from lmforge.serve.translate import ServerLimits
from lmforge.vision.processor import (
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    ImageInputError,
    ImageProcessor,
    ImageProcessorConfig,
    load_image,
)

__all__ = [
    "has_images",
    "image_placeholders",
    "image_processor_for",
    "processor_config_from_hf",
    "request_images",
]

_HF_KEYS = ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels")


def processor_config_from_hf(data: dict[str, Any], vision: Any) -> ImageProcessorConfig:
    """An `ImageProcessorConfig` from Qwen2-VL's ``preprocessor_config.json`` dict (the pixel
    budgets are ``min_pixels`` / ``max_pixels``, at the top or in ``size``, or
    ``size.shortest_edge`` / ``size.longest_edge`` in newer files), defaulting the geometry
    to the model's vision config."""
    size = data.get("size") or {}
    fields: dict[str, Any] = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
    }
    for field, keys in (("min_pixels", ("shortest_edge", "min_pixels")),
                        ("max_pixels", ("longest_edge", "max_pixels"))):  # fmt: skip
        for key in keys:
            if size.get(key) is not None:
                fields[field] = size[key]
    fields.update({k: data[k] for k in _HF_KEYS if data.get(k) is not None})
    for key in ("image_mean", "image_std"):
        if data.get(key) is not None:
            fields[key] = tuple(data[key])
    return ImageProcessorConfig(**fields)


def image_processor_for(model: Any, folder: str | Path | None = None) -> ImageProcessor:
    """The image processor of a vision-language checkpoint: its ``preprocessor_config.json``
    when the folder has one, else Qwen2-VL's defaults on the model's patch geometry."""
    path = None if folder is None else Path(folder) / "preprocessor_config.json"
    data: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not readable JSON ({exc})") from None
    try:
        return ImageProcessor(processor_config_from_hf(data, model.config.vision))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path or 'image processor'}: {exc}") from None


def image_placeholders(tokens: int) -> str:
    """One image in prompt text: ``<|vision_start|>``, ``tokens`` × ``<|image_pad|>``,
    ``<|vision_end|>``."""
    return VISION_START + IMAGE_PAD * tokens + VISION_END


def has_images(messages: list[ChatMessage]) -> bool:
    return any(
        isinstance(part, ImagePart)
        for m in messages
        if isinstance(m.content, list)
        for part in m.content
    )


def _check_url(url: str, param: str) -> None:
    if url.startswith(("http://", "https://", "ftp://", "file:")):
        raise APIError(
            f"{param}: remote image URLs are not fetched (this server never downloads); send "
            "the image inline as a data URL, 'data:image/png;base64,...'",
            param=param,
            code="invalid_image_url",
        )
    if not url.startswith("data:"):
        raise APIError(
            f"{param}: expected a data URL 'data:image/png;base64,...', got {url[:40]!r}",
            param=param,
            code="invalid_image_url",
        )


def _load(processor: ImageProcessor, url: str, param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values, grid_thw [1, 3])`` of one data URL, or a 400 naming ``param``."""
    _check_url(url, param)
    try:
        image = load_image(url, processor.config.max_input_pixels)
        return processor([image])
    except ImageInputError as exc:
        raise APIError(f"{param}: {exc}", param=param, code="invalid_image") from None


def request_images(
    processor: ImageProcessor | None, messages: list[ChatMessage], limits: ServerLimits
) -> tuple[list[ChatMessage], ImageInputs | None]:
    """The messages with each image part replaced by its expanded placeholder text, and
    the images for the engine (None when there are none). Slow (image decoding): the
    server calls it off the event loop."""
    out, pixels, grids, total = [], [], [], 0
    budget = limits.max_image_tokens or limits.max_model_len
    for i, message in enumerate(messages):
        if not isinstance(message.content, list) or not any(
            isinstance(p, ImagePart) for p in message.content
        ):
            out.append(message)
            continue
        pieces = []
        for j, part in enumerate(message.content):
            if not isinstance(part, ImagePart):
                pieces.append(part.text)
                continue
            param = f"messages.{i}.content.{j}.image_url"
            if processor is None:
                raise APIError(f"{param}: this model does not take images (it is not a "
                               "vision-language model)", param=param)  # fmt: skip
            if message.role != "user":
                raise APIError(f"{param}: images are accepted in user messages only",
                               param=param)  # fmt: skip
            pv, grid = _load(processor, part.image_url.url, param + ".url")
            (n,) = processor.tokens_per_image(grid)
            total += n
            if total > budget:
                raise APIError(
                    f"{param}: the request's images need {total} vision tokens (this one "
                    f"{n}), more than this server's limit of {budget} per request "
                    "(max_image_tokens; lmforge serve --max-image-tokens)",
                    param=param,
                    code="context_length_exceeded",
                )
            pixels.append(pv)
            grids.append(grid)
            pieces.append(image_placeholders(n))
        out.append(message.model_copy(update={"content": "".join(pieces)}))
    if not grids:
        return out, None
    return out, ImageInputs(torch.cat(pixels), torch.cat(grids))
