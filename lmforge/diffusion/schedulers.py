"""The sampler registry and `load_scheduler`: diffusers' ``_class_name`` → lmforge class.

s = load_scheduler("runs/ddpm/model")                # a folder with scheduler_config.json
s = load_scheduler({"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"})
s = load_scheduler("ddim", base=other_scheduler)      # a short name, same noise table
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import ConfigError
from lmforge.diffusion.ddim import DDIMScheduler
from lmforge.diffusion.ddpm import DDPMScheduler
from lmforge.diffusion.dpm_solver import DPMSolverScheduler
from lmforge.diffusion.euler import EulerScheduler
from lmforge.diffusion.flow_match import FlowMatchEulerScheduler
from lmforge.diffusion.scheduler_base import Scheduler, read_scheduler_config

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.class_name: cls
    for cls in (
        DDPMScheduler,
        DDIMScheduler,
        EulerScheduler,
        DPMSolverScheduler,
        FlowMatchEulerScheduler,
    )
}
SHORT_NAMES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "flow": "FlowMatchEulerDiscreteScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}
# Keys that describe the trained noise table: kept when switching sampler (`load_scheduler`
# with ``base=``), so a model trained with one scheduler samples with another.
SHARED_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "rescale_betas_zero_snr",
    "clip_sample",
    "clip_sample_range",
)

__all__ = ["SCHEDULERS", "SHARED_KEYS", "SHORT_NAMES", "load_scheduler"]


def load_scheduler(
    source: str | Path | dict[str, Any],
    base: Scheduler | dict[str, Any] | None = None,
    **kwargs: Any,
) -> Scheduler:
    """A sampler from a folder / ``scheduler_config.json`` / config dict (``_class_name``
    picks the class), or from a short name (``ddpm``, ``ddim``, ``euler``, ``dpm++``,
    ``flow``) with the noise-table keys of ``base``. ``kwargs`` go to the constructor
    (``generator=``, and ``eta=`` for DDIM)."""
    if isinstance(source, str) and source.lower() in SHORT_NAMES:
        raw: dict[str, Any] = {"_class_name": SHORT_NAMES[source.lower()]}
        if base is not None:
            cfg = base.to_config() if isinstance(base, Scheduler) else dict(base)
            raw.update({k: cfg[k] for k in SHARED_KEYS if k in cfg})
        where = f"<{source}>"
    else:
        raw, where = read_scheduler_config(source)
    name = raw.get("_class_name")
    if name not in SCHEDULERS:
        raise ConfigError(
            f"{where}: _class_name {name!r} is not a sampler lmforge implements; "
            f"known: {', '.join(SCHEDULERS)}"
        )
    return SCHEDULERS[name].from_config(raw, where, **kwargs)
