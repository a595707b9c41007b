"""CPC: InfoNCE against a brute-force loop over (sequence, time) pairs, the MI bound, both
context networks, and training that lowers the loss (and, slow, beats a random encoder on
a linear probe)."""

import math

import pytest
import torch

from lmforge.representation.cpc import (
    CPCModel,
    CPCSettings,
    cpc_loss,
    features_of,
    info_nce,
    linear_probe_accuracy,
    synthetic_speakers,
    train_cpc,
    train_supervised,
)


def brute_force_cpc(model, signal):
    """L_k = mean over (b, t) of −log exp(z_{b,t+k}·W_k c_{b,t}) / Σ_{b',t'} exp(z_{b',t'+k}·W_k c_{b,t})."""
    z, c = model(signal)
    B, T, _ = z.shape
    per_k = []
    for k, W in enumerate(model.predictors, start=1):
        terms = []
        for b in range(B):
            for t in range(T - k):
                p = W.weight @ c[b, t]
                scores = [float(z[b2, t2 + k] @ p) for b2 in range(B) for t2 in range(T - k)]
                positive = float(z[b, t + k] @ p)
                terms.append(-positive + math.log(sum(math.exp(s) for s in scores)))
        per_k.append((sum(terms) / len(terms), B * (T - k)))
    return per_k


@pytest.mark.parametrize("context", ["gru", "transformer"])
def test_info_nce_matches_the_brute_force_loop(context):
    torch.manual_seed(0)
    model = CPCModel(CPCSettings(latent=8, hidden=16, steps=3, context=context)).double()
    signal = torch.randn(3, 40, dtype=torch.float64)
    loss, metrics = cpc_loss(model, signal)
    with torch.no_grad():
        expected = brute_force_cpc(model, signal)
    for k, (value, n) in enumerate(expected, start=1):
        assert metrics[f"loss_k{k}"] == pytest.approx(value, rel=1e-9)
        assert metrics[f"mi_bound_k{k}"] == pytest.approx(math.log(n) - value, rel=1e-9)
    assert loss.item() == pytest.approx(sum(v for v, _ in expected) / 3, rel=1e-9)


def test_info_nce_extremes():
    """Perfect predictions with well-separated candidates: loss → 0, bound → log N."""
    cand = torch.eye(5) * 50
    loss, n = info_nce(cand.clone() / 50, cand)
    assert n == 5 and loss.item() < 1e-6
    loss, _ = info_nce(torch.zeros(5, 5), cand)
    assert loss.item() == pytest.approx(math.log(5))


def test_context_is_causal():
    torch.manual_seed(0)
    for context in ("gru", "transformer"):
        model = CPCModel(CPCSettings(latent=8, hidden=16, context=context)).eval()
        a = torch.randn(1, 64)
        b = a.clone()
        b[0, 48:] = torch.randn(16)  # change the last quarter of the signal
        with torch.no_grad():
            ca, cb = model(a)[1], model(b)[1]
        assert torch.allclose(ca[0, :10], cb[0, :10], atol=1e-6)  # early context unchanged


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    _, history = train_cpc(CPCSettings(latent=16, hidden=16, steps=2), steps=12, batch_size=4,
                           lr=1e-2)  # fmt: skip
    late = sum(h["loss"] for h in history[-3:]) / 3
    assert history[0]["loss"] == pytest.approx(math.log(4 * 63), abs=0.1)  # chance: log N
    assert late < history[0]["loss"] - 0.1


@pytest.mark.slow
def test_cpc_features_beat_a_random_encoder_on_a_linear_probe():
    tr_x, tr_y = synthetic_speakers(256, seed=1001)
    te_x, te_y = synthetic_speakers(256, seed=1002)
    torch.manual_seed(0)
    rand = CPCModel(CPCSettings())
    random_acc = linear_probe_accuracy(features_of(rand, tr_x), tr_y, features_of(rand, te_x), te_y)
    model, _ = train_cpc(CPCSettings(), steps=150)
    acc = linear_probe_accuracy(features_of(model, tr_x), tr_y, features_of(model, te_x), te_y)
    assert acc > random_acc + 0.05


def test_supervised_reference_learns_the_speakers():
    tr_x, tr_y = synthetic_speakers(64, seed=1001)
    te_x, te_y = synthetic_speakers(64, seed=1002)
    model = train_supervised(CPCSettings(latent=16, hidden=16), steps=40, lr=1e-2)
    acc = linear_probe_accuracy(features_of(model, tr_x), tr_y, features_of(model, te_x), te_y)
    assert acc > 0.3  # chance is 1/8
