"""Rollouts through the inference engine: seeds, stops, training layout, log-prob agreement,
prompt sampling (uniform / Kimi prioritised) and DAPO dynamic sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lmforge.align.logprobs import model_logprobs
from lmforge.align.rollout import (
    Completion,
    RolloutEngine,
    check_rollout_sampling,
    completion_batch,
    policy_logprobs,
    request_seed,
    right_pad,
    rollout_tensors,
    sample_completions,
    sha256_seed,
)
from lmforge.align.rollout_groups import PromptSampler, collect_groups
from lmforge.infer import SamplingParams
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
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
    sampling = SamplingParams(n=2, max_tokens=8)
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
    sampling = SamplingParams(max_tokens=10)
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
    plain = sample_completions(model, tok, prompt, SamplingParams(max_tokens=12),
                               [0], greedy=True)[0]  # fmt: skip
    text = plain.text
    stop = text[4:6]  # a stop string the greedy continuation is known to produce
    assert stop
    cut = sample_completions(model, tok, prompt, SamplingParams(max_tokens=12, stop=(stop,)),
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
    sampling = SamplingParams(max_tokens=12, stop=("</answer>",))
    out = sample_completions(biased, tok, prompt, sampling, [0])[0]
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

    sampling = SamplingParams(n=4, max_tokens=7)
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


def test_rollout_sampling_check_names_the_field():
    check_rollout_sampling(SamplingParams(n=8, max_tokens=1, temperature=0.6))
    for bad, field in ((dict(n=0), "n=0"), (dict(max_tokens=0), "max_tokens=0"),
                       (dict(temperature=0.0), "temperature=0.0")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            check_rollout_sampling(SamplingParams(**bad))
    # sample_completions checks too (greedy evaluation asks for greedy=True instead)
    with pytest.raises(ValueError, match="must be > 0 for RL rollouts"):
        sample_completions(None, None, [[1]], SamplingParams(temperature=0), [0])


def test_seed_schemes_are_pinned():
    """GRPO's and PPO's request seeds fix their runs' numbers: neither scheme may drift."""
    assert request_seed(0, 1, 2) == 8820272467203801067
    assert request_seed(5) == 2484206104813453008
    assert sha256_seed("sample", 0, 0, 1, 2) == 182933911585509362
    assert sha256_seed("prompts", 3, 0) == 9183084855919757709
    assert 0 <= sha256_seed("x") < 2**63 and 0 <= request_seed(1, 2) < 2**63


def test_completion_batch_pads_masks_and_labels_completions():
    ids, mask = right_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    b = completion_batch([[1, 2, 3, 7, 8], [4, 5, 6]], [3, 1], pad_id=0, width=6)
    i = IGNORE_INDEX
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 8, 0], [4, 5, 6, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]
    assert b["labels"].tolist() == [[i, i, i, 7, 8, i], [i, 5, 6, i, i, i]]
    with pytest.raises(ValueError, match="empty"):
        completion_batch([[1, 2]], [2], pad_id=0)
    # rollout_tensors is the same layout without the mask
    cs = [Completion([1, 2, 3], [7, 8], "", "stop"), Completion([4], [5, 6], "", "stop")]
    r = rollout_tensors(cs, pad_id=0)
    assert set(r) == {"input_ids", "labels", "lengths"}
    b = completion_batch([[1, 2, 3, 7, 8], [4, 5, 6]], [3, 1], pad_id=0)
    assert torch.equal(r["input_ids"], b["input_ids"]) and torch.equal(r["labels"], b["labels"])


def test_policy_logprobs_use_the_mask_and_restore_each_modules_mode(model):
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, -100, 7, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    want, _, _ = model_logprobs(model, ids, labels, attention_mask=mask, temperature=0.7)
    model.train()
    model.lm_head.eval()  # modes are restored module by module, not reset to the top's
    try:
        got = policy_logprobs(model, batch, temperature=0.7)
        assert model.training and model.model.training and not model.lm_head.training
    finally:
        model.eval()
    torch.testing.assert_close(got, want.detach())
    assert not got.requires_grad


def test_sampling_stop_token_ids_join_the_tokenizers(model, tok):
    prompt = _prompts(tok, 1)
    free = sample_completions(model, tok, prompt, SamplingParams(max_tokens=8), [0])[0]
    assert free.finish_reason == "length"
    stop = free.completion_ids[2]
    cut = free.completion_ids.index(stop) + 1
    params = SamplingParams(max_tokens=8, stop_token_ids=(stop,))
    out = sample_completions(model, tok, prompt, params, [0])[0]
    assert out.finish_reason == "stop" and out.completion_ids == free.completion_ids[:cut]


def test_rollout_engine_is_reused_and_follows_weight_updates(model, tok):
    """A `RolloutEngine` keeps one engine across rollouts: the same completions as a fresh
    engine with the same draw, before and after an in-place weight update (which it picks up),
    with stop strings (an aborted request's notice does not leak into the next rollout); it
    is rebuilt only when a rollout needs more sequences. Text is decoded once per finished
    completion and equals the tokens' decode."""
    policy = CausalLM(model.config)
    policy.load_state_dict(model.state_dict())
    prompts = _prompts(tok, 4)
    sampling = SamplingParams(n=2, max_tokens=10, stop=("+",))
    plain = SamplingParams(n=2, max_tokens=10)
    reused = RolloutEngine()

    def both(sp, seeds, ps=prompts):
        kept = sample_completions(policy, tok, ps, sp, seeds, engine=reused)
        fresh = sample_completions(policy, tok, ps, sp, seeds, engine=RolloutEngine())
        assert [c.completion_ids for c in kept] == [c.completion_ids for c in fresh]
        assert [c.text for c in kept] == [c.text for c in fresh]
        return kept

    first = both(sampling, [0, 1, 2, 3])
    outs = both(plain, [4, 5, 6, 7])
    for c in outs:
        assert c.text == tok.decode(c.completion_ids, skip_special_tokens=True)
    with torch.no_grad():  # an optimizer-like in-place update, no version bump
        for p in policy.parameters():
            p.data.add_(0.5 * torch.randn_like(p))
    after = both(sampling, [0, 1, 2, 3])
    assert [c.completion_ids for c in after] != [c.completion_ids for c in first]
    assert reused.builds == 1
    both(plain, list(range(6)), _prompts(tok, 6))  # more sequences: a new engine
    assert reused.builds == 2


def test_a_groups_prompt_is_prefilled_once(model, tok):
    """Requests that share a prompt wait until its first request is prefilled, then take its
    full KV blocks from the prefix cache; each completion still equals its request alone."""
    prompt = tok.encode("What is 12 + 13? What is 14 + 15? What is 16 + 17?",
                        add_special_tokens=True)  # fmt: skip
    assert len(prompt) > 16  # one full KV block at least
    sampling = SamplingParams(max_tokens=6)
    reused = RolloutEngine()
    group = sample_completions(model, tok, [prompt] * 4, sampling, [3, 4, 5, 6], engine=reused)
    stats = reused.engine.stats()
    assert stats["prefix_cache_hit_tokens"] == 3 * 16 * ((len(prompt) - 1) // 16)
    for c, seed in zip(group, [3, 4, 5, 6]):
        alone = sample_completions(model, tok, [prompt], sampling, [seed], engine=RolloutEngine())
        assert c.completion_ids == alone[0].completion_ids
