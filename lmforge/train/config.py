"""Training configuration: YAML files validated into dataclasses, plus ``key=value`` overrides.

    cfg = load_config("recipes/pretrain-tiny.yaml", ["optim.lr=1e-3", "train.max_steps=50"])

A config has sections (`ModelSection`, `DataSection`, `OptimSection`, `TrainSection`,
`LogSection`) and a run folder ``out_dir``. Every key is checked: an unknown key is an error
that names the file, lists the valid keys and suggests the closest one; a value of the wrong
type names the field and the type it needs. Override values are parsed as YAML scalars and
then typed by the dataclass field (``train.max_steps=20`` → int, ``data.paths=[a.txt, b.txt]``
→ list).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmforge.config import ConfigError


@dataclass
class ModelSection:
    """The network: a preset (from scratch) or an HF folder to start from."""

    preset: str = "tiny"  # lmforge.models.presets name, used when init_from is empty
    init_from: str | None = None  # HF checkpoint folder (fine-tuning); wins over preset
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (from scratch)


@dataclass
class DataSection:
    """Where the training text comes from and how it is cut into rows."""

    paths: list[str] = field(default_factory=list)  # empty → the synthetic corpus
    val_paths: list[str] = field(default_factory=list)
    synthetic_docs: int = 4000  # without paths: synthetic corpus documents / sft chats
    val_docs: int = 200  # synthetic: held-out documents
    # Without val_paths (sft, dpo, rm): the share of records held out for validation — a
    # random sample drawn with train.seed (round(fraction × N), at least 1 when > 0; see
    # lmforge.train.sft.split_validation), the same records every run with that seed; 0 → none.
    val_fraction: float = 0.05
    tokenizer: str | None = None  # folder with tokenizer.json; empty → train one (pretrain)
    vocab_size: int = 512  # when training a tokenizer
    seq_len: int = 128
    text_field: str = "text"
    # sft: "auto" — the schema each file's fields show; prompt/completion and Alpaca records
    # render through the model's chat template (user → assistant, loss on the reply), as
    # served; "raw" — the same schemas, those as raw text (<bos> prompt completion <eos>, the
    # Alpaca prompt); or one schema forced: messages | prompt_completion | instruction | text
    format: Literal["auto", "raw", "messages", "prompt_completion", "instruction", "text"] = "auto"
    too_long: Literal["truncate", "drop", "error"] = "truncate"  # sft examples > seq_len
    assistant_only: bool = True  # sft: loss only on assistant tokens
    skip_bad: bool = False  # skip malformed records (counted and reported) instead of failing
    split_long: bool = False  # sft: split conversations longer than seq_len
    num_workers: int = 1  # tokenization processes


@dataclass
class OptimSection:
    """AdamW and its learning-rate schedule."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio × lr
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 20
    # The schedule is a function of the step, never of the clock: it runs over this many
    # steps; 0 → the run's own length (train.max_steps, or train.epochs in steps, else the
    # train.max_tokens budget). A run limited only by train.max_time_s must declare it.
    schedule_steps: int = 0
    decay_fraction: float = 0.2  # wsd: share of the run spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 → no clipping
    fused: bool | None = None  # None → fused AdamW where the device supports it
    moment_dtype: Literal["auto", "fp32", "bf16"] = "auto"  # AdamW moments; auto: bf16 with fp8


@dataclass
class TrainSection:
    """Batching, precision, stopping, evaluation and checkpoints."""

    batch_size: int = 8  # rows per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 100
    max_tokens: int = 0  # 0 → no token limit
    max_time_s: float = 0.0  # 0 → no wall-clock limit (stops the run; never shapes the lr)
    epochs: float = 0.0  # > 0: stop after this many passes over the training data
    seed: int = 0
    device: str = "auto"  # auto → cuda when available, else cpu
    cpu_threads: int = 0  # torch CPU threads; 0 → torch's default (tiny models: 1 is fastest)
    precision: Literal["auto", "fp32", "bf16", "fp16", "fp8"] = "auto"  # auto: bf16 GPU, fp32 CPU
    # fp8: linear layers' GEMMs in fine-grained FP8 (lmforge.nn.fp8; simulated on CPU)
    moe_bias_update_speed: float = 0.001  # MoE: aux-loss-free bias step γ per step; 0 → off
    gradient_checkpointing: int = 0  # 0 off; k → recompute every k-th block
    loss_chunk_size: int = (
        0  # > 0: next-token loss in chunks of this many positions (no full logits)
    )
    compile: bool = False
    distributed: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto → ddp under torchrun
    # MoE with > 1 process (ddp): each rank keeps n_routed_experts / world of every MoE
    # layer's routed experts (all-to-all dispatch; kept out of DDP's gradient all-reduce)
    expert_parallel: bool = False
    eval_every: int = 50  # 0 → only at the end
    eval_batches: int = 8
    save_every: int = 50  # 0 → only at the end
    keep_last: int = 2
    log_every: int = 1
    # true: continue from out_dir/checkpoints when the saved config matches (a different
    # model, data or objective is refused); force: also with changed optim settings (logged);
    # false: start over (earlier checkpoints are moved to checkpoints.replaced-<time>/)
    resume: bool | Literal["force"] = True


@dataclass
class LogSection:
    """Where metrics go besides metrics.jsonl and training.png."""

    progress: bool = True
    plot: bool = True  # training.png at the end of the run
    tensorboard: bool = False  # needs the tensorboard package
    wandb: bool = False  # needs the wandb package
    wandb_project: str = "lmforge"


@dataclass
class RunConfig:
    """One training run."""

    out_dir: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- loading
def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type[RunConfig] = RunConfig,
) -> RunConfig:
    """Read ``path`` (YAML; None → defaults), then apply ``key=value`` overrides in order.

    ``cls`` may be a subclass of `RunConfig` adding sections (e.g. an algorithm's
    hyper-parameters); its keys are validated the same way."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            what = " ".join(filter(None, [getattr(exc, "context", None), exc.problem]))
            raise ConfigError(f"{p}{line}: invalid YAML: {what or exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    config = from_dict(cls, raw, where)
    for item in overrides:
        config = apply_override(config, item)
    validate(config)
    return config


def from_dict(cls: type, raw: dict[str, Any], where: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}: {unknown_key_message(prefix + str(key), list(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, where, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def unknown_key_message(key: str, valid: list[str]) -> str:
    """``unknown key 'optim.lrr' (did you mean 'lr'?); valid keys: ...``."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}"


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against (and where lossless converted to) the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, what)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        reasons = " or ".join(e.removeprefix(f"{what}: ") for e in errors)
        raise ConfigError(f"{what}: {value!r} fits none of the accepted forms ({reasons})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{what}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{what}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{what}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{what}: expected a string, got {value!r}")
    raise ConfigError(f"{what}: unsupported field type {hint}")


def apply_override(config: RunConfig, item: str) -> RunConfig:
    """Apply one ``section.key=value`` override (value parsed as YAML, typed by the field)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        path = ".".join(parts[: depth + 1])
        if part not in names:
            raise ConfigError(f"override {item!r}: {unknown_key_message(path, names)}")
        hint = typing.get_type_hints(type(target))[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"override {item!r}: {path} is a section; set one of its keys")
            if typing.get_origin(hint) is dict and value is None:
                value = {}
            setattr(target, part, coerce(value, hint, f"override {path}"))
        elif not dataclasses.is_dataclass(hint):
            if typing.get_origin(hint) is dict and depth == len(parts) - 2:
                getattr(target, part)[parts[-1]] = value  # e.g. model.overrides.hidden_size=64
                return config
            raise ConfigError(f"override {item!r}: {path} is not a section")
        else:
            target = getattr(target, part)
    return config


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    t, o, d = config.train, config.optim, config.data
    positive = {
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "train.keep_last": t.keep_last,
        "train.eval_batches": t.eval_batches,
        "train.log_every": t.log_every,
        "data.seq_len": d.seq_len,
    }
    non_negative = {
        "train.max_steps": t.max_steps,
        "train.max_tokens": t.max_tokens,
        "train.cpu_threads": t.cpu_threads,
        "train.max_time_s": t.max_time_s,
        "train.epochs": t.epochs,
        "optim.schedule_steps": o.schedule_steps,
        "train.eval_every": t.eval_every,
        "train.save_every": t.save_every,
        "train.gradient_checkpointing": t.gradient_checkpointing,
        "train.loss_chunk_size": t.loss_chunk_size,
        "optim.warmup_steps": o.warmup_steps,
        "optim.weight_decay": o.weight_decay,
        "optim.grad_clip": o.grad_clip,
        "train.moe_bias_update_speed": t.moe_bias_update_speed,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}={value} must be > 0")
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{name}={value} must be >= 0")
    if not (t.max_steps or t.max_tokens or t.max_time_s or t.epochs):
        raise ConfigError(
            "set at least one of train.max_steps, train.epochs, train.max_tokens, train.max_time_s"
        )
    step_sized = t.max_steps or t.max_tokens or t.epochs or o.schedule_steps
    if not step_sized and o.schedule != "constant":
        raise ConfigError(
            f"train.max_time_s={t.max_time_s:g} is the only limit, and a {o.schedule} learning-"
            "rate schedule needs a length in steps (the schedule never follows the clock): "
            "declare optim.schedule_steps=N, or set train.max_steps, or use "
            "optim.schedule=constant"
        )
    if not o.lr > 0:
        raise ConfigError(f"optim.lr={o.lr} must be > 0")
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    if not 0 <= o.decay_fraction <= 1:
        raise ConfigError(f"optim.decay_fraction={o.decay_fraction} must be in [0, 1]")
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in [0, 1)")
    if t.expert_parallel and t.distributed in ("none", "fsdp"):
        raise ConfigError(
            f"train.expert_parallel=true needs train.distributed=ddp (or auto), not {t.distributed}"
        )


def dump_config(config: RunConfig) -> str:
    """The config as YAML (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
