"""Alignment on two CPU processes (gloo, ``torchrun --standalone --nproc_per_node 2``): `run_grpo`
and `train_dpo` under DDP and FSDP2 make the same updates as one process over the same global
batch (same seeds) — the exported weights agree to fp32 tolerance, GRPO's logged rollout
statistics and held-out accuracy are those of the whole step — and so does `run_ppo` under DDP
and FSDP2 (policy and critic), and a PPO run under FSDP2 resumed mid-rollout ends where the
uninterrupted run ends (its checkpoints hold the critic); plus the sharding helpers of
`lmforge.align.rl_distributed` in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.align.rl_distributed import ShardedSampler, global_means, shard_range, sync_sampler
from lmforge.align.rollout_groups import PromptSampler

ROOT = Path(__file__).resolve().parents[2]
GRPO = ["train.grad_accum=1", "grpo.group_size=4", "grpo.max_new_tokens=6", "grpo.eval_prompts=4",
        "grpo.num_prompts=50", "train.max_steps=2", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "optim.lr=1e-3", "train.max_time_s=0",
        "train.device=cpu", "grpo.prioritized=true"]  # fmt: skip
DPO = ["data.synthetic_docs=40", "data.seq_len=96", "train.max_steps=2", "train.max_time_s=0",
       "train.eval_every=0", "train.save_every=0", "log.progress=false", "log.plot=false",
       "data.val_fraction=0.1", "optim.warmup_steps=0", "train.device=cpu"]  # fmt: skip
REWARDS = "def digits(completion):\n    return sum(ch.isdigit() for ch in completion) / 4\n"
PPO = ["ppo.max_new_tokens=6", "ppo.num_prompts=20", "ppo.ppo_epochs=2", "train.max_steps=3",
       "train.max_time_s=0", "train.save_every=0", "log.progress=false", "log.plot=false",
       "train.device=cpu", "optim.lr=1e-3", "optim.warmup_steps=0"]  # fmt: skip
SCRIPT = """
import json, sys, torch
from lmforge.align.dpo_trainer import DPOConfig, train_dpo
from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.ppo_config import PPOConfig
from lmforge.align.rl_run import run_grpo, run_ppo
from lmforge.train.config import load_config
from lmforge.train.distributed import init_distributed
torch.set_num_threads(1)
dist = init_distributed("cpu")  # one process group for the three runs
root, out, r1_model, pref_model = sys.argv[1:5]
grpo, dpo, ppo = (json.loads(a) for a in sys.argv[5:8])
for strategy in ("ddp", "fsdp"):
    config = load_config(f"{root}/lmforge/recipes/grpo-tiny.yaml", [*grpo, "train.batch_size=4",
        f"grpo.rewards=[{out}/rewards.py:digits, r1]",
        f"train.distributed={strategy}", f"model.init_from={r1_model}", f"out_dir={out}/grpo-{strategy}"],
        GRPOConfig)
    run_grpo(config, dist=dist)
for strategy in ("ddp", "fsdp"):
    config = load_config(f"{root}/lmforge/recipes/dpo-tiny.yaml", [*dpo, "train.batch_size=2",
        f"train.distributed={strategy}", f"model.init_from={pref_model}",
        f"out_dir={out}/dpo-{strategy}"], DPOConfig)
    train_dpo(config, dist=dist)
for strategy in ("ddp", "fsdp"):
    config = load_config(f"{root}/lmforge/recipes/ppo-tiny.yaml", [*ppo, "ppo.rollout_batch_size=4",
        "train.batch_size=2", f"ppo.rewards=[{out}/rewards.py:digits]", f"model.init_from={r1_model}",
        f"train.distributed={strategy}", f"out_dir={out}/ppo-{strategy}"], PPOConfig)
    run_ppo(config, dist=dist)
torch.distributed.destroy_process_group()
"""


def test_shard_ranges_and_the_sharded_sampler_split_one_draw():
    assert [shard_range(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_range(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    single = PromptSampler(20, seed=3, prioritized=True)
    ranks = [ShardedSampler(PromptSampler(20, seed=3, prioritized=True), r, 2) for r in range(2)]
    want = single.sample(6)
    assert ranks[0].sample(3) + ranks[1].sample(3) == want
    ranks[0].update(want[1], 1.0)
    assert ranks[0].sampler.success == {}  # recorded, applied by sync_sampler
    sync_sampler(ranks[0])  # (no process group: its own updates; under torchrun every rank's)
    assert ranks[0].sampler.success == {want[1]: 1.0} and ranks[0].pending == []
    assert global_means({"a": 3.0, "b": 1.0}, 2.0) == {"a": 1.5, "b": 0.5}


def _launch(out: Path, r1_model_dir: Path, preference_model_dir: Path, torchrun) -> None:
    script = out / "ranks.py"
    script.write_text(SCRIPT)
    (out / "rewards.py").write_text(REWARDS)  # a random policy's completions: the r1 reward is 0
    torchrun(script, [str(ROOT), str(out), str(r1_model_dir), str(preference_model_dir),
                      json.dumps(GRPO), json.dumps(DPO), json.dumps(PPO)])  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path, init: Path, trained: bool = True) -> None:
    from lmforge.models.hf import read_state_dict

    sa, sb, s0 = read_state_dict(a), read_state_dict(b), read_state_dict(init)
    assert sa.keys() == sb.keys()
    assert not trained or any(not torch.equal(sa[k], s0[k]) for k in sa)  # it trained
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], atol=2e-5, rtol=1e-4, msg=key)


def test_two_processes_make_the_single_process_update(r1_model_dir, preference_model_dir,
                                                      tmp_path, torchrun):  # fmt: skip
    from lmforge.align.dpo_trainer import DPOConfig, train_dpo
    from lmforge.align.grpo_trainer import GRPOConfig
    from lmforge.align.ppo_config import PPOConfig
    from lmforge.align.rl_run import run_grpo, run_ppo
    from lmforge.train.config import load_config

    _launch(tmp_path, r1_model_dir, preference_model_dir, torchrun)
    single = tmp_path / "single"
    config = load_config(ROOT / "lmforge/recipes/grpo-tiny.yaml",
                         [*GRPO, "train.batch_size=8", f"model.init_from={r1_model_dir}",
                          f"grpo.rewards=[{tmp_path}/rewards.py:digits, r1]",
                          f"out_dir={single}/grpo"], GRPOConfig)  # fmt: skip
    run_grpo(config)
    config = load_config(ROOT / "lmforge/recipes/dpo-tiny.yaml",
                         [*DPO, "train.batch_size=4", f"model.init_from={preference_model_dir}",
                          f"out_dir={single}/dpo"], DPOConfig)  # fmt: skip
    train_dpo(config)

    want = _jsonl(single / "grpo" / "metrics.jsonl")
    for strategy in ("ddp", "fsdp"):
        run = tmp_path / f"grpo-{strategy}"
        _assert_same_weights(single / "grpo" / "model", run / "model", r1_model_dir)
        got = _jsonl(run / "metrics.jsonl")
        for a, b in zip(want, got, strict=True):  # statistics of the whole step, not a rank's
            for key in ("loss", "reward", "reward_digits", "accuracy", "length", "grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (strategy, key)
        evals = _jsonl(run / "eval.jsonl")
        for a, b in zip(_jsonl(single / "grpo" / "eval.jsonl"), evals, strict=True):
            assert b == pytest.approx(a)
        assert [e["count"] for e in evals] == [4, 4]  # 2 + 2 on the two ranks, before and after
    want = [r for r in _jsonl(single / "dpo" / "metrics.jsonl") if "loss" in r]
    for strategy in ("ddp", "fsdp"):
        run = tmp_path / f"dpo-{strategy}"
        _assert_same_weights(single / "dpo" / "model", run / "model", preference_model_dir)
        got = [r for r in _jsonl(run / "metrics.jsonl") if "loss" in r]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    # PPO: the rollout is gathered, so normalisation, whitening and minibatches are one process's
    config = load_config(ROOT / "lmforge/recipes/ppo-tiny.yaml",
                         [*PPO, "ppo.rollout_batch_size=8", "train.batch_size=4",
                          f"ppo.rewards=[{tmp_path}/rewards.py:digits]",
                          f"model.init_from={r1_model_dir}", f"out_dir={single}/ppo"],
                         PPOConfig)  # fmt: skip
    run_ppo(config)
    want = _jsonl(single / "ppo" / "metrics.jsonl")
    for strategy in ("ddp", "fsdp"):  # FSDP2: the rollouts run on the gathered full weights
        run = tmp_path / f"ppo-{strategy}"
        for name in ("model", "critic"):
            _assert_same_weights(single / "ppo" / name, run / name,
                                 (single / "ppo" / name) if name == "critic" else r1_model_dir,
                                 trained=name == "model")  # fmt: skip
        for a, b in zip(want, _jsonl(run / "metrics.jsonl"), strict=True):
            for key in ("loss", "reward", "kl_ref", "value_loss", "explained_variance"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (strategy, key)


RESUME_SCRIPT = """
import json, sys, torch
from lmforge.align.ppo_config import PPOConfig
from lmforge.align.rl_run import run_ppo
from lmforge.train.config import load_config
from lmforge.train.distributed import init_distributed
from lmforge.train.loop import Trainer
torch.set_num_threads(1)
dist = init_distributed("cpu")
resumes, resume = [], Trainer.resume
def record_resume(self, *args, **kwargs):  # which checkpoint each run resumed from, at what step
    done = resume(self, *args, **kwargs)
    if self.resumed_from is not None:
        resumes.append([self.resumed_from.name, self.step])
    return done
Trainer.resume = record_resume
root, out, r1_model, ppo = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def run(name, steps):
    config = load_config(f"{root}/lmforge/recipes/ppo-tiny.yaml", [*ppo, f"train.max_steps={steps}",
        f"model.init_from={r1_model}", f"out_dir={out}/{name}"], PPOConfig)
    run_ppo(config, dist=dist)
run("straight", 2)
run("resumed", 1)  # stops after the first of the rollout's two PPO epochs (a checkpoint) …
run("resumed", 2)  # … and a new run in the same folder resumes from it
if dist.rank == 0:
    open(f"{out}/resumes.json", "w").write(json.dumps(resumes))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # ~45 s on the shared 2-core machine (~20 CPU-s); the state-dict logic is
# tested fast in tests/train/test_checkpoint.py (test_sharded_export_writes_exactly_…)
def test_ppo_resumes_under_fsdp_with_its_critic(r1_model_dir, tmp_path, torchrun):
    """Two gloo processes, FSDP2: PPO saved after step 1 (mid-rollout) and resumed to step 2
    ends with the policy and critic of the uninterrupted 2-step run, and the checkpoint holds
    every critic tensor (the gathered FSDP state is written as it is)."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    ppo = ["ppo.max_new_tokens=4", "ppo.num_prompts=8", "ppo.ppo_epochs=2", "train.max_time_s=0",
           "train.save_every=1", "log.progress=false", "log.plot=false", "train.device=cpu",
           "optim.lr=1e-2", "optim.warmup_steps=0", "ppo.rollout_batch_size=4",
           "train.batch_size=2", "ppo.reward=format", "train.distributed=fsdp"]  # fmt: skip
    torchrun(script, [str(ROOT), str(tmp_path), str(r1_model_dir), json.dumps(ppo)], timeout=240)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert json.loads((tmp_path / "resumes.json").read_text()) == [["step-00000001", 1]]
    from lmforge.models.hf import read_state_dict

    saved = read_state_dict(resumed / "checkpoints" / "step-00000002")
    critic_keys = {k for k in saved if k.startswith("critic.")}
    critic = read_state_dict(straight / "critic")
    assert len(critic_keys) == len(critic) and "critic.score.weight" in critic_keys
    for name in ("model", "critic"):
        _assert_same_weights(straight / name, resumed / name, r1_model_dir, trained=name == "model")
    losses = [[r["loss"] for r in _jsonl(run / "metrics.jsonl") if "loss" in r]
              for run in (straight, resumed)]  # fmt: skip
    assert losses[1][-1] == pytest.approx(losses[0][-1], rel=1e-5)
