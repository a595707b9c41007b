"""The agent's GRPO objective with the KL penalty to the SFT policy: the reference is a frozen
copy of the starting policy, its log-probs of what was sampled ride in the batch, and the
penalty is β·k3 per sampled token and pointer choice — checked in closed form (a reference
shifted by c gives k3 = e^c − 1 − c on every element) and by the direction it pulls."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lmforge.agents.rl import AgentRollouts, train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection
from lmforge.agents.rl_objective import agent_pg_objective, batch_scores
from lmforge.agents.tasks import sample_task
from lmforge.config import ConfigError
from lmforge.models.loss import IGNORE_INDEX
from lmforge.train.config import load_config

SECTION = AgentRLSection(groups="state", tasks_per_rollout=2, group_size=3, max_steps=2,
                         max_new_tokens=100, constrained=True, kl_coef=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def rollout(agent_vlm_factory):
    """A pointer model, its rollouts (β = 0.5) and one state-group batch."""
    pointer, tok, processor, _ = agent_vlm_factory(4, 2, pointer_size=16)
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1)]
    rollouts = AgentRollouts(pointer, tok, processor, tasks, SECTION, seed=3)
    groups, runs = rollouts.play_states()
    for n, g in enumerate(groups):
        g.rewards = [float((n + i) % 3 == 0) + 0.1 * i for i in range(3)]
    return pointer, rollouts, rollouts.state_batch(groups, runs)


def test_the_reference_is_a_frozen_copy_scoring_what_was_sampled(rollout):
    model, rollouts, batch = rollout
    ref = rollouts.reference
    assert ref is not model and not any(p.requires_grad for p in ref.parameters())
    labelled = batch["labels"] != IGNORE_INDEX
    assert torch.equal(~torch.isnan(batch["ref_logprobs"]), labelled)
    # before any update the reference is the policy: its log-probs are the engine's
    old = batch["old_logprobs"]
    both = labelled & ~torch.isnan(old)
    assert torch.allclose(batch["ref_logprobs"][both], old[both], atol=1e-4)
    assert batch["pointer_ref"].numel() > 0
    assert torch.allclose(batch["pointer_ref"], batch["pointer_old"], atol=1e-4)
    out = agent_pg_objective(model, batch)
    assert float(out.metrics["kl"]) == pytest.approx(0.0, abs=1e-4)


def test_the_penalty_is_beta_k3_in_closed_form(rollout):
    model, _, batch = rollout
    beta, c_tok, c_ptr = 0.5, 0.3, -0.5
    none = {**batch, "kl_coef": torch.tensor(0.0)}
    with torch.no_grad():
        logps, pointer = batch_scores(model, batch)
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    shifted = batch["ref_logprobs"].clone()
    shifted[:, 1:] = torch.where(labelled, logps + c_tok, float("nan"))  # log r = c everywhere
    moved = {**batch, "ref_logprobs": shifted, "pointer_ref": pointer + c_ptr}
    n_tok, n_ptr = int(labelled.sum()), pointer.numel()
    k3 = lambda c: math.exp(c) - 1 - c  # noqa: E731
    want = n_tok * k3(c_tok) + n_ptr * k3(c_ptr)
    with torch.no_grad():
        plain, penalised = agent_pg_objective(model, none), agent_pg_objective(model, moved)
    assert "kl" not in plain.metrics
    assert float(penalised.metrics["kl"]) == pytest.approx(want, rel=1e-4)
    assert float(penalised.loss_sum - plain.loss_sum) == pytest.approx(beta * want, rel=1e-4)


def test_the_penalty_pulls_toward_the_reference(rollout):
    """Advantages zero, a reference that likes the sampled tokens (or the pointer's choices)
    more (c > 0): one gradient step raises their log-probs; one that likes them less lowers
    them (the other kind's reference is the policy itself: k3'(0) = 0, no pull)."""
    model, _, batch = rollout
    zero = {**batch, "advantages": torch.zeros_like(batch["advantages"]),
            "pointer_advantages": torch.zeros_like(batch["pointer_advantages"])}  # fmt: skip
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    for kind, c in (("tokens", 1.0), ("tokens", -1.0), ("pointer", 1.0), ("pointer", -1.0)):
        with torch.no_grad():
            logps, pointer = batch_scores(model, batch)
        ref = batch["ref_logprobs"].clone()
        ref[:, 1:] = torch.where(labelled, logps + (c if kind == "tokens" else 0.0), float("nan"))
        ptr_ref = pointer + (c if kind == "pointer" else 0.0)
        model.zero_grad()
        agent_pg_objective(
            model, {**zero, "ref_logprobs": ref, "pointer_ref": ptr_ref}
        ).loss_sum.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p -= 1e-5 * p.grad  # small: the first-order change
            after, after_ptr = batch_scores(model, batch)
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        moved = (after - logps)[labelled].sum() if kind == "tokens" else (after_ptr - pointer).sum()
        assert c * float(moved) > 0, (kind, c)


def test_negative_kl_coef_is_refused():
    with pytest.raises(ConfigError, match="rl.kl_coef"):
        train_agent_rl(load_config(None, ["rl.kl_coef=-0.1"], AgentRLConfig))


def test_a_lora_policys_reference_is_its_base(agent_vlm_factory):
    """With LoRA on the policy the reference is the policy with its adapters off (no second
    copy); once the adapter has moved, the reference log-probs are the base model's."""
    from lmforge.peft import apply_lora

    model, tok, processor, _ = agent_vlm_factory(4, 2, pointer_size=16)
    base = copy.deepcopy(model)
    apply_lora(model, r=4, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # the adapter now changes the outputs
    tasks = [sample_task(s, template="radio_apply") for s in (0, 1)]
    rollouts = AgentRollouts(model, tok, processor, tasks, SECTION, seed=3)
    assert rollouts.reference == "adapter"
    batch = rollouts.state_batch(*rollouts.play_states())
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    with torch.no_grad():
        want, want_ptr = batch_scores(base.eval(), batch)
        policy, _ = batch_scores(model.eval(), batch)
    got = batch["ref_logprobs"][:, 1:][labelled]
    torch.testing.assert_close(got, want[labelled], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch["pointer_ref"], want_ptr, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(policy[labelled], want[labelled], atol=1e-3)  # adapter on ≠ base


def test_pointer_weight_scales_the_pointer_terms_only(rollout):
    """``rl.pointer_weight`` w: −Σ_t J_t − w Σ_q J_q, the element count unchanged."""
    model, _, batch = rollout
    base = {**batch, "kl_coef": torch.tensor(0.0)}
    no_ptr = {**base, "pointer_advantages": torch.zeros_like(batch["pointer_advantages"])}
    no_tok = {**base, "advantages": torch.zeros_like(batch["advantages"])}
    with torch.no_grad():
        tokens = agent_pg_objective(model, no_ptr).loss_sum
        pointer = agent_pg_objective(model, no_tok).loss_sum
        one = agent_pg_objective(model, base)
        three = agent_pg_objective(model, {**base, "pointer_weight": torch.tensor(3.0)})
    assert float(pointer) != 0.0 and int(three.count) == int(one.count)
    assert float(one.loss_sum) == pytest.approx(float(tokens + pointer), rel=1e-5)
    assert float(three.loss_sum) == pytest.approx(float(tokens + 3 * pointer), rel=1e-5)
    with pytest.raises(ConfigError, match="rl.pointer_weight"):
        train_agent_rl(load_config(None, ["rl.pointer_weight=-1"], AgentRLConfig))
