"""Evaluation and the science of measuring models: perplexity, sampled task accuracy
(pass@k, maj@k, bootstrap intervals), checkpoints side by side, DeepSeek LLM's scaling
laws (non-embedding FLOPs per token, power-law fits, compute plans) and hallucination
detection on a synthetic knowledge world.

>>> from lmforge.eval import evaluate_checkpoint, markdown_table
>>> result = evaluate_checkpoint("runs/demo/model", tasks=["arithmetic"], samples=4, ks=(1, 4))
>>> print(markdown_table({"demo": result}))

| module | what |
|---|---|
| `metrics` | pass@k (unbiased, Chen et al. 2021), maj@k (self-consistency), bootstrap intervals |
| `verifiers` | answer extraction and verifiers: exact, numeric, math-verify, regex, module:function |
| `tasks` | `EvalItem` s from the built-in tasks' held-out split or JSONL prompt/answer files |
| `accuracy` | sampled task accuracy through the engine, seeded per problem, with pass@k / maj@k |
| `perplexity` | perplexity of text files in windows overlapping by one token |
| `checkpoint` | one checkpoint's evaluation: model loaded, perplexity and every task |
| `report` | results as a side-by-side markdown table and JSON |
| `flops` | DeepSeek LLM's non-embedding FLOPs per token M = 72·n·d² + 6·n·d·l and C = M·D |
| `scaling` | power-law fits of B_opt, η_opt, M_opt, D_opt against compute; plans for a budget |
| `sweep` | compute-sized (batch × lr) grids and IsoFLOP profiles trained through pretrain |
| `knowledge` | a synthetic world of fictional people and facts, known/unknown split, questions |
| `hallucination` | detectors (token uncertainty, SelfCheck unigram / disagreement / model-as-judge) and AUROC |
| `abstention` | trained abstention: "I don't know" targets (SFT) or preference pairs (DPO) where the model was wrong, held-out rates |
| `hallucination_study` | the study end to end: train on known facts, ask, detect, mitigate (SFT / DPO / selective abstention) |
"""

from lmforge.eval.accuracy import evaluate_accuracy, sample_responses
from lmforge.eval.checkpoint import evaluate_checkpoint
from lmforge.eval.flops import compute_budget, config_flops_per_token, deepseek_flops_per_token
from lmforge.eval.hallucination import auroc
from lmforge.eval.metrics import bootstrap_ci, maj_at_k, pass_at_k
from lmforge.eval.perplexity import perplexity
from lmforge.eval.report import markdown_table, write_results
from lmforge.eval.scaling import PAPER_FIT, ScalingFit, fit_scaling_laws, plan
from lmforge.eval.tasks import EvalItem, jsonl_items, task_items
from lmforge.eval.verifiers import get_verifier

__all__ = [
    "PAPER_FIT",
    "EvalItem",
    "ScalingFit",
    "auroc",
    "bootstrap_ci",
    "compute_budget",
    "config_flops_per_token",
    "deepseek_flops_per_token",
    "evaluate_accuracy",
    "evaluate_checkpoint",
    "fit_scaling_laws",
    "get_verifier",
    "jsonl_items",
    "maj_at_k",
    "markdown_table",
    "pass_at_k",
    "perplexity",
    "plan",
    "sample_responses",
    "task_items",
    "write_results",
]
