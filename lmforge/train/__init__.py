"""Training: one loop (`Trainer`) for pretraining, SFT and later alignment objectives,
AdamW + schedules, atomic checkpoints with exact resume, DDP / FSDP2 under torchrun."""

from lmforge.config import ConfigError
from lmforge.train.config import RunConfig, load_config
from lmforge.train.loop import Trainer, TrainingDiverged
from lmforge.train.objective import LossOutput, Objective, causal_lm_loss

__all__ = [
    "ConfigError",
    "LossOutput",
    "Objective",
    "RunConfig",
    "Trainer",
    "TrainingDiverged",
    "causal_lm_loss",
    "load_config",
]
