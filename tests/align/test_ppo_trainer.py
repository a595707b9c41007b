"""PPO through the training loop: the objective against the pure functions of
`lmforge.align.ppo` on independently computed tensors, the rollout's advantages, learning on an
easy rule reward, exact resume of the experience stream, LoRA reference."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.align.logprobs import entropy_from_logits, model_logprobs
from lmforge.align.ppo import (
    RunningMeanStd,
    gae_advantages,
    kl_penalized_rewards,
    ppo_loss,
    ptx_loss_sum,
    whiten,
)
from lmforge.align.ppo_config import PPOConfig, PPOSection
from lmforge.align.ppo_experience import PPOExperience
from lmforge.align.ppo_models import ActorCritic, PromptItem, Sample, critic_from
from lmforge.align.ppo_trainer import PPOObjective
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM

VOCAB = 64


def tiny_policy(seed=0):
    cfg = preset_config("tiny", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(seed)
    return CausalLM(cfg)


def prompts(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(2, 6, (), generator=g))
        out.append(PromptItem(tuple(torch.randint(0, VOCAB, (length,), generator=g).tolist())))
    return out


def low_half(samples):
    """An easy rule reward: the fraction of completion tokens in the lower half of the vocab."""
    return [sum(t < VOCAB // 2 for t in s.completion_ids) / len(s.completion_ids) for s in samples]


class PtxLoader:
    """Endless packed LM batches (two documents per row), seeded by position; resumable."""

    def __init__(self, rows=2, seq_len=12, seed=0):
        self.rows, self.seq_len, self.seed, self.position = rows, seq_len, seed, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 1000 + self.position)
            ids = torch.randint(0, VOCAB, (self.rows, self.seq_len), generator=g)
            labels = ids.clone()
            labels[:, : self.seq_len // 3] = -100  # an unscored "prompt" part
            docs = (torch.arange(self.seq_len) >= self.seq_len // 2).long().expand(self.rows, -1)
            self.position += 1
            yield {"input_ids": ids, "labels": labels, "document_ids": docs.contiguous()}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def make(section, micro=4, accum=1, seed=0, ptx=False, policy=None):
    policy = policy or tiny_policy(seed)
    ac = ActorCritic(policy, critic_from(policy))
    exp = PPOExperience(ac, prompts(), low_half, section, micro_batch_size=micro,
                        grad_accum=accum, seed=seed, ptx_data=PtxLoader() if ptx else None)  # fmt: skip
    return ac, exp


def test_objective_equals_pure_functions_on_independent_tensors():
    section = PPOSection(rollout_batch_size=8, max_new_tokens=5, ppo_epochs=1, kl_in_loss=True,
                         kl_coef=0.1, entropy_coef=0.01, ptx_coef=0.5, temperature=0.9)  # fmt: skip
    ac, exp = make(section, micro=4, accum=2, ptx=True)
    batch = next(iter(exp))
    # perturb the stored rollout tensors so ratios, value clipping and KL are all active
    g = torch.Generator().manual_seed(3)
    batch["old_logps"] = batch["old_logps"] + 0.3 * torch.randn(
        batch["old_logps"].shape, generator=g
    )
    batch["old_values"] = batch["old_values"] + torch.randn(batch["old_values"].shape, generator=g)
    batch["ref_logps"] = batch["ref_logps"] + 0.2 * torch.randn(
        batch["ref_logps"].shape, generator=g
    )
    out = PPOObjective(section)(ac, batch)

    policy, critic = ac.policy, ac.critic
    ids, labels, am = batch["input_ids"], batch["labels"], batch["attention_mask"]
    logps, mask, _ = model_logprobs(policy, ids, labels, attention_mask=am, temperature=0.9)
    logits = policy(ids, attention_mask=am).logits / 0.9
    entropy = entropy_from_logits(logits)
    hidden = critic.hidden_states(ids, attention_mask=am)
    values = hidden @ critic.score.weight[0]
    ref = ppo_loss(logps, batch["old_logps"], batch["advantages"], mask, values=values,
                   old_values=batch["old_values"], returns=batch["returns"], clip_eps=0.2,
                   value_clip_eps=0.2, vf_coef=0.5, entropy=entropy, entropy_coef=0.01,
                   ref_logps=batch["ref_logps"], kl_coef=0.1)  # fmt: skip
    ptx_nll = policy(batch["ptx_input_ids"], labels=batch["ptx_labels"],
                     document_ids=batch["ptx_document_ids"], loss_reduction="sum").loss  # fmt: skip
    # the minibatch totals are counted independently: 2 micro-batches of RL rows, 2 ptx rows
    rl_total = sum(len(r["input_ids"]) - r["prompt_len"] for p in (0, 1) for r in exp._rows_of(p))
    assert batch["rl_tokens_total"].item() == rl_total
    ptx_tokens = int((batch["ptx_labels"][:, 1:] != -100).sum()) * 2  # both stash rows equal-sized
    assert batch["ptx_tokens_total"].item() == ptx_tokens
    expected = ref.loss_sum + ptx_loss_sum(ptx_nll, 0.5, rl_total, ptx_tokens)
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-5, atol=1e-5)
    assert int(out.count) == int(mask.sum())
    for key in ("policy_loss", "value_loss", "clip_frac", "entropy", "kl", "approx_kl"):
        torch.testing.assert_close(out.metrics[key], ref.metrics[key], rtol=1e-5, atol=1e-5)
    assert 0 < out.metrics["clip_frac"] < out.count  # the clip is exercised
    # rollout statistics pass through as token-weighted sums
    assert out.metrics["reward"].item() == pytest.approx(
        batch["rollout_stats"]["reward"] * out.count
    )
    # gradients flow to both the policy and the critic
    out.loss_sum.backward()
    assert ac.lm_head.weight.grad.abs().sum() > 0 and critic.score.weight.grad.abs().sum() > 0


def test_rollout_advantages_equal_pure_functions():
    section = PPOSection(rollout_batch_size=8, max_new_tokens=6, ppo_epochs=1, kl_coef=0.2,
                         gamma=0.99, lam=0.9, reward_clip=1.5)  # fmt: skip
    ac, exp = make(section, micro=4)
    exp.rollout()
    rows = exp.rows
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        n, p = len(r["input_ids"]), r["prompt_len"]
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, p:n] = ids[i, p:n]
    am = (torch.arange(width) < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]).long()
    with torch.no_grad():
        logps, mask, _ = model_logprobs(ac.policy, ids, labels, attention_mask=am)
        ref_lp, _, _ = model_logprobs(exp.reference, ids, labels, attention_mask=am)
        values = ac.critic.score(ac.critic.hidden_states(ids, attention_mask=am)).squeeze(-1)
    values = values * mask
    raw = torch.tensor(low_half([Sample(None, r["input_ids"][r["prompt_len"] :], "", "")
                                 for r in rows]))  # fmt: skip
    rms = RunningMeanStd()
    rms.update(raw)
    scores = rms.normalize(raw).clamp(-1.5, 1.5)
    rewards, _ = kl_penalized_rewards(scores, logps, ref_lp, mask, 0.2, "k1")
    adv, ret = gae_advantages(rewards, values, mask, 0.99, 0.9)
    adv = whiten(adv, mask)

    def stored(key):
        return torch.stack(
            [torch.nn.functional.pad(r[key], (0, width - len(r[key]))) for r in rows]
        )

    torch.testing.assert_close(stored("old_logps"), logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stored("old_values"), values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stored("advantages"), adv, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stored("returns"), ret, rtol=1e-4, atol=1e-4)
    assert exp.stats["reward"] == pytest.approx(raw.mean().item())
    # the first update on a fresh rollout starts at ratio 1
    out = PPOObjective(section)(ac, exp.micro_batch(0))
    assert out.metrics["approx_kl"].abs() < 1e-6 and out.metrics["clip_frac"] == 0


def test_training_raises_easy_reward_lowers_value_loss_changes_parameters(tmp_path):
    from lmforge.train.loop import Trainer

    config = PPOConfig(out_dir=str(tmp_path))
    config.ppo = PPOSection(rollout_batch_size=32, max_new_tokens=4, ppo_epochs=2, kl_coef=0.0)
    o, t = config.optim, config.train
    o.lr, o.warmup_steps, o.schedule, o.weight_decay = 3e-2, 0, "constant", 0.0
    t.batch_size, t.max_steps, t.eval_every, t.save_every, t.seed = 16, 24, 0, 0, 0
    config.log.progress = config.log.plot = False
    ac, exp = make(config.ppo, micro=16)
    before = {k: v.clone() for k, v in ac.state_dict().items()}
    records = []
    Trainer(ac, exp, config, objective=PPOObjective(config.ppo),
            callbacks=[lambda tr, r: records.append(r)]).fit()  # fmt: skip
    per_rollout = 4  # 32 prompts / 16 per step × 2 epochs
    rewards = [r["reward"] for r in records[::per_rollout]]
    values = [r["value_loss"] for r in records[::per_rollout]]
    assert rewards[-1] > rewards[0] + 0.25, rewards
    assert values[-1] < 0.25 * values[0], values
    changed = [k for k, v in ac.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("critic.") for k in changed)
    assert any(k.startswith("model.layers.") for k in changed)


@pytest.mark.parametrize("ptx", [False, True])
def test_experience_resumes_exactly(ptx):
    section = PPOSection(rollout_batch_size=8, max_new_tokens=4, ppo_epochs=2, kl_coef=0.1,
                         ptx_coef=0.3 if ptx else 0.0)  # fmt: skip
    _, a = make(section, micro=4, accum=2, ptx=ptx)
    it = iter(a)
    for _ in range(5):  # 4 micro-batches per rollout: stop mid-minibatch of the 2nd rollout
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(it) for _ in range(6)]  # crosses into the next rollout
    _, b = make(section, micro=4, accum=2, ptx=ptx)
    b.load_state_dict(state)
    got = [batch for batch, _ in zip(b, range(6), strict=False)]
    for x, y in zip(expected, got, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key
    assert a.reward_stats.state_dict() == b.reward_stats.state_dict()


def test_lora_policy_uses_the_disabled_adapter_as_reference():
    from lmforge.peft import apply_lora

    policy = tiny_policy()
    base = tiny_policy()
    apply_lora(policy, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # a non-zero adapter, so policy and base differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    section = PPOSection(rollout_batch_size=4, max_new_tokens=3, ppo_epochs=1, kl_coef=0.1)
    ac, exp = make(section, micro=4, policy=policy)
    assert exp.reference == "adapter"
    batch = next(iter(exp))
    with torch.no_grad():
        base_lp, mask, _ = model_logprobs(base, batch["input_ids"], batch["labels"],
                                          attention_mask=batch["attention_mask"])  # fmt: skip
    torch.testing.assert_close(batch["ref_logps"], base_lp, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch["old_logps"][mask], base_lp[mask], atol=1e-3)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="rollout_batch_size=10 must be a multiple"):
        make(PPOSection(rollout_batch_size=10), micro=4)
    with pytest.raises(ValueError, match="ptx_coef > 0 needs ptx_data"):
        make(PPOSection(rollout_batch_size=8, ptx_coef=0.1), micro=4)


def test_task_prompts_are_the_tasks_problems_chat_formatted_or_plain():
    from lmforge.align.ppo_trainer import task_prompts
    from lmforge.data.tasks.arithmetic import arithmetic_problems

    class Tok:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, add_generation_prompt=False):
            return f"<user>{messages[0]['content']}</user><assistant>"

        def encode(self, text, add_special_tokens=False):
            return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    config = PPOConfig()
    config.ppo = PPOSection(num_prompts=5, digits=1)
    items = task_prompts(config, Tok())
    problems = arithmetic_problems(5, config.train.seed, "train", 1)
    assert [i.problem for i in items] == problems
    assert items[0].prompt_ids == tuple(ord(c) for c in f"<user>{problems[0].prompt}</user>"
                                        "<assistant>")  # fmt: skip
    config.ppo.chat_template = False
    plain = task_prompts(config, Tok())
    assert plain[0].prompt_ids == (1, *(ord(c) for c in problems[0].prompt + "\n"))


def test_ptx_loader_packs_the_synthetic_chats_by_default(tmp_path):
    from lmforge.align.ppo_trainer import ptx_loader
    from lmforge.data.tasks.chat import synthetic_chats
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train([m["content"] for c in synthetic_chats(100, 0) for m in c],
                          vocab_size=300)  # fmt: skip
    config = PPOConfig()
    config.ppo = PPOSection(ptx_coef=0.1)
    config.data.synthetic_docs, config.data.seq_len, config.train.batch_size = 40, 128, 2
    loader = ptx_loader(config, tok, tmp_path)
    assert (tmp_path / "data" / "synthetic-chat.jsonl").is_file()
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"] != -100).any()
    assert loader.state_dict() is not None
