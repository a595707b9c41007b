"""Hallucination on a synthetic knowledge world (`lmforge.eval.hallucination_study`): a tiny
LM is pretrained (``lmforge pretrain``'s Trainer) on the facts of half the people; it is then
asked about everyone. Questions about the unseen half have no learnable answer, so every
answer to them is a hallucination by construction. Detectors score each greedy answer —
token-level uncertainty (mean negative log-prob) and SelfCheckGPT-style consistency with 8
resampled answers (unigram score, and the model-as-judge prompt variant: p(No) / (p(Yes) +
p(No)) averaged over the samples) — and their AUROC for "this answer is wrong" is reported.
Mitigations, measured on held-out questions (a fifth of the known people, half of the
unseen ones): trained abstention by SFT ("I don't know" where the model was wrong on the
other questions, then continued training with the facts replayed; the RESULT's "after") and
by DPO (preference pairs on the same questions; the RESULT's ``dpo_*``) started from and
referenced to the SFT model — "SFT→DPO", Rafailov et al. 2023 §4 (``--dpo-from fact``:
plain DPO from the fact-trained model) — and selective answering (abstain above a SelfCheck threshold calibrated on the
other questions). Same as ``lmforge hallucination run``.

    python bench/hallucination.py [--people 120] [--steps 1500] [--dpo-from sft|fact]

Last line: ``RESULT hallucination selfcheck_auroc=<a> logprob_auroc=<b>
halluc_rate_before=<c> halluc_rate_after=<d> answer_rate_after=<e> judge_auroc=<f>
dpo_halluc_rate_after=<g> dpo_answer_rate_after=<h>``.
"""

from __future__ import annotations

import argparse
import time

from lmforge.eval.hallucination_study import run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=120)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpo-from", choices=("sft", "fact"), default="sft")
    parser.add_argument("--out", default="runs/bench-hallucination")
    args = parser.parse_args()
    start, cpu_start = time.perf_counter(), time.process_time()
    r = run_study(
        args.out, args.people, args.steps, args.samples, args.seed, dpo_from=args.dpo_from
    )
    minutes = (time.perf_counter() - start) / 60
    cpu_minutes = (time.process_time() - cpu_start) / 60
    print(
        "DPO settings on the validation questions (score = accuracy − hallucination rate; "
        f"start: {r['dpo_start_val']['score']:+.3f}):"
    )
    for g in r["dpo_grid"]:
        st, v, sh = g["setting"], g["val"], g["shifts"]
        print(f"  β {st['beta']} ε {st['label_smoothing']} lr {st['lr']:g} {st['steps']} steps: "
              f"halluc {v['hallucination_rate']:.3f} answer {v['answer_rate']:.3f} "
              f"score {v['score']:+.3f}; Δlog π: IDK chosen {sh['abstain_chosen']:+.2f}, "
              f"answer rejected {sh['answer_rejected']:+.2f}, answer chosen "
              f"{sh['answer_chosen']:+.2f}, IDK rejected {sh['abstain_rejected']:+.2f}, "
              f"IDK on validation prompts {sh['abstain_probe']:+.2f}")  # fmt: skip
    print(
        f"chosen: {r['dpo_setting']}; DPO start on held out: halluc "
        f"{r['dpo_start_halluc_rate_after']:.3f} answer {r['dpo_start_answer_rate_after']:.3f}"
    )
    print(f"{r['questions']} questions about {args.people} people ({minutes:.1f} min, "
          f"{cpu_minutes:.1f} CPU-min); "
          f"accuracy on known facts {r['known_accuracy']:.3f}; held out "
          f"{r['held_out_questions']}: SFT abstention accuracy {r['accuracy_after']:.3f}, DPO "
          f"(from the {r['dpo_start']} model) abstention accuracy {r['dpo_accuracy_after']:.3f}; "
          f"selective answering (SelfCheck ≤ {r['threshold']:.3f}) hallucination rate "
          f"{r['selective_halluc_rate']:.3f}, answer rate {r['selective_answer_rate']:.3f}")  # fmt: skip
    auc = {
        k: "nan" if r[k] is None else f"{r[k]:.3f}"
        for k in ("selfcheck_auroc", "logprob_auroc", "judge_auroc")
    }
    print(f"RESULT hallucination selfcheck_auroc={auc['selfcheck_auroc']} "
          f"logprob_auroc={auc['logprob_auroc']} halluc_rate_before={r['halluc_rate_before']:.3f} "
          f"halluc_rate_after={r['halluc_rate_after']:.3f} "
          f"answer_rate_after={r['answer_rate_after']:.3f} judge_auroc={auc['judge_auroc']} "
          f"dpo_halluc_rate_after={r['dpo_halluc_rate_after']:.3f} "
          f"dpo_answer_rate_after={r['dpo_answer_rate_after']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
