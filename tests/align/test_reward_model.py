"""RewardModel against transformers' LlamaForSequenceClassification; Bradley–Terry loss against
InstructGPT eq. 1 per pair and TRL's ``RewardTrainer.compute_loss``."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmforge.align.reward_model import RewardModel, bradley_terry_loss, last_token_index
from lmforge.config import ModelConfig
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def test_last_token_index_from_mask_pad_id_or_end():
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = (ids != 0).long()
    assert last_token_index(ids, mask).tolist() == [2, 4, 4]
    assert last_token_index(ids, pad_token_id=0).tolist() == [2, 4, 4]
    assert last_token_index(ids).tolist() == [4, 4, 4]


def test_rewards_match_transformers_sequence_classification(tiny_hf_kwargs):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    hf_config = LlamaConfig(**tiny_hf_kwargs(), num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    hf = LlamaForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    config = ModelConfig.from_hf_dict(hf_config.to_dict())
    rm = RewardModel(config).eval()
    missing, unexpected = rm.load_state_dict(hf.state_dict(), strict=False)
    assert not missing and not unexpected  # same parameter names, including score.weight
    ids = torch.randint(1, 97, (3, 9))
    ids[0, 6:] = 0  # right padding
    ids[2, 8:] = 0
    mask = (ids != 0).long()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        got = rm(ids, attention_mask=mask)
        got_no_mask = rm(ids)  # falls back to config.pad_token_id, as HF does
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_no_mask, want, rtol=1e-4, atol=1e-5)


def test_from_causal_lm_shares_the_body_and_trains():
    torch.manual_seed(0)
    lm = CausalLM(preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64))
    rm = RewardModel.from_causal_lm(lm)
    assert rm.model is lm.model
    assert set(n.split(".")[0] for n, _ in rm.named_parameters()) == {"model", "score"}
    chosen, rejected = torch.randint(0, 64, (4, 6)), torch.randint(0, 64, (4, 6))
    opt = torch.optim.SGD(rm.parameters(), lr=0.5)
    losses = []
    for _ in range(15):
        out = bradley_terry_loss(rm(chosen), rm(rejected))
        opt.zero_grad()
        (out.loss_sum / out.count).backward()
        opt.step()
        losses.append(out.loss_sum.item() / out.count)
    assert losses[-1] < 0.5 * losses[0]


def test_bradley_terry_equals_the_equation_per_pair():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g)
    rr = rr.double()
    margin = torch.rand(5, generator=g, dtype=torch.float64)
    out = bradley_terry_loss(rc, rr, margin=margin, center_coef=0.01)
    want = 0.0
    for i in range(5):
        d = rc[i].item() - rr[i].item() - margin[i].item()
        want += math.log1p(math.exp(-d)) + 0.01 * (rc[i].item() + rr[i].item()) ** 2
    assert out.loss_sum.item() == pytest.approx(want, rel=1e-12)
    assert out.count == 5
    assert out.metrics["accuracy"].item() == float((rc > rr).sum())
    assert out.metrics["margin"].item() == pytest.approx((rc - rr).sum().item())


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, 0.05)])
def test_matches_trl_reward_trainer(with_margin, center):
    rt = pytest.importorskip("trl.trainer.reward_trainer")
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(2 * 4, 1, generator=g)
    margin = torch.rand(4, generator=g)

    def model(**_):
        return SimpleNamespace(logits=rewards)

    accel = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=accel,
        args=SimpleNamespace(center_rewards_coefficient=center),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
    )  # fmt: skip
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = rt.RewardTrainer.compute_loss(stub, model, inputs)
    ours = bradley_terry_loss(
        rewards[:4, 0], rewards[4:, 0], margin=margin if with_margin else None,
        center_coef=center or 0.0,
    )  # fmt: skip
    assert (ours.loss_sum / ours.count).item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert ours.metrics["accuracy"].item() / 4 == pytest.approx(
        stub._metrics["eval"]["accuracy"][0]
    )
