"""Qwen2-VL's image processing and multimodal prompts: images → ``pixel_values`` ``[N,
C·T·P·P]`` + ``image_grid_thw`` ``[I, 3]``, and chat text with one placeholder token per
merged image token.

    proc = ImageProcessor(ImageProcessorConfig(patch_size=14, min_pixels=56 * 56))
    pixel_values, grid = proc(["cat.png", "data:image/png;base64,iVBOR…"])
    text = expand_image_placeholders(chat_text, proc.tokens_per_image(grid))

Each image is converted to RGB, resized (bicubic) so both sides are multiples of
patch × merge and its area lies within [min_pixels, max_pixels] at the original aspect ratio
(`smart_resize`), rescaled to [0, 1], normalised with CLIP's mean / std, repeated
``temporal_patch_size`` times (a still image is a two-frame clip) and cut into patches
ordered merge block by merge block — exactly what transformers' ``Qwen2VLImageProcessor``
produces. Images come from files, bytes, ``data:`` URLs, PIL images or uint8 arrays; remote
URLs are refused (lmforge never downloads).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lmforge.io import atomic_write_text

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
ImageSource = str | bytes | os.PathLike | Image.Image | np.ndarray

# Qwen2-VL's chat template (images as <|vision_start|><|image_pad|><|vision_end|>; the
# processor then repeats <|image_pad|> once per merged image token).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageInputError(ValueError):
    """An image that cannot be used: unreadable, corrupt, remote, too large, or more images
    than placeholders. The message names the image (its index and source)."""


@dataclass
class ImageProcessorConfig:
    """Qwen2-VL's ``preprocessor_config.json`` fields (``min_pixels`` / ``max_pixels`` =
    its ``size.shortest_edge`` / ``size.longest_edge``). ``max_input_pixels`` refuses
    decoded images larger than that before any work (decompression bombs)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_input_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        factor = self.patch_size * self.merge_size
        if self.max_pixels < factor * factor or self.min_pixels > self.max_pixels:
            raise ValueError(
                f"pixel budget [{self.min_pixels}, {self.max_pixels}] cannot hold one "
                f"{factor}×{factor} merge block (patch_size × merge_size = {factor})"
            )


def save_preprocessor_config(config: ImageProcessorConfig, folder: str | Path) -> Path:
    """Write ``folder/preprocessor_config.json`` in the layout transformers'
    ``Qwen2VLImageProcessor`` saves (pixel budget as ``size.shortest_edge`` /
    ``size.longest_edge``), so a served or HF-loaded checkpoint resizes its images exactly as
    its training did. Returns the path (written atomically)."""
    data = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(config.image_mean),
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": list(config.image_std),
        "merge_size": config.merge_size,
        "patch_size": config.patch_size,
        "resample": 3,  # bicubic, as `ImageProcessor.preprocess` resizes
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": config.max_pixels, "shortest_edge": config.min_pixels},
        "temporal_patch_size": config.temporal_patch_size,
    }
    path = Path(folder) / "preprocessor_config.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels,
    max_pixels], aspect ratio kept as closely as rounding allows (Qwen2-VL's rule: round,
    then scale down by √(area / max) or up by √(min / area) and floor / ceil)."""
    if max(height, width) / min(height, width) > 200:
        raise ImageInputError(
            f"image {width}×{height}: aspect ratio {max(height, width) / min(height, width):.0f} "
            "is over 200"
        )
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _describe(source: Any) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"{len(source)} bytes"
    if isinstance(source, str) and source.startswith("data:"):
        return source[:40] + "…"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return type(source).__name__


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:[<type>];base64,<payload>`` URL."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageInputError(f"{url[:40]}…: expected a data URL 'data:image/...;base64,...'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{url[:40]}…: invalid base64 payload ({exc})") from None


def load_image(source: ImageSource, max_input_pixels: int = 64_000_000) -> Image.Image:
    """An RGB PIL image from a file path, raw bytes, a ``data:`` URL, a PIL image or a uint8
    ``[H, W, 3]`` / ``[H, W]`` array. Remote URLs, unreadable or corrupt data and images over
    ``max_input_pixels`` raise `ImageInputError`."""
    what = _describe(source)
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageInputError(f"array image: expected uint8 [H, W(, 3)], got {source.dtype} "
                                  f"{source.shape}")  # fmt: skip
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, str) and source.startswith(("http://", "https://", "ftp://")):
            raise ImageInputError(f"{what}: remote image URLs are not fetched (offline); pass a "
                                  "file or a data: URL")  # fmt: skip
        if isinstance(source, str) and source.startswith("data:"):
            data = decode_data_url(source)
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageInputError(f"{path}: no such image file")
            data = path.read_bytes()
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_input_pixels:
                raise ImageInputError(f"{what}: {image.width}×{image.height} image is over "
                                      f"max_input_pixels={max_input_pixels}")  # fmt: skip
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageInputError(f"{what}: not a readable image ({exc})") from None
    if image.width * image.height > max_input_pixels:
        raise ImageInputError(
            f"{what}: {image.width}×{image.height} image is over max_input_pixels={max_input_pixels}"
        )
    return image.convert("RGB")


def patchify(image: np.ndarray, patch: int, merge: int, temporal: int) -> np.ndarray:
    """``[C, H, W]`` → ``[(H/P)·(W/P), C·T·P·P]``: patches in merge-block order, each the
    frame repeated ``temporal`` times, flattened as (C, T, P, P)."""
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # blocks_h, blocks_w, m_h, m_w, C, P, P
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal, patch, patch))
    return x.reshape(gh * gw, c * temporal * patch * patch)


class ImageProcessor:
    """Callable: a list of images → (``pixel_values`` float32 ``[N, C·T·P·P]``,
    ``image_grid_thw`` long ``[I, 3]``)."""

    def __init__(self, config: ImageProcessorConfig | None = None) -> None:
        self.config = config or ImageProcessorConfig()

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One RGB image → its patches and (t, h, w) grid."""
        c = self.config
        h, w = smart_resize(image.height, image.width, c.patch_size * c.merge_size,
                            c.min_pixels, c.max_pixels)  # fmt: skip
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), Image.BICUBIC)
        x = np.asarray(image, dtype=np.uint8).astype(np.float32) * (1 / 255)
        x = (x - np.asarray(c.image_mean, np.float32)) / np.asarray(c.image_std, np.float32)
        patches = patchify(x.transpose(2, 0, 1), c.patch_size, c.merge_size, c.temporal_patch_size)
        return patches, (1, h // c.patch_size, w // c.patch_size)

    def __call__(self, images: Sequence[ImageSource]) -> tuple[torch.Tensor, torch.Tensor]:
        if not images:
            dim = 3 * self.config.temporal_patch_size * self.config.patch_size**2
            return torch.zeros(0, dim), torch.zeros(0, 3, dtype=torch.long)
        patches, grids = [], []
        for i, source in enumerate(images):
            try:
                image = load_image(source, self.config.max_input_pixels)
            except ImageInputError as exc:
                raise ImageInputError(f"image {i}: {exc}") from None
            p, g = self.preprocess(image)
            patches.append(p)
            grids.append(g)
        pixel_values = torch.from_numpy(np.ascontiguousarray(np.concatenate(patches)))
        return pixel_values, torch.tensor(grids, dtype=torch.long)

    def tokens_per_image(self, grid_thw: torch.Tensor) -> list[int]:
        """Placeholder tokens each image needs: t·h·w / merge²."""
        return (grid_thw.prod(-1) // self.config.merge_size**2).tolist()


def expand_image_placeholders(
    text: str, tokens_per_image: Sequence[int], placeholder: str = IMAGE_PAD
) -> str:
    """Repeat the i-th ``placeholder`` ``tokens_per_image[i]`` times; `ImageInputError`
    when the counts of placeholders and images differ."""
    parts = text.split(placeholder)
    if len(parts) - 1 != len(tokens_per_image):
        raise ImageInputError(
            f"{len(tokens_per_image)} images but {len(parts) - 1} image placeholders "
            f"({placeholder}) in the prompt"
            + (": more images than placeholders" if len(parts) - 1 < len(tokens_per_image) else "")
        )
    out = [parts[0]]
    for n, rest in zip(tokens_per_image, parts[1:], strict=True):
        out.append(placeholder * n + rest)
    return "".join(out)


def flatten_image_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages whose content is a list of parts (``{"type": "image"}`` / ``image_url`` /
    ``{"type": "text", "text": …}``) with the content as one string, each image written as
    ``<|vision_start|><|image_pad|><|vision_end|>`` — what Qwen2-VL's chat template renders
    for such parts, so any template that takes string contents renders them the same."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            pieces = []
            for part in content:
                kind = part.get("type")
                if kind in ("image", "image_url") or "image" in part or "image_url" in part:
                    pieces.append(VISION_START + IMAGE_PAD + VISION_END)
                elif "text" in part:
                    pieces.append(str(part["text"]))
            message = {**message, "content": "".join(pieces)}
        out.append(message)
    return out


def message_images(messages: Sequence[dict]) -> list[ImageSource]:
    """The image sources of OpenAI / Qwen-style message parts, in order: ``{"type": "image",
    "image": src}`` and ``{"type": "image_url", "image_url": {"url": src}}``."""
    found = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            continue
        for part in content:
            if "image_url" in part:
                url = part["image_url"]
                found.append(url["url"] if isinstance(url, dict) else url)
            elif part.get("image") is not None:
                found.append(part["image"])
    return found


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_PAD",
    "QWEN2_VL_CHAT_TEMPLATE",
    "VISION_END",
    "VISION_START",
    "ImageInputError",
    "ImageProcessor",
    "ImageProcessorConfig",
    "decode_data_url",
    "expand_image_placeholders",
    "flatten_image_messages",
    "load_image",
    "message_images",
    "patchify",
    "save_preprocessor_config",
    "smart_resize",
]
