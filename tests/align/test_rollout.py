"""Rollouts through the inference engine: seeds, stops, training layout, log-prob agreement,
prompt sampling (uniform / Kimi prioritised) and DAPO dynamic sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lmforge.align.logprobs import model_logprobs
from lmforge.align.rollout import (
    Completion,
    PromptSampler,
    RolloutSampling,
    collect_groups,
    policy_logprobs,
    rollout_tensors,
    sample_completions,
)
from lmforge.models.presets import preset_config
from lmforge.models.transformer import IGNORE_INDEX, CausalLM
from lmforge.tokenizer import Tokenizer

TEXTS = [f"What is {a} + {b}? <think>{a}+{b}</think><answer>{a + b}</answer>" for a in range(20)
         for b in range(0, 40, 7)]  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    return CausalLM(cfg).eval()


def _prompts(tok, n):
    return [tok.encode(f"What is {i} + {i + 1}?", add_special_tokens=True) for i in range(n)]


def test_each_request_is_reproducible_from_its_seed_alone(model, tok):
    sampling = RolloutSampling(group_size=2, max_new_tokens=8, stop=())
    prompts = _prompts(tok, 6)
    full = sample_completions(model, tok, prompts, sampling, list(range(6)))
    alone = sample_completions(model, tok, prompts[2:3], sampling, [2])
    assert alone[0].completion_ids == full[2].completion_ids
    other = sample_completions(model, tok, prompts[2:3], sampling, [99])
    assert other[0].completion_ids != full[2].completion_ids
    for c, p in zip(full, prompts):
        assert c.prompt_ids == p and 1 <= len(c.completion_ids) <= 8
        assert c.finish_reason in ("stop", "length")


def test_engine_logprobs_match_the_training_forward(model, tok):
    """The engine samples from the same distribution the objective scores (fused inference
    weights vs the training forward: agreement to float32 rounding)."""
    sampling = RolloutSampling(max_new_tokens=10, stop=())
    outs = sample_completions(model, tok, _prompts(tok, 8), sampling, list(range(8)),
                              with_logprobs=True)  # fmt: skip
    batch = rollout_tensors(outs, tok.pad_token_id)
    logps, mask, _ = model_logprobs(model, batch["input_ids"], batch["labels"])
    torch.testing.assert_close(policy_logprobs(model, batch), logps.detach())
    for row, c in enumerate(outs):
        scored = logps[row][mask[row]]
        assert len(scored) == len(c.completion_ids)
        engine = torch.tensor(c.engine_logprobs)
        torch.testing.assert_close(scored[: len(engine)], engine, atol=1e-5, rtol=1e-5)


def test_stop_token_is_kept_and_stop_string_ends_right_after_itself(model, tok):
    prompt = _prompts(tok, 1)
    plain = sample_completions(model, tok, prompt, RolloutSampling(max_new_tokens=12, stop=()),
                               [0], greedy=True)[0]  # fmt: skip
    text = plain.text
    stop = text[4:6]  # a stop string the greedy continuation is known to produce
    assert stop
    cut = sample_completions(model, tok, prompt, RolloutSampling(max_new_tokens=12, stop=(stop,)),
                             [0], greedy=True)[0]  # fmt: skip
    assert cut.finish_reason == "stop" and stop in cut.text
    assert cut.completion_ids == plain.completion_ids[: len(cut.completion_ids)]
    assert stop not in tok.decode(cut.completion_ids[:-1], skip_special_tokens=True)
    # A stop token (EOS) is part of the completion, so the policy learns to stop.
    eos = tok.eos_token_id
    biased = CausalLM(model.config)
    biased.load_state_dict(model.state_dict())
    with torch.no_grad():
        biased.lm_head.weight[eos] += 50 * biased.model.norm.weight.sign()
    out = sample_completions(biased, tok, prompt, RolloutSampling(max_new_tokens=12), [0])[0]
    assert out.finish_reason == "stop" and out.completion_ids[-1] == eos


def test_rollout_tensors_label_only_completion_tokens():
    cs = [Completion([1, 2, 3], [7, 8], "", "stop"), Completion([4], [5, 6, 9, 2], "", "length")]
    b = rollout_tensors(cs, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 5, 6, 9, 2]]
    i = IGNORE_INDEX
    assert b["labels"].tolist() == [[i, i, i, 7, 8], [i, 5, 6, 9, 2]]
    assert b["lengths"].tolist() == [2, 4]
    with pytest.raises(ValueError, match="empty"):
        rollout_tensors([Completion([1], [], "", "length")], 0)


def test_uniform_sampler_covers_each_epoch_and_resumes_exactly():
    s = PromptSampler(10, seed=3)
    first = s.sample(4) + s.sample(6)
    assert sorted(first) == list(range(10))
    state = s.state_dict()
    nxt = s.sample(7)
    s2 = PromptSampler(10, seed=3)
    s2.load_state_dict(state)
    assert s2.sample(7) == nxt


def test_prioritized_sampler_draws_proportional_to_one_minus_success():
    s = PromptSampler(3, seed=0, prioritized=True, floor=0.0)
    s.update(0, 1.0)  # solved: never drawn again
    s.update(1, 0.75)  # weight 0.25 vs 1.0 for the unseen prompt 2
    counts = Counter(s.sample(4000))
    assert counts[0] == 0
    assert counts[1] / counts[2] == pytest.approx(0.25, abs=0.05)
    state = s.state_dict()
    s2 = PromptSampler(3, seed=0, prioritized=True, floor=0.0)
    s2.load_state_dict(state)
    assert s2.sample(20) == s.sample(20)


def test_dynamic_sampling_drops_all_equal_groups_and_refills(model, tok):
    items = list(range(12))

    # Even prompts always get reward 1 (no signal); odd ones reward a token's parity.
    def reward_fn(item, c):
        return {"reward": 1.0 if item % 2 == 0 else float(c.completion_ids[0] % 2)}

    sampling = RolloutSampling(group_size=4, max_new_tokens=7, stop=())
    sampler = PromptSampler(len(items), seed=0)
    encode = lambda i: _prompts(tok, 12)[i]  # noqa: E731
    groups, stats = collect_groups(model, tok, items, encode, reward_fn, sampler, sampling,
                                   num_groups=3, seed=0, dynamic_sampling=True,
                                   max_rounds=10)  # fmt: skip
    assert len(groups) == 3 and all(len(g.completions) == 4 for g in groups)
    assert stats.dropped_groups >= 1 and stats.rounds >= 2
    assert stats.kept_uniform == 0 and stats.sampled_groups == 3 + stats.dropped_groups
    assert all(len(set(g.rewards)) > 1 for g in groups)
    assert sampler.success[groups[0].index] == pytest.approx(groups[0].success_rate)
    # Without dynamic sampling the first draw is the batch, all-equal groups included.
    sampler = PromptSampler(len(items), seed=0)
    plain, stats = collect_groups(model, tok, items, encode, reward_fn, sampler, sampling,
                                  num_groups=3, seed=0)  # fmt: skip
    assert stats.rounds == 1 and stats.dropped_groups == 0 and len(plain) == 3
