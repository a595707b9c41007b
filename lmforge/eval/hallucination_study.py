"""The hallucination study end to end (``lmforge hallucination run``, bench/hallucination.py):
pretrain a tiny LM on the facts of the known half of a synthetic world
(`lmforge.eval.knowledge`), ask about everyone, score every greedy answer with the detectors
of `lmforge.eval.hallucination` and report their AUROC for "this answer is wrong". Then two
mitigations, both measured on held-out questions (a fifth of the known people and half of
the unknown ones, never used to fit either) as hallucination rate against answer rate:
trained abstention (`lmforge.eval.abstention`) in two variants — SFT:
continue training on the other questions with "I don't know" where the model was wrong,
facts replayed; DPO: preference pairs on the same questions ("I don't know" ≻ a wrong
answer, a right answer ≻ "I don't know") through `lmforge.align.dpo_trainer`, started
from and referenced to the SFT model ("SFT→DPO", Rafailov et al. 2023 §4; or from the
fact-trained model, plain DPO, with ``dpo_from="fact"``) — and
selective answering (abstain above a SelfCheck threshold calibrated on the other questions).

    result = run_study("runs/hallucination", people=120, steps=1500)
    result["selfcheck_auroc"], result["judge_auroc"], result["halluc_rate_after"]
    result["dpo_halluc_rate_after"], result["dpo_answer_rate_after"]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.align.dpo_trainer import DPOConfig, train_dpo
from lmforge.eval.abstention import abstention_documents, abstention_pairs, abstention_rates
from lmforge.eval.accuracy import encode_prompt, sample_responses
from lmforge.eval.hallucination import (
    answer_uncertainty,
    auroc,
    selfcheck_judge,
    selfcheck_unigram,
)
from lmforge.eval.knowledge import (
    fact_documents,
    first_line,
    knowledge_world,
    question_items,
    question_text,
    split_people,
)
from lmforge.infer import SamplingParams
from lmforge.io import atomic_write_json, atomic_write_text
from lmforge.models.hf import load_model
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.pretrain import train_pretrain

__all__ = [
    "choose_threshold",
    "dpo_fact_model",
    "dpo_start_model",
    "run_study",
    "selective_rates",
    "train_fact_model",
]


def train_fact_model(
    docs: Sequence[str], out: str | Path, steps: int, seed: int = 0,
    init_from: str | Path | None = None, lr: float = 3e-3, tokenizer: str | Path | None = None,
) -> Path:  # fmt: skip
    """Pretrain the ``tiny`` preset (or continue ``init_from``, with its tokenizer) on
    ``docs`` (written to ``out/facts.jsonl``; a fresh model gets the ``tokenizer`` folder,
    default a 400-id BPE trained on them) for ``steps`` steps; returns the model folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "facts.jsonl"
    atomic_write_text(path, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    if init_from is None and tokenizer is None:
        Tokenizer.train(list(docs), vocab_size=400).save(out / "tokenizer")
    tokenizer = str(init_from or tokenizer or out / "tokenizer")
    c = RunConfig()
    config = dataclasses.replace(
        c, out_dir=str(out / "run"),
        model=dataclasses.replace(c.model, preset="tiny",
                                  init_from=None if init_from is None else str(init_from)),
        data=dataclasses.replace(c.data, paths=[str(path)], tokenizer=tokenizer,
                                 seq_len=64, num_workers=0),
        optim=dataclasses.replace(c.optim, lr=lr, warmup_steps=min(50, max(1, steps // 10))),
        train=dataclasses.replace(c.train, batch_size=16, max_steps=steps, seed=seed,
                                  eval_every=0, save_every=0, cpu_threads=1, resume=False),
        log=dataclasses.replace(c.log, progress=False, plot=False),
    )  # fmt: skip
    return Path(train_pretrain(config, console=Console(quiet=True))["model_dir"])


def dpo_fact_model(
    pairs: Sequence[dict[str, str]], out: str | Path, init_from: str | Path, steps: int,
    seed: int = 0, lr: float = 1e-3, beta: float = 0.1,
) -> Path:  # fmt: skip
    """DPO (`lmforge.align.dpo_trainer.train_dpo`, sigmoid loss, a frozen copy of
    ``init_from`` as reference) on the preference records ``pairs`` (written to
    ``out/pairs.jsonl``, read as raw ``<bos> prompt completion <eos>``, or through the chat
    template where the prompt is a message list) for ``steps``
    steps of 8 pairs; returns the model folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pairs.jsonl"
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in pairs))
    c = DPOConfig()
    config = dataclasses.replace(
        c, out_dir=str(out / "run"),
        model=dataclasses.replace(c.model, init_from=str(init_from)),
        data=dataclasses.replace(c.data, paths=[str(path)], tokenizer=str(init_from),
                                 format="raw", seq_len=64, val_fraction=0.0, num_workers=0),
        optim=dataclasses.replace(c.optim, lr=lr, weight_decay=0.0,
                                  warmup_steps=min(10, max(1, steps // 10))),
        train=dataclasses.replace(c.train, batch_size=8, max_steps=steps, seed=seed,
                                  eval_every=0, save_every=0, cpu_threads=1, resume=False),
        log=dataclasses.replace(c.log, progress=False, plot=False),
        dpo=dataclasses.replace(c.dpo, beta=beta, layout="padded"),
    )  # fmt: skip
    return Path(train_dpo(config, console=Console(quiet=True))["model_dir"])


def dpo_start_model(fact_model: Path, sft_model: Path | None, dpo_from: str = "sft") -> Path:
    """The model DPO abstention starts from, and is referenced to (the trainer freezes a copy
    of its start as π_ref). ``"sft"``: the SFT abstention model — Rafailov et al. 2023 §4
    initialise π_ref (and the policy) by SFT on the preferred completions, because the DPO
    loss (eq. 7) only moves log π/π_ref ratios: from the fact-trained model, where "I don't
    know" has log-prob ≈ −107, it reaches ~0 by pushing the rejected answers down and never
    makes the chosen abstention likely enough to be generated. The SFT abstention model is
    that SFT stage: its targets are exactly the pairs' chosen sides (the model's own answer
    where right, "I don't know" where wrong, on the same fit questions), with the facts
    replayed; reusing it (rather than a separate, shorter SFT stage) costs no extra
    training and makes the DPO row a refinement of the SFT row, measured beside it.
    ``"fact"`` (or no SFT model): the fact-trained model, plain DPO."""
    if dpo_from not in ("sft", "fact"):
        raise ValueError(f"dpo_from: 'sft' or 'fact', not {dpo_from!r}")
    return sft_model if dpo_from == "sft" and sft_model is not None else fact_model


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


def greedy_answers(model_dir: Path, items: Sequence[Any]) -> list[str]:
    """The first line of each item's greedy completion (16 new tokens at most: room for the
    abstention, which a 400-id BPE trained on facts spells in ~9)."""
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    params = SamplingParams(max_tokens=16, temperature=0.0)
    return [first_line(r) for (r,) in sample_responses(model, tok, items, params)]


def run_study(
    out: str | Path, people: int = 120, steps: int = 1500, samples: int = 8, seed: int = 0,
    abstain_steps: int | None = None, dpo_steps: int | None = None, dpo_lr: float = 3e-4,
    judge: bool = True, chat: bool = False, dpo_from: str = "sft",
) -> dict[str, Any]:  # fmt: skip
    """Train, ask, detect, mitigate (see the module docstring); writes ``answers.jsonl`` and
    ``result.json`` into ``out`` and returns the result. ``abstain_steps`` (default
    steps / 3; 0: skip) is the length of the SFT abstention training, ``dpo_steps``
    (default: ``abstain_steps``; 0: skip) of the DPO one (``dpo_lr``), which starts from
    and is referenced to the SFT abstention model (``dpo_from="sft"``, "SFT→DPO"; see
    `dpo_start_model`) or the fact-trained model (``"fact"``, plain DPO; also what "sft"
    falls back to when ``abstain_steps`` is 0) — ``result["dpo_start"]`` says which was
    used; ``judge`` adds the
    model-as-judge SelfCheck (2 forwards per sample). ``chat``: chat-style questions — the
    model trains on each question and answer as a user / assistant conversation rendered
    through its tokenizer's chat template, and is asked through the same template."""
    out = Path(out)
    world = knowledge_world(people, seed)
    known, unknown = split_people(world, 0.5, seed)
    render = None
    if chat:  # the tokenizer first: it renders the conversations the model trains on
        Tokenizer.train(fact_documents(known), vocab_size=400).save(out / "tokenizer")
        render = load_tokenizer(out / "tokenizer").apply_chat_template
    docs = fact_documents(known, render_chat=render)
    model_dir = train_fact_model(
        docs, out, steps, seed, tokenizer=out / "tokenizer" if chat else None
    )
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    items = question_items(known + unknown, chat=chat)
    greedy = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=0.0))
    sampled = sample_responses(model, tok, items, SamplingParams(max_tokens=8, temperature=1.0),
                               samples=samples, seed=seed)  # fmt: skip
    known_names = {p.name for p in known}
    held_out_names = {p.name for p in known[: max(1, len(known) // 5)]}
    held_out_names |= {p.name for p in unknown[: max(1, len(unknown) // 2)]}
    rows = []
    for item, (response,), resampled in zip(items, greedy, sampled, strict=True):
        answer = first_line(response)
        prompt_ids = encode_prompt(tok, item.prompt, chat=False)
        if chat:  # the reply starts right after the assistant turn's opening
            answer_ids = tok.encode(answer)
        else:
            full = tok.encode(f"{item.prompt} {answer}", add_special_tokens=True)
            answer_ids = full[len(prompt_ids) :] if full[: len(prompt_ids)] == prompt_ids else full
        name = item.key.split(":")[0]
        rows.append(dict(
            key=item.key, known=name in known_names, held_out=name in held_out_names,
            answer=answer, correct=bool(item.check(answer)),
            mean_nll=answer_uncertainty(model, prompt_ids, answer_ids)["mean_nll"],
            selfcheck=selfcheck_unigram(answer, [first_line(s) for s in resampled]),
        ))  # fmt: skip
        if judge:
            rows[-1]["judge"] = selfcheck_judge(model, tok, question_text(item), answer,
                                                [first_line(s) for s in resampled])  # fmt: skip
    wrong = [not r["correct"] for r in rows]
    both = 0 < sum(wrong) < len(wrong)  # AUROC needs right and wrong answers
    fit_rows = [r for r in rows if not r["held_out"]]
    test_rows = [r for r in rows if r["held_out"]]
    threshold = choose_threshold(fit_rows)
    selective_after, selective_answer_rate = selective_rates(test_rows, threshold)
    n_known = sum(r["known"] for r in rows)
    result: dict[str, Any] = {
        "questions": len(rows),
        "held_out_questions": len(test_rows),
        "known_accuracy": sum(r["correct"] for r in rows if r["known"]) / max(1, n_known),
        "selfcheck_auroc": auroc([r["selfcheck"] for r in rows], wrong) if both else None,
        "logprob_auroc": auroc([r["mean_nll"] for r in rows], wrong) if both else None,
        "judge_auroc": auroc([r["judge"] for r in rows], wrong) if both and judge else None,
        "halluc_rate_before": sum(not r["correct"] for r in test_rows) / len(test_rows),
        "selective_halluc_rate": selective_after,
        "selective_answer_rate": selective_answer_rate,
        "threshold": threshold,
    }
    abstain_steps = steps // 3 if abstain_steps is None else abstain_steps
    dpo_steps = abstain_steps if dpo_steps is None else dpo_steps
    fit_items = [i for i, r in zip(items, rows) if not r["held_out"]]
    fit_answers = [r["answer"] for r in rows if not r["held_out"]]
    test_items = [i for i, r in zip(items, rows) if r["held_out"]]
    variants = []
    if abstain_steps > 0:  # SFT: continue training on the targets, facts replayed
        docs = docs + abstention_documents(fit_items, fit_answers, render_chat=render)
        tuned = train_fact_model(docs, out / "abstain", abstain_steps, seed,
                                 init_from=model_dir, lr=1e-3)  # fmt: skip
        variants.append(("", tuned))
    if dpo_steps > 0:  # DPO on the same questions, as preferences, from the SFT model
        pairs = abstention_pairs(fit_items, fit_answers)
        start = dpo_start_model(model_dir, variants[0][1] if variants else None, dpo_from)
        result["dpo_start"] = "sft" if start != model_dir else "fact"
        variants.append(("dpo_", dpo_fact_model(pairs, out / "abstain-dpo", start, dpo_steps,
                                                seed, lr=dpo_lr)))  # fmt: skip
    for prefix, tuned in variants:
        after_answers = greedy_answers(tuned, test_items)
        rates = abstention_rates(test_items, after_answers)
        for r, answer in zip(test_rows, after_answers):
            r[f"{prefix}answer_after"] = answer
        result.update({f"{prefix}halluc_rate_after": rates["hallucination_rate"],
                       f"{prefix}answer_rate_after": rates["answer_rate"],
                       f"{prefix}accuracy_after": rates["accuracy"]})  # fmt: skip
    atomic_write_text(out / "answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / "result.json", result)
    return result
