"""Hallucination on a synthetic knowledge world (`lmforge.eval.knowledge`): a tiny LM is
pretrained (``lmforge pretrain``'s Trainer) on the facts of half the people; it is then
asked about everyone. Questions about the unseen half have no learnable answer, so every
answer to them is a hallucination by construction. Detectors score each greedy answer —
token-level uncertainty (mean negative log-prob) and SelfCheckGPT-style consistency with 8
resampled answers (unigram score) — and their AUROC for "this answer is wrong" is reported.
Mitigation here is selective answering: abstain when the SelfCheck score is above a
threshold chosen on a calibration half of the questions (the one keeping the most correct
answers while at most halving hallucinations), measured on the other half.

    python bench/hallucination.py [--people 120] [--steps 1500]

Last line: ``RESULT hallucination selfcheck_auroc=<a> logprob_auroc=<b>
halluc_rate_before=<c> halluc_rate_after=<d> answer_rate_after=<e>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

from rich.console import Console

from lmforge.eval.accuracy import sample_responses
from lmforge.eval.hallucination import answer_uncertainty, auroc, selfcheck_unigram
from lmforge.eval.knowledge import (
    fact_documents,
    first_line,
    knowledge_world,
    question_items,
    split_people,
)
from lmforge.infer import SamplingParams
from lmforge.models.hf import load_model
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.pretrain import train_pretrain


def train_model(docs: list[str], out: Path, steps: int, seed: int) -> Path:
    """Pretrain the ``tiny`` preset on ``docs`` (one JSONL file) for ``steps`` steps."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "facts.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    Tokenizer.train(docs, vocab_size=400).save(out / "tokenizer")
    c = RunConfig()
    config = dataclasses.replace(
        c, out_dir=str(out / "run"),
        model=dataclasses.replace(c.model, preset="tiny"),
        data=dataclasses.replace(c.data, paths=[str(path)], tokenizer=str(out / "tokenizer"),
                                 seq_len=64, num_workers=0),
        optim=dataclasses.replace(c.optim, lr=3e-3, warmup_steps=50),
        train=dataclasses.replace(c.train, batch_size=16, max_steps=steps, seed=seed,
                                  eval_every=0, save_every=0, cpu_threads=1, resume=False),
        log=dataclasses.replace(c.log, progress=False, plot=False),
    )  # fmt: skip
    return Path(train_pretrain(config, console=Console(quiet=True))["model_dir"])


def selective(rows: list[dict], threshold: float) -> tuple[float, float]:
    """(hallucination rate among all questions, answer rate) when answering only below
    ``threshold`` selfcheck score."""
    answered = [r for r in rows if r["selfcheck"] <= threshold]
    wrong = sum(not r["correct"] for r in answered)
    return wrong / len(rows), len(answered) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=120)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-hallucination")
    args = parser.parse_args()
    start = time.perf_counter()
    people = knowledge_world(args.people, args.seed)
    known, unknown = split_people(people, 0.5, args.seed)
    model_dir = train_model(fact_documents(known), Path(args.out), args.steps, args.seed)
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    items = question_items(known + unknown)
    greedy = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=0.0))
    sampled = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=1.0),
                               samples=args.samples, seed=args.seed)  # fmt: skip
    known_names = {p.name for p in known}
    rows = []
    for item, (response,), samples in zip(items, greedy, sampled, strict=True):
        answer = first_line(response)
        prompt_ids = tok.encode(item.prompt, add_special_tokens=True)
        full = tok.encode(f"{item.prompt} {answer}", add_special_tokens=True)
        answer_ids = full[len(prompt_ids) :] if full[: len(prompt_ids)] == prompt_ids else full
        unc = answer_uncertainty(model, prompt_ids, answer_ids)
        rows.append(dict(key=item.key, known=item.key.split(":")[0] in known_names,
                         answer=answer, correct=item.check(answer), mean_nll=unc["mean_nll"],
                         selfcheck=selfcheck_unigram(answer, [first_line(s) for s in samples])))  # fmt: skip
    wrong = [not r["correct"] for r in rows]
    both = 0 < sum(wrong) < len(wrong)  # AUROC needs right and wrong answers
    selfcheck_auc = auroc([r["selfcheck"] for r in rows], wrong) if both else float("nan")
    logprob_auc = auroc([r["mean_nll"] for r in rows], wrong) if both else float("nan")
    known_acc = sum(r["correct"] for r in rows if r["known"]) / max(
        1, sum(r["known"] for r in rows)
    )
    order = list(range(len(rows)))
    random.Random(args.seed).shuffle(order)
    calib = [rows[i] for i in order[: len(rows) // 2]]
    test = [rows[i] for i in order[len(rows) // 2 :]]
    calib_before = sum(not r["correct"] for r in calib) / len(calib)
    candidates = sorted({r["selfcheck"] for r in calib})
    ok = [t for t in candidates if selective(calib, t)[0] <= calib_before / 2] or candidates[:1]
    threshold = max(ok)
    after, answer_rate = selective(test, threshold)
    before = sum(not r["correct"] for r in test) / len(test)  # same questions as "after"
    Path(args.out, "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    minutes = (time.perf_counter() - start) / 60
    print(f"{len(rows)} questions ({len(known)} known / {len(unknown)} unseen people), "
          f"{minutes:.1f} min; accuracy on known facts {known_acc:.3f}; "
          f"abstention threshold {threshold:.3f}")  # fmt: skip
    print(f"RESULT hallucination selfcheck_auroc={selfcheck_auc:.3f} "
          f"logprob_auroc={logprob_auc:.3f} halluc_rate_before={before:.3f} "
          f"halluc_rate_after={after:.3f} answer_rate_after={answer_rate:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
