"""Learning-rate schedules."""

from __future__ import annotations

import math

import pytest

from lmforge.train.schedule import lr_at


def test_warmup_is_linear_and_starts_above_zero():
    lrs = [lr_at(s, 0.0, peak=1.0, warmup_steps=4) for s in range(6)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_endpoints_and_midpoint():
    kw = dict(peak=2.0, schedule="cosine", warmup_steps=0, min_ratio=0.1)
    assert lr_at(100, 0.0, **kw) == pytest.approx(2.0)
    assert lr_at(100, 0.5, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(100, 1.0, **kw) == pytest.approx(0.2)
    assert lr_at(100, 1.5, **kw) == pytest.approx(0.2)  # clamped past the end
    p = 0.3
    assert lr_at(100, p, **kw) == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi * p))))


def test_wsd_is_flat_then_linear_decay():
    kw = dict(peak=1.0, schedule="wsd", warmup_steps=0, min_ratio=0.0, decay_fraction=0.2)
    assert [lr_at(50, p, **kw) for p in (0.1, 0.5, 0.8)] == pytest.approx([1.0, 1.0, 1.0])
    assert lr_at(50, 0.9, **kw) == pytest.approx(0.5)
    assert lr_at(50, 1.0, **kw) == pytest.approx(0.0)


def test_constant_and_unknown():
    assert lr_at(10, 0.9, peak=3.0, schedule="constant") == 3.0
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_at(0, 0.0, peak=1.0, schedule="linear")
