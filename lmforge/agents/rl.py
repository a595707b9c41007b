"""Online RL of a GUI agent in `GUIEnv`: GRPO over whole episodes, through the one Trainer.

    config = load_config(None, ["model.init_from=runs/agent-tiny/model"], AgentRLConfig)
    summary = train_agent_rl(config)      # summary["agent_eval"]: held-out success after RL

Each optimizer step is one rollout: ``tasks_per_rollout`` tasks (by default those the
starting policy fails greedily, as UI-TARS trains online on what it cannot yet do), each
played ``group_size`` times by the current model through the engine (sampling at
``temperature``). An episode's reward is rule-based, as DeepSeek-R1's: task success (the
environment's check) plus ``format_weight`` × the share of its steps that parsed. Rewards
are normalised within each task's group (`lmforge.align.grpo.grpo_advantages`, GRPO,
Shao et al. 2024 eq. 3) and every response token of every step of an episode gets that
episode's advantage. The objective is GRPO's clipped surrogate (eq. 3 without the KL term),
min(r·A, clip(r, 1 − ε, 1 + ε)·A) with r = π(o_t)/π_old(o_t), summed over response tokens,
one update per rollout. A step is trained on exactly what the engine decoded
(`PolicySample`): the prompt's token ids and images, then the sampled token ids as the
labelled continuation — never the response text re-tokenized (BPE need not give back the
sampled ids, and ``act`` strips whitespace). π_old(o_t) is the engine's log-prob of each
sampled token; the one token it does not score (the stop token) uses the current log-prob,
so its ratio is 1. With one update per rollout r = 1 up to the engine/trainer numerical
difference, logged as ``logprob_gap`` (mean |log π − log π_old|): a check that training sees
the tokens and probabilities that were sampled.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rollout import EpisodeRun, run_episodes
from lmforge.agents.sft import AgentSection, evaluate_agent_model
from lmforge.agents.tasks import SPLITS, Task, sample_task
from lmforge.align.grpo import grpo_advantages
from lmforge.config import ConfigError
from lmforge.io import atomic_write_json
from lmforge.models.hf import load_model
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.loop import Trainer
from lmforge.train.objective import LossOutput
from lmforge.train.run import fit_and_export, print_summary, training_run
from lmforge.train.vlm_sft import image_processor_for
from lmforge.vision.processor import ImageProcessor, save_preprocessor_config
from lmforge.vision.vlm_data import MultimodalExample, collate_rows, pack_examples


@dataclass
class AgentRLSection:
    """Tasks, groups, sampling, reward and the held-out evaluation."""

    split: str = "train"
    pool_tasks: int = 40
    failed_only: bool = True  # train on the pool's tasks the starting policy fails greedily
    tasks_per_rollout: int = 2
    group_size: int = 4
    temperature: float = 1.0
    max_steps: int = 8
    max_new_tokens: int = 160
    history: int = 2
    constrained: bool = False  # sample under the action grammar (then format is always 1)
    format_weight: float = 0.1
    clip_eps: float = 0.2  # GRPO/PPO ratio clipping ε
    screen: int = 128
    eval_split: str = "heldout"
    eval_tasks: int = 30  # 0 skips the held-out evaluation
    eval_max_steps: int = 15


@dataclass
class AgentRLConfig(RunConfig):
    """An agent RL run: the training sections plus ``rl``; ``model.init_from`` is the SFT
    agent's folder."""

    out_dir: str = "runs/agent-rl"
    rl: AgentRLSection = field(default_factory=AgentRLSection)


def check_agent_rl_config(config: AgentRLConfig) -> None:
    r = config.rl
    if r.split not in SPLITS or r.eval_split not in SPLITS:
        raise ConfigError(
            f"rl.split={r.split!r} / rl.eval_split={r.eval_split!r}: choose from {SPLITS}"
        )
    if r.group_size < 2:
        raise ConfigError(
            f"rl.group_size={r.group_size} must be ≥ 2 (advantages are group-relative)"
        )
    if r.tasks_per_rollout < 1 or r.pool_tasks < 1 or r.max_steps < 1 or r.history < 1:
        raise ConfigError(
            "rl.tasks_per_rollout, rl.pool_tasks, rl.max_steps and rl.history must be ≥ 1"
        )


def episode_reward(run: EpisodeRun, format_weight: float) -> float:
    """Success (0/1) + ``format_weight`` × the share of steps whose output parsed."""
    steps = run.record.steps
    valid = sum(s.valid for s in steps) / len(steps) if steps else 0.0
    return float(run.record.success) + format_weight * valid


def step_examples(run: EpisodeRun) -> list[tuple[MultimodalExample, list[float]]]:
    """Per step of ``run`` (played with ``keep_samples``): the example the engine decoded —
    prompt ids then the sampled ids, labels on the sampled ids only, the prompt's images —
    and the engine's log-prob of each token of the example (NaN on the prompt and where the
    engine scored nothing)."""
    if len(run.samples) != len(run.responses):
        raise ValueError(
            "the run kept no samples: play it with run_episodes(..., keep_samples=True)"
        )
    out = []
    for s in run.samples:
        ids = s.prompt_ids + s.token_ids
        labels = [IGNORE_INDEX] * len(s.prompt_ids) + s.token_ids
        old = [math.nan] * len(s.prompt_ids) + [math.nan if lp is None else lp for lp in s.logprobs]
        out.append((MultimodalExample(ids, labels, s.pixel_values, s.image_grid_thw), old))
    return out


def token_rows(
    values: Sequence[Sequence[float]],
    rows: Sequence[Sequence[int]],
    seq_len: int,
    fill: float = 0.0,
) -> torch.Tensor:
    """``[B, seq_len]``: the per-token ``values`` of each example placed where
    `collate_rows` packs its tokens; ``fill`` elsewhere (padding)."""
    out = torch.full((len(rows), seq_len), fill)
    for r, row in enumerate(rows):
        p = 0
        for i in row:
            out[r, p : p + len(values[i])] = torch.tensor(values[i], dtype=out.dtype)
            p += len(values[i])
    return out


class AgentRollouts:
    """Endless rollout batches for the `Trainer` (one batch per rollout); ``state_dict``
    holds the rollout count (the task order and sampling seeds follow from it)."""

    def __init__(self, model: Any, tokenizer: Any, processor: ImageProcessor, tasks: Sequence[Task],
                 section: AgentRLSection, seed: int = 0, seq_len: int = 512) -> None:  # fmt: skip
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.tasks, self.section, self.seed, self.seq_len = list(tasks), section, seed, seq_len
        self.rollouts = 0

    def rollout_tasks(self) -> list[Task]:
        """This rollout's tasks: the pool in a fresh seeded order per pass, round after round."""
        k, n = self.section.tasks_per_rollout, len(self.tasks)
        picks = []
        for g in range(self.rollouts * k, (self.rollouts + 1) * k):
            epoch, position = divmod(g, n)
            order = list(range(n))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            picks.append(self.tasks[order[position]])
        return picks

    @torch.no_grad()
    def play(self) -> list[EpisodeRun]:
        s, was_training = self.section, self.model.training
        policy = VLMPolicy(self.model, self.tokenizer, self.processor, (s.screen, s.screen), s.history,
                           s.max_new_tokens, s.temperature, s.constrained,
                           seed=self.seed * 1_000_003 + 7 * self.rollouts, logprobs=True)  # fmt: skip
        tasks = [t for t in self.rollout_tasks() for _ in range(s.group_size)]
        runs = run_episodes(policy, tasks, s.max_steps, keep_samples=True)
        self.model.train(was_training)
        return runs

    def batch(self, runs: Sequence[EpisodeRun]) -> dict[str, torch.Tensor]:
        s = self.section
        rewards = torch.tensor([episode_reward(r, s.format_weight) for r in runs])
        advantages = grpo_advantages(rewards, s.group_size)
        examples, token_adv, token_old = [], [], []
        for run, adv in zip(runs, advantages.tolist(), strict=True):
            for example, old in step_examples(run):
                examples.append(example)
                token_adv.append([adv] * len(example))
                token_old.append(old)
        seq_len = max(self.seq_len, max(len(e) for e in examples))
        pad = self.tokenizer.pad_token_id or 0
        rows = pack_examples(examples, seq_len, pad)
        batch = collate_rows(examples, rows, seq_len, pad)
        batch["advantages"] = token_rows(token_adv, rows, seq_len)
        batch["old_logprobs"] = token_rows(token_old, rows, seq_len, math.nan)
        batch["clip_eps"] = torch.tensor(s.clip_eps)
        batch["rollout_reward"] = rewards.mean()
        batch["rollout_success"] = torch.tensor([float(r.record.success) for r in runs]).mean()
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            runs = self.play()
            self.rollouts += 1
            yield self.batch(runs)

    def state_dict(self) -> dict[str, int]:
        return {"rollouts": self.rollouts}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.rollouts = int(state["rollouts"])


def agent_pg_objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """GRPO's clipped surrogate without KL (Shao et al. 2024 eq. 3): −Σ_t min(r_t·A,
    clip(r_t, 1 − ε, 1 + ε)·A), r_t = exp(log π(o_t) − log π_old(o_t)) over the response
    tokens, π_old the engine's log-probs (the current, detached, where there is none), and
    their count; logs the rollout's reward and success and ``logprob_gap``."""
    out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], document_ids=batch["document_ids"])  # fmt: skip
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    logps = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    old = batch["old_logprobs"][:, 1:]
    scored = mask & ~torch.isnan(old)
    old = torch.where(scored, old, logps.detach())
    ratio = torch.exp(logps - old)
    adv = batch["advantages"][:, 1:]
    eps = float(batch["clip_eps"])
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    loss_sum = -(surrogate * mask).sum()
    count = mask.sum()
    gap = ((logps.detach() - old).abs() * scored).sum() / scored.sum().clamp(min=1)
    metrics = {"episode_reward": batch["rollout_reward"] * count,
               "episode_success": batch["rollout_success"] * count,
               "logprob_gap": gap * count}  # fmt: skip
    return LossOutput(loss_sum, count, metrics)


def select_tasks(model: Any, tokenizer: Any, processor: ImageProcessor, r: AgentRLSection,
                 seed: int) -> list[Task]:  # fmt: skip
    """The pool of ``rl.split`` tasks, or (``failed_only``) those the model fails greedily
    (the whole pool if it fails none)."""
    pool = [
        sample_task(seed + i, r.split, width=r.screen, height=r.screen) for i in range(r.pool_tasks)
    ]
    if not r.failed_only:
        return pool
    policy = VLMPolicy(model, tokenizer, processor, (r.screen, r.screen), r.history, r.max_new_tokens,
                       temperature=0.0, constrained=r.constrained)  # fmt: skip
    failed = [run.task for run in run_episodes(policy, pool, r.max_steps) if not run.record.success]
    return failed or pool


def train_agent_rl(
    config: AgentRLConfig, model: Any = None, tokenizer: Any = None, console: Console | None = None
) -> dict[str, Any]:
    """Online GRPO from ``model`` (else ``model.init_from``); exports ``model/`` and the
    held-out figures (``agent_eval.json``)."""
    check_agent_rl_config(config)
    r, t = config.rl, config.train
    run_dir = Path(config.out_dir)
    with training_run(config, None, console) as (dist, console):
        if model is None:
            if not config.model.init_from:
                raise ConfigError("model.init_from: give the SFT agent's folder to start RL from")
            model = load_model(config.model.init_from, dtype=torch.float32)
            tokenizer = load_tokenizer(config.data.tokenizer or config.model.init_from)
        if not isinstance(model, VisionLanguageModel):
            raise ConfigError("agent RL needs a vision-language (qwen2_vl) model")
        torch.manual_seed(t.seed)
        processor = image_processor_for(model, r.screen)
        tasks = select_tasks(model, tokenizer, processor, r, t.seed)
        console.print(
            f"[bold]agent rl[/]: {len(tasks)} tasks of {r.split}, groups of {r.group_size}"
        )
        rollouts = AgentRollouts(model, tokenizer, processor, tasks, r, t.seed, config.data.seq_len)
        trainer = Trainer(model, rollouts, config, objective=agent_pg_objective, tokenizer=tokenizer,
                          run_dir=run_dir, dist=dist, console=console)  # fmt: skip
        summary = fit_and_export(trainer, run_dir)
        if dist.is_main:
            save_preprocessor_config(processor.config, summary["model_dir"])
        summary["rl_tasks"] = len(tasks)
        if r.eval_tasks:
            section = AgentSection(history=r.history, screen=r.screen, eval_split=r.eval_split,
                                   eval_tasks=r.eval_tasks, eval_grounding=0, max_steps=r.eval_max_steps,
                                   max_new_tokens=r.max_new_tokens, constrained=True)  # fmt: skip
            summary["agent_eval"] = evaluate_agent_model(
                model, tokenizer, processor, section, t.seed
            )
            atomic_write_json(run_dir / "agent_eval.json", summary["agent_eval"])
        print_summary(summary, console)
    return summary


__all__ = [
    "AgentRLConfig",
    "AgentRLSection",
    "AgentRollouts",
    "agent_pg_objective",
    "check_agent_rl_config",
    "episode_reward",
    "select_tasks",
    "step_examples",
    "token_rows",
    "train_agent_rl",
]
