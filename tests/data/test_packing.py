"""Packing: best-fit decreasing vs a brute-force reference, row tensors, and the two
properties that make packing exact — the packed loss is the token-weighted mean of the
per-example losses, and a document's gradients do not depend on its row neighbours."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmforge.data.packing import (
    PackingReport,
    Segment,
    fit_to_length,
    num_loss_tokens,
    pack_best_fit,
    pack_greedy,
    pack_token_lists,
    packing_efficiency,
    rows_to_batch,
)
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM

VOCAB = 64


def reference_best_fit_decreasing(lengths, seq_len):
    """Textbook BFD with a linear scan: longest first, into the row with least room left."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, rooms = [], []
    for i in order:
        fits = [r for r in range(len(rows)) if rooms[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: rooms[r])
        else:
            best = len(rows)
            rows.append([])
            rooms.append(seq_len)
        rows[best].append(i)
        rooms[best] -= lengths[i]
    return rows


def test_best_fit_decreasing_small_case_by_hand():
    rows = pack_best_fit([5, 4, 3, 3, 2, 1], seq_len=8)
    assert [[(s.index, s.length) for s in row] for row in rows] == [
        [(0, 5), (2, 3)],
        [(1, 4), (3, 3), (5, 1)],
        [(4, 2)],
    ]
    assert packing_efficiency(rows, 8) == 18 / 24
    with pytest.raises(ValueError, match="item 1 has 9 tokens > seq_len=8"):
        pack_best_fit([3, 9], seq_len=8)
    split = pack_best_fit([3, 19], seq_len=8, split=True)
    pieces = sorted((s.index, s.start, s.length) for row in split for s in row)
    assert pieces == [(0, 0, 3), (1, 0, 8), (1, 8, 8), (1, 16, 3)]
    assert len(split) == 3  # 8 | 8 | 3+3


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_matches_brute_force_reference(seed):
    rng = random.Random(seed)
    seq_len = rng.choice([16, 64, 100])
    lengths = [rng.randint(1, seq_len) for _ in range(rng.randint(1, 300))]
    rows = pack_best_fit(lengths, seq_len)
    reference = reference_best_fit_decreasing(lengths, seq_len)
    # Same number of rows and the same multiset of row fills (ties may pick other rows).
    assert len(rows) == len(reference)
    fill = sorted(sum(s.length for s in row) for row in rows)
    assert fill == sorted(sum(lengths[i] for i in row) for row in reference)
    assert sorted(s.index for row in rows for s in row) == list(range(len(lengths)))
    assert all(s.start == 0 and s.length == lengths[s.index] for row in rows for s in row)
    assert len(rows) <= len(pack_greedy(lengths, seq_len, split=False))


def test_greedy_split_cuts_the_stream_every_seq_len():
    lengths = [3, 10, 2, 7]
    rows = pack_greedy(lengths, seq_len=8)
    assert rows == [
        [Segment(0, 0, 3), Segment(1, 0, 5)],
        [Segment(1, 5, 5), Segment(2, 0, 2), Segment(3, 0, 1)],
        [Segment(3, 1, 6)],
    ]
    assert pack_greedy(lengths[:1] + lengths[2:], seq_len=8, split=False) == [
        [Segment(0, 0, 3), Segment(1, 0, 2)],
        [Segment(2, 0, 7)],
    ]


def test_rows_to_batch_resets_positions_masks_boundaries_and_fills():
    docs = [np.arange(10, 13), np.arange(20, 25), np.arange(30, 32)]
    rows = [[Segment(0, 0, 3), Segment(1, 0, 4)], [Segment(1, 4, 1), Segment(2, 0, 2)]]
    labels = [np.where(d % 2 == 0, d, IGNORE_INDEX) for d in docs]
    batch = rows_to_batch(
        rows, 8, lambda i, s, n: docs[i][s : s + n], lambda i, s, n: labels[i][s : s + n], 99
    )
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 20, 21, 22, 23, 99],
        [24, 30, 31, 99, 99, 99, 99, 99],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 0, 1, 2, 3, 4]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 2, 2, 2, 2, 2]]
    i = IGNORE_INDEX
    assert batch["labels"].tolist() == [[i, i, 12, i, i, 22, i, i], [i, i, i, i, i, i, i, i]]
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert int(num_loss_tokens(batch["labels"])) == 2


def test_too_long_policies_are_counted():
    report = PackingReport()
    assert fit_to_length([3, 12, 5], 8, "truncate", report) == ([0, 1, 2], [3, 8, 5])
    assert fit_to_length([3, 12, 9], 8, "drop", report) == ([0], [3])
    assert (report.truncated, report.dropped) == (1, 2)
    with pytest.raises(ValueError, match="example 1 has 12 tokens > seq_len=8"):
        fit_to_length([3, 12], 8, "error", report)
    batch, report = pack_token_lists([[1, 2, 3], [4] * 12], 8, split=False, too_long="truncate")
    assert report.truncated == 1 and report.rows == 2 and report.efficiency == 11 / 16
    assert batch["input_ids"][1].tolist() == [4] * 8


# ----------------------------------------------------------------------------- exactness


def tiny_model(dtype=torch.float32, seed=0) -> CausalLM:
    """A tiny random LM with large weights (std 0.2), so logits are far from uniform."""
    config = preset_config("tiny", vocab_size=VOCAB, hidden_size=32, intermediate_size=64)
    torch.manual_seed(seed)
    model = CausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p)
            )
    return model.to(dtype).eval()


def random_examples(n, seed, max_len=20):
    """SFT-like examples: random tokens, labels -100 on a random prompt prefix and holes."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        length = int(torch.randint(2, max_len + 1, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (length,), generator=g)
        labels = ids.clone()
        labels[: int(torch.randint(1, length, (1,), generator=g))] = IGNORE_INDEX
        labels[torch.rand(length, generator=g) < 0.2] = IGNORE_INDEX
        labels[-1] = ids[-1]  # at least one target per example
        examples.append((ids.tolist(), labels.tolist()))
    return examples


def next_token_ce(logits, labels):
    """Float64 mean CE of logits[:, t] vs labels[:, t + 1] (the model's loss reduces in
    float32, so the exact identity is checked on float64 logits here)."""
    targets = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    return torch.nn.functional.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX)


def packed_and_reference_loss(model, examples, seq_len, strategy, exact=False):
    ids, labels = [e[0] for e in examples], [e[1] for e in examples]
    batch, report = pack_token_lists(
        ids, seq_len, label_lists=labels, strategy=strategy, split=False, pad_id=VOCAB - 1
    )
    assert report.efficiency < 1.0 and report.rows > 1  # filler and several rows
    assert report.rows <= len(examples) // 2  # rows hold several examples each

    def loss_of(**inputs):
        out = model(**inputs)
        return next_token_ce(out.logits, inputs["labels"]) if exact else out.loss.double()

    with torch.no_grad():
        packed = loss_of(**batch)
        total, count = torch.zeros((), dtype=torch.float64), 0
        for x, y in zip(ids, labels, strict=True):
            n = sum(t != IGNORE_INDEX for t in y[1:])
            total += loss_of(input_ids=torch.tensor([x]), labels=torch.tensor([y])) * n
            count += n
    assert int(num_loss_tokens(batch["labels"])) == count
    return packed, total / count, batch


@pytest.mark.parametrize("strategy", ["best_fit", "greedy"])
def test_packed_loss_is_token_weighted_mean_of_example_losses(strategy):
    examples = random_examples(24, seed=1)
    packed, reference, _ = packed_and_reference_loss(tiny_model(), examples, 32, strategy)
    assert abs(packed - reference) <= 1e-5
    # On float64 logits the identity holds to rounding, so any leak shows far below 1e-5.
    model = tiny_model(torch.float64)
    packed, reference, batch = packed_and_reference_loss(model, examples, 32, strategy, True)
    assert abs(packed - reference) <= 1e-12
    # The test can fail: without document boundaries the loss moves.
    with torch.no_grad():
        unmasked = next_token_ce(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert abs(unmasked - reference) > 1e-3


def doc_grads(model, ids, neighbours, seq_len=32, before=True):
    """Pack ``ids`` with ``neighbours`` in one row; return the gradient of the doc's own
    summed loss wrt its input embeddings, and its logits."""
    docs = [*neighbours, ids] if before else [ids, *neighbours]
    labs = [[IGNORE_INDEX] + d[1:] for d in docs]
    rows = [[Segment(i, 0, len(d)) for i, d in enumerate(docs)]]
    batch = rows_to_batch(
        rows, seq_len, lambda i, s, n: docs[i][s : s + n], lambda i, s, n: labs[i][s : s + n]
    )
    doc_index = len(docs) - 1 if before else 0
    mine = batch["document_ids"][0] == doc_index
    embeds = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, i, out: embeds.append(out.retain_grad() or out)
    )
    try:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    finally:
        hook.remove()
    targets = batch["labels"][0, 1:][mine[:-1]]
    keep = targets != IGNORE_INDEX
    loss = torch.nn.functional.cross_entropy(
        logits[:-1][mine[:-1]][keep], targets[keep], reduction="sum"
    )
    loss.backward()
    return embeds[0].grad[0][mine].clone(), logits[mine].detach()


def unmasked_doc_grad(model, doc, neighbours):
    """Like `doc_grads` but one plain causal sequence: the doc attends to its neighbours."""
    ids = torch.tensor([sum([*neighbours, doc], [])])
    embeds = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, i, out: embeds.append(out.retain_grad() or out)
    )
    logits = model(input_ids=ids).logits[0]
    hook.remove()
    n = len(doc)
    loss = torch.nn.functional.cross_entropy(logits[-n:-1], torch.tensor(doc[1:]), reduction="sum")
    loss.backward()
    return embeds[0].grad[0, -n:].clone()


def test_document_gradients_do_not_depend_on_row_neighbours():
    torch.manual_seed(0)
    doc = torch.randint(0, VOCAB, (9,)).tolist()
    layouts = [
        ([torch.randint(0, VOCAB, (n,)).tolist() for n in (5, 7)], True),
        ([torch.randint(0, VOCAB, (n,)).tolist() for n in (11,)], True),
        ([torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 4, 6)], False),
        ([], True),
    ]
    model = tiny_model(torch.float64)
    results = [doc_grads(model, doc, neighbours, before=b) for neighbours, b in layouts]
    grad0, logits0 = results[0]
    assert grad0.abs().max() > 1e-3  # a real gradient
    for grad, logits in results[1:]:
        torch.testing.assert_close(grad, grad0, rtol=0, atol=1e-12)
        torch.testing.assert_close(logits, logits0, rtol=0, atol=1e-12)
    # Sensitivity: with attention across the row, the neighbours do change the gradient.
    leaky = [unmasked_doc_grad(model, doc, neighbours) for neighbours, _ in layouts[:2]]
    assert (leaky[0] - leaky[1]).abs().max() > 1e-4
