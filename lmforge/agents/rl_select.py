"""Checkpoint selection for agent RL: the policy is scored on validation tasks every few steps
and the run exports the best-scoring weights, the start included (early stopping on a
validation set).

    selection = Selection(run_dir, validation_tasks(config.rl), config.rl)
    selection.start(model, tokenizer, processor)            # step 0: the starting policy
    trainer = Trainer(…, callbacks=[selection.callback(tokenizer, processor)])
    trainer.fit(); selection.restore(model)                 # the best weights, then export

Why: online GRPO of the tiny GUI agent does not improve monotonically — its held-out success
swings by several points between steps and a second round can lose what the first won
(BENCHMARKS.md, sessions 27 and 32) — and the step to stop at is not known in advance.
The validation tasks are fresh tasks of the RL pool's split (``rl.split``; seeds counting up
from `VALIDATION_SEED`, which neither the SFT data, counting up from 0, nor a fresh pool,
counting down from 2³¹ − 1, reach), played greedily under the evaluation's decoding; the
held-out split is never used to choose. A later step replaces the best only if it scores
strictly higher, so ties keep the earlier, closer-to-the-start weights.

Files in the run folder: ``selection.json`` (every score: ``{"scores": [[step, success],
…], "best": step}``, written atomically) and ``selected.pt`` (the best weights, with their
step and score). A resumed run keeps both: the best so far stays the best so far and the
steps it replays are scored again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmforge.agents.metrics import success_rate
from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rollout import run_episodes
from lmforge.agents.tasks import Task, sample_task
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.train.distributed import unwrap
from lmforge.vision.processor import ImageProcessor

VALIDATION_SEED = 2**30  # the first validation task's seed


def validation_tasks(r: Any) -> list[Task]:
    """``r.select_tasks`` fresh tasks of ``r.split`` (``r``: an `AgentRLSection`), seeded
    `VALIDATION_SEED` + i, on ``r.screen``-pixel screens."""
    return [sample_task(VALIDATION_SEED + i, r.split, width=r.screen, height=r.screen)
            for i in range(r.select_tasks)]  # fmt: skip


def validation_success(
    model: Any, tokenizer: Any, processor: ImageProcessor, tasks: list[Task], r: Any
) -> float:
    """The share of ``tasks`` the model solves greedily, decoded as the held-out evaluation
    decodes (``r.typing``, ``r.thoughts``, ``r.clicks``, the action grammar, at most
    ``r.eval_max_steps`` steps)."""
    core = unwrap(model)
    was_training = core.training  # the policy's engine puts the model in eval mode
    try:
        policy = VLMPolicy(core, tokenizer, processor, (r.screen, r.screen), r.history,
                           r.max_new_tokens, constrained=True, typing=r.typing,
                           thoughts=r.thoughts, clicks=r.clicks)  # fmt: skip
        runs = run_episodes(policy, tasks, r.eval_max_steps)
    finally:
        core.train(was_training)
    return success_rate([run.record for run in runs])


class Selection:
    """The scores so far and the best weights (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        tasks: list[Task],
        r: Any,
        resumed_step: int | None = None,
        write: bool = True,
    ):
        """``resumed_step``: the step a resumed run goes on from (its files are read; None: a
        new run, whose earlier files are ignored and overwritten); ``write``: this process
        writes the files (the main one; every process scores, so all restore the same)."""
        self.run_dir, self.tasks, self.r, self.write = Path(run_dir), tasks, r, write
        self.scores: dict[int, float] = {}
        self.best: tuple[int, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        saved, record = self.run_dir / "selected.pt", self.run_dir / "selection.json"
        if resumed_step is not None and saved.is_file():  # the best so far, scores to the step
            blob = torch.load(saved, map_location="cpu", weights_only=True)
            self.best, self.best_state = (int(blob["step"]), float(blob["success"])), blob["state"]
            if record.is_file():
                self.scores = {int(s): float(v) for s, v in read_json(record)["scores"]
                               if int(s) <= resumed_step}  # fmt: skip
            self.scores[self.best[0]] = self.best[1]

    def score(self, model: Any, tokenizer: Any, processor: ImageProcessor, step: int) -> float:
        """Score the model at ``step``; keep its weights if it is the best so far (strictly)."""
        success = validation_success(model, tokenizer, processor, self.tasks, self.r)
        self.scores[step] = success
        if self.best is None or success > self.best[1]:
            self.best = (step, success)
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in unwrap(model).state_dict().items()}  # fmt: skip
            if self.write:
                with atomic_path(self.run_dir / "selected.pt") as tmp:
                    torch.save({"step": step, "success": success, "state": self.best_state}, tmp)
        if self.write:
            atomic_write_json(self.run_dir / "selection.json",
                              {"scores": sorted(self.scores.items()), "best": self.best[0]})  # fmt: skip
        return success

    def start(self, model: Any, tokenizer: Any, processor: ImageProcessor) -> None:
        """Score the starting policy (step 0) unless a resumed run already did."""
        if 0 not in self.scores:
            self.score(model, tokenizer, processor, 0)

    def callback(
        self, tokenizer: Any, processor: ImageProcessor
    ) -> Callable[[Any, dict[str, Any]], None]:
        """A Trainer callback: score every ``r.select_every`` steps and at the last step."""

        def after_step(trainer: Any, record: dict[str, Any]) -> None:
            step = trainer.step
            if step % self.r.select_every == 0 or trainer.eval_due:
                success = self.score(trainer.model, tokenizer, processor, step)
                if self.write:
                    trainer.console.print(f"step {step}: validation success {success:.3f} "
                                          f"(best: step {self.best[0]}, {self.best[1]:.3f})")  # fmt: skip

        return after_step

    def restore(self, model: Any) -> int | None:
        """Load the best weights into ``model`` and return their step (None, and ``model``
        unchanged, when no step was scored)."""
        if self.best is None or self.best_state is None:
            return None
        unwrap(model).load_state_dict(self.best_state)
        return self.best[0]


__all__ = ["VALIDATION_SEED", "Selection", "validation_success", "validation_tasks"]
