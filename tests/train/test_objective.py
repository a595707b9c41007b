"""The language-modelling objective: summed token loss and its count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.train.objective import causal_lm_loss, model_inputs


def test_loss_matches_model_mean_loss(toy_loader, make_model):
    model = make_model()
    batch = next(iter(toy_loader()))
    out = causal_lm_loss(model, batch)
    assert int(out.count) == int(batch["num_loss_tokens"])
    expected = model(**{k: v for k, v in batch.items() if k != "num_loss_tokens"}).loss
    torch.testing.assert_close(out.loss_sum / out.count, expected)


def test_loss_sum_against_per_token_reference(toy_loader, make_model):
    """Packed rows: per-token CE summed by hand, first token of every document excluded."""
    model = make_model()
    batch = next(iter(toy_loader(global_batch=2)))
    out = causal_lm_loss(model, batch)
    logits = model(**model_inputs(batch)).logits
    total, n = 0.0, 0
    for b in range(2):
        for t in range(batch["input_ids"].shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target != -100:
                total += F.cross_entropy(logits[b, t], torch.tensor(target)).item()
                n += 1
    assert int(out.count) == n
    torch.testing.assert_close(out.loss_sum.item(), total, rtol=1e-5, atol=1e-4)


def test_mtp_depth_loss_is_its_own_metric(toy_loader, make_config, tmp_path):
    """A model with an MTP module (deepseek-tiny): the loss sum is CE + λ·MTP per token, the
    ``mtp_loss`` metric sums the model's MTP mean per token, and the Trainer logs it."""
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.train.loop import Trainer

    torch.manual_seed(0)
    cfg = preset_config("deepseek-tiny", vocab_size=64, num_nextn_predict_layers=1)
    model = CausalLM(cfg).train()
    batch = next(iter(toy_loader()))
    out = causal_lm_loss(model, batch)
    inputs = {**model_inputs(batch), "labels": batch["labels"]}
    mtp = model(**inputs).mtp_loss
    torch.testing.assert_close(out.metrics["mtp_loss"] / out.count, mtp.detach())
    ce = model.eval()(**inputs).loss  # eval mode: the next-token loss alone
    torch.testing.assert_close(out.loss_sum / out.count, ce + cfg.mtp_loss_weight * mtp)
    assert causal_lm_loss(model, batch).metrics == {}  # eval: no MTP forward

    records = []
    trainer = Trainer(model.train(), toy_loader(), make_config(tmp_path, max_steps=2))
    trainer.callbacks.append(lambda t, record: records.append(record))
    trainer.fit()
    assert len(records) == 2 and all(0 < r["mtp_loss"] < 10 for r in records)
