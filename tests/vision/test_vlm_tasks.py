"""Synthetic VQA tasks: answers checked against the pixels independently (dominant colour,
connected components, the two images' colours), disjoint splits, exact-match accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from lmforge.config import ConfigError
from lmforge.vision.datasets import COLOURS
from lmforge.vision.vlm_tasks import (
    COUNT_WORDS,
    TASKS,
    WORDS,
    accuracy_by_task,
    answer_vocabulary,
    make_vqa_examples,
    task_examples,
)

ndimage = pytest.importorskip("scipy.ndimage")


def nearest_colour(image: np.ndarray) -> str:
    """The palette colour nearest the mean of the clearly lit pixels."""
    lit = image[image.max(-1) >= 0.9 * image.max()].astype(float)
    mean = lit.mean(0)
    return min(COLOURS, key=lambda c: float(np.square(np.array(COLOURS[c]) - mean).sum()))


def test_colour_answers_match_the_pixels():
    for ex in task_examples("colour", 40, 32, 0, "train"):
        assert nearest_colour(ex.images[0]) == ex.answer


def test_count_answers_are_the_connected_components():
    for ex in task_examples("count", 40, 32, 0, "train"):
        _, n = ndimage.label(ex.images[0].max(-1) > 60)
        assert COUNT_WORDS[n - 1] == ex.answer


def test_compare_answers_and_balance():
    examples = task_examples("compare", 60, 32, 0, "train")
    for ex in examples:
        same = nearest_colour(ex.images[0]) == nearest_colour(ex.images[1])
        assert ex.answer == ("yes" if same else "no")
    assert 15 < sum(ex.answer == "yes" for ex in examples) < 45


def test_splits_are_disjoint_and_seeded():
    train = make_vqa_examples(["shape", "count"], 30, 32, 0, "train")
    test = make_vqa_examples(["shape", "count"], 30, 32, 0, "test")
    again = make_vqa_examples(["shape", "count"], 30, 32, 0, "train")
    seen = {ex.images[0].tobytes() for ex in train}
    assert not any(ex.images[0].tobytes() in seen for ex in test)
    assert [ex.answer for ex in again] == [ex.answer for ex in train]
    assert [ex.task for ex in train[:4]] == ["shape", "count", "shape", "count"]


def test_every_task_renders_and_answers_are_in_the_vocabulary():
    vocab = set(answer_vocabulary(TASKS))
    for ex in make_vqa_examples(TASKS, 3, 32, 1, "test"):
        assert ex.answer in vocab
        shape = (32, 64, 3) if ex.task == "words" else (32, 32, 3)
        assert all(img.dtype == np.uint8 and img.shape == shape for img in ex.images)
        assert ex.messages()[0]["content"][-1]["text"] == ex.question
    with pytest.raises(ConfigError, match="VQA task"):
        task_examples("nope", 1, 32, 0, "train")


def test_accuracy_by_task():
    examples = task_examples("colour", 4, 32, 0, "train")
    predictions = [ex.answer for ex in examples[:3]] + ["purple"]
    assert accuracy_by_task(examples, predictions) == {"colour": 0.75, "all": 0.75}


def ink_signature(gray: np.ndarray) -> np.ndarray:
    """The ink's bounding box resized to 36×12, zero-mean and unit-norm (for correlation)."""
    ys, xs = np.nonzero(gray > 0.3 * gray.max())
    crop = Image.fromarray(gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8))
    v = np.asarray(crop.resize((36, 12), Image.BILINEAR), np.float32)
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def test_word_answers_match_the_pixels_by_template_matching():
    """An independent reader: each word drawn once, upright, at a fixed size; every example
    is matched to the template it correlates with most (chance would be 1/24)."""
    font = ImageFont.load_default(size=48)
    templates = {}
    for word in WORDS:
        canvas = Image.new("L", (200, 80))
        ImageDraw.Draw(canvas).text((10, 5), word, fill=255, font=font)
        templates[word] = ink_signature(np.asarray(canvas.resize((50, 20), Image.BOX), np.float32))
    examples = task_examples("words", 120, 32, 0, "test")
    read = [
        max(templates, key=lambda w: float((templates[w] * ink_signature(
            ex.images[0].max(-1).astype(np.float32))).sum()))
        for ex in examples
    ]  # fmt: skip
    assert np.mean([r == ex.answer for r, ex in zip(read, examples, strict=True)]) > 0.85
    assert len({ex.answer for ex in examples}) > 15
    assert all(ex.answer in WORDS and ex.question.endswith(("?", ".")) for ex in examples)
