"""Online RL of a GUI agent in `GUIEnv`: GRPO over whole episodes or per state, through the
one Trainer.

    config = load_config(None, ["model.init_from=runs/agent-tiny/model"], AgentRLConfig)
    summary = train_agent_rl(config)      # summary["agent_eval"]: held-out success after RL
                                          # ["agent_eval_start"]: before, evaluated the same way

Each optimizer step is one rollout: ``tasks_per_rollout`` tasks (by default those the
starting policy fails greedily, as UI-TARS trains online on what it cannot yet do), each
played ``group_size`` times by the current model through the engine (sampling at
``temperature``; with ``expert_starts`` > 0 that share of the groups starts a few steps into
the scripted expert's own episode, `lmforge.agents.rl_tasks`). An episode's reward is rule-based, as DeepSeek-R1's: task success (the
environment's check) plus ``format_weight`` × the share of its steps that parsed (and, with
``expert_weight`` > 0, a process term: that weight × the steps whose point lies in the box of
the scripted expert's move in the same state, per ``max_steps`` — `episode_reward`). Rewards
are normalised within each task's group (`lmforge.align.grpo.grpo_advantages`, GRPO,
Shao et al. 2024 eq. 3) and every response token of every step of an episode gets that
episode's advantage. With ``groups=state`` each task is played once and the group is
``group_size`` responses sampled in each state it reaches, each with its own step reward
(`lmforge.agents.state_groups`: the expert's move, + format), normalised within the state.
The objective is GRPO's clipped surrogate (`lmforge.agents.rl_objective`), ``iterations``
(μ) updates per rollout, with an optional KL penalty (``kl_coef`` = β > 0) to the starting
(SFT) policy, whose log-probs of what was sampled are computed once per rollout (a frozen
copy, or the base of a PEFT policy). A step is trained on exactly what the engine decoded
(`PolicySample`): the prompt's token ids and images, then the sampled token ids as the
labelled continuation — never the response text re-tokenized (BPE need not give back the
sampled ids, and ``act`` strips whitespace).
π_old(o_t) is the engine's log-prob of each sampled token; the one token it does not score
(the stop token) uses the current log-prob, so its ratio is 1.

A pointer model (GUI-Actor's action head; `VLMPolicy` with ``pointer``) makes two kinds of
choices per step: tokens (the thought, the action's name, a scroll's direction) and points
(image token k of the screenshot, from the query token ending with ``click(``); both get the
response's advantage (the pointer as one more action, as GUI-Actor/UI-TARS train grounding as
part of the policy). The tokens the policy spliced in (coordinates, their punctuation, the end
of turn — `PolicySample.sampled` False) are context only: no language-model term. A grounded
click (``clicks=grounded``) is the pointer's answer to a separate grounding question; by
default it is read greedily and not trained, with ``train_grounded`` it is sampled and trained
like any other choice, in the grounding question's own context (`lmforge.agents.rl_examples`).
With ``ground_samples`` = K as well, each such click also draws K − 1 more points from the
same distribution, and the K points form a group of their own — a bandit rewarded 1 where a
point lands on the element the thought names (`lmforge.agents.rollout.EpisodeRun.named`), 0
elsewhere, normalised within the K (GUI-R1 / UI-R1's click reward in GRPO's form): a signal per
click instead of the episode's one; ``ground_temperature`` draws the K − 1 at their own
temperature, so a pointer sure of the wrong element still tries others. With ``state_tasks`` =
n, each rollout also plays n pool tasks once as state groups beside the episode groups, each
response scored for being the expert's move in its state (`lmforge.agents.rl_states`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection, check_agent_rl_config
from lmforge.agents.rl_examples import (
    bandit_examples,
    step_examples,
    token_rows,
)
from lmforge.agents.rl_objective import agent_pg_objective, reference_scores
from lmforge.agents.rl_screens import rollout_screens
from lmforge.agents.rl_select import Selection, validation_tasks
from lmforge.agents.rl_states import rollout_states, state_examples
from lmforge.agents.rl_tasks import expert_start_states, select_tasks
from lmforge.agents.rollout import EpisodeRun, run_episodes
from lmforge.agents.sft import evaluate_agent_model
from lmforge.agents.sft_config import AgentSection
from lmforge.agents.state_groups import StateGroup, play_state_groups
from lmforge.agents.tasks import Task
from lmforge.agents.widgets import box_contains
from lmforge.align.grpo import grpo_advantages
from lmforge.align.reference import make_reference
from lmforge.config import ConfigError
from lmforge.io import atomic_write_json, read_json
from lmforge.models.hf import load_model
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import load_tokenizer
from lmforge.train.loop import Trainer
from lmforge.train.run import print_summary, training_run
from lmforge.train.vlm_sft import image_processor_for
from lmforge.vision.processor import ImageProcessor, save_preprocessor_config
from lmforge.vision.vlm_data import collate_rows, pack_examples


def episode_reward(
    run: EpisodeRun,
    format_weight: float,
    expert_weight: float = 0.0,
    max_steps: int = 1,
    progress_weight: float = 0.0,
) -> float:
    """Success (0/1) + ``format_weight`` × the share of steps whose output parsed
    + ``expert_weight`` × (steps whose point lies in the expert's target box for that state,
    `StepRecord.target_box`) / ``max_steps`` — a dense process reward from the scripted
    expert (the expert's move is recomputed in every state the agent reaches, so repeating a
    right click in a state where the expert has moved on earns nothing) + ``progress_weight``
    × the share of the task's goal values the last window holds (`goal_progress`: partial
    credit from the end state alone)."""
    steps = run.record.steps
    valid = sum(s.valid for s in steps) / len(steps) if steps else 0.0
    reward = float(run.record.success) + format_weight * valid
    if expert_weight:
        agree = sum(s.valid and s.point is not None and s.target_box is not None
                    and box_contains(s.target_box, *s.point) for s in steps)  # fmt: skip
        reward += expert_weight * agree / max(1, max_steps)
    return reward + progress_weight * run.record.progress


class AgentRollouts:
    """Endless rollout batches for the `Trainer` (one batch per rollout); ``state_dict``
    holds the rollout count (the task order and sampling seeds follow from it)."""

    def __init__(self, model: Any, tokenizer: Any, processor: ImageProcessor, tasks: Sequence[Task],
                 section: AgentRLSection, seed: int = 0, seq_len: int = 512) -> None:  # fmt: skip
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.tasks, self.section, self.seed, self.seq_len = list(tasks), section, seed, seq_len
        self.rollouts, self.updates, self.draws = 0, 0, 0
        self.screens: tuple[list, float] = ([], 0.0)  # the last rollout's screen bandits
        self.states: tuple[list, float] = ([], 0.0)  # … and its state groups (rl.state_tasks)
        # β > 0: the KL reference, a frozen copy of the policy as it starts (the SFT agent)
        self.reference = make_reference(model, section.kl_coef)

    def rollout_tasks(self, draw: int = 0) -> list[Task]:
        """This rollout's tasks (of its ``draw``-th draw; each rollout owns ``max_draws``
        draws' places): the pool in a fresh seeded order per pass, round after round."""
        k, n = self.section.tasks_per_rollout, len(self.tasks)
        first = (self.rollouts * self.section.max_draws + draw) * k
        picks = []
        for g in range(first, first + k):
            epoch, position = divmod(g, n)
            order = list(range(n))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            picks.append(self.tasks[order[position]])
        return picks

    def policy(self) -> VLMPolicy:
        s = self.section
        return VLMPolicy(self.model, self.tokenizer, self.processor, (s.screen, s.screen), s.history,
                         s.max_new_tokens, s.temperature, s.constrained, typing=s.typing,
                         thoughts=s.thoughts, greedy_pointer=s.greedy_pointer, clicks=s.clicks,
                         sample_grounded=s.train_grounded, ground_samples=s.ground_samples,
                         ground_temperature=s.ground_temperature,
                         seed=self.seed * 1_000_003 + 7 * self.rollouts, logprobs=True)  # fmt: skip

    @torch.no_grad()
    def play(self) -> list[EpisodeRun]:
        """``rl.groups=episode``: each rollout task played ``group_size`` times. With
        ``max_draws`` > 1, DAPO's dynamic sampling (Yu et al. 2025 §3.2): a group whose
        episodes all earn the same reward has zero advantages and teaches nothing, so tasks
        are drawn again (up to ``max_draws`` times) until ``tasks_per_rollout`` groups with
        differing rewards are kept (fewer if the draws run out; none: the last draw's)."""
        s, was_training = self.section, self.model.training
        policy, size, kept = self.policy(), s.group_size, []
        for draw in range(s.max_draws):
            picks = self.rollout_tasks(draw)
            tasks = [t for t in picks for _ in range(size)]
            starts = [k for k in self.start_states(picks, draw) for _ in range(size)]
            runs = run_episodes(policy, tasks, s.max_steps, keep_samples=True, expert_steps=starts)
            groups = [runs[i : i + size] for i in range(0, len(runs), size)]
            kept += [g for g in groups if s.max_draws == 1 or self.informative(g)]
            self.draws = draw + 1
            if len(kept) >= s.tasks_per_rollout:
                break
        self.screens = rollout_screens(policy, s, self.seed, self.rollouts)
        self.states = rollout_states(policy, self.tasks, s, self.seed, self.rollouts)
        self.model.train(was_training)
        return [run for group in (kept or groups)[: s.tasks_per_rollout] for run in group]

    def start_states(self, tasks: Sequence[Task], draw: int = 0) -> list[int]:
        """`expert_start_states` of ``tasks`` for this rollout's ``draw``."""
        seed = (self.seed * 7919 + self.rollouts) * 31 + draw
        return expert_start_states(tasks, self.section.expert_starts, self.section.max_steps, seed)

    def informative(self, group: Sequence[EpisodeRun]) -> bool:
        """Whether the group's episodes earn different rewards (non-zero advantages)."""
        s = self.section
        rewards = {episode_reward(r, s.format_weight, s.expert_weight, s.max_steps,
                                  s.progress_weight) for r in group}  # fmt: skip
        return len(rewards) > 1

    @torch.no_grad()
    def play_states(self) -> tuple[list[StateGroup], list[EpisodeRun]]:
        """``rl.groups=state``: each rollout task played once, ``group_size`` responses
        sampled and scored in every state (`play_state_groups`)."""
        s, was_training = self.section, self.model.training
        played = play_state_groups(self.policy(), self.rollout_tasks(), s.group_size, s.max_steps,
                                   s.format_weight, s.guide, s.expert_drags)  # fmt: skip
        self.model.train(was_training)
        return played

    def batch(self, runs: Sequence[EpisodeRun]) -> dict[str, torch.Tensor]:
        """Episode groups: every step of an episode gets its group-normalised reward."""
        s = self.section
        rewards = torch.tensor([episode_reward(r, s.format_weight, s.expert_weight, s.max_steps,
                                               s.progress_weight)
                                for r in runs])  # fmt: skip
        advantages = grpo_advantages(rewards, s.group_size).tolist()
        scored = [(step, adv) for run, adv in zip(runs, advantages, strict=True)
                  for step in step_examples(run)]  # fmt: skip
        if s.ground_samples:  # the grounding bandit: its own advantage per point
            scored += [b for run in runs for b in bandit_examples(run, s.ground_weight)]
        scored += self.screens[0]  # rl.screen_questions: the grounding stream's bandits
        scored += self.states[0]  # rl.state_tasks: responses scored per state
        batch = self.pack(scored, rewards.mean(), [r.record.success for r in runs])
        if self.section.max_draws > 1:  # draws this rollout took (dynamic sampling)
            batch["rollout_draws"] = torch.tensor(float(self.draws))
        if s.screen_questions:  # the stream's sampled points inside their element
            batch["rollout_screen_hits"] = torch.tensor(self.screens[1])
        if s.state_tasks:  # the state groups' responses that were the expert's move
            batch["rollout_state_match"] = torch.tensor(self.states[1])
        if self.section.expert_starts:  # the expert's steps before the episodes', on average
            batch["rollout_expert_steps"] = torch.tensor(sum(r.expert_steps for r in runs) / len(runs))  # fmt: skip
        return batch

    def state_batch(
        self, groups: Sequence[StateGroup], runs: Sequence[EpisodeRun]
    ) -> dict[str, torch.Tensor]:
        """State groups: every response gets its step reward normalised within its state."""
        rewards = torch.tensor([r for g in groups for r in g.rewards])
        scored = state_examples(groups, self.section.group_size)
        batch = self.pack(scored, rewards.mean(), [r.record.success for r in runs])
        if self.section.guide:  # the share of states given the expert's response
            batch["rollout_guided"] = torch.tensor(sum(g.guided for g in groups) / len(groups))
        return batch

    def pack(self, scored: Sequence[tuple[tuple, float | list[float]]], reward: torch.Tensor,
             successes: Sequence[bool]) -> dict[str, torch.Tensor]:  # fmt: skip
        """Packed rows of the ``(sample_examples item, advantage)`` pairs with the surrogate's
        inputs; an advantage given as a list is one per pointer choice (a grounding bandit's
        example, which has no labelled tokens)."""
        examples = [example for (example, _, _), _ in scored]
        seq_len = max(self.seq_len, max(len(e) for e in examples))
        pad = self.tokenizer.pad_token_id or 0
        rows = pack_examples(examples, seq_len, pad)
        batch = collate_rows(examples, rows, seq_len, pad)
        token_adv = [[0.0 if isinstance(adv, list) else adv] * len(example)
                     for (example, _, _), adv in scored]  # fmt: skip
        batch["advantages"] = token_rows(token_adv, rows, seq_len)
        old = [old for (_, old, _), _ in scored]
        batch["old_logprobs"] = token_rows(old, rows, seq_len, math.nan)
        # per pointer query, in `collate_rows`'s order (rows, then their examples, then the
        # example's queries): the chosen token, its old log-prob, the response's advantage
        order = [(c, adv[j] if isinstance(adv := scored[i][1], list) else adv)
                 for row in rows for i in row for j, c in enumerate(scored[i][0][2])]  # fmt: skip
        batch["pointer_index"] = torch.tensor([k for (k, _), _ in order], dtype=torch.long)
        batch["pointer_old"] = torch.tensor([lp for (_, lp), _ in order], dtype=torch.float32)
        batch["pointer_advantages"] = torch.tensor([a for _, a in order], dtype=torch.float32)
        batch["clip_eps"] = torch.tensor(self.section.clip_eps)
        if self.section.pointer_weight != 1.0:
            batch["pointer_weight"] = torch.tensor(self.section.pointer_weight)
        if self.reference is not None:
            batch["kl_coef"] = torch.tensor(self.section.kl_coef)
            batch.update(reference_scores(self.reference, batch, self.model))
        batch["rollout_reward"] = reward
        batch["rollout_success"] = torch.tensor([float(x) for x in successes]).mean()
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        states = self.section.groups == "state"
        while True:
            played = self.play_states() if states else self.play()
            self.rollouts += 1
            batch = self.state_batch(*played) if states else self.batch(played)
            for update in range(1, self.section.iterations + 1):
                self.updates = update
                yield batch  # μ > 1: π_old stays the sampling policy's, so the ratio clips

    def state_dict(self) -> dict[str, int]:
        """The rollouts done; mid-rollout (μ > 1) the current one is not counted, so a resume
        re-samples it under the saved weights."""
        mid = 0 < self.updates < self.section.iterations
        return {"rollouts": self.rollouts - mid}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.rollouts = int(state["rollouts"])


def rl_eval_section(r: AgentRLSection) -> AgentSection:
    """The held-out evaluation an RL run reports (before and after): ``r.eval_tasks`` episodes
    of ``r.eval_split``, greedy under the action grammar, with the rollouts' typing, thoughts
    and clicks."""
    return AgentSection(history=r.history, screen=r.screen, eval_split=r.eval_split,
                        eval_tasks=r.eval_tasks, eval_grounding=0, max_steps=r.eval_max_steps,
                        max_new_tokens=r.max_new_tokens, constrained=True, typing=r.typing,
                        thoughts=r.thoughts, clicks=r.clicks)  # fmt: skip


def train_agent_rl(
    config: AgentRLConfig, model: Any = None, tokenizer: Any = None, console: Console | None = None
) -> dict[str, Any]:
    """Online GRPO from ``model`` (else ``model.init_from``); exports ``model/`` and the
    held-out figures (``agent_eval.json``), and the starting agent's under the same
    evaluation — same tasks, same decoding — in ``agent_eval_start.json`` (made once, before
    training; a resumed run keeps it). With ``rl.select_every`` = k > 0 the policy is scored
    on ``rl.select_tasks`` validation tasks at the start, every k steps and at the end, and
    ``model/`` gets the best-scoring weights (`lmforge.agents.rl_select`; the summary's
    ``selected_step``)."""
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
        section = rl_eval_section(r)
        start = run_dir / "agent_eval_start.json"
        if r.eval_tasks and not start.is_file():  # the starting agent, evaluated the same way
            report = evaluate_agent_model(model, tokenizer, processor, section, t.seed)
            if dist.is_main:
                atomic_write_json(start, report)
        rollouts = AgentRollouts(model, tokenizer, processor, tasks, r, t.seed, config.data.seq_len)
        # the head gets gradient from pointer terms only: its own lr (AdamW ignores weights)
        scales = {"pointer_head.": r.pointer_lr_scale} if r.pointer_lr_scale != 1.0 else None
        trainer = Trainer(model, rollouts, config, objective=agent_pg_objective, tokenizer=tokenizer,
                          run_dir=run_dir, dist=dist, console=console, lr_scales=scales)  # fmt: skip
        selection = None
        if r.select_every:  # score the start and every few steps on validation tasks
            resumed = trainer.step if t.resume and trainer.resume() else None
            selection = Selection(run_dir, validation_tasks(r), r, resumed, write=dist.is_main)
            trainer.callbacks.append(selection.callback(tokenizer, processor))
            if trainer.step == 0:
                selection.start(model, tokenizer, processor)
        summary = trainer.fit()
        if selection is not None:  # export the best-scoring weights, not the last ones
            summary["selected_step"] = selection.restore(model)
            summary["selection"] = sorted(selection.scores.items())
        summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
        if dist.is_main:
            save_preprocessor_config(processor.config, summary["model_dir"])
        summary["rl_tasks"] = len(tasks)
        if r.eval_tasks:
            summary["agent_eval_start"] = read_json(start)
            summary["agent_eval"] = evaluate_agent_model(
                model, tokenizer, processor, section, t.seed
            )
            atomic_write_json(run_dir / "agent_eval.json", summary["agent_eval"])
        print_summary(summary, console)
    return summary


__all__ = ["AgentRollouts", "episode_reward", "rl_eval_section", "train_agent_rl"]
