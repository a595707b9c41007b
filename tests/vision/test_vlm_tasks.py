"""Synthetic VQA tasks: answers checked against the pixels independently (dominant colour,
connected components, the two images' colours), disjoint splits, exact-match accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.config import ConfigError
from lmforge.vision.datasets import COLOURS
from lmforge.vision.vlm_tasks import (
    COUNT_WORDS,
    TASKS,
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
        assert all(img.dtype == np.uint8 and img.shape == (32, 32, 3) for img in ex.images)
        assert ex.messages()[0]["content"][-1]["text"] == ex.question
    with pytest.raises(ConfigError, match="VQA task"):
        task_examples("nope", 1, 32, 0, "train")


def test_accuracy_by_task():
    examples = task_examples("colour", 4, 32, 0, "train")
    predictions = [ex.answer for ex in examples[:3]] + ["purple"]
    assert accuracy_by_task(examples, predictions) == {"colour": 0.75, "all": 0.75}
