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
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train.config import RunConfig, dump_config
from lmforge.train.metrics import (
    METRICS_FILE,
    PLOT_FILE,
    ExternalLoggers,
    MetricsWriter,
    ProgressBar,
    plot_training,
)
from lmforge.train.objective import Batch, Objective, causal_lm_loss
from lmforge.train.optim import build_adamw
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
    """bf16/fp16 autocast (weights stay fp32: mixed precision, Micikevicius et al. 2018)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
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
    ``callbacks`` are called as ``cb(trainer, record)`` after every step (after checkpointing).
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
        backbone = getattr(model, "model", None)
        if hasattr(backbone, "gradient_checkpointing"):
            backbone.gradient_checkpointing = self.tc.gradient_checkpointing
        elif self.tc.gradient_checkpointing:
            raise ValueError(
                f"train.gradient_checkpointing: {type(model).__name__} has no per-block setting"
            )
        self.raw_model = model
        self.model = D.wrap_model(model, self.strategy, self.dist)
        o = config.optim
        self.optimizer = build_adamw(
            self.model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps, o.fused
        )
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

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_root(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ progress & stopping
    def progress(self, elapsed: float) -> float:
        """Fraction of the run done: the furthest of steps, tokens and time toward its limit."""
        t = self.tc
        parts = []
        if t.max_steps:
            parts.append(self.step / t.max_steps)
        if t.max_tokens:
            parts.append(self.tokens / t.max_tokens)
        if t.max_time_s:
            parts.append(elapsed / t.max_time_s)
        return max(parts) if parts else 0.0

    def stop_reason(self, elapsed: float) -> str | None:
        t = self.tc
        reason = None
        if t.max_steps and self.step >= t.max_steps:
            reason = "max_steps"
        elif t.max_tokens and self.tokens >= t.max_tokens:
            reason = "max_tokens"
        elif t.max_time_s and elapsed >= t.max_time_s:
            reason = "max_time_s"
        if t.max_time_s and self.dist.enabled:  # ranks must agree on a clock-based stop
            flag = D.all_reduce_sum(torch.tensor([float(reason is not None)], device=self.device))
            if flag.item() > 0 and reason is None:
                reason = "max_time_s"
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
            self.progress(self._elapsed()),
            peak=self.config.optim.lr,
            schedule=self.config.optim.schedule,
            warmup_steps=self.config.optim.warmup_steps,
            min_ratio=self.config.optim.min_lr_ratio,
            decay_fraction=self.config.optim.decay_fraction,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        norm = float(max(1, batch_tokens(batches[0])))
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
        # Fused optimizers write the weights in place without bumping their version counters;
        # bump them so caches keyed on versions (the inference engine's fused weights) notice.
        if self.strategy != "fsdp":  # (sharded DTensor parameters are not served by engines)
            torch.autograd.graph.increment_version(list(self.raw_model.parameters()))
        self.step += 1
        self.tokens += tokens * self.dist.world_size
        self.last_loss = loss
        stats = {"loss": loss, "lr": lr, "grad_norm": float(grad_norm), "loss_tokens": count}
        return {**stats, **means}

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
        for i, batch in enumerate(self.val_data):
            if i >= self.tc.eval_batches:
                break
            with autocast_context(self.device, self.precision):
                out = self.objective(self.model, self._to_device(batch))
            loss_acc += out.loss_sum.double()
            count_acc += torch.as_tensor(out.count, device=self.device).double()
        self.model.train()
        totals = D.all_reduce_sum(torch.stack([loss_acc, count_acc]))
        if totals[1].item() == 0:
            return {}
        val_loss = totals[0].item() / totals[1].item()
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
            root = self.checkpoint_root
            if root is None:
                return False
            if self.dist.is_main:
                ckpt.remove_partial(root)
            D.barrier()
            path = ckpt.latest_checkpoint(root)
            if path is None:
                return False
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
        self.resumed_from = Path(path)
        self.last_saved = Path(path)
        return True

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
        ):
            raise ValueError(
                f"{self.checkpoint_root} holds checkpoints of an earlier run and "
                "train.resume=false; use a new out_dir (or delete that folder) to start over"
            )
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
        try:
            with bar:
                if self.resumed_from is not None:
                    bar.print(f"resumed from {self.resumed_from} (step {self.step})")
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
                    reason = self.stop_reason(self._elapsed())  # once, so save/eval agree
                    done = reason is not None
                    if (tc.eval_every and self.step % tc.eval_every == 0) or done:
                        ev = self.evaluate()
                        if ev:
                            bar.print(
                                f"step {self.step}: val loss {ev['val_loss']:.4f}, "
                                f"perplexity {ev['val_ppl']:.2f}"
                            )
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
        return self._finish(reason or "stopped", session_tokens)

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
        if self.run_dir is not None and self.dist.is_main:
            from lmforge.train.metrics import read_metrics

            records = read_metrics(self.run_dir / METRICS_FILE)
            if records and self.config.log.plot:
                summary["plot"] = str(plot_training(records, self.run_dir / PLOT_FILE))
            summary["metrics"] = str(self.run_dir / METRICS_FILE)
        return summary
