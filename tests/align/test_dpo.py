"""DPO / conservative DPO / IPO against the papers' equations per pair, and against TRL.

TRL 1.x computes the DPO loss inline in ``DPOTrainer._compute_loss``; it is called here with a
minimal stand-in ``self`` (the attributes that method reads) and a stand-in model that returns
given per-token log-probs, with precomputed reference log-probs. CPO's ``cpo_loss`` is a
separate method whose "sigmoid" (with label smoothing) and "ipo" branches are DPO's formulas
on whatever log-ratios it is given.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmforge.align.dpo import dpo_loss
from lmforge.align.logprobs import sequence_logprobs


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-10 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_dpo_loss_equals_the_paper_per_pair(loss_type, eps):
    pc, pr, rc, rr = _pairs()
    beta = 0.3
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    for i in range(len(pc)):
        h = (pc[i] - rc[i]).item() - (pr[i] - rr[i]).item()
        if loss_type == "sigmoid":  # DPO eq. 7; cDPO (Mitchell 2023)
            want = -(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h)
        else:  # IPO eq. 17
            want = (h - 1 / (2 * beta)) ** 2
        assert out.losses[i].item() == pytest.approx(want, rel=1e-12)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item())
        assert out.rejected_rewards[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item())


def test_dpo_gradient_is_beta_sigmoid_of_minus_margin():
    pc, pr, rc, rr = _pairs()
    pc.requires_grad_(True)
    beta = 0.5
    dpo_loss(pc, pr, rc, rr, beta=beta).losses.sum().backward()
    h = (pc - rc) - (pr - rr)
    # d/dπ_w [−log σ(βh)] = −β σ(−βh)  (DPO §4, the gradient weighting)
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-beta * h.detach()))


def test_metrics_and_loop_contract_are_per_pair_sums():
    pc, pr, rc, rr = _pairs(n=4)
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    o = out.output()
    assert o.count == 4
    assert o.loss_sum.item() == pytest.approx(out.losses.sum().item())
    acc = sum(float(c > r) for c, r in zip(out.chosen_rewards, out.rejected_rewards))
    assert o.metrics["rewards/accuracy"].item() == acc
    margin = (out.chosen_rewards - out.rejected_rewards).sum().item()
    assert o.metrics["rewards/margin"].item() == pytest.approx(margin)
    # micro-batches: Σ loss_sum / Σ count over halves equals the full-batch mean
    a = dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta=0.1).output()
    b = dpo_loss(pc[1:], pr[1:], rc[1:], rr[1:], beta=0.1).output()
    split = (a.loss_sum + b.loss_sum) / (a.count + b.count)
    assert split.item() == pytest.approx(out.losses.mean().item())


def test_bad_arguments_are_refused():
    pc, pr, rc, rr = _pairs(n=2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="hinge-ish")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.25), ("ipo", 0.0)])
def test_matches_trl_cpo_loss_on_log_ratios(loss_type, eps):
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    pc, pr, rc, rr = _pairs(seed=3)
    beta = 0.2
    stub = SimpleNamespace(
        alpha=0.0, beta=beta, loss_type=loss_type, label_smoothing=eps,
        accelerator=SimpleNamespace(device="cpu"),
    )  # fmt: skip
    # CPO's logits are (chosen − rejected) of its inputs; given log-ratios they are DPO's h.
    trl_losses, _, _ = cpo.CPOTrainer.cpo_loss(stub, pc - rc, pr - rr)
    ours = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    torch.testing.assert_close(ours.losses, trl_losses)


class _Accel(SimpleNamespace):
    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_dpo(per_token_logps, completion_mask, ref_c, ref_r, beta, loss_type):
    """TRL's DPOTrainer._compute_loss on given per-token log-probs (model stand-in)."""
    dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    n, t = completion_mask.shape

    def model(**_):
        zeros = torch.zeros(n, t - 1)
        return SimpleNamespace(
            log_probs=per_token_logps, entropy=zeros, mean_logits=zeros,
            is_top1=zeros.bool(),
        )  # fmt: skip

    model.training = False
    stub = SimpleNamespace(
        model=model, accelerator=_Accel(device="cpu"), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.zeros(n, t, dtype=torch.long),
        "attention_mask": torch.ones(n, t, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    return dpo.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_matches_trl_dpo_trainer(loss_type):
    g = torch.Generator().manual_seed(5)
    b, t = 3, 8
    completion_mask = torch.zeros(2 * b, t, dtype=torch.long)
    for row, start in enumerate([2, 3, 4, 2, 5, 3]):
        completion_mask[row, start : t - row % 2] = 1  # prompts and right padding differ
    # lmforge per-token log-probs [2B, T] at logits positions; TRL's are [2B, T-1] aligned with
    # the shifted mask, which is the same thing without lmforge's always-unscored last column.
    logps = -3 * torch.rand(2 * b, t, generator=g, dtype=torch.float64)
    mask = torch.zeros(2 * b, t, dtype=torch.bool)
    mask[:, :-1] = completion_mask[:, 1:].bool()
    logps = logps * mask
    ref = -3 * torch.rand(2 * b, generator=g, dtype=torch.float64)
    beta = 0.1
    trl_loss = _trl_dpo(logps[:, :-1], completion_mask, ref[:b], ref[b:], beta, loss_type)
    seq = sequence_logprobs(logps, mask, average=loss_type == "ipo")
    ref_seq = ref / mask.sum(-1) if loss_type == "ipo" else ref  # TRL's IPO averages both
    ours = dpo_loss(seq[:b], seq[b:], ref_seq[:b], ref_seq[b:], beta=beta, loss_type=loss_type)
    assert ours.losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-10)


def test_dpo_trains_a_tiny_model_towards_the_chosen_answers():
    """Smoke test through a real model and a frozen reference copy."""
    import copy

    from lmforge.align.logprobs import model_logprobs
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    policy = CausalLM(preset_config("tiny", vocab_size=32, hidden_size=32, intermediate_size=64))
    reference = copy.deepcopy(policy).requires_grad_(False)
    prompt = torch.randint(0, 32, (4, 4))
    ids = torch.cat([torch.cat([prompt, torch.randint(0, 32, (4, 5))], 1) for _ in range(2)])
    labels = ids.clone()
    labels[:, :4] = -100  # batch is [chosen; rejected], completions after a shared prompt

    def seq_logps(model):
        logps, mask, _ = model_logprobs(model, ids, labels)
        return sequence_logprobs(logps, mask)

    with torch.no_grad():
        ref = seq_logps(reference)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    first = None
    for _ in range(10):
        pol = seq_logps(policy)
        out = dpo_loss(pol[:4], pol[4:], ref[:4], ref[4:], beta=0.1).output()
        opt.zero_grad()
        (out.loss_sum / out.count).backward()
        opt.step()
        first = first if first is not None else out
    assert out.loss_sum < 0.5 * first.loss_sum
    assert out.metrics["rewards/accuracy"].item() == 4
    assert out.metrics["rewards/margin"] > first.metrics["rewards/margin"]
