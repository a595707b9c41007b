"""PPO-max pieces against plain per-token loops of the papers' equations, and the loss's
invariance to micro-batching (sum / count) including the PPO-ptx term."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.align.ppo import (
    RunningMeanStd,
    gae_advantages,
    kl_penalized_rewards,
    ppo_loss,
    ptx_loss_sum,
    whiten,
)


def _mask(b=4, t=7):
    m = torch.zeros(b, t, dtype=torch.bool)
    for i, (s, e) in enumerate([(2, 7), (3, 5), (1, 4), (4, 7)][:b]):
        m[i, s:e] = True  # completion tokens after a prompt, then right padding
    return m


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def test_running_mean_std_equals_statistics_of_everything_seen():
    rms = RunningMeanStd()
    chunks = [_rand(5, seed=1), _rand(1, seed=2), _rand(12, seed=3) + 3.0]
    for c in chunks:
        rms.update(c)
    allx = torch.cat(chunks)
    assert rms.count == 18
    assert rms.mean == pytest.approx(allx.mean().item())
    assert rms.var == pytest.approx(allx.var(unbiased=False).item())
    x = torch.tensor([10.0, -10.0, 0.1])
    out = rms.normalize(x, clip=2.0)
    assert out.tolist() == pytest.approx([2.0, -2.0, 0.1 / rms.std])
    restored = RunningMeanStd()
    restored.load_state_dict(rms.state_dict())
    assert restored.std == rms.std


def test_kl_penalized_rewards_put_the_score_on_the_last_token():
    m = _mask()
    lp, ref = _rand(4, 7, seed=1), _rand(4, 7, seed=2)
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    rewards, kl = kl_penalized_rewards(scores, lp, ref, m, kl_coef=0.1)
    for i in range(4):
        last = max(j for j in range(7) if m[i, j])
        for j in range(7):
            want = -0.1 * (lp[i, j] - ref[i, j]).item() if m[i, j] else 0.0
            want += scores[i].item() if j == last else 0.0
            assert rewards[i, j].item() == pytest.approx(want)
    with pytest.raises(ValueError, match="at least one"):
        kl_penalized_rewards(scores, lp, ref, torch.zeros_like(m), 0.1)


def test_gae_equals_the_discounted_sum_of_td_errors():
    m = _mask()
    rewards, values = _rand(4, 7, seed=3), _rand(4, 7, seed=4)
    gamma, lam = 0.9, 0.8
    adv, ret = gae_advantages(rewards * m, values, m, gamma, lam)
    for i in range(4):
        steps = [j for j in range(7) if m[i, j]]
        v = [values[i, j].item() for j in steps] + [0.0]  # terminal value 0
        r = [rewards[i, j].item() for j in steps]
        delta = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(steps))]
        for k, j in enumerate(steps):  # Schulman et al. 2016, eq. 16
            want = sum((gamma * lam) ** n * delta[k + n] for n in range(len(steps) - k))
            assert adv[i, j].item() == pytest.approx(want, abs=1e-12)
            assert ret[i, j].item() == pytest.approx(want + v[k], abs=1e-12)
        assert all(adv[i, j] == 0 for j in range(7) if not m[i, j])


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_value():
    m = _mask()
    rewards, values = _rand(4, 7, seed=5) * m, _rand(4, 7, seed=6)
    adv, ret = gae_advantages(rewards, values, m, gamma=1.0, lam=1.0)
    for i in range(4):
        steps = [j for j in range(7) if m[i, j]]
        for k, j in enumerate(steps):
            assert ret[i, j].item() == pytest.approx(sum(rewards[i, s].item() for s in steps[k:]))


def test_whiten_over_masked_tokens():
    m = _mask()
    x = _rand(4, 7, seed=7) * 3 + 1
    w = whiten(x, m)
    vals = x[m]
    mu, sd = vals.mean().item(), math.sqrt(vals.var(unbiased=False).item())
    assert w[m].tolist() == pytest.approx([(v - mu) / sd for v in vals.tolist()], rel=1e-6)
    assert w[~m].abs().sum() == 0
    assert whiten(x, m, shift_mean=False)[m].mean().item() == pytest.approx(mu, rel=1e-6)


def _ppo_inputs(seed=0):
    m = _mask()
    old = _rand(4, 7, seed=seed, scale=0.5) - 2
    new = (old + _rand(4, 7, seed=seed + 1, scale=0.3)).requires_grad_(True)
    adv = _rand(4, 7, seed=seed + 2)
    old_v, ret = _rand(4, 7, seed=seed + 3), _rand(4, 7, seed=seed + 4)
    values = (old_v + _rand(4, 7, seed=seed + 5, scale=0.4)).requires_grad_(True)
    ent = _rand(4, 7, seed=seed + 6).abs()
    ref = old + _rand(4, 7, seed=seed + 7, scale=0.2)
    return dict(logps=new, old_logps=old, advantages=adv, mask=m, values=values,
                old_values=old_v, returns=ret, entropy=ent, ref_logps=ref)  # fmt: skip


def test_ppo_loss_equals_a_loop_over_tokens():
    x = _ppo_inputs()
    eps, eps_v, c_v, c_h, beta = 0.2, 0.1, 0.5, 0.01, 0.05
    out = ppo_loss(**x, clip_eps=eps, value_clip_eps=eps_v, vf_coef=c_v, entropy_coef=c_h,
                   kl_coef=beta)  # fmt: skip
    total = clipped_tokens = 0.0
    for i in range(4):
        for j in range(7):
            if not x["mask"][i, j]:
                continue
            rho = math.exp(x["logps"][i, j].item() - x["old_logps"][i, j].item())
            a = x["advantages"][i, j].item()
            unclipped, clipped = rho * a, min(max(rho, 1 - eps), 1 + eps) * a
            policy = -min(unclipped, clipped)  # Schulman et al. 2017, eq. 7
            clipped_tokens += unclipped > clipped
            v, ov, r = (x[k][i, j].item() for k in ("values", "old_values", "returns"))
            v_clip = ov + min(max(v - ov, -eps_v), eps_v)
            value = 0.5 * max((v - r) ** 2, (v_clip - r) ** 2)
            log_r = x["ref_logps"][i, j].item() - x["logps"][i, j].item()
            k3 = math.exp(log_r) - 1 - log_r
            total += policy + c_v * value - c_h * x["entropy"][i, j].item() + beta * k3
    assert out.loss_sum.item() == pytest.approx(total, rel=1e-12)
    assert int(out.count) == int(x["mask"].sum())
    assert out.metrics["clip_frac"].item() == clipped_tokens
    assert 0 < clipped_tokens < int(x["mask"].sum())  # the test exercises both branches


def test_ppo_loss_and_gradients_are_invariant_to_micro_batching():
    x = _ppo_inputs(seed=10)
    full = ppo_loss(**x)
    (full.loss_sum / full.count).backward()
    grads = x["logps"].grad.clone(), x["values"].grad.clone()
    x["logps"].grad = x["values"].grad = None
    parts = [ppo_loss(**{k: v[rows] for k, v in x.items()}) for rows in (slice(0, 1), slice(1, 4))]
    count = sum(int(p.count) for p in parts)
    loss = sum(p.loss_sum for p in parts) / count
    loss.backward()
    assert loss.item() == pytest.approx((full.loss_sum / full.count).item(), rel=1e-12)
    torch.testing.assert_close(x["logps"].grad, grads[0])
    torch.testing.assert_close(x["values"].grad, grads[1])


def test_ptx_mixing_equals_ppo_plus_gamma_times_mean_nll_for_any_split():
    x = _ppo_inputs(seed=20)
    nll = _rand(9, seed=30).abs()  # per-token pretraining NLLs of the whole batch
    gamma = 0.3
    full = ppo_loss(**x)
    want = full.loss_sum.item() / int(full.count) + gamma * nll.mean().item()
    n_rl, n_ptx = int(full.count), nll.numel()
    total = 0.0
    # two micro-batches with unequal shares of RL rows and pretraining tokens
    for rows, toks in ((slice(0, 3), slice(0, 2)), (slice(3, 4), slice(2, 9))):
        part = ppo_loss(**{k: v[rows] for k, v in x.items()})
        total += (part.loss_sum + ptx_loss_sum(nll[toks].sum(), gamma, n_rl, n_ptx)).item()
    assert total / n_rl == pytest.approx(want, rel=1e-12)


def test_ppo_loss_without_critic_and_argument_checks():
    x = _ppo_inputs(seed=40)
    out = ppo_loss(x["logps"], x["old_logps"], x["advantages"], x["mask"])
    assert "value_loss" not in out.metrics
    with pytest.raises(ValueError, match="old_values"):
        ppo_loss(x["logps"], x["old_logps"], x["advantages"], x["mask"], values=x["values"])
    with pytest.raises(ValueError, match="ref_logps"):
        ppo_loss(x["logps"], x["old_logps"], x["advantages"], x["mask"], kl_coef=0.1)
