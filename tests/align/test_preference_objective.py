"""Preference objectives: sequence log-probs vs transformers, losses = the pure functions on
independently computed log-probs, LoRA reference = frozen copy, precomputed = on-the-fly
reference, batch × accumulation invariance, exact resume and learning through the Trainer;
the reward-model objective and its HF export."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.align.dpo import dpo_loss
from lmforge.align.orpo import orpo_loss
from lmforge.align.preference_data import (
    PreferenceLoader,
    load_preference_pairs,
    write_preference_jsonl,
)
from lmforge.align.preference_objective import (
    PreferenceObjective,
    RewardModelObjective,
    load_reward_model,
    reward_model_for_export,
)
from lmforge.align.reference import frozen_copy, precompute_reference_logps
from lmforge.align.reward_model import RewardModel, bradley_terry_loss
from lmforge.align.sequence_logps import sequence_logps
from lmforge.align.simpo import simpo_loss
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import OptimSection, RunConfig, TrainSection
from lmforge.train.loop import Trainer


@pytest.fixture(scope="module")
def tok():
    from lmforge.data.tasks.chat import synthetic_chats

    texts = [m["content"] for c in synthetic_chats(200, 0) for m in c]
    return Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="module")
def pairs(tok, tmp_path_factory):
    path = write_preference_jsonl(tmp_path_factory.mktemp("p") / "p.jsonl", 48, seed=0)
    return load_preference_pairs([path], tok, max_len=128)[0]


def _model(seed=0, std=0.2):
    torch.manual_seed(seed)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64)
    model = CausalLM(cfg)
    with torch.no_grad():  # far from uniform, so mistakes show
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


def _independent_logps(model, pairs, pair_ids):
    """Sum of log p(label) over each sequence's labelled tokens, one sequence at a time, from
    the full [1, T, V] logits (no packing, no scored-only head)."""
    out = []
    for i in pair_ids:
        for ex in (pairs[i].chosen, pairs[i].rejected):
            logits = model(torch.tensor([ex.input_ids])).logits[0].double()
            logp = logits.log_softmax(-1)
            total, n = 0.0, 0
            for t in range(len(ex) - 1):
                if ex.labels[t + 1] != IGNORE_INDEX:
                    total = total + logp[t, ex.labels[t + 1]]
                    n += 1
            out.append((total, n))
    return torch.stack([o[0] for o in out]), torch.tensor([float(o[1]) for o in out])


@pytest.mark.parametrize(("layout", "groups"), [("packed", 1), ("padded", 1), ("padded", 4)])
def test_sequence_logps_match_transformers(pairs, tmp_path, layout, groups):
    from transformers import AutoModelForCausalLM

    from lmforge.models.hf import save_model

    model = _model()
    save_model(model, tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    batch = PreferenceLoader(pairs, 6, 128, layout=layout).collate(range(6))
    with torch.no_grad():
        got, lengths = sequence_logps(model, batch, length_groups=groups)
    want, n = _independent_logps(lambda ids: hf(input_ids=ids), pairs, range(6))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(lengths, n)


@pytest.mark.parametrize(
    ("loss_type", "kw"),
    [("sigmoid", {}), ("sigmoid", {"label_smoothing": 0.2}), ("ipo", {}),
     ("simpo", {"gamma": 0.3}), ("orpo", {})],
)  # fmt: skip
def test_objective_is_the_pure_loss_on_independent_logps(pairs, loss_type, kw):
    policy, ref = _model(0), _model(1)
    beta = 0.5
    objective = PreferenceObjective(loss_type, beta, reference=frozen_copy(ref), **kw)
    ids = [4, 9, 2, 30]
    out = objective(policy, PreferenceLoader(pairs, 4, 128).collate(ids))
    pol, n = _independent_logps(policy, pairs, ids)
    with torch.no_grad():
        r, _ = _independent_logps(ref, pairs, ids)
    avg = pol / n
    if loss_type in ("sigmoid", "ipo"):
        p, q = (pol, r) if loss_type == "sigmoid" else (avg, r / n)
        want = dpo_loss(p[0::2], p[1::2], q[0::2], q[1::2], beta, loss_type,
                        kw.get("label_smoothing", 0.0))  # fmt: skip
    elif loss_type == "simpo":
        want = simpo_loss(avg[0::2], avg[1::2], beta, kw["gamma"])
    else:
        want = orpo_loss(avg[0::2], avg[1::2], beta)
    assert out.count == 4
    torch.testing.assert_close(out.loss_sum.double(), want.losses.sum(), rtol=1e-5, atol=1e-5)
    acc = (want.chosen_rewards > want.rejected_rewards).double().sum()
    assert out.metrics["rewards/accuracy"].item() == acc.item()
    torch.testing.assert_close(out.metrics["rewards/margin"].double(),
                               (want.chosen_rewards - want.rejected_rewards).sum(),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    # gradients flow into the policy only
    out.loss_sum.backward()
    assert all(p.grad is not None for p in policy.parameters())
    assert all(p.grad is None for p in ref.parameters())


def test_lora_reference_equals_frozen_copy_and_precomputed(pairs):
    from lmforge.peft import apply_lora

    base = _model()
    copy_ref = frozen_copy(base)
    policy = copy.deepcopy(base)
    apply_lora(policy, r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():  # a trained-looking adapter: the policy now differs from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    loader = PreferenceLoader(pairs, 4, 128)
    batch = loader.collate([0, 5, 7, 11])
    by_adapter = PreferenceObjective(reference="adapter").reference_logps(policy, batch)
    by_copy = PreferenceObjective(reference=copy_ref).reference_logps(policy, batch)
    torch.testing.assert_close(by_adapter, by_copy, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert (sequence_logps(policy, batch)[0] - by_copy).abs().max() > 1e-2
    table = precompute_reference_logps(None, loader, policy=policy, batch_pairs=5)
    loader.reference_logps = table
    pre = loader.collate([0, 5, 7, 11])["ref_logps"]
    # other batch shapes sum in another order: a summed log-prob near 150 differs by an ulp
    torch.testing.assert_close(pre, by_copy, rtol=1e-6, atol=1e-5)
    # the objective reads the precomputed values instead of running a reference
    a = PreferenceObjective(reference=None)(policy, loader.collate([0, 5, 7, 11]))
    b = PreferenceObjective(reference=copy_ref)(policy, batch)
    torch.testing.assert_close(a.loss_sum, b.loss_sum, rtol=1e-5, atol=1e-6)


def _config(batch_size, accum, steps, **train):
    cfg = RunConfig(
        optim=OptimSection(lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0),
        train=TrainSection(
            batch_size=batch_size,
            grad_accum=accum,
            max_steps=steps,
            device="cpu",
            eval_every=0,
            save_every=0,
            **train,
        ),  # fmt: skip
    )
    cfg.log.progress = cfg.log.plot = False
    return cfg


def _train(pairs, batch_size, accum, steps, loss_type="sigmoid", run_dir=None, layout="packed",
           **train):  # fmt: skip
    policy = _model()
    objective = PreferenceObjective(loss_type, 0.5, reference=frozen_copy(policy))
    loader = PreferenceLoader(pairs, batch_size, 128, seed=0, layout=layout)
    records = []
    trainer = Trainer(policy, loader, _config(batch_size, accum, steps, **train),
                      objective=objective, run_dir=run_dir,
                      callbacks=[lambda _t, r: records.append(r)])  # fmt: skip
    trainer.fit()
    return policy, records


def test_batch_times_accumulation_invariance(pairs):
    """8 pairs per step as 8×1, 4×2 and 1×8 (pairs weigh the same: sum / pairs)."""
    ref, rec = _train(pairs, 8, 1, 2)
    for batch_size, accum in ((4, 2), (1, 8)):
        other, rec2 = _train(pairs, batch_size, accum, 2, layout="padded")
        assert rec2[0]["loss"] == pytest.approx(rec[0]["loss"], rel=1e-5)
        assert rec2[1]["rewards/accuracy"] == pytest.approx(rec[1]["rewards/accuracy"])
        for (name, a), b in zip(ref.named_parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_is_exact(pairs, tmp_path):
    straight, rec = _train(pairs, 4, 1, 4)
    _train(pairs, 4, 1, 2, run_dir=tmp_path)
    resumed, rec2 = _train(pairs, 4, 1, 4, run_dir=tmp_path)
    assert [r["step"] for r in rec2] == [3, 4]
    assert rec2[-1]["loss"] == pytest.approx(rec[-1]["loss"], rel=1e-6)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_training_raises_reward_accuracy_and_margin(pairs, loss_type):
    before = _model()
    policy, records = _train(pairs, 8, 1, 25, loss_type=loss_type)
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"]
    assert last["rewards/margin"] > first["rewards/margin"] + 0.1
    assert last["rewards/accuracy"] >= 0.85 > first["rewards/accuracy"]
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), before.parameters()))


# ---------------------------------------------------------------------- reward model
def _rm(seed=0):
    rm = RewardModel.from_causal_lm(_model(seed))
    return reward_model_for_export(rm, pad_token_id=0)


def test_reward_objective_is_bradley_terry_on_independent_rewards(pairs):
    rm = _rm()
    ids = [1, 2, 3]
    out = RewardModelObjective(margin=0.2, center_coef=0.01)(
        rm, PreferenceLoader(pairs, 3, 128, layout="padded").collate(ids)
    )
    rewards = [rm(torch.tensor([ex.input_ids]))[0] for i in ids
               for ex in (pairs[i].chosen, pairs[i].rejected)]  # fmt: skip
    r = torch.stack(rewards)
    want = bradley_terry_loss(r[0::2], r[1::2], 0.2, center_coef=0.01)
    torch.testing.assert_close(out.loss_sum, want.loss_sum, rtol=1e-5, atol=1e-6)
    assert out.count == 3
    with pytest.raises(ValueError, match="padded"):
        RewardModelObjective()(rm, PreferenceLoader(pairs, 3, 128).collate(ids))


def test_reward_model_export_loads_in_transformers(pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmforge.models.hf import save_model

    rm = _rm().eval()
    save_model(rm, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    batch = PreferenceLoader(pairs, 3, 128, layout="padded").collate([0, 1, 2])
    with torch.no_grad():
        want = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = rm(batch["input_ids"], attention_mask=batch["attention_mask"])
        again = load_reward_model(tmp_path / "rm").eval()(
            batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    torch.testing.assert_close(got, want.squeeze(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_validation_reports_preference_metrics_not_a_perplexity(pairs):
    """The loop's `evaluate` on a preference objective: ``val_rewards/accuracy``, margins and
    chosen / rejected rewards over every validation pair (independent log-probs), no val_ppl;
    the reward model's: its accuracy, margin and rewards."""
    policy, ref = _model(0), _model(1)
    objective = PreferenceObjective("sigmoid", 0.5, reference=frozen_copy(ref))
    val = [PreferenceLoader(pairs, 3, 128).collate(ids) for ids in ([0, 1, 2], [3, 4, 5])]
    trainer = Trainer(policy, iter([]), _config(3, 1, 1, eval_batches=2), val_data=val,
                      objective=objective)  # fmt: skip
    got = trainer.evaluate()
    assert "val_ppl" not in got
    with torch.no_grad():
        pol, _ = _independent_logps(policy, pairs, range(6))
        r, _ = _independent_logps(ref, pairs, range(6))
    want = dpo_loss(pol[0::2], pol[1::2], r[0::2], r[1::2], 0.5)
    margins = want.chosen_rewards - want.rejected_rewards
    assert got["val_loss"] == pytest.approx(want.losses.mean().item(), rel=1e-4)
    assert got["val_rewards/accuracy"] == pytest.approx((margins > 0).double().mean().item())
    assert 0 < got["val_rewards/accuracy"] < 1
    assert got["val_rewards/margin"] == pytest.approx(margins.mean().item(), rel=1e-4, abs=1e-5)
    assert got["val_rewards/chosen"] == pytest.approx(want.chosen_rewards.mean().item(),
                                                      rel=1e-4, abs=1e-5)  # fmt: skip
    assert got["val_rewards/rejected"] == pytest.approx(want.rejected_rewards.mean().item(),
                                                        rel=1e-4, abs=1e-5)  # fmt: skip
    rm = _rm()
    val = [PreferenceLoader(pairs, 3, 128, layout="padded").collate([0, 1, 2])]
    got = Trainer(rm, iter([]), _config(3, 1, 1), val_data=val,
                  objective=RewardModelObjective()).evaluate()  # fmt: skip
    with torch.no_grad():
        rewards = torch.stack([rm(torch.tensor([ex.input_ids]))[0] for i in range(3)
                               for ex in (pairs[i].chosen, pairs[i].rejected)])  # fmt: skip
    d = rewards[0::2] - rewards[1::2]
    assert "val_ppl" not in got
    assert got["val_accuracy"] == pytest.approx((d > 0).double().mean().item())
    assert got["val_margin"] == pytest.approx(d.mean().item(), rel=1e-4, abs=1e-5)
    assert got["val_rewards/chosen"] == pytest.approx(rewards[0::2].mean().item(), rel=1e-4)
