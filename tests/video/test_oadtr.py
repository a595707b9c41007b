"""OadTR: streaming one chunk at a time equals the batched forward; windows and future
labels by hand; per-frame AP against scikit-learn; the joint loss by hand; training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from lmforge.video.oadtr import (
    GRUDetector,
    OadTR,
    OadTRSettings,
    OadTRStream,
    average_precision,
    frame_map,
    future_labels,
    sliding_windows,
    synthetic_stream,
    train_detector,
)

SMALL = OadTRSettings(feature_dim=6, num_classes=3, window=5, future=2, dim=16, heads=2)


def test_windows_and_future_labels_by_hand():
    stream = torch.arange(1, 4, dtype=torch.float32).view(3, 1)  # chunks 1, 2, 3
    w = sliding_windows(stream, 2)
    assert w.shape == (3, 2, 1)
    assert w[:, :, 0].tolist() == [[0, 1], [1, 2], [2, 3]]
    assert future_labels(torch.tensor([4, 5, 6]), 2).tolist() == [[5, 6], [6, -100],
                                                                  [-100, -100]]  # fmt: skip


def test_streaming_equals_the_batched_forward():
    torch.manual_seed(0)
    model = OadTR(SMALL).eval()
    x, _ = synthetic_stream(20, SMALL.feature_dim, SMALL.num_classes, seed=3)
    with torch.no_grad():
        batched = model(sliding_windows(x, SMALL.window))[0]
    stream = OadTRStream(model)
    online = torch.stack([stream.push(chunk) for chunk in x])
    assert torch.allclose(online, batched, atol=1e-5)
    # and the GRU baseline is causal: its output at t ignores chunks after t
    gru = GRUDetector(SMALL).eval()
    with torch.no_grad():
        full = gru(x[None])[0]
        prefix = gru(x[None, :7])[0]
    assert torch.allclose(full[:7], prefix, atol=1e-6)


def test_joint_loss_by_hand():
    torch.manual_seed(0)
    model = OadTR(SMALL).eval()
    w = torch.randn(4, SMALL.window, SMALL.feature_dim)
    cur = torch.tensor([0, 1, 2, 1])
    fut = torch.tensor([[1, 2], [0, -100], [2, 2], [-100, -100]])
    cur_logits, fut_logits = model(w)
    assert fut_logits.shape == (4, 2, 3)
    terms = [F.cross_entropy(fut_logits[i, j : j + 1], fut[i, j : j + 1])
             for i in range(4) for j in range(2) if fut[i, j] >= 0]  # fmt: skip
    expected = F.cross_entropy(cur_logits, cur) + 0.5 * torch.stack(terms).mean()
    assert model.loss(w, cur, fut).item() == pytest.approx(expected.item(), rel=1e-6)


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = np.round(rng.random(60), 1)  # with ties
        positives = rng.random(60) < 0.3
        assert average_precision(scores, positives) == pytest.approx(
            average_precision_score(positives, scores)
        )
    labels = torch.tensor([0, 1, 1, 2, 0, 2])
    perfect = F.one_hot(labels, 3).float()
    assert frame_map(perfect, labels) == 1.0


def test_training_lowers_the_loss_and_detects_actions():
    settings = OadTRSettings(window=8, dim=16, heads=2, encoder_layers=1)
    model, losses = train_detector("oadtr", settings, streams=4, steps=40)
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    x, y = synthetic_stream(256, seed=999)
    with torch.no_grad():
        scores = model(sliding_windows(x, settings.window))[0].softmax(-1)
    assert frame_map(scores, y) > 0.5  # chance is ≈ the positive rate, ≈ 0.15
