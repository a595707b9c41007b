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
        "  lmforge hallucination run --out runs/hallucination-small --people 40 --steps 300\n"
        "  lmforge hallucination run --out runs/hallucination-chat --chat --dpo-steps 0\n\n"
        "A tiny LM is pretrained on the facts of half of --people fictional people, then asked\n"
        "about all of them: answers about the unseen half are hallucinations by construction.\n"
        "Reports the AUROC of token-level uncertainty and of SelfCheck consistency (n-gram and\n"
        "model-as-judge) for wrong answers, and side by side the held-out hallucination /\n"
        'answer rates after training abstention ("I don\'t know" where the model was wrong) by\n'
        "SFT and by DPO (an SFT stage on half the training questions, then preference pairs\n"
        "on the other half, its β / label smoothing / lr / steps chosen on validation\n"
        "questions; --dpo-from fact: plain DPO from the fact-trained model), and when\n"
        "abstaining above a calibrated SelfCheck threshold. Writes result.json and\n"
        "answers.jsonl into --out.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{run}")
    run_p = subparser(verbs, "run", "train, ask, detect, abstain; print the table",
                      "  lmforge hallucination run --out runs/hallucination\n")  # fmt: skip
    run_p.add_argument("--out", required=True, metavar="DIR", help="study folder")
    run_p.add_argument("--people", type=int, default=120, help="people in the world (120)")
    run_p.add_argument("--steps", type=int, default=1500, help="pretraining steps (1500)")
    run_p.add_argument("--samples", type=int, default=8, help="resampled answers (8)")
    run_p.add_argument("--abstain-steps", type=int, metavar="N",
                       help="SFT abstention training steps (default: steps / 3; 0: skip)")  # fmt: skip
    run_p.add_argument("--dpo-steps", type=int, metavar="N",
                       help="DPO abstention steps for every setting tried (default: each "
                            "setting's own; 0: skip DPO)")  # fmt: skip
    run_p.add_argument("--dpo-lr", type=float, metavar="LR",
                       help="DPO learning rate for every setting tried (default: each setting's)")  # fmt: skip
    run_p.add_argument("--dpo-from", choices=("sft", "fact"), default="sft",
                       help="DPO's start and reference: an SFT abstention model trained on the "
                            "other half of the training questions (SFT→DPO, default) or the "
                            "fact-trained model (plain DPO)")  # fmt: skip
    run_p.add_argument("--no-judge", action="store_true",
                       help="skip the model-as-judge SelfCheck (2 forwards per sample)")  # fmt: skip
    run_p.add_argument("--chat", action="store_true",
                       help="chat-style questions: trained on and asked through the chat template")  # fmt: skip
    run_p.add_argument("--seed", type=int, default=0, help="seed (0)")
    run_p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.eval.hallucination_study import run_study

    if args.people < 4 or args.steps < 1 or args.samples < 1:
        raise CommandError("--people ≥ 4, --steps ≥ 1 and --samples ≥ 1, please")
    r = run_study(args.out, args.people, args.steps, args.samples, args.seed, args.abstain_steps,
                  args.dpo_steps, args.dpo_lr, judge=not args.no_judge, chat=args.chat,
                  dpo_from=args.dpo_from)  # fmt: skip
    dpo = "SFT→DPO" if r.get("dpo_start") == "sft" else "DPO"
    rows = {
        "questions": r["questions"],
        "accuracy on known facts": r["known_accuracy"],
        "SelfCheck AUROC (wrong answers)": r["selfcheck_auroc"],
        "mean −log p AUROC (wrong answers)": r["logprob_auroc"],
        "SelfCheck judge AUROC (wrong answers)": r["judge_auroc"],
        "held-out questions": r["held_out_questions"],
        "hallucination rate, answering all (held out)": r["halluc_rate_before"],
        "hallucination rate, trained abstention": r.get("halluc_rate_after"),
        "answer rate, trained abstention": r.get("answer_rate_after"),
        f"hallucination rate, {dpo} abstention": r.get("dpo_halluc_rate_after"),
        f"answer rate, {dpo} abstention": r.get("dpo_answer_rate_after"),
        f"{dpo} setting chosen on validation": (
            None
            if "dpo_setting" not in r
            else "β {beta}, ε {label_smoothing}, lr {lr:g}, {steps} steps".format(
                **r["dpo_setting"]
            )
        ),
        "hallucination rate, selective (SelfCheck)": r["selective_halluc_rate"],
        "answer rate, selective (SelfCheck)": r["selective_answer_rate"],
    }
    print("| measure | value |\n|---|---|")
    for label, value in rows.items():
        text = "–" if value is None else (
            f"{value:.3f}" if isinstance(value, float) else str(value))  # fmt: skip
        print(f"| {label} | {text} |")
    print("\n| held out | hallucination rate | answer rate | accuracy |\n|---|---:|---:|---:|")
    variants = (("answering all", "halluc_rate_before", None, None),
                ("trained abstention (SFT)", "halluc_rate_after", "answer_rate_after",
                 "accuracy_after"),
                ("DPO's start (" + ("SFT on half" if r.get("dpo_start") == "sft"
                                    else "the fact model") + ")", "dpo_start_halluc_rate_after",
                 "dpo_start_answer_rate_after", "dpo_start_accuracy_after"),
                (f"trained abstention ({dpo})", "dpo_halluc_rate_after", "dpo_answer_rate_after",
                 "dpo_accuracy_after"),
                ("selective (SelfCheck)", "selective_halluc_rate", "selective_answer_rate", None))  # fmt: skip
    for label, *keys in variants:
        if r.get(keys[0]) is None:
            continue
        cells = ["–" if k is None or r.get(k) is None else f"{r[k]:.3f}" for k in keys]
        if label == "answering all":
            cells[1:] = ["1.000", f"{1 - r['halluc_rate_before']:.3f}"]
        if label.startswith("selective"):  # answered and right = answered − wrong
            cells[2] = f"{r['selective_answer_rate'] - r['selective_halluc_rate']:.3f}"
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"results: {args.out}/result.json, answers.jsonl")
    return 0
