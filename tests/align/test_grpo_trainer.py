"""GRPO through the one training loop: the objective, rollout micro-batches, learning on an
easy task, batch × accumulation invariance, exact resume, references, and `lmforge grpo`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.align.grpo import grpo_advantages, grpo_loss
from lmforge.align.grpo_trainer import GRPOConfig, GRPOObjective, GRPORollouts, GRPOSection
from lmforge.align.logprobs import model_logprobs
from lmforge.align.reference import make_reference
from lmforge.align.rollout import Completion
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.train.config import ConfigError, load_config
from lmforge.train.loop import Trainer

TARGET = 7  # the easy task: emit token 7


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = preset_config("tiny", vocab_size=16, hidden_size=32, intermediate_size=64,
                        eos_token_id=None, max_position_embeddings=64)  # fmt: skip
    return CausalLM(cfg)


def _reward(item, c: Completion):
    share = sum(t == TARGET for t in c.completion_ids) / len(c.completion_ids)
    return {"reward": share, "accuracy": float(share > 0.5)}


ITEMS = [[1 + i % 5, 2 + i % 7, 3] for i in range(16)]  # token-id prompts


def _data(model, batch_size=8, grad_accum=1, seed=0, **section):
    s = GRPOSection(group_size=4, max_new_tokens=5, stop=[], **section)
    return GRPORollouts(model, None, ITEMS, _reward, s, batch_size, grad_accum, seed,
                        encode=list, reference=make_reference(model, s.beta))  # fmt: skip


def _config(tmp_path=None, **over):
    items = {"train.batch_size": 8, "train.max_steps": 12, "optim.lr": 3e-2,
             "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.weight_decay": 0,
             "optim.grad_clip": 0, "train.save_every": 0, "train.eval_every": 0,
             "log.progress": False, "log.plot": False, "grpo.group_size": 4,
             "grpo.max_new_tokens": 5, "grpo.stop": [], **over}  # fmt: skip
    if tmp_path is not None:
        items["out_dir"] = str(tmp_path)
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in items.items()], GRPOConfig)


def test_objective_is_grpo_loss_on_the_policy_logprobs_and_logs_rollout_stats():
    model = _model()
    data = _data(model, beta=0.04, iterations=2)
    batch = next(iter(data))
    assert set(batch) >= {"input_ids", "labels", "advantages", "old_logps", "ref_logps"}
    out = GRPOObjective(data.section)(model, batch)
    logps, mask, _ = model_logprobs(model, batch["input_ids"], batch["labels"])
    # the rollout's old-policy log-probs are the training forward's (same weights)
    torch.testing.assert_close(batch["old_logps"], logps.detach(), atol=1e-6, rtol=0)
    want = grpo_loss(logps, batch["old_logps"], batch["advantages"], mask, beta=0.04,
                     ref_logps=batch["ref_logps"])  # fmt: skip
    torch.testing.assert_close(out.loss_sum, want.loss_sum)
    assert int(out.count) == 8
    assert out.metrics["reward"].item() == pytest.approx(8 * data.last_stats["reward"])
    assert {"entropy", "kl", "clip_frac", "length", "accuracy"} <= set(out.metrics)
    rewards = torch.tensor([_reward(None, Completion([], row[m].tolist(), "", ""))["reward"]
                            for row, m in zip(batch["input_ids"][:, 1:], mask[:, :-1])])  # fmt: skip
    assert torch.allclose(batch["rewards"], rewards)


def test_advantages_are_group_relative_over_the_whole_rollout():
    data = _data(_model(), batch_size=2, grad_accum=4, scale="std")
    batches = [b for _, b in zip(range(4), data)]
    rewards = torch.cat([b["rewards"] for b in batches])
    adv = torch.cat([b["advantages"] for b in batches])
    groups = torch.cat([b["group_ids"] for b in batches])
    assert sorted(groups.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(set(rewards.tolist())) > 1
    for g in (0, 1):  # micro-batches are length-sorted: groups are spread over them
        rows = groups == g
        torch.testing.assert_close(adv[rows], grpo_advantages(rewards[rows], 4))


def test_loss_and_gradients_are_invariant_to_batch_size_times_accumulation():
    def loss_and_grads(batch_size, grad_accum, aggregation):
        model = _model()
        data = _data(model, batch_size, grad_accum, aggregation=aggregation)
        objective = GRPOObjective(data.section)
        loss, count = 0.0, 0.0
        for _, batch in zip(range(grad_accum), data):
            out = objective(model, batch)
            out.loss_sum.backward()
            loss, count = loss + out.loss_sum.item(), count + float(out.count)
        return loss / count, [p.grad / count for p in model.parameters()]

    for aggregation in ("grpo", "dapo"):
        loss_a, grads_a = loss_and_grads(8, 1, aggregation)
        loss_b, grads_b = loss_and_grads(2, 4, aggregation)
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-7)
        assert any(g.abs().sum() > 0 for g in grads_a)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_trainer_raises_the_reward_on_an_easy_task():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    config = _config()
    data = _data(model, seed=1)
    trainer = Trainer(model, data, config, objective=GRPOObjective(data.section))
    history = []
    trainer.callbacks.append(lambda t, record: history.append(record["reward"]))
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(history) == 12
    assert sum(history[-3:]) / 3 > sum(history[:3]) / 3 + 0.25, history


def test_resume_continues_exactly(tmp_path):
    def run(max_steps, folder):
        model = _model()
        config = _config(folder, **{"train.max_steps": max_steps, "train.save_every": 1,
                                    "grpo.prioritized": True})  # fmt: skip
        data = _data(model, prioritized=True)
        Trainer(model, data, config, objective=GRPOObjective(data.section),
                run_dir=folder).fit()  # fmt: skip
        return model, data

    straight, data_a = run(3, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed, data_b = run(3, tmp_path / "b")
    assert data_b.rollouts == data_a.rollouts == 3
    assert data_b.sampler.state_dict() == data_a.sampler.state_dict()
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reference_is_the_frozen_start_or_the_lora_base():
    model = _model()
    data = _data(model, beta=0.1)
    batch = next(iter(data))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert isinstance(data.reference, torch.nn.Module)
    fresh = _model()
    want, _, _ = model_logprobs(fresh, batch["input_ids"], batch["labels"])
    torch.testing.assert_close(data.reference_logprobs(batch), want)

    from lmforge.peft import apply_lora

    lora = _model()
    apply_lora(lora, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # a trained-looking adapter (B starts at 0)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    data = _data(lora, beta=0.1)
    assert not isinstance(data.reference, torch.nn.Module)  # no second model
    batch = next(iter(data))
    base, _, _ = model_logprobs(_model(), batch["input_ids"], batch["labels"])
    torch.testing.assert_close(batch["ref_logps"], base)
    policy, _, _ = model_logprobs(lora, batch["input_ids"], batch["labels"])
    assert not torch.allclose(policy, base)
    assert make_reference(model, 0.0) is None


def test_config_checks():
    with pytest.raises(ConfigError, match="multiple of grpo.group_size"):
        from lmforge.align.grpo_trainer import check_grpo_config

        check_grpo_config(_config(**{"train.batch_size": 6}))
    with pytest.raises(ConfigError, match="aggregation"):
        check_grpo_config(_config(**{"grpo.aggregation": "ppo"}))
    with pytest.raises(ConfigError, match="unknown key"):
        _config(**{"grpo.groupsize": 4})


def test_grpo_takes_steps_on_a_deepseek_model():
    """An MLA + MoE policy (deepseek-tiny): rollouts through the engine's latent cache, the
    old-policy log-probs equal the training forward's, and a few Trainer steps update it."""
    torch.manual_seed(0)
    cfg = preset_config("deepseek-tiny", vocab_size=16, eos_token_id=None,
                        max_position_embeddings=64)  # fmt: skip
    model = CausalLM(cfg)
    data = _data(model, beta=0.04, iterations=2)
    batch = next(iter(data))
    logps, _, _ = model_logprobs(model, batch["input_ids"], batch["labels"])
    torch.testing.assert_close(batch["old_logps"], logps.detach(), atol=1e-5, rtol=0)
    out = GRPOObjective(data.section)(model, batch)
    assert torch.isfinite(out.loss_sum) and int(out.count) == 8
    before = [p.detach().clone() for p in model.parameters()]
    data = _data(model, seed=1)
    trainer = Trainer(model, data, _config(**{"train.max_steps": 3}),
                      objective=GRPOObjective(data.section))  # fmt: skip
    history = []
    trainer.callbacks.append(lambda t, record: history.append(record))
    trainer.fit()
    assert len(history) == 3 and all("reward" in r for r in history)
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_compile_decode_reaches_the_rollout_engine(monkeypatch):
    """``grpo.compile_decode`` (default off) is handed to the rollouts' one engine."""
    import lmforge.align.grpo_trainer as gt

    assert _config().grpo.compile_decode is False
    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(gt, "GRPORollouts", capture)
    config = _config(**{"grpo.compile_decode": True})
    with pytest.raises(Stop):
        gt.train_grpo(config, _model(), type("Tok", (), {"pad_token_id": 0})(), eval_items=[])
    assert seen["compile_decode"] is True
    model = _model()
    data = GRPORollouts(model, None, ITEMS, _reward, config.grpo, 8, 1, 0, encode=list,
                        reference=None, compile_decode="eager")  # fmt: skip
    assert data.engine.compile_decode == "eager"
