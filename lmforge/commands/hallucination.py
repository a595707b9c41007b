"""`lmforge hallucination run`: the synthetic-knowledge hallucination study
(`lmforge.eval.hallucination_study.run_study`).

    lmforge hallucination run --out runs/hallucination
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import CommandError, subparser


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "hallucination",
        "hallucination on a synthetic knowledge world: detectors' AUROC, selective answering",
        "  lmforge hallucination run --out runs/hallucination\n"
        "  lmforge hallucination run --out runs/hallucination-small --people 40 --steps 300\n\n"
        "A tiny LM is pretrained on the facts of half of --people fictional people, then asked\n"
        "about all of them: answers about the unseen half are hallucinations by construction.\n"
        "Reports the AUROC of token-level uncertainty and of SelfCheck consistency for wrong\n"
        "answers, and the held-out hallucination / answer rates after training abstention\n"
        '("I don\'t know" where the model was wrong) and when abstaining above a calibrated\n'
        "SelfCheck threshold. Writes result.json and answers.jsonl into --out.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{run}")
    run_p = subparser(verbs, "run", "train, ask, detect, abstain; print the table",
                      "  lmforge hallucination run --out runs/hallucination\n")  # fmt: skip
    run_p.add_argument("--out", required=True, metavar="DIR", help="study folder")
    run_p.add_argument("--people", type=int, default=120, help="people in the world (120)")
    run_p.add_argument("--steps", type=int, default=1500, help="pretraining steps (1500)")
    run_p.add_argument("--samples", type=int, default=8, help="resampled answers (8)")
    run_p.add_argument("--abstain-steps", type=int, metavar="N",
                       help="abstention training steps (default: steps / 3; 0: skip)")  # fmt: skip
    run_p.add_argument("--seed", type=int, default=0, help="seed (0)")
    run_p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.eval.hallucination_study import run_study

    if args.people < 4 or args.steps < 1 or args.samples < 1:
        raise CommandError("--people ≥ 4, --steps ≥ 1 and --samples ≥ 1, please")
    r = run_study(args.out, args.people, args.steps, args.samples, args.seed, args.abstain_steps)
    rows = {
        "questions": r["questions"],
        "accuracy on known facts": r["known_accuracy"],
        "SelfCheck AUROC (wrong answers)": r["selfcheck_auroc"],
        "mean −log p AUROC (wrong answers)": r["logprob_auroc"],
        "held-out questions": r["held_out_questions"],
        "hallucination rate, answering all (held out)": r["halluc_rate_before"],
        "hallucination rate, trained abstention": r.get("halluc_rate_after"),
        "answer rate, trained abstention": r.get("answer_rate_after"),
        "hallucination rate, selective (SelfCheck)": r["selective_halluc_rate"],
        "answer rate, selective (SelfCheck)": r["selective_answer_rate"],
    }
    print("| measure | value |\n|---|---|")
    for label, value in rows.items():
        text = "–" if value is None else (
            f"{value:.3f}" if isinstance(value, float) else str(value))  # fmt: skip
        print(f"| {label} | {text} |")
    print(f"results: {args.out}/result.json, answers.jsonl")
    return 0
