"""Alignment: preference optimisation (DPO family, reward models) and RL fine-tuning (PPO,
GRPO and its variants).

The objectives are pure functions on tensors with masks (exported here); the trainers wire
them to the one training loop through shared pieces: one reference policy (`reference`), one
rollout toolkit (`rollout`, `rollout_groups`), one set of RL tasks (`rl_tasks`). Each loss
returns what lmforge's training loop needs (`lmforge.train.objective.LossOutput`:
a sum over units and the unit count, so the loss is invariant to micro-batching) or per-unit
values that give it (`PreferenceLoss.output`).

| module | what |
|---|---|
| *objectives (pure functions on tensors)* | |
| `logprobs` | per-token / sequence log-probs, entropy, masked sums, KL estimators k1/k2/k3 |
| `dpo` | DPO (sigmoid), conservative DPO (label smoothing), IPO; implicit-reward metrics |
| `simpo` | SimPO (reference-free, length-normalised, margin γ) |
| `orpo` | ORPO (SFT + odds-ratio term) |
| `reward_model` | `RewardModel` (scalar ``score`` head) and the Bradley–Terry loss |
| `ppo` | PPO-max: running reward normalisation, KL-penalised rewards, GAE, whitening, clipped policy/value losses, entropy bonus, PPO-ptx |
| `grpo` | group advantages; grpo / dr_grpo / dapo / gspo aggregations, k3 KL |
| `kimi` | Kimi k1.5 squared mirror-descent surrogate and length-penalty reward |
| `rewards` | R1 format, answer accuracy (math_verify + numeric), task verifiers, DAPO overlong |
| *shared wiring* | |
| `reference` | the reference policy π_ref of DPO, PPO and GRPO: frozen copy, LoRA base (adapters off), precomputed |
| `sequence_logps` | each sequence's summed log-probs in a packed / padded batch, scored positions only |
| `shared_prompt` | log-probs of completions that share prompts, each prompt run once (GRPO groups), exact values and gradients |
| `rollout` | RL rollouts on the inference engine (`SamplingParams`), request seeds, padding, policy log-probs |
| `rollout_groups` | group rollouts: prompt sampling (uniform / Kimi prioritised), DAPO dynamic sampling |
| `rl_tasks` | RL tasks: generated problems, the user's prompt records (text or chat), held-out split, R1 prompts and reward, held-out accuracy |
| *preference optimisation* | |
| `preference_data` | preference pairs → packed / padded chosen-rejected batches |
| `preference_objective` | `PreferenceObjective` (DPO / IPO / SimPO / ORPO) and `RewardModelObjective` for the loop |
| `dpo_trainer` | `DPOSection` / `DPOConfig`, `train_dpo` (``lmforge dpo``); data and loaders shared with `rm_trainer` |
| `rm_trainer` | `RMSection` / `RMConfig`, `train_rm` (``lmforge rm``) |
| *RL fine-tuning* | |
| `custom_rewards` | the user's rewards: ``MODULE:FUNCTION[:WEIGHT]`` callables, built-ins, a reward model, summed with weights |
| `grpo_config` | `GRPOSection` / `GRPOConfig`, checks, task items (train / held-out), sampling, `grpo_reward` |
| `grpo_rollouts` | `GRPORollouts`: group rollouts → micro-batches for the loop, statistics over every rank |
| `grpo_trainer` | `GRPOObjective`, `train_grpo`, held-out evaluation (sharded across ranks) |
| `rl_distributed` | RL under torchrun: each rank's slice of the prompts, all-reduced statistics, FSDP2 rollout weights |
| `rl_run` | GRPO / PPO runs from a config alone: checkpoint, tokenizer, adapter, trainer, summary |
| `ppo_config` | `PPOSection` (``ppo:`` in a recipe) / `PPOConfig` and their checks |
| `ppo_models` | `ActorCritic`, `critic_from`, `token_values`, `PromptItem`, rule / reward-model scorers |
| `ppo_experience` | `PPOExperience`: rollouts → KL-shaped rewards → GAE → micro-batches, exact resume |
| `ppo_trainer` | `PPOObjective`, `task_prompts`, `ptx_loader`, `train_ppo` (``lmforge ppo``) |
| `r1_pipeline` | the R1-style pipeline end to end (``lmforge demo``): tokenizer → pretrain → SFT → GRPO |
| `r1_report` | the pipeline's curves PNG, ``report.md`` and ``RESULT`` summary |
| `r1_zero` | DeepSeek-R1-Zero on the demo's base (``lmforge demo --zero``): GRPO from the pretrained model, no SFT; format / accuracy emergence and response length |
"""

from lmforge.align.dpo import DPO_LOSS_TYPES, PreferenceLoss, dpo_loss
from lmforge.align.grpo import AGGREGATIONS, grpo_advantages, grpo_loss
from lmforge.align.kimi import kimi_length_rewards, kimi_loss
from lmforge.align.logprobs import (
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    masked_sum,
    model_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from lmforge.align.orpo import log_odds, orpo_loss
from lmforge.align.ppo import (
    RunningMeanStd,
    gae_advantages,
    kl_penalized_rewards,
    ppo_loss,
    ptx_loss_sum,
    whiten,
)
from lmforge.align.reward_model import RewardModel, bradley_terry_loss, last_token_index
from lmforge.align.rewards import (
    Reward,
    accuracy_reward,
    extract_answer,
    format_reward,
    soft_overlong_punishment,
    task_reward,
)
from lmforge.align.simpo import simpo_loss

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "PreferenceLoss",
    "Reward",
    "RewardModel",
    "RunningMeanStd",
    "accuracy_reward",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "extract_answer",
    "format_reward",
    "gae_advantages",
    "grpo_advantages",
    "grpo_loss",
    "kimi_length_rewards",
    "kimi_loss",
    "kl_estimate",
    "kl_penalized_rewards",
    "last_token_index",
    "log_odds",
    "masked_mean",
    "masked_sum",
    "model_logprobs",
    "orpo_loss",
    "ppo_loss",
    "ptx_loss_sum",
    "sequence_logprobs",
    "simpo_loss",
    "soft_overlong_punishment",
    "task_reward",
    "token_logprobs",
    "whiten",
]
