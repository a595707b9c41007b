"""The hallucination study end to end (``lmforge hallucination run``, bench/hallucination.py):
pretrain a tiny LM on the facts of the known half of a synthetic world
(`lmforge.eval.knowledge`), ask about everyone, score every greedy answer with the detectors
of `lmforge.eval.hallucination`, report their AUROC for "this answer is wrong", and measure
selective answering — abstain above a SelfCheck threshold calibrated on a random half of the
questions — on the other half as hallucination rate against answer rate.

    result = run_study("runs/hallucination", people=120, steps=1500)
    result["selfcheck_auroc"], result["halluc_rate_after"], result["answer_rate_after"]
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from lmforge.io import atomic_write_json, atomic_write_text
from lmforge.models.hf import load_model
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.pretrain import train_pretrain

__all__ = ["choose_threshold", "run_study", "selective_rates", "train_fact_model"]


def train_fact_model(docs: Sequence[str], out: str | Path, steps: int, seed: int = 0) -> Path:
    """Pretrain the ``tiny`` preset on ``docs`` (written to ``out/facts.jsonl``, a 400-id BPE
    trained on them) for ``steps`` steps; returns the model folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "facts.jsonl"
    atomic_write_text(path, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    Tokenizer.train(list(docs), vocab_size=400).save(out / "tokenizer")
    c = RunConfig()
    config = dataclasses.replace(
        c, out_dir=str(out / "run"),
        model=dataclasses.replace(c.model, preset="tiny"),
        data=dataclasses.replace(c.data, paths=[str(path)], tokenizer=str(out / "tokenizer"),
                                 seq_len=64, num_workers=0),
        optim=dataclasses.replace(c.optim, lr=3e-3, warmup_steps=min(50, max(1, steps // 10))),
        train=dataclasses.replace(c.train, batch_size=16, max_steps=steps, seed=seed,
                                  eval_every=0, save_every=0, cpu_threads=1, resume=False),
        log=dataclasses.replace(c.log, progress=False, plot=False),
    )  # fmt: skip
    return Path(train_pretrain(config, console=Console(quiet=True))["model_dir"])


def selective_rates(rows: Sequence[dict[str, Any]], threshold: float) -> tuple[float, float]:
    """``(hallucination rate, answer rate)`` over all ``rows`` when answering only where
    the ``selfcheck`` score is ≤ ``threshold`` (a wrong answer is a hallucination)."""
    answered = [r for r in rows if r["selfcheck"] <= threshold]
    wrong = sum(not r["correct"] for r in answered)
    return wrong / len(rows), len(answered) / len(rows)


def choose_threshold(rows: Sequence[dict[str, Any]], keep: float = 0.5) -> float:
    """The largest SelfCheck threshold (the most answers) whose hallucination rate on
    ``rows`` is at most ``keep`` × the rate when answering everything."""
    base = sum(not r["correct"] for r in rows) / len(rows)
    candidates = sorted({r["selfcheck"] for r in rows})
    ok = [t for t in candidates if selective_rates(rows, t)[0] <= keep * base]
    return max(ok) if ok else min(candidates) - 1.0


def run_study(
    out: str | Path, people: int = 120, steps: int = 1500, samples: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Train, ask, detect, abstain (see the module docstring); writes ``answers.jsonl`` and
    ``result.json`` into ``out`` and returns the result."""
    out = Path(out)
    world = knowledge_world(people, seed)
    known, unknown = split_people(world, 0.5, seed)
    model_dir = train_fact_model(fact_documents(known), out, steps, seed)
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    items = question_items(known + unknown)
    greedy = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=0.0))
    sampled = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=1.0),
                               samples=samples, seed=seed)  # fmt: skip
    known_names = {p.name for p in known}
    rows = []
    for item, (response,), resampled in zip(items, greedy, sampled, strict=True):
        answer = first_line(response)
        prompt_ids = tok.encode(item.prompt, add_special_tokens=True)
        full = tok.encode(f"{item.prompt} {answer}", add_special_tokens=True)
        answer_ids = full[len(prompt_ids) :] if full[: len(prompt_ids)] == prompt_ids else full
        rows.append(dict(
            key=item.key, known=item.key.split(":")[0] in known_names, answer=answer,
            correct=bool(item.check(answer)),
            mean_nll=answer_uncertainty(model, prompt_ids, answer_ids)["mean_nll"],
            selfcheck=selfcheck_unigram(answer, [first_line(s) for s in resampled]),
        ))  # fmt: skip
    wrong = [not r["correct"] for r in rows]
    both = 0 < sum(wrong) < len(wrong)  # AUROC needs right and wrong answers
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    calibration = [rows[i] for i in order[: len(rows) // 2]]
    evaluation = [rows[i] for i in order[len(rows) // 2 :]]
    threshold = choose_threshold(calibration)
    after, answer_rate = selective_rates(evaluation, threshold)
    n_known = sum(r["known"] for r in rows)
    result = {
        "questions": len(rows),
        "known_accuracy": sum(r["correct"] for r in rows if r["known"]) / max(1, n_known),
        "selfcheck_auroc": auroc([r["selfcheck"] for r in rows], wrong) if both else None,
        "logprob_auroc": auroc([r["mean_nll"] for r in rows], wrong) if both else None,
        "halluc_rate_before": sum(not r["correct"] for r in evaluation) / len(evaluation),
        "halluc_rate_after": after,
        "answer_rate_after": answer_rate,
        "threshold": threshold,
    }
    atomic_write_text(out / "answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / "result.json", result)
    return result
