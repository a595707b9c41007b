"""When a run folder may be resumed: the saved config against the new one, key by key.

    changes = config_changes(saved_config_dict, config.to_dict())
    notes = check_resume(changes, config.train.resume, checkpoint)   # or ResumeRefused

Each changed key falls in one class:

========== ================================================ ===================================
class      keys                                             on resume
========== ================================================ ===================================
model      ``model.*``                                      refused: another model's run
data       ``data.*`` (not ``num_workers``), ``train.seed``  refused, with the fix
objective  sections beyond the base `RunConfig` (``dpo``,   refused: another algorithm's run
           ``grpo``, ``ppo``, ``rm`` …)
optimiser  ``optim.*``, ``train.batch_size``/``grad_accum`` only with ``train.resume=force``
stopping   ``train.max_steps``/``max_tokens``/``epochs``/   allowed (continuing a run for
           ``max_time_s``                                   longer is what resume is for)
other      the rest (devices, logging, eval/save cadence)   allowed
========== ================================================ ===================================

Every accepted change is returned as a note for the log, so nothing changes without a word.
A refusal names each difference and the ways out: write the new run elsewhere (``--out``)
or start over in place (``train.resume=false``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_SECTIONS = ("model", "data", "optim", "train", "log")
REFUSED = ("model", "data", "objective")
_PATH_KEYS = {"model.init_from", "data.paths", "data.val_paths", "data.tokenizer"}
_STOPPING = {"train.max_steps", "train.max_tokens", "train.epochs", "train.max_time_s"}
BATCH_KEYS = ("train.batch_size", "train.grad_accum")
_OPTIMISER = set(BATCH_KEYS)
_OTHER = {"data.num_workers", "out_dir"}


class ResumeRefused(ValueError):
    """The run folder holds a run this config must not continue; the message says why and
    what to do instead."""


@dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between the saved config and the new one."""

    key: str
    saved: Any
    now: Any
    kind: str  # model | data | objective | optimiser | stopping | other

    def describe(self) -> str:
        return f"{self.key}: {_show(self.saved)} -> {_show(self.now)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}``: sections to ``section.key``; values
    below that (``model.overrides``) are compared whole."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def classify(key: str) -> str:
    """The class of a dotted config key (see the module table)."""
    section = key.split(".", 1)[0]
    if key in _OTHER:
        return "other"
    if key in _STOPPING:
        return "stopping"
    if key in _OPTIMISER or section == "optim":
        return "optimiser"
    if section == "model":
        return "model"
    if section == "data" or key == "train.seed":
        return "data"
    if section not in BASE_SECTIONS:
        return "objective"
    return "other"


def _same_path(a: Any, b: Any) -> bool:
    def norm(v: Any) -> Any:
        if isinstance(v, str) and v:
            return os.path.realpath(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return a == b or norm(a) == norm(b)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[ConfigChange]:
    """Every key that differs (present in one only counts), classified, in key order."""
    a, b = flatten(saved), flatten(now)
    changes = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if old == new or (key in _PATH_KEYS and _same_path(old, new)):
            continue
        kind = classify(key)
        section = key.split(".", 1)[0]
        if (old is _ABSENT or new is _ABSENT) and section in saved and section in now:
            kind = "other"  # a setting one lmforge version has and the other lacks
        changes.append(ConfigChange(key, old, new, kind))
    return changes


def regroup_batch_changes(
    changes: list[ConfigChange], saved: dict[str, Any], now: dict[str, Any],
    saved_world: int, world: int,
) -> list[ConfigChange]:  # fmt: skip
    """``train.batch_size``/``grad_accum`` changes count as ``other`` when the global batch
    (batch_size × grad_accum × processes) is unchanged — the same run on more or fewer
    processes — and as ``optimiser`` otherwise."""

    def global_batch(config: dict[str, Any], procs: int) -> int:
        t = config.get("train", {})
        return int(t.get("batch_size", 1)) * int(t.get("grad_accum", 1)) * procs

    if global_batch(saved, saved_world) != global_batch(now, world):
        return changes
    return [
        ConfigChange(c.key, c.saved, c.now, "other") if c.key in _OPTIMISER else c for c in changes
    ]


def check_resume(
    changes: list[ConfigChange], resume: bool | str, checkpoint: str | os.PathLike
) -> list[str]:
    """Raise `ResumeRefused` if ``changes`` forbid resuming from ``checkpoint`` under
    ``train.resume=resume``; otherwise return one note per accepted change."""
    checkpoint = Path(checkpoint)
    refused = [c for c in changes if c.kind in REFUSED]
    optimiser = [c for c in changes if c.kind == "optimiser"]
    run_dir = checkpoint.parent.parent
    ways_out = (
        f"Either write the new run elsewhere (--out NEW_DIR, i.e. out_dir=NEW_DIR) or start "
        f"over in {run_dir} with train.resume=false (its checkpoints are then moved aside)."
    )
    if refused:
        kinds = sorted({c.kind for c in refused}, key=REFUSED.index)
        lines = [
            f"{run_dir} holds a run with a different {' and '.join(kinds)} (checkpoint "
            f"{checkpoint.name}); refusing to resume it:",
            *(f"  {c.describe()}" for c in refused),
            ways_out,
        ]
        if "data" in kinds:
            lines.append(
                "To continue training these weights on the new data, start a new run from "
                f"them: --out NEW_DIR model.init_from={checkpoint} (a fresh optimizer and "
                "schedule); to continue this run, use its original data settings."
            )
        raise ResumeRefused("\n".join(lines))
    if optimiser and resume != "force":
        lines = [
            f"{run_dir}: the optimiser / schedule settings differ from the saved run "
            f"(checkpoint {checkpoint.name}):",
            *(f"  {c.describe()}" for c in optimiser),
            "Resuming with changed optimiser settings needs train.resume=force (the changes "
            "are then logged). " + ways_out,
        ]
        raise ResumeRefused("\n".join(lines))
    notes = []
    for c in changes:
        if c.kind == "optimiser":
            notes.append(f"changed with train.resume=force: {c.describe()}")
        elif c.kind == "stopping":
            notes.append(f"stopping condition changed: {c.describe()}")
        elif c.key != "train.resume":
            notes.append(f"changed: {c.describe()}")
    return notes


__all__ = [
    "BASE_SECTIONS",
    "BATCH_KEYS",
    "REFUSED",
    "ConfigChange",
    "ResumeRefused",
    "check_resume",
    "classify",
    "config_changes",
    "flatten",
    "regroup_batch_changes",
]
