"""DPO-family preference optimisation from a `DPOConfig` (``lmforge dpo``), plus the
preference data and training wiring it shares with reward modelling (`rm_trainer`).

    config = load_config("recipes/dpo-tiny.yaml", ['model.init_from="runs/sft/model"'], DPOConfig)
    summary = train_dpo(config)                                   # reference: a frozen copy
    summary = train_dpo(config, peft=PeftSettings(method="lora"))  # reference: the base

Without ``data.paths`` the run trains on built-in synthetic preferences (correct vs wrong
answers to the questions of `lmforge.data.tasks.chat`), so it runs offline. The run folder
is as for SFT: ``config.yaml``, ``metrics.jsonl`` (loss, ``rewards/accuracy``,
``rewards/margin``, … per step; validation: ``val_loss``, ``val_rewards/accuracy``,
``val_rewards/margin``, ``val_rewards/chosen``, ``val_rewards/rejected``), ``training.png``, resumable ``checkpoints/`` and ``model/``
— the policy, or with PEFT its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from lmforge.align.preference_data import (
    PreferenceLoader,
    load_preference_pairs,
    write_preference_jsonl,
)
from lmforge.align.preference_objective import REFERENCE_FREE, PreferenceObjective
from lmforge.align.reference import frozen_copy, precompute_reference_logps
from lmforge.config import ConfigError
from lmforge.models.hf import load_model
from lmforge.peft.settings import PeftSettings, apply_peft
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo, barrier
from lmforge.train.loop import Trainer
from lmforge.train.run import (
    check_vocab,
    fit_and_export,
    init_model_dir,
    print_summary,
    training_run,
)
from lmforge.train.sft import train_and_validation


@dataclass
class DPOSection:
    """The DPO-family loss and where its reference policy comes from."""

    loss_type: Literal["sigmoid", "ipo", "simpo", "orpo"] = "sigmoid"
    beta: float = 0.1  # DPO / IPO β, SimPO β, ORPO λ
    label_smoothing: float = 0.0  # conservative DPO ε (sigmoid, simpo)
    gamma: float = 0.5  # SimPO target margin
    reference: Literal["auto", "copy", "adapter"] = "auto"  # auto: adapter with --peft, else copy
    precompute_reference: bool = False  # reference log-probs once before training
    layout: Literal["packed", "padded"] = "packed"
    length_groups: int = 8  # padded: forward passes per batch, rows grouped by length


@dataclass
class DPOConfig(RunConfig):
    dpo: DPOSection = field(default_factory=DPOSection)


def validate_dpo(section: DPOSection) -> None:
    """Range checks of the ``dpo`` section."""
    if section.beta <= 0:
        raise ConfigError(f"dpo.beta={section.beta} must be > 0")
    if not 0 <= section.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing={section.label_smoothing} must be in [0, 0.5)")
    if section.length_groups < 1:
        raise ConfigError(f"dpo.length_groups={section.length_groups} must be >= 1")
    if section.label_smoothing and section.loss_type not in ("sigmoid", "simpo"):
        raise ConfigError("dpo.label_smoothing applies to loss_type sigmoid or simpo only")


def train_dpo(
    config: DPOConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Preference-optimise ``model.init_from`` as ``config.dpo`` says; with ``peft`` only
    the adapter trains (and, with ``dpo.reference`` auto, the base is the reference).
    Returns the Trainer's summary with ``model_dir``."""
    validate_dpo(config.dpo)
    p = config.dpo
    with_peft = peft is not None and bool(peft.method)
    if p.reference == "adapter" and not with_peft:
        raise ValueError("dpo.reference=adapter needs --peft (the reference is the base model)")
    with training_run(config, dist, console) as (dist, console):
        model_dir = init_model_dir(config, "dpo")
        tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
        pairs, val_pairs = preference_pairs(config, dist, console, tokenizer)
        model = load_model(model_dir, dtype=torch.float32)
        check_vocab(model_dir, tokenizer, model.config.vocab_size)

        mode = p.reference
        if mode == "auto":
            mode = "adapter" if with_peft else "copy"
        needs_ref = p.loss_type not in REFERENCE_FREE
        reference = frozen_copy(model) if needs_ref and mode == "copy" else None
        apply_peft(model, peft, str(model_dir))
        if needs_ref and mode == "adapter":
            reference = "adapter"
        pad = tokenizer.pad_token_id or 0
        loader, val = preference_loaders(config, dist, pairs, val_pairs, p.layout, pad)

        if needs_ref and p.precompute_reference:
            ref_module = reference if isinstance(reference, torch.nn.Module) else None
            (ref_module or model).to(dist.device)
            for data in filter(None, (loader, val)):
                data.reference_logps = precompute_reference_logps(
                    ref_module, data, policy=model, batch_pairs=config.train.batch_size
                )
            reference = None  # the batches carry ref_logps; the frozen copy can go
            console.print("[bold]reference[/]: log-probs precomputed for every pair")
        else:
            described = {"copy": "a frozen copy of the initial policy",
                         "adapter": "the base model (adapter disabled)"}  # fmt: skip
            what = described[mode] if needs_ref else "none (reference-free loss)"
            console.print(f"[bold]reference[/]: {what}")
        objective = PreferenceObjective(p.loss_type, p.beta, label_smoothing=p.label_smoothing,
                                        gamma=p.gamma, reference=reference,
                                        length_groups=p.length_groups)  # fmt: skip
        console.print(
            f"[bold]objective[/]: {p.loss_type} (β={p.beta}"
            + (f", ε={p.label_smoothing}" if p.label_smoothing else "")
            + (f", γ={p.gamma}" if p.loss_type == "simpo" else "")
            + f"), {config.train.batch_size} pairs per micro-batch, {p.layout} sequences"
        )
        summary = fit_preference(config, model, tokenizer, loader, val, objective, dist, console)
    return summary


# ---------------------------------------------------------------------- shared with rm
def preference_pairs(config: RunConfig, dist: DistInfo, console: Console, tokenizer):
    """Train / validation pairs from ``data.paths`` (synthetic pairs written into the run
    folder when it is empty; ``data.paths`` is then set to that file)."""
    d, t = config.data, config.train
    if not d.paths:
        path = Path(config.out_dir) / "data" / "synthetic-preferences.jsonl"
        if dist.is_main:
            write_preference_jsonl(path, d.synthetic_docs, t.seed)
        barrier()
        d.paths = [str(path)]
        console.print(f"[bold]data[/]: {d.synthetic_docs} synthetic preference pairs (no --data)")

    def load(paths):
        return load_preference_pairs(paths, tokenizer, skip_bad=d.skip_bad, max_len=d.seq_len,
                                     too_long=d.too_long, format=d.format)  # fmt: skip

    pairs, val_pairs = train_and_validation(load, d, t.seed, console, "pairs")
    console.print(f"[bold]pairs[/]: {len(pairs)} train / {len(val_pairs)} validation")
    return pairs, val_pairs


def preference_loaders(config: RunConfig, dist: DistInfo, pairs, val_pairs, layout: str,
                       pad: int) -> tuple[PreferenceLoader, PreferenceLoader | None]:  # fmt: skip
    """This rank's training loader and the validation loader (None without pairs)."""
    t, d = config.train, config.data
    kw = dict(seed=t.seed, rank=dist.rank, world_size=dist.world_size, layout=layout, pad_id=pad)
    loader = PreferenceLoader(pairs, t.batch_size, d.seq_len, **kw)
    val = PreferenceLoader(val_pairs, t.batch_size, d.seq_len, **kw) if val_pairs else None
    return loader, val


FINAL_KEYS = {
    "rewards/accuracy": "reward accuracy",
    "rewards/margin": "reward margin",
    "accuracy": "reward accuracy",
    "margin": "reward margin",
}


def fit_preference(config: RunConfig, model, tokenizer, loader, val, objective, dist: DistInfo,
                   console: Console) -> dict[str, Any]:  # fmt: skip
    """Train ``model`` on ``objective``, export ``model/``, and print the summary with the
    last step's reward accuracy and margin, and the held-out pairs' (``summary["validation"]``:
    the objective's metrics on the validation pairs — reward accuracy, margin, chosen /
    rejected rewards — which the loop reports as ``val_*`` instead of a perplexity)."""
    run_dir = Path(config.out_dir)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(
        f"[bold]model[/]: {trainable:,} trainable parameters; {dist.world_size} process(es) on "
        f"{dist.device}; run folder {run_dir}"
    )
    last: dict = {}
    trainer = Trainer(model, loader, config, val_data=val, objective=objective,
                      tokenizer=tokenizer, run_dir=run_dir, dist=dist, console=console,
                      callbacks=[lambda _t, record: last.update(record)])  # fmt: skip
    summary = fit_and_export(trainer, run_dir)
    print_summary(summary, console)
    shown = [f"{label} {last[key]:.3f}" for key, label in FINAL_KEYS.items() if key in last]
    if shown:
        console.print("last step: " + ", ".join(shown), highlight=False)
    validation = {k[4:]: v for k, v in trainer.last_eval.items() if k != "val_loss"}
    summary["validation"] = validation  # the preference metrics on held-out pairs
    shown = [f"{label} {validation[key]:.3f}" for key, label in FINAL_KEYS.items()
             if key in validation]  # fmt: skip
    if shown:
        console.print("validation: " + ", ".join(shown), highlight=False)
    return summary
