"""`lmforge dpo` and `lmforge rm`: preference training from a YAML recipe, through the one loop.

    lmforge dpo --config recipes/dpo-tiny.yaml --model runs/sft-tiny/model --data prefs.jsonl
    lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --peft lora dpo.loss_type=ipo
    lmforge rm  --config recipes/rm-tiny.yaml  --model runs/sft-tiny/model --data prefs.jsonl

Without ``--data`` both train on built-in synthetic preferences (correct vs wrong answers to
the questions of `lmforge.data.tasks.chat`), so they run offline. The run folder is as for
``lmforge sft``: ``config.yaml``, ``metrics.jsonl`` (loss, ``rewards/accuracy``,
``rewards/margin``, … per step), ``training.png``, resumable ``checkpoints/`` and ``model/``
— the policy (or, with ``--peft``, its adapter), or for ``rm`` a reward model that loads in
``transformers`` as ``LlamaForSequenceClassification`` (``num_labels=1``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lmforge.config import ConfigError
from lmforge.train.commands import _common, _config, _setup, split_validation
from lmforge.train.config import RunConfig

_DATA_HELP = (
    "Data: JSONL / Parquet / saved HF datasets with 'prompt' + 'chosen' + 'rejected' (strings\n"
    "or message lists) or 'chosen' + 'rejected' conversations; without --data, synthetic\n"
    "preferences (data.synthetic_docs pairs). Overrides are section.key=value."
)
_EXAMPLES_DPO = (
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model runs/sft-tiny/model\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --data prefs.jsonl "
    "dpo.beta=0.05\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ dpo.loss_type=simpo dpo.beta=2 "
    "dpo.gamma=0.5\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --peft lora   # reference = "
    "base\n\n" + _DATA_HELP
)
_EXAMPLES_RM = (
    "  lmforge rm --config recipes/rm-tiny.yaml --model runs/sft-tiny/model\n"
    "  lmforge rm --config recipes/rm-tiny.yaml --model ckpt/ --data prefs.jsonl rm.margin=0.5"
    "\n\n" + _DATA_HELP
)


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


@dataclass
class RMSection:
    """Bradley–Terry reward-model options."""

    margin: float = 0.0  # required reward gap m (Llama 2)
    center_coef: float = 0.0  # weight of (r_w + r_l)² (keeps rewards near 0)


@dataclass
class RMConfig(RunConfig):
    rm: RMSection = field(default_factory=RMSection)


def add_preference_commands(commands, subparser) -> None:
    """Register ``dpo`` and ``rm`` (``subparser(commands, name, help, examples)``)."""
    from lmforge.peft.commands import add_peft_arguments

    p = subparser(
        commands,
        "dpo",
        "preference optimisation (DPO, IPO, conservative DPO, SimPO, ORPO) of an HF model",
        _EXAMPLES_DPO,
    )
    _common(p)
    _model_and_data(p)
    add_peft_arguments(p)
    p.set_defaults(run=run_dpo)
    p = subparser(
        commands,
        "rm",
        "train a Bradley-Terry reward model (scalar head on an HF model) on preference pairs",
        _EXAMPLES_RM,
    )
    _common(p)
    _model_and_data(p)
    p.set_defaults(run=run_rm)


def _model_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="HF checkpoint folder (model.init_from)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="preference data (data.paths)")


def _load_config(args: argparse.Namespace, cls: type[RunConfig]) -> RunConfig:
    extra = []
    if args.model:
        extra.append(f"model.init_from={json.dumps(args.model)}")
    if args.data:
        extra.append(f"data.paths={json.dumps(args.data)}")
    config = _config(args, extra, cls)
    if not config.model.init_from:
        raise ValueError(f"{args.command} needs a model: --model DIR (or model.init_from)")
    return config


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


def _preference_data(config: RunConfig, info, console, tokenizer):
    """Train / validation pairs (synthetic when ``data.paths`` is empty)."""
    from lmforge.align.preference_data import load_preference_pairs, write_preference_jsonl
    from lmforge.train.distributed import barrier

    d, t = config.data, config.train
    if not d.paths:
        path = Path(config.out_dir) / "data" / "synthetic-preferences.jsonl"
        if info.is_main:
            write_preference_jsonl(path, d.synthetic_docs, t.seed)
        barrier()
        d.paths = [str(path)]
        console.print(f"[bold]data[/]: {d.synthetic_docs} synthetic preference pairs (no --data)")

    def load(paths):
        return load_preference_pairs(paths, tokenizer, skip_bad=d.skip_bad, max_len=d.seq_len,
                                     too_long=d.too_long)  # fmt: skip

    pairs, report = load(d.paths)
    console.print(f"[bold]data[/]: {', '.join(d.paths)}: " + report.summary().replace("\n", "; "))
    if d.val_paths:
        val_pairs, _ = load(d.val_paths)
    else:
        pairs, val_pairs = split_validation(pairs, d.val_fraction, t.seed)
    if not pairs:
        raise ValueError(f"{', '.join(d.paths)}: no training pairs left")
    console.print(f"[bold]pairs[/]: {len(pairs)} train / {len(val_pairs)} validation")
    return pairs, val_pairs


def _loaders(config, info, pairs, val_pairs, layout: str, pad: int):
    from lmforge.align.preference_data import PreferenceLoader

    t, d = config.train, config.data
    kw = dict(seed=t.seed, rank=info.rank, world_size=info.world_size, layout=layout, pad_id=pad)
    loader = PreferenceLoader(pairs, t.batch_size, d.seq_len, **kw)
    val = PreferenceLoader(val_pairs, t.batch_size, d.seq_len, **kw) if val_pairs else None
    return loader, val


# ---------------------------------------------------------------------- dpo
def run_dpo(args: argparse.Namespace) -> int:
    config = _load_config(args, DPOConfig)
    validate_dpo(config.dpo)
    from lmforge.align.preference_objective import (
        REFERENCE_FREE,
        PreferenceObjective,
        frozen_copy,
        precompute_reference_logps,
    )
    from lmforge.cli import checkpoint_dir
    from lmforge.models.hf import load_model
    from lmforge.peft.commands import apply_peft_from_args
    from lmforge.tokenizer import load_tokenizer

    p = config.dpo
    if p.reference == "adapter" and not getattr(args, "peft", None):
        raise ValueError("dpo.reference=adapter needs --peft (the reference is the base model)")
    info, console = _setup(config)
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    pairs, val_pairs = _preference_data(config, info, console, tokenizer)
    model = load_model(model_dir, dtype=torch.float32)
    _check_vocab(model_dir, tokenizer, model.config.vocab_size)

    mode = p.reference
    if mode == "auto":
        mode = "adapter" if getattr(args, "peft", None) else "copy"
    needs_ref = p.loss_type not in REFERENCE_FREE
    reference = frozen_copy(model) if needs_ref and mode == "copy" else None
    apply_peft_from_args(model, args, str(model_dir))
    if needs_ref and mode == "adapter":
        reference = "adapter"
    loader, val = _loaders(config, info, pairs, val_pairs, p.layout, tokenizer.pad_token_id or 0)

    if needs_ref and p.precompute_reference:
        ref_module = reference if isinstance(reference, torch.nn.Module) else None
        (ref_module or model).to(info.device)
        for data in filter(None, (loader, val)):
            data.reference_logps = precompute_reference_logps(
                ref_module, data, policy=model, batch_pairs=config.train.batch_size
            )
        reference = None  # the batches carry ref_logps; the frozen copy can go
        console.print("[bold]reference[/]: log-probs precomputed for every pair")
    else:
        what = {"copy": "a frozen copy of the initial policy", "adapter": "the base model "
                "(adapter disabled)"}[mode] if needs_ref else "none (reference-free loss)"  # fmt: skip
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
    return _fit(config, model, tokenizer, loader, val, objective, info, console)


def _check_vocab(model_dir, tokenizer, vocab_size: int) -> None:
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size}"
        )


# ---------------------------------------------------------------------- rm
def run_rm(args: argparse.Namespace) -> int:
    config = _load_config(args, RMConfig)
    from lmforge.align.preference_objective import RewardModelObjective, reward_model_for_export
    from lmforge.align.reward_model import RewardModel
    from lmforge.cli import checkpoint_dir
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    info, console = _setup(config)
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    pairs, val_pairs = _preference_data(config, info, console, tokenizer)
    lm = load_model(model_dir, dtype=torch.float32)
    _check_vocab(model_dir, tokenizer, lm.config.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        rm = RewardModel.from_causal_lm(lm)  # InstructGPT: the RM starts from the SFT model
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else tokenizer.eos_token_id
    reward_model_for_export(rm, pad)
    loader, val = _loaders(config, info, pairs, val_pairs, "padded", pad or 0)
    objective = RewardModelObjective(config.rm.margin, config.rm.center_coef)
    console.print(f"[bold]objective[/]: Bradley-Terry, {config.train.batch_size} pairs per batch")
    return _fit(config, rm, tokenizer, loader, val, objective, info, console)


# ---------------------------------------------------------------------- shared
_FINAL_KEYS = {
    "rewards/accuracy": "reward accuracy",
    "rewards/margin": "reward margin",
    "accuracy": "reward accuracy",
    "margin": "reward margin",
}


def _fit(config, model, tokenizer, loader, val, objective, info, console) -> int:
    from lmforge.train.loop import Trainer
    from lmforge.train.metrics import format_summary

    run_dir = Path(config.out_dir)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(
        f"[bold]model[/]: {trainable:,} trainable parameters; {info.world_size} process(es) on "
        f"{info.device}; run folder {run_dir}"
    )
    last: dict = {}
    trainer = Trainer(model, loader, config, val_data=val, objective=objective,
                      tokenizer=tokenizer, run_dir=run_dir, dist=info, console=console,
                      callbacks=[lambda _t, record: last.update(record)])  # fmt: skip
    summary = trainer.fit()
    summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
    console.rule("[bold]summary")
    console.print(format_summary(summary), highlight=False)
    shown = [f"{label} {last[key]:.3f}" for key, label in _FINAL_KEYS.items() if key in last]
    if shown:
        console.print("last step: " + ", ".join(shown), highlight=False)
    if info.enabled:
        torch.distributed.destroy_process_group()
    return 0
