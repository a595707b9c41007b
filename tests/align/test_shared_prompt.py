"""Shared-prompt log-probs equal the padded batch's (`model_logprobs`): values, mask, entropy
on completion tokens and every parameter's gradient — with groups split across prompt
lengths, a prompt seen once, GQA, temperature; and they decline (None) where not exact."""

from __future__ import annotations

import pytest
import torch

from lmforge.align.logprobs import model_logprobs
from lmforge.align.shared_prompt import (
    SharedPromptCache,
    length_chunks,
    prompt_sharing_supported,
    shared_prompt_logprobs,
)
from lmforge.config import ModelConfig
from lmforge.models.transformer import CausalLM

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [5, 4, 3, 2, 1]]
ROWS = [(0, [10, 11, 12]), (0, [13]), (1, [14, 15, 16, 17]), (0, [18, 19]), (1, [20, 21]),
        (2, [22, 23, 24])]  # fmt: skip


def _model(**overrides) -> CausalLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **overrides)  # fmt: skip
    return CausalLM(config)


def _batch(rows=ROWS):
    width = max(len(PROMPTS[p]) + len(c) for p, c in rows) + 2
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (p, completion) in enumerate(rows):
        seq = PROMPTS[p] + completion
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(PROMPTS[p]) : len(seq)] = torch.tensor(completion)
    return ids, labels


def _run(fn, model, ids, labels, weight):
    model.zero_grad()
    logps, mask, entropy = fn(model, ids, labels, with_entropy=True, temperature=0.7)
    ((logps * weight).sum() + (entropy * mask).sum()).backward()
    return logps, mask, entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_matches_the_padded_batch_values_and_gradients():
    model, (ids, labels) = _model(), _batch()
    weight = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))
    lp, mask, ent, grads = _run(model_logprobs, model, ids, labels, weight)
    lp2, mask2, ent2, grads2 = _run(shared_prompt_logprobs, model, ids, labels, weight)
    assert torch.equal(mask, mask2)
    assert torch.allclose(lp, lp2, atol=1e-5)
    assert lp[mask].abs().min() > 0  # real log-probs compared, not zeros
    assert torch.allclose(ent[mask], ent2[mask], atol=1e-5)
    assert torch.equal(ent2[~mask], torch.zeros_like(ent2[~mask]))
    for name in grads:
        assert torch.allclose(grads[name], grads2[name], atol=1e-5), name


@pytest.mark.slow
def test_compiled_model_gives_the_same_values_and_gradients():
    """Under ``torch.compile`` (``train.compile``, the GRPO benchmark's ``--compile-train``)
    the shared-prompt forward — a cache object passed through the compiled model — and its
    backward give the eager numbers, on two batches of different shapes (≈ 1 min of
    compilation on one core: slow)."""
    pytest.importorskip("torch._inductor")
    model = _model()
    compiled = torch.compile(model)
    for rows in (ROWS, ROWS[:4]):
        ids, labels = _batch(rows)
        weight = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))
        lp, mask, ent, grads = _run(shared_prompt_logprobs, model, ids, labels, weight)
        out = _run(shared_prompt_logprobs, compiled, ids, labels, weight)
        assert torch.equal(mask, out[1])
        assert torch.allclose(lp, out[0], atol=1e-5)
        assert torch.allclose(ent[mask], out[2][mask], atol=1e-5)
        for name in grads:
            assert torch.allclose(grads[name], out[3][f"_orig_mod.{name}"], atol=1e-5), name


def test_declines_where_it_is_not_exact_or_does_not_pay():
    model, (ids, labels) = _model(), _batch()
    assert shared_prompt_logprobs(model, *_batch([ROWS[0], ROWS[2]])) is None  # nothing shared
    gapped = labels.clone()
    gapped[0, 6] = -100  # a hole in row 0's completion
    assert shared_prompt_logprobs(model, ids, gapped) is None
    model.model.gradient_checkpointing = 1
    assert not prompt_sharing_supported(model)
    assert shared_prompt_logprobs(model, ids, labels) is None
    with pytest.raises(ValueError, match="temperature"):
        shared_prompt_logprobs(_model(), ids, labels, temperature=0.0)


def test_cache_reads_each_rows_prompt():
    cache = SharedPromptCache()
    k = torch.arange(2 * 3).float().view(2, 1, 3, 1)
    assert cache.update(0, k, k)[0] is k
    cache.advance(3)
    cache.expand_to(torch.tensor([1, 1, 0]))
    new = torch.full((3, 1, 2, 1), -1.0)
    keys, _ = cache.update(0, new, new)
    cache.advance(2)
    assert cache.length == 3  # continuation steps do not move the prompt length
    assert keys[:, 0, :, 0].tolist() == [[3, 4, 5, -1, -1], [3, 4, 5, -1, -1], [0, 1, 2, -1, -1]]


def test_length_chunks_cut_padding_with_few_forwards():
    assert length_chunks([64] * 8) == [list(range(8))]  # equal lengths: one forward
    chunks = length_chunks([10, 60, 12, 64, 11, 62])
    assert chunks == [[3, 5, 1], [2, 4, 0]]  # longest first, each padded to its own longest
    assert sorted(i for c in chunks for i in c) == list(range(6))
    assert len(length_chunks(list(range(1, 100)), max_chunks=4)) == 3  # k=4 saves < 10 %


def test_policy_logprobs_share_prompts_with_the_same_numbers(monkeypatch):
    from lmforge.align import rollout

    model, (ids, labels) = _model(), _batch()
    calls = []
    monkeypatch.setattr(rollout, "shared_prompt_logprobs",
                        lambda *a, **k: calls.append(1) or shared_prompt_logprobs(*a, **k))  # fmt: skip
    got = rollout.policy_logprobs(model, {"input_ids": ids, "labels": labels}, temperature=0.7)
    assert calls == [1]
    with torch.no_grad():
        expected, _, _ = model_logprobs(model.eval(), ids, labels, temperature=0.7)
    assert torch.allclose(got, expected, atol=1e-5)
    masked = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    rollout.policy_logprobs(model, masked)  # PPO's masked batches keep the padded forward
    assert calls == [1]
