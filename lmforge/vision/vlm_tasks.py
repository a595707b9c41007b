"""Synthetic visual question answering, offline and seeded: each example is one or two RGB
images (uint8 ``[H, W, 3]``), a question and a one-word answer that is right by
construction, so accuracy is exact match.

    examples = make_vqa_examples(["colour", "shape", "count"], num=2000, size=32, seed=0,
                                 split="train")
    examples[0]   # VQAExample(images=[array], question='what colour is the shape?',
                  #            answer='red', task='colour')

Tasks: ``colour`` / ``shape`` / ``position`` of one shape (the shapes of
`lmforge.vision.datasets.render_shapes`), ``count`` (1–4 shapes in distinct cells of a 3×3
grid), ``ocr`` (the digit rendered by `lmforge.vision.datasets.render_glyphs`), ``words``
(a three-letter word of `WORDS` rendered on a wide ``size × 2·size`` image — native
resolution: its grid differs from the square tasks'), ``compare`` (two images: "same
colour?" yes / no, half of each). The ``train`` and ``test`` splits draw from independent
random streams, so held-out images are never training images.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmforge.config import ConfigError
from lmforge.vision.datasets import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SPLITS,
    render_glyphs,
    render_shapes,
)

TASKS = ("colour", "shape", "position", "count", "ocr", "compare", "words")
WORDS = (
    "arm", "bag", "bed", "box", "bus", "car", "cat", "cup", "dog", "egg", "fig", "fox",
    "hat", "jam", "key", "kit", "log", "map", "net", "owl", "pen", "pig", "sun", "toy",
)  # fmt: skip
COUNT_WORDS = ("one", "two", "three", "four")
QUESTIONS = {
    "colour": ("what colour is the shape?", "which colour is it?"),
    "shape": ("what shape is shown?", "which shape is it?"),
    "position": ("where is the shape?", "which position is the shape at?"),
    "count": ("how many shapes are there?", "count the shapes."),
    "ocr": ("what digit is written?", "read the digit."),
    "compare": ("are the two shapes the same colour?", "do both shapes have the same colour?"),
    "words": ("what word is written?", "read the word."),
}


@dataclass
class VQAExample:
    """Images (uint8 ``[H, W, 3]`` each), a question, its answer, the task name."""

    images: list[np.ndarray]
    question: str
    answer: str
    task: str
    meta: dict = field(default_factory=dict)

    def messages(self) -> list[dict]:
        """The example as a chat: the images, then the question; the answer as the reply."""
        content = [{"type": "image"} for _ in self.images]
        content.append({"type": "text", "text": self.question})
        return [{"role": "user", "content": content}, {"role": "assistant", "content": self.answer}]


def _rng(seed: int, split: str, task: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return np.random.default_rng([seed, SPLITS[split], TASKS.index(task), 4099])


def _count_shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float, fill):
    """One filled circle, square, triangle or diamond (``kind`` 0–3) of radius ``r``."""
    if kind == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    corners = {
        1: [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        2: [(0, -1), (1, 1), (-1, 1)],
        3: [(0, -1), (1, 0), (0, 1), (-1, 0)],
    }[kind]
    draw.polygon([(cx + dx * r, cy + dy * r) for dx, dy in corners], fill=fill)


def render_count(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``num`` images with 1–4 small shapes (circle / square / triangle / diamond, random colour) in distinct cells
    of a 3×3 grid; returns pixels ``[N, size, size, 3]`` and the counts."""
    big, colours = size * 4, list(COLOURS.values())
    counts = rng.integers(1, len(COUNT_WORDS) + 1, num)
    pixels = np.zeros((num, size, size, 3), np.uint8)
    cell = big / 3
    for i in range(num):
        canvas = Image.new("RGB", (big, big), (0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        for pos in rng.choice(9, int(counts[i]), replace=False):
            cx = (pos % 3 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
            cy = (pos // 3 + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
            r = cell * rng.uniform(0.28, 0.36)
            kind, colour = int(rng.integers(4)), colours[rng.integers(len(colours))]
            _count_shape(draw, kind, cx, cy, r, colour)
        pixels[i] = np.asarray(canvas.resize((size, size), Image.BOX))
    return pixels, counts


def render_words(num: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``num`` wide images (uint8 ``[N, size, 2·size, 3]``) of a random word of `WORDS` in
    Pillow's built-in scalable font (height 50–70 % of the image, random offset, rotation
    ±4°, a random palette colour on black; drawn at 4× and box-downsampled), and the words."""
    big_h, big_w = size * 4, size * 8
    colours = list(COLOURS.values())
    words = [WORDS[i] for i in rng.integers(len(WORDS), size=num)]
    pixels = np.zeros((num, size, 2 * size, 3), np.uint8)
    fonts: dict[int, ImageFont.FreeTypeFont] = {}
    for i, word in enumerate(words):
        height = int(big_h * rng.uniform(0.5, 0.7))
        font = fonts.setdefault(height, ImageFont.load_default(size=height))
        canvas = Image.new("L", (big_w, big_h), 0)
        draw = ImageDraw.Draw(canvas)
        box = draw.textbbox((0, 0), word, font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        dx = rng.uniform(-0.5, 0.5) * max(0.0, big_w - w) * 0.8
        dy = rng.uniform(-0.5, 0.5) * max(0.0, big_h - h) * 0.8
        draw.text(((big_w - w) / 2 - box[0] + dx, (big_h - h) / 2 - box[1] + dy), word,
                  fill=255, font=font)  # fmt: skip
        canvas = canvas.rotate(float(rng.uniform(-4, 4)), resample=Image.BILINEAR)
        mask = np.asarray(canvas.resize((2 * size, size), Image.BOX), np.float32) / 255.0
        rgb = np.array(colours[int(rng.integers(len(colours)))], np.float32)
        pixels[i] = np.round(mask[..., None] * rgb).astype(np.uint8)
    return pixels, words


def _question(task: str, rng: np.random.Generator) -> str:
    options = QUESTIONS[task]
    return options[int(rng.integers(len(options)))]


def task_examples(task: str, num: int, size: int, seed: int, split: str) -> list[VQAExample]:
    """``num`` examples of one task (see the module docstring)."""
    if task not in TASKS:
        raise ConfigError(f"VQA task {task!r}: expected one of {', '.join(TASKS)}")
    rng = _rng(seed, split, task)
    sub_seed = int(rng.integers(2**31))
    colour_names = list(COLOURS)
    if task in ("colour", "shape", "position"):
        pixels, labels, _, attrs = render_shapes(num, size, sub_seed, split)
        answers = {
            "colour": [colour_names[c] for c in attrs["colour"]],
            "shape": [SHAPES[s] for s in labels],
            "position": [POSITIONS[p].replace(" ", "-") for p in attrs["position"]],
        }[task]
        images = [[p] for p in pixels]
    elif task == "count":
        pixels, counts = render_count(num, size, rng)
        answers = [COUNT_WORDS[c - 1] for c in counts]
        images = [[p] for p in pixels]
    elif task == "words":
        pixels, answers = render_words(num, size, rng)
        images = [[p] for p in pixels]
    elif task == "ocr":
        pixels, labels, _ = render_glyphs(string.digits, num, size, sub_seed, split, channels=3)
        answers = [string.digits[d] for d in labels]
        images = [[p] for p in pixels]
    else:  # compare: the second image repeats the first one's colour half of the time
        first, _, _, a = render_shapes(num, size, sub_seed, split)
        second, _, _, b = render_shapes(num, size, sub_seed + 1, split)
        same = rng.random(num) < 0.5
        for i in np.flatnonzero(same):  # recolour the second shape with the first's colour
            mask = second[i].max(-1, keepdims=True) > 0
            rgb = np.array(COLOURS[colour_names[a["colour"][i]]], np.float32)
            level = second[i].max(-1, keepdims=True) / 255.0
            second[i] = np.where(mask, np.round(level * rgb), 0).astype(np.uint8)
            b["colour"][i] = a["colour"][i]
        answers = ["yes" if x == y else "no" for x, y in zip(a["colour"], b["colour"], strict=True)]
        images = [[p, q] for p, q in zip(first, second, strict=True)]
    return [
        VQAExample(list(imgs), _question(task, rng), ans, task)
        for imgs, ans in zip(images, answers, strict=True)
    ]


def make_vqa_examples(
    tasks: list[str] | tuple[str, ...],
    num: int,
    size: int = 32,
    seed: int = 0,
    split: str = "train",
) -> list[VQAExample]:
    """``num`` examples per task, interleaved (task 1, task 2, …, task 1, …)."""
    per_task = [task_examples(t, num, size, seed, split) for t in tasks]
    return [ex for group in zip(*per_task, strict=True) for ex in group]


def answer_vocabulary(tasks: list[str] | tuple[str, ...]) -> list[str]:
    """Every word a question or an answer of ``tasks`` can contain (for a tokenizer)."""
    words = set()
    for task in tasks:
        for q in QUESTIONS[task]:
            words.update(q.replace("?", " ?").replace(".", " .").split())
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(p.replace(" ", "-") for p in POSITIONS)
    words.update(COUNT_WORDS)
    words.update(string.digits)
    words.update(("yes", "no"))
    if "words" in tasks:
        words.update(WORDS)
    return sorted(words)


def accuracy_by_task(examples: list[VQAExample], predictions: list[str]) -> dict[str, float]:
    """Exact-match accuracy per task and overall (``all``), answers compared stripped."""
    hits: dict[str, list[int]] = {}
    for ex, pred in zip(examples, predictions, strict=True):
        hits.setdefault(ex.task, []).append(int(pred.strip() == ex.answer))
    out = {task: sum(h) / len(h) for task, h in hits.items()}
    all_hits = [h for group in hits.values() for h in group]
    out["all"] = sum(all_hits) / max(1, len(all_hits))
    return out


__all__ = [
    "COUNT_WORDS",
    "QUESTIONS",
    "TASKS",
    "VQAExample",
    "WORDS",
    "accuracy_by_task",
    "answer_vocabulary",
    "make_vqa_examples",
    "render_count",
    "render_words",
    "task_examples",
]
