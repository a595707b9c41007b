"""Training: one loop (`Trainer`) for pretraining, SFT and every alignment objective,
AdamW + schedules, atomic checkpoints with exact resume, DDP / FSDP2 under torchrun.

| module | what |
|---|---|
| `loop` | `Trainer`: token-weighted accumulation, clipping, autocast, evaluation, checkpoints, fit |
| `objective` | the `Objective` contract (``(model, batch) -> LossOutput``) and `causal_lm_loss` |
| `config` | `RunConfig`: YAML recipes → dataclasses, ``key=value`` overrides, closest-key suggestions |
| `optim` | AdamW (fused where available), no decay on norms and biases |
| `schedule` | learning-rate schedules: warmup + cosine, warmup-stable-decay |
| `checkpoint` | HF weights + ``trainer_state/``, atomic, last K kept, exact resume |
| `budget` | run length and schedule progress in steps (never the clock); epochs; time-budget warnings |
| `rng` | RNG states (Python, NumPy, torch, CUDA) as JSON, saved in checkpoints for exact resume |
| `manifest` | checkpoint manifests: size + SHA-256 per file, written last, verified on resume |
| `resume_rules` | whether a run folder may be resumed: saved vs new config, refusals with the ways out |
| `interrupt` | SIGINT/SIGTERM: save at the next step boundary, a second signal exits at once |
| `moe_balance` | auxiliary-loss-free MoE balancing: the per-step correction-bias update, MaxVio |
| `distributed` | torchrun setup, DDP / FSDP2 (``fully_shard``), barriers, unwrap |
| `metrics` | progress bar, ``metrics.jsonl``, ``training.png``, summary, TensorBoard / W&B |
| `run` | what every entry point does around its `Trainer`: process setup, fit + export, summary |
| `pretrain` | `train_pretrain(config)`: text (or the synthetic corpus) → tokenizer → token file → model |
| `sft` | `train_sft(config, peft=…)`: chat / instruction data packed, assistant-only loss |
| `vlm_sft` | `train_vlm_sft(config, peft=…)`: multimodal SFT of a VLM on synthetic VQA, projector / joint stages, held-out accuracy |
| `drafter_objectives` | `train_medusa` / `train_eagle`: Medusa-1/2 and EAGLE objectives for the one Trainer |
"""

from lmforge.config import ConfigError
from lmforge.train.config import RunConfig, load_config
from lmforge.train.interrupt import TrainingInterrupted
from lmforge.train.loop import Trainer, TrainingDiverged
from lmforge.train.objective import LossOutput, Objective, causal_lm_loss
from lmforge.train.resume_rules import ResumeRefused

__all__ = [
    "ConfigError",
    "LossOutput",
    "Objective",
    "ResumeRefused",
    "RunConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "causal_lm_loss",
    "load_config",
]
