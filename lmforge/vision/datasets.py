"""Offline image datasets, made procedurally (nothing downloads), deterministic by seed.

    ds = load_image_dataset("digits", size=16, num=2000, seed=0, split="train")
    ds.images   # [N, C, H, W] float32 on the 8-bit grid in [-1, 1] (k / 127.5 − 1)
    ds.labels   # [N] class ids; ds.class_names; ds.captions; ds.attributes

Datasets: ``digits`` / ``letters`` (a glyph in Pillow's built-in scalable font at a random
size, stroke, offset, rotation and colour; class = the character), ``shapes`` (a coloured
circle / square / triangle / diamond / cross, small or large, at one of nine positions, with
a caption like "a small red triangle at the top left"; class = the shape, attributes
``colour``, ``size``, ``position``), and ``sklearn-digits`` (scikit-learn's bundled 8×8
handwritten digits, resized; needs scikit-learn). Splits draw from independent random
streams (``train`` and ``test``), so held-out images are never training images.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lmforge.config import ConfigError

SPLITS = {"train": 0, "test": 1}
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
DATASETS = ("digits", "letters", "shapes", "sklearn-digits")

__all__ = [
    "COLOURS",
    "DATASETS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "ImageDataset",
    "load_image_dataset",
    "render_glyphs",
    "render_shapes",
    "sklearn_digits",
    "to_grid_values",
]


@dataclass
class ImageDataset:
    """Images in [-1, 1] on the 8-bit grid, with class labels, captions and attributes."""

    name: str
    images: torch.Tensor  # [N, C, H, W] float32
    labels: torch.Tensor  # [N] int64
    class_names: list[str]
    captions: list[str] = field(default_factory=list)
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)  # name → [N] int64
    attribute_names: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | slice) -> ImageDataset:
        return ImageDataset(
            self.name,
            self.images[index],
            self.labels[index],
            self.class_names,
            [self.captions[i] for i in torch.arange(len(self))[index].tolist()]
            if self.captions
            else [],
            {k: v[index] for k, v in self.attributes.items()},
            self.attribute_names,
        )


def to_grid_values(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HWC / NHWC pixels → float32 N C H W in [-1, 1] (k / 127.5 − 1)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float()
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    return (x.permute(0, 3, 1, 2) / 127.5 - 1.0).contiguous()


def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return np.random.default_rng([seed, SPLITS[split], 7919])


def render_glyphs(
    chars: str, num: int, size: int, seed: int, split: str, channels: int = 1
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``num`` images of random characters of ``chars`` (uint8 [N, H, W, C]), labels, captions.

    Each glyph is drawn at 4× resolution in Pillow's default scalable font (height 55–85 %
    of the image, stroke 0–2 px at 4×, offset up to 12 %, rotation ±15°) and downsampled
    with a box filter; colour images use a random bright colour on black."""
    rng = _rng(seed, split)
    big = size * 4
    fonts: dict[int, ImageFont.FreeTypeFont] = {}
    pixels = np.zeros((num, size, size, channels), np.uint8)
    labels = rng.integers(0, len(chars), num)
    captions = []
    colour_names = list(COLOURS)
    kind = "digit" if chars == string.digits else "letter"
    for i in range(num):
        ch = chars[labels[i]]
        height = int(big * rng.uniform(0.55, 0.85))
        font = fonts.setdefault(height, ImageFont.load_default(size=height))
        stroke = int(rng.integers(0, 3))
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        box = draw.textbbox((0, 0), ch, font=font, stroke_width=stroke)
        w, h = box[2] - box[0], box[3] - box[1]
        dx, dy = (rng.uniform(-0.12, 0.12, 2) * big).astype(int)
        xy = ((big - w) / 2 - box[0] + dx, (big - h) / 2 - box[1] + dy)
        draw.text(xy, ch, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        mask = np.asarray(canvas.resize((size, size), Image.BOX), np.float32) / 255.0
        if channels == 1:
            level = rng.uniform(0.75, 1.0)
            pixels[i, :, :, 0] = np.round(mask * 255 * level).astype(np.uint8)
            captions.append(f"the {kind} {ch}")
        else:
            cname = colour_names[int(rng.integers(0, len(colour_names)))]
            rgb = np.array(COLOURS[cname], np.float32)
            pixels[i] = np.round(mask[..., None] * rgb).astype(np.uint8)
            captions.append(f"a {cname} {kind} {ch}")
    return pixels, labels.astype(np.int64), captions


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    t = r / 3  # cross
    return [
        (cx - t, cy - r),
        (cx + t, cy - r),
        (cx + t, cy - t),
        (cx + r, cy - t),
        (cx + r, cy + t),
        (cx + t, cy + t),
        (cx + t, cy + r),
        (cx - t, cy + r),
        (cx - t, cy + t),
        (cx - r, cy + t),
        (cx - r, cy - t),
        (cx - t, cy - t),
    ]


def render_shapes(num: int, size: int, seed: int, split: str):
    """``num`` RGB images of one coloured shape each: pixels, labels (shape), captions and
    the attributes ``colour``, ``size``, ``position`` (indices into the module's tables)."""
    rng = _rng(seed, split)
    big = size * 4
    pixels = np.zeros((num, size, size, 3), np.uint8)
    attrs = {
        "shape": rng.integers(0, len(SHAPES), num),
        "colour": rng.integers(0, len(COLOURS), num),
        "size": rng.integers(0, len(SIZES), num),
        "position": rng.integers(0, len(POSITIONS), num),
    }
    colour_names = list(COLOURS)
    captions = []
    for i in range(num):
        shape = SHAPES[attrs["shape"][i]]
        cname = colour_names[attrs["colour"][i]]
        sname = SIZES[attrs["size"][i]]
        pos = int(attrs["position"][i])
        r = big * (0.11 if sname == "small" else 0.2) * rng.uniform(0.9, 1.1)
        cell = big / 3
        cx = (pos % 3 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (pos // 3 + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        canvas = Image.new("RGB", (big, big), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[cname])
        else:
            draw.polygon(_shape_polygon(shape, cx, cy, r), fill=COLOURS[cname])
        pixels[i] = np.asarray(canvas.resize((size, size), Image.BOX))
        captions.append(f"a {sname} {cname} {shape} at the {POSITIONS[pos]}")
    labels = attrs.pop("shape").astype(np.int64)
    return pixels, labels, captions, {k: v.astype(np.int64) for k, v in attrs.items()}


def sklearn_digits(num: int, size: int, seed: int, split: str):
    """scikit-learn's 1797 8×8 digits (16 grey levels), resized to ``size``; a seeded
    permutation is cut 80 / 20 into ``train`` / ``test``; ``num`` ≤ the split's size."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # optional dependency
        raise ConfigError(
            "dataset sklearn-digits needs scikit-learn (pip install scikit-learn)"
        ) from exc
    data = load_digits()
    order = np.random.default_rng([seed, 104729]).permutation(len(data.target))
    cut = int(0.8 * len(order))
    _rng(seed, split)  # validates the split name
    index = order[:cut] if split == "train" else order[cut:]
    index = index[:num] if num else index
    pixels = []
    for img in data.images[index]:
        im = Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), "L")
        pixels.append(np.asarray(im.resize((size, size), Image.BILINEAR)))
    return np.stack(pixels), data.target[index].astype(np.int64)


def load_image_dataset(
    name: str,
    size: int = 16,
    num: int = 2000,
    seed: int = 0,
    split: str = "train",
    channels: int = 1,
) -> ImageDataset:
    """One of `DATASETS` (see the module docstring); ``channels`` applies to glyphs."""
    if size < 8 or size > 128:
        raise ConfigError(f"image size {size}: expected 8..128")
    if name in ("digits", "letters"):
        chars = string.digits if name == "digits" else string.ascii_uppercase
        pixels, labels, captions = render_glyphs(chars, num, size, seed, split, channels)
        return ImageDataset(
            name, to_grid_values(pixels), torch.from_numpy(labels), list(chars), captions
        )
    if name == "shapes":
        pixels, labels, captions, attrs = render_shapes(num, size, seed, split)
        return ImageDataset(
            name,
            to_grid_values(pixels),
            torch.from_numpy(labels),
            list(SHAPES),
            captions,
            {k: torch.from_numpy(v) for k, v in attrs.items()},
            {"colour": list(COLOURS), "size": list(SIZES), "position": list(POSITIONS)},
        )
    if name == "sklearn-digits":
        pixels, labels = sklearn_digits(num, size, seed, split)
        captions = [f"the digit {d}" for d in labels]
        return ImageDataset(
            name, to_grid_values(pixels), torch.from_numpy(labels), list(string.digits), captions
        )
    raise ConfigError(f"image dataset {name!r}: expected one of {', '.join(DATASETS)}")
