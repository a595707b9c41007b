"""The one training loop: pretraining, SFT and (through `Objective`) preference / RL losses.

    trainer = Trainer(model, train_loader, config, val_data=val_loader, run_dir="runs/x")
    summary = trainer.fit()

One optimizer step takes ``grad_accum`` micro-batches per rank. An `Objective` maps
``(model, batch)`` to a *sum* of per-unit losses and the number of units (for language
modelling: summed next-token cross-entropy and the number of predicted tokens). The step's
gradient is that of

    L = Σ_ranks Σ_micro loss_sum / Σ_ranks Σ_micro count

the mean over every loss unit of the global batch, so the result does not depend on how the
global batch is split into micro-batches, accumulation steps and ranks (a per-micro-batch mean
would over-weight short micro-batches). Backward runs on ``loss_sum / c`` with ``c`` the first
micro-batch's element count (to keep fp16 gradients in range); the gradients are then
multiplied by ``c · world / Σ count`` (DDP and FSDP average over ranks, hence ``world``).

Then: clip the global gradient norm, AdamW step at the scheduled lr, log, evaluate,
checkpoint. A non-finite loss stops the run before the weights change (`TrainingDiverged`,
naming the step); the last checkpoint on disk is the last good one.

The learning rate is a function of the step alone (`lmforge.train.budget`: a time budget
stops a run, never bends its schedule). A resume takes the newest checkpoint whose manifest
verifies (`lmforge.train.manifest`) and continues only the same run (`resume_rules`); a
SIGINT/SIGTERM stops at the next step boundary with a checkpoint (`interrupt`).

This file is long because the `Trainer` is one class meant to be read top to bottom — step,
evaluate, save / resume, fit — and its invariants (token-weighted accumulation, exact resume,
the order of clip → step → log → evaluate → checkpoint) span those methods; the pieces that
stand alone (optimizer, schedule, checkpoint files, metrics, distributed setup) have their
own modules.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from lmforge.io import atomic_write_text
from lmforge.nn.fp8 import convert_to_fp8
from lmforge.train import budget
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train.config import RunConfig, dump_config
from lmforge.train.interrupt import StopSignals, TrainingInterrupted
from lmforge.train.manifest import verify_manifest
from lmforge.train.metrics import (
    METRICS_FILE,
    PLOT_FILE,
    ExternalLoggers,
    MetricsWriter,
    ProgressBar,
    plot_training,
)
from lmforge.train.moe_balance import has_moe, update_correction_bias
from lmforge.train.objective import Batch, Objective, causal_lm_loss
from lmforge.train.optim import build_adamw
from lmforge.train.resume_rules import (
    ResumeRefused,
    check_resume,
    config_changes,
    regroup_batch_changes,
)
from lmforge.train.schedule import lr_at


class TrainingDiverged(FloatingPointError):
    """The loss (or gradient norm) became NaN or infinite; the message names the step."""


def batch_tokens(batch: Batch) -> int:
    """Token positions in a batch: every ``*input_ids`` tensor (``input_ids``, or e.g.
    ``chosen_input_ids`` + ``rejected_input_ids`` for a preference batch)."""
    return sum(
        v.numel()
        for k, v in batch.items()
        if k.endswith("input_ids") and isinstance(v, torch.Tensor)
    )


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast (weights stay fp32: mixed precision, Micikevicius et al. 2018).

    fp8: the linear layers are `Fp8Linear` (converted by the `Trainer`); the rest runs in
    bf16 on a GPU, fp32 on CPU."""
    if precision == "fp32" or (precision == "fp8" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision in ("bf16", "fp8") else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on a GPU that supports it (else fp16), fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return precision


class Trainer:
    """Runs `RunConfig.train` over ``train_data`` with the given `Objective`.

    ``train_data`` yields batch dicts endlessly and has ``state_dict()`` /
    ``load_state_dict()`` (the data position saved in checkpoints); ``val_data`` is another
    such loader (its first ``eval_batches`` batches are used each time) or a list of batches.
    ``callbacks`` are called as ``cb(trainer, record)`` after every step (after checkpointing);
    ``trainer.eval_due`` says whether that step evaluated (every ``eval_every`` steps and the
    last one, whatever stopped the run).
    ``optimizer``, when given, builds the optimizer from the (wrapped) model instead of AdamW
    (e.g. RMSProp for WGAN, `lmforge.generative.gan_training`); the lr is still scheduled.
    ``lr_scales`` ({name part: s}): the AdamW's parameters whose name holds that part learn at s
    × the scheduled lr (`lmforge.train.optim.param_groups`).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Iterable[Batch],
        config: RunConfig,
        *,
        val_data: Any = None,
        objective: Objective = causal_lm_loss,
        tokenizer: Any = None,
        run_dir: str | Path | None = None,
        dist: D.DistInfo | None = None,
        console: Console | None = None,
        callbacks: list[Callable[[Trainer, dict[str, Any]], None]] | None = None,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
        lr_scales: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.tc = config.train
        self.dist = dist or D.init_distributed(self.tc.device)
        self.device = self.dist.device
        self.precision = resolve_precision(self.tc.precision, self.device)
        if objective is causal_lm_loss and self.tc.loss_chunk_size:
            objective = functools.partial(causal_lm_loss, chunk_size=self.tc.loss_chunk_size)
        self.objective = objective
        self.tokenizer = tokenizer
        self.train_data = train_data
        self.val_data = val_data
        self._val_start = val_data.state_dict() if hasattr(val_data, "state_dict") else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.console = console or Console()
        self.callbacks = list(callbacks or [])
        self.eval_due = False  # set each step before the callbacks run

        strategy = self.tc.distributed
        if strategy == "auto":
            strategy = "ddp" if self.dist.enabled else "none"
        if strategy == "none" and self.dist.enabled:
            raise ValueError(
                f"train.distributed=none with {self.dist.world_size} processes would train "
                "unsynchronised copies; use ddp or fsdp (or launch one process)"
            )
        if strategy == "fsdp" and self.precision == "fp16":
            raise ValueError("train.precision=fp16 is not supported with FSDP; use bf16")
        self.strategy = strategy if self.dist.enabled else "none"
        model.to(self.device)
        if self.precision == "fp8":  # FP8 GEMMs, fp32 master weights (DeepSeek-V3 §3.3)
            convert_to_fp8(model)
        self.moe = has_moe(model)  # aux-loss-free bias update after each optimizer step
        backbone = getattr(model, "model", None)
        if hasattr(backbone, "gradient_checkpointing"):
            backbone.gradient_checkpointing = self.tc.gradient_checkpointing
        elif self.tc.gradient_checkpointing:
            raise ValueError(
                f"train.gradient_checkpointing: {type(model).__name__} has no per-block setting"
            )
        self.expert_params: list[nn.Parameter] = []  # this rank's own (train.expert_parallel)
        if self.tc.expert_parallel and self.dist.enabled:
            if self.strategy != "ddp":
                raise ValueError(
                    f"train.expert_parallel needs train.distributed=ddp, not {self.strategy}"
                )
            if not self.moe:
                raise ValueError("train.expert_parallel: the model has no MoE layers")
            owned = set(D.shard_experts(model, self.dist))
            self.expert_params = [p for n, p in model.named_parameters() if n in owned]
        self.raw_model = model
        self.model = D.wrap_model(model, self.strategy, self.dist)
        o = config.optim
        moments = o.moment_dtype
        if moments == "auto":
            moments = "bf16" if self.precision == "fp8" else "fp32"
        self.optimizer = build_adamw(
            self.model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps, o.fused,
            moment_dtype=torch.bfloat16 if moments == "bf16" else torch.float32,
            lr_scales=lr_scales,
        ) if optimizer is None else optimizer(self.model)  # fmt: skip
        if self.tc.compile:
            self.model = torch.compile(self.model)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        self.step = 0
        self.tokens = 0
        self.elapsed_prev = 0.0  # wall time of earlier sessions of this run
        self.last_loss: float | None = None
        self.last_eval: dict[str, float] = {}
        self.resumed_from: Path | None = None
        self.last_saved: Path | None = None
        self.resume_notes: list[str] = []  # accepted config changes, printed on resume
        self.signals = StopSignals()
        # Step-denominated limits and the schedule length, fixed up front (lmforge.train.budget)
        self.epoch_limit = budget.epoch_steps(train_data, self.tc.epochs, self.tc.grad_accum)
        if self.tc.epochs and self.epoch_limit is None and not hasattr(train_data, "epoch"):
            raise ValueError(
                f"train.epochs={self.tc.epochs:g}: this run's data ({type(train_data).__name__}) "
                "has no epochs; limit it with train.max_steps or train.max_tokens"
            )
        self.step_limit = budget.step_limit(self.tc.max_steps, self.epoch_limit)
        self.schedule_steps = budget.schedule_length(
            config.optim.schedule_steps, self.tc.max_steps, self.epoch_limit
        )

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_root(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ progress & stopping
    def schedule_progress(self) -> float:
        """How far the learning-rate schedule is: a function of the step (and the tokens the
        data fixes per step), never of the clock (`lmforge.train.budget`)."""
        return budget.schedule_progress(
            self.step, self.tokens, self.schedule_steps, self.tc.max_tokens,
            declared=bool(self.config.optim.schedule_steps),
        )  # fmt: skip

    def progress(self, elapsed: float) -> float:
        """Fraction of the run done (for the progress bar): the furthest of steps, epochs,
        tokens and time toward its limit."""
        t = self.tc
        parts = []
        if self.step_limit:
            parts.append(self.step / self.step_limit)
        if t.max_tokens:
            parts.append(self.tokens / t.max_tokens)
        if t.max_time_s:
            parts.append(elapsed / t.max_time_s)
        return max(parts) if parts else 0.0

    def stop_reason(self, elapsed: float) -> str | None:
        t = self.tc
        reason = None
        epochs_done = self.epoch_limit is None and t.epochs and self.train_data.epoch >= t.epochs
        if t.max_steps and self.step >= t.max_steps:
            reason = "max_steps"
        elif (self.epoch_limit and self.step >= self.epoch_limit) or epochs_done:
            reason = "epochs"
        elif t.max_tokens and self.tokens >= t.max_tokens:
            reason = "max_tokens"
        elif t.max_time_s and elapsed >= t.max_time_s:
            reason = "max_time_s"
        elif self.signals.received:
            reason = "interrupted"
        if self.dist.enabled:  # ranks must agree on a clock- or signal-based stop
            flags = [reason == "max_time_s", reason == "interrupted"]
            flags = D.all_reduce_sum(torch.tensor(flags, dtype=torch.float32, device=self.device))
            if reason is None and flags[0].item() > 0:
                reason = "max_time_s"
            elif reason is None and flags[1].item() > 0:
                reason = "interrupted"
        return reason

    # ------------------------------------------------------------------ one step
    def _to_device(self, batch: Batch) -> Batch:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def _sync_context(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch."""
        if last or self.strategy == "none":
            if self.strategy == "fsdp":
                D.unwrap(self.model).set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return D.ddp_module(self.model).no_sync()
        D.unwrap(self.model).set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        """One optimizer step over ``batches`` (this rank's micro-batches); see module doc."""
        lr = lr_at(
            self.step,
            self.schedule_progress(),
            peak=self.config.optim.lr,
            schedule=self.config.optim.schedule,
            warmup_steps=self.config.optim.warmup_steps,
            min_ratio=self.config.optim.min_lr_ratio,
            decay_fraction=self.config.optim.decay_fraction,
        )
        for group in self.optimizer.param_groups:  # a group's lr_scale: `optim.param_groups`
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        norm = float(max(1, batch_tokens(batches[0])))
        if self.dist.enabled:  # one c on every rank (DDP/FSDP average the scaled gradients)
            c = D.all_reduce_sum(torch.tensor([norm], device=self.device, dtype=torch.float64))
            norm = c.item() / self.dist.world_size
        loss_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        count_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        extra: dict[str, torch.Tensor] = {}
        tokens = 0
        for i, batch in enumerate(batches):
            batch = self._to_device(batch)
            tokens += batch_tokens(batch)
            with self._sync_context(last=i == len(batches) - 1):
                with autocast_context(self.device, self.precision):
                    out = self.objective(self.model, batch)
                scaled = out.loss_sum / norm
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_acc += out.loss_sum.detach().double()
            count_acc += torch.as_tensor(out.count, device=self.device).double()
            for key, value in out.metrics.items():
                value = torch.as_tensor(value, device=self.device).detach().double()
                extra[key] = extra.get(key, 0) + value
        keys = sorted(extra)
        totals = D.all_reduce_sum(torch.stack([loss_acc, count_acc, *(extra[k] for k in keys)]))
        loss_sum, count = totals[0].item(), totals[1].item()
        means = {k: totals[2 + i].item() / max(count, 1.0) for i, k in enumerate(keys)}
        loss = loss_sum / max(count, 1.0)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"step {self.step + 1}: loss is {loss} (sum {loss_sum} over {count:.0f} "
                f"tokens); weights were not updated"
                + (f"; last good checkpoint: {self.last_saved}" if self.last_saved else "")
            )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        factor = norm * self.dist.world_size / max(count, 1.0)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)
        clip = self.config.optim.grad_clip
        if self.expert_params:  # own experts: gradients of all ranks' tokens, not averaged
            owned = {id(p) for p in self.expert_params}
            for p in self.expert_params:
                if p.grad is not None:
                    p.grad.div_(self.dist.world_size)
            grad_norm = D.clip_expert_parallel_grads(
                [p for p in params if id(p) not in owned],
                [p for p in params if id(p) in owned],
                clip if clip > 0 else float("inf"),
            )
        else:
            grad_norm = nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        if self.scaler is None and not torch.isfinite(grad_norm):
            # (with fp16 loss scaling an overflow is routine: the scaler skips the step)
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"step {self.step + 1}: gradient norm is {float(grad_norm)} at loss {loss}; "
                "weights were not updated"
                + (f"; last good checkpoint: {self.last_saved}" if self.last_saved else "")
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        moe_stats = {}
        if self.moe:  # b_i += γ·sign(mean load − load_i) (lmforge.train.moe_balance)
            gamma = self.tc.moe_bias_update_speed
            violations = update_correction_bias(self.raw_model, gamma, D.all_reduce_sum)
            moe_stats["moe_maxvio"] = sum(violations.values()) / len(violations)
        # Fused optimizers write the weights in place without bumping their version counters;
        # bump them so caches keyed on versions (the inference engine's fused weights) notice.
        if self.strategy != "fsdp":  # (sharded DTensor parameters are not served by engines)
            torch.autograd.graph.increment_version(list(self.raw_model.parameters()))
        self.step += 1
        self.tokens += tokens * self.dist.world_size
        self.last_loss = loss
        stats = {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "loss_tokens": count}
        return {**stats, **moe_stats, **means}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (mean over every predicted token) and perplexity ``exp(loss)``."""
        if self.val_data is None:
            return {}
        if self._val_start is not None:
            self.val_data.load_state_dict(self._val_start)
        self.model.eval()
        loss_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        count_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        # An objective with ``validation_metrics = True`` (preference / reward-model losses) is
        # judged by its own metrics (means per unit, as in training), not by a perplexity.
        own = bool(getattr(self.objective, "validation_metrics", False))
        extra: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(self.val_data):
            if i >= self.tc.eval_batches:
                break
            with autocast_context(self.device, self.precision):
                out = self.objective(self.model, self._to_device(batch))
            loss_acc += out.loss_sum.double()
            count_acc += torch.as_tensor(out.count, device=self.device).double()
            for key, value in out.metrics.items() if own else ():
                value = torch.as_tensor(value, device=self.device).detach().double()
                extra[key] = extra.get(key, 0) + value
        self.model.train()
        keys = sorted(extra)
        totals = D.all_reduce_sum(torch.stack([loss_acc, count_acc, *(extra[k] for k in keys)]))
        if totals[1].item() == 0:
            return {}
        val_loss = totals[0].item() / totals[1].item()
        if own:
            n = totals[1].item()
            means = {f"val_{k}": totals[2 + i].item() / n for i, k in enumerate(keys)}
            self.last_eval = {"val_loss": val_loss, **means}
            return dict(self.last_eval)
        val_ppl = math.exp(val_loss) if val_loss < 700 else float("inf")
        self.last_eval = {"val_loss": val_loss, "val_ppl": val_ppl}
        return dict(self.last_eval)

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict[str, Any]:
        loader = self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None
        return {
            "tokens": self.tokens,
            "elapsed_s": self._elapsed(),
            "loss": self.last_loss,
            "schedule": {"name": self.config.optim.schedule, "lr": self._current_lr()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.config.to_dict(),
            "loader": loader,
        }

    def save(self) -> Path:
        """Checkpoint the current step under ``<run_dir>/checkpoints`` (collective)."""
        if self.checkpoint_root is None:
            raise ValueError("Trainer has no run_dir to save checkpoints in")
        path = ckpt.save_checkpoint(
            self.checkpoint_root,
            self.step,
            self.model,
            self.optimizer,
            self.trainer_state(),
            tokenizer=self.tokenizer,
            keep_last=self.tc.keep_last,
        )
        self.last_saved = path
        return path

    def export_model(self, path: str | Path) -> Path:
        """Write the current weights as an HF folder (with the tokenizer; collective)."""
        state = ckpt.full_model_state(self.model)
        if self.dist.is_main:
            ckpt.write_weights(self.model, state, Path(path), self.tokenizer)
        D.barrier()
        return Path(path)

    def resume(self, path: str | Path | None = None, *, restore_data: bool = True) -> bool:
        """Load ``path`` (default: the latest complete checkpoint of the run); False if none.

        ``restore_data=False`` keeps the data loader where it is (e.g. resuming on a different
        number of processes, where the saved per-rank positions do not apply).
        """
        if path is None:
            path = self._verified_checkpoint()
            if path is None:
                return False
        else:
            verify_manifest(path)  # CheckpointCorrupt names the bad file
        state = ckpt.read_trainer_state(path)
        if state.get("config") is not None:  # the saved run must be this run (resume_rules)
            changes = config_changes(state["config"], self.config.to_dict())
            saved_world = len(state.get("rng") or [None])
            changes = regroup_batch_changes(changes, state["config"], self.config.to_dict(),
                                            saved_world, self.dist.world_size)  # fmt: skip
            self.resume_notes = check_resume(changes, self.tc.resume, path)
        saved_loader = ckpt.rank_loader_state(state, path) if restore_data else None
        if saved_loader is not None and hasattr(self.train_data, "load_state_dict"):
            try:  # before any weight is loaded: the data behind the saved position changed?
                self.train_data.load_state_dict(saved_loader)
            except ValueError as exc:
                raise ResumeRefused(
                    f"{path}: the training data differs from the run's ({exc}). Rerun with "
                    "the run's original data to continue it; to train these weights on the "
                    f"new data, start a new run from them: --out NEW_DIR model.init_from={path} "
                    "(or train.resume=false to start over here)"
                ) from exc
        try:
            state = ckpt.load_checkpoint(
                path, self.model, self.optimizer, restore_data=restore_data
            )
        except (RuntimeError, KeyError) as exc:  # e.g. the model or optimizer changed shape
            raise ValueError(
                f"{path}: cannot resume this run from it ({str(exc).splitlines()[0]}); use a "
                "new out_dir or train.resume=false to start over"
            ) from exc
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.elapsed_prev = float(state.get("elapsed_s", 0.0))
        self.last_loss = state.get("loss")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("loader") is not None:
            self.train_data.load_state_dict(state["loader"])
        o = self.config.optim  # the saved param groups carry the old hyperparameters
        for i, group in enumerate(self.optimizer.param_groups):  # (group 0 decays: optim.py)
            group.update(betas=(o.beta1, o.beta2), eps=o.eps)
            group["weight_decay"] = o.weight_decay if i == 0 else group["weight_decay"]
        self.resumed_from = Path(path)
        self.last_saved = Path(path)
        return True

    def _verified_checkpoint(self) -> Path | None:
        """The newest checkpoint of the run whose manifest verifies (hashed on the main
        rank); newer bad ones are reported by file and moved to ``bad-step-…``; a
        `ResumeRefused` naming each problem when checkpoints exist but none verifies."""
        root = self.checkpoint_root
        if root is None:
            return None
        found, problems = None, []
        if self.dist.is_main:
            ckpt.remove_partial(root)
            found, problems = ckpt.find_resumable(root)
            if found is not None:
                for bad in problems:
                    moved = ckpt.set_aside(bad.folder)
                    what = f"{bad.file}: {bad.problem}" if bad.file else bad.problem
                    self.console.print(
                        f"[bold red]checkpoint {bad.folder.name} is damaged[/] ({what}); "
                        f"moved to {moved.name}, resuming from {found.name}",
                        highlight=False,
                    )
        found, problems = D.all_gather_objects((found, [str(p) for p in problems]))[0]
        if found is None and problems:
            raise ResumeRefused(
                f"{root}: no checkpoint verifies, so this run cannot be resumed:\n  "
                + "\n  ".join(problems)
                + "\nStart over with train.resume=false (the checkpoints are moved aside), "
                "write the run elsewhere with --out NEW_DIR, or start a new run from weights "
                "that still load with model.init_from=<checkpoint folder>"
            )
        return found

    # ------------------------------------------------------------------ the run
    def _elapsed(self) -> float:
        start = getattr(self, "_session_start", None)
        return self.elapsed_prev + (time.perf_counter() - start if start is not None else 0.0)

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def fit(self) -> dict[str, Any]:
        """Train until a stopping condition; return a summary (see `metrics.format_summary`)."""
        tc, main = self.tc, self.dist.is_main
        if tc.resume and self.run_dir is not None and self.resumed_from is None:
            self.resume()
        elif (
            self.run_dir is not None
            and self.resumed_from is None
            and ckpt.list_checkpoints(self.checkpoint_root)
        ):  # train.resume=false: start over, the earlier run's checkpoints kept aside
            if main:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                moved = self.checkpoint_root.with_name(f"checkpoints.replaced-{stamp}")
                self.checkpoint_root.rename(moved)
                self.console.print(
                    f"[bold yellow]train.resume=false[/]: starting over; the earlier run's "
                    f"checkpoints were moved to {moved}", highlight=False,
                )  # fmt: skip
            D.barrier()
        writer = loggers = None
        if main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.config))
            resume_step = self.step if self.resumed_from is not None else None
            writer = MetricsWriter(self.run_dir / METRICS_FILE, resume_step)
            loggers = ExternalLoggers(
                self.run_dir,
                self.config.log.tensorboard,
                self.config.log.wandb,
                self.config.log.wandb_project,
                self.config.to_dict(),
            )
        self._session_start = time.perf_counter()
        session_tokens = 0
        data = iter(self.train_data)
        bar = ProgressBar(self.console, enabled=main and self.config.log.progress)
        if not main:
            bar.console = Console(quiet=True)
        reason = None
        first_step_done: float | None = None  # clock after this session's first step
        first_step = 0
        if (
            self.resumed_from is not None
            and writer is not None
            and any(n.startswith("changed with train.resume=force") for n in self.resume_notes)
        ):
            writer.write({"step": self.step, "event": "resume", "from": str(self.resumed_from),
                          "changes": self.resume_notes})  # fmt: skip
        try:
            with bar, self.signals:
                if self.resumed_from is not None:
                    bar.print(f"resumed from {self.resumed_from} (step {self.step})")
                    for note in self.resume_notes:
                        bar.print(f"  {note}")
                for line in self._plan_lines():
                    bar.print(line)
                reason = self.stop_reason(self._elapsed())
                while reason is None:
                    try:
                        batches = [next(data) for _ in range(tc.grad_accum)]
                    except StopIteration:  # a finite iterable (the contract's loaders are endless)
                        reason = "data_exhausted"
                        break
                    before = self.tokens
                    stats = self.train_step(batches)
                    session_tokens += self.tokens - before
                    session_time = time.perf_counter() - self._session_start
                    record = {
                        "step": self.step,
                        **stats,
                        "tokens": self.tokens,
                        "tokens_per_s": session_tokens / max(session_time, 1e-9),
                        "elapsed_s": self._elapsed(),
                    }
                    if writer is not None and self.step % tc.log_every == 0:
                        writer.write(record)
                        loggers.log(record)
                    bar.update(self.progress(self._elapsed()), record)
                    now = time.perf_counter()
                    if first_step_done is None:
                        first_step_done, first_step = now, self.step
                    elif self.step - first_step == 2 and tc.max_time_s:  # speed known: warn
                        warning = budget.time_budget_warning(
                            tc.max_time_s, self._elapsed(), self.step,
                            (now - first_step_done) / 2, self.step_limit,
                        )  # fmt: skip
                        if warning:
                            bar.print(f"[bold yellow]warning:[/] {warning}")
                    reason = self.stop_reason(self._elapsed())  # once, so save/eval agree
                    done = reason is not None
                    if reason == "interrupted":
                        if self.run_dir is not None:
                            self.save()
                        break
                    # callbacks read it too (sample grids etc. on the same steps as eval)
                    self.eval_due = bool(tc.eval_every and self.step % tc.eval_every == 0) or done
                    if self.eval_due:
                        ev = self.evaluate()
                        if ev:
                            more = "".join(f", {k[4:]} {v:.4g}" for k, v in ev.items()
                                           if k not in ("val_loss", "val_ppl"))  # fmt: skip
                            ppl = f", perplexity {ev['val_ppl']:.2f}" if "val_ppl" in ev else ""
                            bar.print(f"step {self.step}: val loss {ev['val_loss']:.4f}{ppl}{more}")
                            if writer is not None:
                                writer.write({"step": self.step, **ev})
                                loggers.log({"step": self.step, **ev})
                    if self.run_dir is not None and (
                        (tc.save_every and self.step % tc.save_every == 0) or done
                    ):
                        self.save()
                    for callback in self.callbacks:
                        callback(self, record)
                saved = self.last_saved is not None and ckpt.step_of(self.last_saved) == self.step
                if reason == "data_exhausted" and self.run_dir and self.step and not saved:
                    self.save()
        finally:
            if writer is not None:
                writer.close()
                loggers.close()
        if reason == "interrupted":
            self._interrupted()
        return self._finish(reason or "stopped", session_tokens)

    def _plan_lines(self) -> list[str]:
        """What stops this run, said up front when a time budget could cut it short."""
        tc = self.tc
        lines = []
        if tc.epochs and self.epoch_limit:
            lines.append(f"train.epochs={tc.epochs:g}: {self.epoch_limit} steps")
            if tc.max_steps and tc.max_steps < self.epoch_limit:
                lines.append(
                    f"[bold yellow]warning:[/] train.max_steps={tc.max_steps} stops this run "
                    f"before train.epochs={tc.epochs:g} ({self.epoch_limit} steps)"
                )
        if tc.max_time_s and self.step_limit:
            lines.append(
                f"[bold yellow]time budget:[/] train.max_time_s={tc.max_time_s:g} stops this run "
                f"after {tc.max_time_s:g} s even if step {self.step_limit} is not reached "
                "(an estimate in steps follows after the first steps)"
            )
        return lines

    def _interrupted(self) -> None:
        """After a SIGINT/SIGTERM stop: say where the run was saved and how to resume."""
        name = self.signals.received or "a signal"
        if self.last_saved is None:
            message = f"{name}: training stopped at step {self.step}; nothing was saved"
        else:
            message = (
                f"{name}: training stopped at step {self.step}; checkpoint {self.last_saved}. "
                f"Run the same command again to resume from step {ckpt.step_of(self.last_saved)}"
                " (train.resume=true, the default)."
            )
        self.console.print(f"[bold yellow]{message}[/]", highlight=False)
        raise TrainingInterrupted(message, self.last_saved)

    def _finish(self, reason: str, session_tokens: int) -> dict[str, Any]:
        session_time = time.perf_counter() - self._session_start
        summary: dict[str, Any] = {
            "stop_reason": reason,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self._elapsed(),
            "tokens_per_s": session_tokens / max(session_time, 1e-9),
            "loss": self.last_loss,
            "val_loss": self.last_eval.get("val_loss"),
            "val_ppl": self.last_eval.get("val_ppl"),
            "checkpoint": str(self.last_saved) if self.last_saved else None,
        }
        note = budget.stop_note(reason, self.step, self.step_limit, self.tc.max_time_s)
        if note:  # (format_summary prints it in the summary)
            summary["note"] = note
        if self.run_dir is not None and self.dist.is_main:
            from lmforge.train.metrics import read_metrics

            records = read_metrics(self.run_dir / METRICS_FILE)
            if records and self.config.log.plot:
                summary["plot"] = str(plot_training(records, self.run_dir / PLOT_FILE))
            summary["metrics"] = str(self.run_dir / METRICS_FILE)
        return summary
