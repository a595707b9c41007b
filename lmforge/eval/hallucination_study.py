"""The hallucination study end to end (``lmforge hallucination run``, bench/hallucination.py):
pretrain a tiny LM on the facts of the known half of a synthetic world
(`lmforge.eval.knowledge`), ask about everyone, score every greedy answer with the detectors
of `lmforge.eval.hallucination` and report their AUROC for "this answer is wrong". Then the
mitigations, all measured on held-out questions (a fifth of the known people and half of
the unknown ones, never used to fit anything) as hallucination rate against answer rate.
The other ("fit") people split into validation people (a fifth) and two training halves
(`split_fit_people`):

- trained abstention by SFT (`lmforge.eval.abstention`): continue training on both halves'
  questions with "I don't know" where the model was wrong, facts replayed;
- trained abstention by DPO (`lmforge.align.dpo_trainer`): an SFT abstention stage on the
  first half, then preference pairs on the second ("I don't know" ≻ each wrong answer the
  model gave or sampled, its right answer ≻ "I don't know", balanced), started from and
  referenced to that SFT model ("SFT→DPO", Rafailov et al. 2023 §4; ``dpo_from="fact"``:
  plain DPO from the fact-trained model on both halves), once per `DPO_GRID` setting; the
  setting with the best validation score (accuracy − hallucination rate) is the one
  measured on held-out questions. Conservative DPO (label smoothing, Mitchell 2023) is in
  the grid because plain DPO's loss has no finite optimum on these deterministic
  preferences (see `DPO_GRID`);
- selective answering: abstain above a SelfCheck threshold calibrated on the fit questions.

    result = run_study("runs/hallucination", people=120, steps=1500)
    result["selfcheck_auroc"], result["judge_auroc"], result["halluc_rate_after"]
    result["dpo_halluc_rate_after"], result["dpo_answer_rate_after"], result["dpo_setting"]
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.align.dpo_trainer import DPOConfig, train_dpo
from lmforge.align.preference_data import PreferenceLoader, load_preference_pairs
from lmforge.align.sequence_logps import sequence_logps
from lmforge.eval.abstention import (
    ABSTAIN,
    abstained,
    abstention_documents,
    abstention_pairs,
    abstention_rates,
    abstention_score,
)
from lmforge.eval.accuracy import encode_prompt, sample_responses
from lmforge.eval.hallucination import (
    answer_uncertainty,
    auroc,
    continuation_logprob,
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
    "DPO_GRID",
    "DPOSetting",
    "choose_threshold",
    "dpo_fact_model",
    "dpo_start_model",
    "logprob_shifts",
    "run_study",
    "selective_rates",
    "split_fit_people",
    "train_fact_model",
]


@dataclasses.dataclass(frozen=True)
class DPOSetting:
    """One DPO abstention setting: β, conservative DPO's label smoothing ε (Mitchell 2023),
    learning rate and steps (of 8 pairs)."""

    beta: float = 1.0
    label_smoothing: float = 0.1
    lr: float = 1e-4
    steps: int = 200


# The settings DPO abstention chooses from on validation questions (`run_study`). Plain DPO
# (ε = 0) has no finite optimum on deterministic preferences (Azar et al. 2023 §4.2): it
# drives every rejected log-prob towards −∞, and the rejected strings here are shared by all
# prompts ("I don't know", and wrong answers that are other people's right ones), so the
# push generalises to every question. With ε > 0 the per-pair optimum is the finite margin
# h* = log((1 − ε) / ε) / β (2.2 nats at β 1, ε 0.1; 2.8 at β 0.5, ε 0.2).
DPO_GRID = (
    DPOSetting(beta=0.1, label_smoothing=0.0, lr=1e-4, steps=200),
    DPOSetting(beta=1.0, label_smoothing=0.1, lr=1e-4, steps=100),
    DPOSetting(beta=1.0, label_smoothing=0.1, lr=1e-4, steps=200),
    DPOSetting(beta=0.5, label_smoothing=0.2, lr=1e-4, steps=200),
)


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
    seed: int = 0, lr: float = 1e-3, beta: float = 0.1, label_smoothing: float = 0.0,
) -> Path:  # fmt: skip
    """DPO (`lmforge.align.dpo_trainer.train_dpo`, sigmoid loss — conservative DPO with
    ``label_smoothing`` > 0 — a frozen copy of
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
        dpo=dataclasses.replace(c.dpo, beta=beta, label_smoothing=label_smoothing,
                                layout="padded"),
    )  # fmt: skip
    return Path(train_dpo(config, console=Console(quiet=True))["model_dir"])


def dpo_start_model(fact_model: Path, sft_model: Path | None, dpo_from: str = "sft") -> Path:
    """The model DPO abstention starts from, and is referenced to (the trainer freezes a copy
    of its start as π_ref). ``"sft"``: an SFT abstention model — Rafailov et al. 2023 §4
    initialise π_ref (and the policy) by SFT on preferred completions, because the DPO loss
    (eq. 7) only moves log π/π_ref ratios: from the fact-trained model, where "I don't know"
    has log-prob ≈ −107, it lowers the rejected answers and never makes the abstention likely
    enough to be generated. `run_study` trains that SFT stage on one half of the training
    questions and gives DPO the other half (as Cheng et al. 2024 split their "I don't know"
    set between SFT warm-up and DPO): on questions its own SFT stage fitted, the start already
    ranks every pair right, so DPO has nothing to learn there. ``"fact"`` (or no SFT model):
    the fact-trained model, plain DPO."""
    if dpo_from not in ("sft", "fact"):
        raise ValueError(f"dpo_from: 'sft' or 'fact', not {dpo_from!r}")
    return sft_model if dpo_from == "sft" and sft_model is not None else fact_model


def split_fit_people(
    names: Sequence[str], seed: int = 0, val_fraction: float = 0.2
) -> tuple[list[str], list[str], list[str]]:
    """The fit people (those not held out) as ``(sft_half, dpo_half, validation)``: a seeded
    shuffle, the first ``val_fraction`` (at least one) for choosing DPO's setting, the rest
    for training, cut in two halves (the DPO variant's SFT warm-up and its pairs)."""
    order = sorted(names)
    random.Random(f"fit-split-{seed}").shuffle(order)
    n_val = max(1, round(val_fraction * len(order)))
    val, train = order[:n_val], order[n_val:]
    half = len(train) // 2
    return train[:half], train[half:], val


@torch.no_grad()
def logprob_shifts(
    start: Path, tuned: Path, pairs: Sequence[dict[str, Any]], probe_items: Sequence[Any]
) -> dict[str, float | None]:
    """Where DPO moved probability: the mean change (tuned − start, nats) of the sequence
    log-prob of each side of the distinct ``pairs`` — ``abstain_chosen`` / ``answer_rejected``
    over the "I don't know ≻ answer" pairs, ``answer_chosen`` / ``abstain_rejected`` over the
    others, tokenized as DPO reads them — and of "I don't know" after each ``probe_items``
    prompt (``abstain_probe``: questions DPO never saw). None where there is nothing to
    average."""
    unique = list({json.dumps(p, sort_keys=True): p for p in pairs}.values())
    tok = load_tokenizer(start)
    path = Path(tuned).parent / "shift-pairs.jsonl"
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in unique))
    tokenized, _ = load_preference_pairs([path], tok, format="raw")
    batch = next(iter(PreferenceLoader(tokenized, len(tokenized), 10**6, layout="padded",
                                       pad_id=tok.pad_token_id or 0)))  # fmt: skip
    kind = torch.tensor([abstained(unique[i]["chosen"]) for i in batch["pair_ids"].tolist()])
    models = [load_model(m, dtype=torch.float32).eval() for m in (start, tuned)]
    before, after = (sequence_logps(m, batch)[0] for m in models)
    delta = after - before
    chosen, rejected = delta[0::2], delta[1::2]

    def mean(x: torch.Tensor) -> float | None:
        return x.mean().item() if x.numel() else None

    probe = []
    for item in probe_items:
        text = ABSTAIN if isinstance(item.prompt, list) else " " + ABSTAIN
        ids, completion = encode_prompt(tok, item.prompt, chat=False), tok.encode(text)
        probe.append(continuation_logprob(models[1], ids, completion)
                     - continuation_logprob(models[0], ids, completion))  # fmt: skip
    return {"abstain_chosen": mean(chosen[kind]), "answer_rejected": mean(rejected[kind]),
            "answer_chosen": mean(chosen[~kind]), "abstain_rejected": mean(rejected[~kind]),
            "abstain_probe": sum(probe) / len(probe) if probe else None}  # fmt: skip


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
    abstain_steps: int | None = None, dpo_steps: int | None = None,
    dpo_lr: float | None = None, judge: bool = True, chat: bool = False,
    dpo_from: str = "sft", dpo_grid: Sequence[DPOSetting] = DPO_GRID,
) -> dict[str, Any]:  # fmt: skip
    """Train, ask, detect, mitigate (see the module docstring); writes ``answers.jsonl`` and
    ``result.json`` into ``out`` and returns the result.

    The fit people (not held out) split by `split_fit_people` into validation people and
    two training halves. ``abstain_steps`` (default steps / 3; 0: skip) is the length of
    SFT abstention training on both halves' questions (the ``*_after`` rates). DPO
    abstention (the ``dpo_*`` rates; skipped when ``dpo_steps`` is 0) starts from and is
    referenced to (`dpo_start_model`) an SFT abstention model trained as long on the first
    half only (``dpo_from="sft"``; ``"fact"``, or ``abstain_steps`` 0: the fact-trained
    model, plain DPO) and trains on pairs from the other half (both halves from the fact
    model) — `abstention_pairs` over the fact model's greedy and sampled answers, balanced —
    once per setting of ``dpo_grid`` (``dpo_steps`` / ``dpo_lr``, when given, replace every
    setting's); the setting with the best `abstention_score` on the validation questions is
    the one measured on held-out questions (``result["dpo_setting"]``; every setting's
    validation rates and `logprob_shifts` in ``result["dpo_grid"]``). ``judge`` adds the
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
    fit_names = sorted({r["key"].split(":")[0] for r in fit_rows})
    sft_half, dpo_half, val_names = split_fit_people(fit_names, seed)
    result["fit_people"] = {"sft_half": len(sft_half), "dpo_half": len(dpo_half),
                            "validation": len(val_names)}  # fmt: skip
    by_name: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_name.setdefault(item.key.split(":")[0], []).append(k)

    def questions(names: Sequence[str]) -> list[int]:
        return [k for name in names for k in by_name[name]]

    def fit_data(names: Sequence[str]) -> tuple[list[Any], list[str], list[list[str]]]:
        ks = questions(names)
        return ([items[k] for k in ks], [rows[k]["answer"] for k in ks],
                [[first_line(x) for x in sampled[k]] for k in ks])  # fmt: skip

    for r in rows:
        r["val"] = r["key"].split(":")[0] in set(val_names)
    test_items = [i for i, r in zip(items, rows) if r["held_out"]]
    val_items = [items[k] for k in questions(val_names)]
    variants = []
    sft_half_model = None
    if abstain_steps > 0:  # SFT: continue training on the targets, facts replayed
        train_items, train_answers, _ = fit_data(sft_half + dpo_half)
        tuned = train_fact_model(
            docs + abstention_documents(train_items, train_answers, render_chat=render),
            out / "abstain", abstain_steps, seed, init_from=model_dir, lr=1e-3)  # fmt: skip
        variants.append(("", tuned))
        if dpo_steps != 0 and dpo_from == "sft":  # DPO's warm-up: SFT on the first half
            half_items, half_answers, _ = fit_data(sft_half)
            sft_half_model = train_fact_model(
                docs + abstention_documents(half_items, half_answers, render_chat=render),
                out / "abstain-half", abstain_steps, seed, init_from=model_dir, lr=1e-3)  # fmt: skip
    if dpo_steps != 0 and dpo_grid:
        start = dpo_start_model(model_dir, sft_half_model, dpo_from)
        result["dpo_start"] = "sft" if start != model_dir else "fact"
        pair_names = dpo_half if start != model_dir else sft_half + dpo_half
        pairs = abstention_pairs(*fit_data(pair_names), balance=True)
        result["dpo_pairs"] = len(pairs)
        if not pairs:
            raise ValueError(f"no DPO abstention pairs from {len(pair_names)} people's questions")
        start_val = abstention_rates(val_items, greedy_answers(start, val_items))
        result["dpo_start_val"] = {**start_val, "score": abstention_score(start_val)}
        grid = []
        for n, setting in enumerate(dpo_grid):
            setting = dataclasses.replace(
                setting, steps=setting.steps if dpo_steps is None else dpo_steps,
                lr=setting.lr if dpo_lr is None else dpo_lr)  # fmt: skip
            tuned = dpo_fact_model(pairs, out / "abstain-dpo" / str(n), start, setting.steps,
                                   seed, lr=setting.lr, beta=setting.beta,
                                   label_smoothing=setting.label_smoothing)  # fmt: skip
            val = abstention_rates(val_items, greedy_answers(tuned, val_items))
            grid.append({"setting": dataclasses.asdict(setting), "model": str(tuned),
                         "val": {**val, "score": abstention_score(val)},
                         "shifts": logprob_shifts(start, tuned, pairs, val_items)})  # fmt: skip
        best = max(grid, key=lambda g: g["val"]["score"])  # the first of equals
        result["dpo_grid"], result["dpo_setting"] = grid, best["setting"]
        variants.append(("dpo_start_", start))
        variants.append(("dpo_", Path(best["model"])))
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
