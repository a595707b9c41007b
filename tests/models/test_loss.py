"""Chunked next-token loss equals the full one, value and gradients, without all logits."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.loss import IGNORE_INDEX, chunked_next_token_loss, next_token_loss
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = CausalLM(preset_config("tiny")).double()
    ids = torch.randint(0, 256, (3, 17))
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX  # a masked prompt
    labels[2, 9:] = IGNORE_INDEX  # masked tail
    return model, ids, labels


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_loss_matches_full_loss_and_grads(chunk, reduction):
    model, ids, labels = _model_and_batch()
    full = model(ids, labels=labels, loss_reduction=reduction).loss
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(ids, labels=labels, loss_reduction=reduction, loss_chunk_size=chunk)
    assert out.logits is None
    torch.testing.assert_close(out.loss, full, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-10, atol=1e-12, msg=name)


def test_sum_is_mean_times_count_and_no_targets_gives_nan():
    model, ids, labels = _model_and_batch()
    with torch.no_grad():
        mean = model(ids, labels=labels).loss
        total = model(ids, labels=labels, loss_reduction="sum", loss_chunk_size=7).loss
    count = (labels[:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(total, mean * count)
    empty = torch.full_like(labels, IGNORE_INDEX)
    hidden = torch.randn(3, 17, 64, dtype=torch.float64)
    head = model.lm_head
    assert torch.isnan(chunked_next_token_loss(hidden, head, empty, 4))
    assert chunked_next_token_loss(hidden, head, empty, 4, "sum") == 0
    assert torch.isnan(next_token_loss(head(hidden), empty))


def test_bad_arguments():
    model, ids, labels = _model_and_batch()
    with pytest.raises(ValueError, match="reduction"):
        model(ids, labels=labels, loss_reduction="avg")
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_next_token_loss(torch.randn(1, 2, 64), model.lm_head, labels[:1, :2], 0)


def test_chunks_never_hold_all_logits():
    """Peak logits held at once: a chunk's, not [B·T, V] (counted with saved-tensor hooks)."""
    model, ids, labels = _model_and_batch()
    model.float()
    vocab = model.config.vocab_size
    saved_logit_rows = []

    def pack(t):
        if t.ndim == 2 and t.shape[-1] == vocab:
            saved_logit_rows.append(t.shape[0])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=labels, loss_chunk_size=8).loss.backward()
    assert saved_logit_rows == []  # nothing of vocab width is kept for backward
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=labels).loss.backward()
    assert ids.numel() in saved_logit_rows  # the full loss keeps [B·T, V] logits
