"""DeepSeek-R1-Zero on the demo's base model (``lmforge demo --zero``): GRPO straight from the
pretrained base — no SFT, no cold start — with the rule rewards of Guo et al. 2025, §2.2.2
(accuracy + format), and a report of whether the format and the accuracy emerge and how the
response length moves (R1-Zero's Figure 3).

    tokenizer → pretrain (as ``lmforge demo``) → GRPO from the base → zero.json, zero.png, zero.md

The base never saw a chat template, so the prompts use R1-Zero's plain-text template (Table 1,
shortened: ``User: <question>`` then ``Assistant:``), installed as the tokenizer's chat
template in ``tokenizer-r1zero/`` (``data.tokenizer`` of the GRPO stage), so the run is one
ordinary ``lmforge grpo`` command and the exported model carries the template it was trained
with. The reward is accuracy + ``format_weight`` × format (R1-Zero sums the two).

``--easy`` (`ZERO_EASY`) asks whether a stronger base lets anything emerge at this scale: the
default base (0.8 M parameters, 250 pretraining steps) writes garbage after the template and
adds no 3-digit sums (0 % format, 0 % accuracy before and after GRPO), so every rollout
scores 0 and GRPO has no signal. ``--easy`` pretrains longer, with worked
problems written as R1-Zero transcripts among the pretraining text (`transcript_docs`), and
samples rollouts as the main demo does (BENCHMARKS.md, "R1-Zero, session 4").

"Emerged" is judged on the held-out evaluations (pass@1 over k samples, as the demo): a rate
emerged when it ends at least ``EMERGED_GAIN`` above where it started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.align.r1_pipeline import (
    FAST,
    FULL,
    DemoSettings,
    Stage,
    machine_info,
    r1_solution,
    stages,
    train_demo_tokenizer,
    train_stage,
    write_demo_data,
)
from lmforge.align.r1_report import read_jsonl
from lmforge.data.tasks.arithmetic import arithmetic_problems

__all__ = [
    "EMERGED_GAIN",
    "R1_ZERO_TEMPLATE",
    "ZERO_EASY",
    "ZERO_FAST",
    "ZERO_FULL",
    "emergence",
    "transcript_docs",
    "plot_zero",
    "run_zero",
    "zero_stage",
]

# R1-Zero's template (DeepSeek-AI 2025, Table 1), shortened for a 512-token vocabulary.
R1_ZERO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% else %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
EMERGED_GAIN = 0.10  # a rate "emerged" when it ends this much above its start

ZERO_FULL = dataclasses.replace(FULL, grpo_steps=60, grpo_lr=1e-4, format_weight=1.0,
                                grpo_temperature=1.0, grpo_top_p=1.0, grpo_evals=5)  # fmt: skip
ZERO_FAST = dataclasses.replace(FAST, format_weight=1.0, grpo_temperature=1.0, grpo_top_p=1.0)
# ``--zero --easy``: a base that sometimes succeeds, and GRPO gentle enough to build on it.
# Pretrained 350 steps instead of 250, with 1000 worked problems written as R1-Zero
# transcripts among its text (`transcript_docs`, as web text holds dialogues), the base
# writes the format after the template and adds 12.5 % of held-out sums (250 steps: 0 %;
# 600 steps: 99 %, nothing left to emerge). GRPO as the main demo's: rollouts at T 0.6,
# lr 3e-5 (1e-4 at T 1 took accuracy from 12.5 % down to 2.4 %), format weight 0.1.
ZERO_EASY = dataclasses.replace(ZERO_FULL, pretrain_steps=350, grpo_lr=3e-5,
                                grpo_temperature=0.6, grpo_top_p=0.95, format_weight=0.1)  # fmt: skip
EASY_TRANSCRIPTS = 1000


def transcript_docs(n: int, seed: int, digits: int) -> list[str]:
    """``n`` worked problems of the train split (their own seed, so not the pretraining
    text's) rendered as R1-Zero transcripts: the template's ``User: <question>`` and
    ``Assistant:`` turns with the tagged solution — pretraining text in the shape the
    prompts take, the way a web-trained base has seen dialogues; no prompt of the GRPO
    stage's held-out problems is among them (the test split)."""
    problems = arithmetic_problems(n, seed + 3, "train", digits, ("+",))
    return [f"User: {p.prompt}\nAssistant: {r1_solution(p)}" for p in problems]


def zero_stage(out: Path, s: DemoSettings, seed: int, data: dict[str, Path]) -> Stage:
    """The GRPO stage of R1-Zero: the demo's GRPO stage from the pretrained base, prompted
    through ``tokenizer-r1zero/``."""
    grpo = stages(out, s, seed, data)["grpo"]
    extra = (f"data.tokenizer={out / 'tokenizer-r1zero'}",)
    return dataclasses.replace(grpo, model=out / "pretrain" / "model",
                               overrides=(*grpo.overrides, *extra))  # fmt: skip


def emergence(history: list[dict[str, Any]]) -> dict[str, Any]:
    """From the held-out evaluations (step, accuracy, format, length): the start and end of
    each rate, whether it emerged (end − start ≥ `EMERGED_GAIN`), and the length's move."""
    if not history:
        raise ValueError("no held-out evaluations to judge emergence from")
    first, last = history[0], history[-1]
    out: dict[str, Any] = {}
    for key in ("format", "accuracy"):
        out[key] = {"start": first[key], "end": last[key], "best": max(h[key] for h in history),
                    "emerged": last[key] - first[key] >= EMERGED_GAIN}  # fmt: skip
    out["length"] = {"start": first["length"], "end": last["length"],
                     "change": last["length"] - first["length"]}  # fmt: skip
    return out


def plot_zero(run: Path, path: Path) -> Path:
    """One PNG: reward, accuracy and format rates (rollouts and held-out) and the response
    length over the GRPO steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.io import atomic_path

    recs = [r for r in read_jsonl(run / "metrics.jsonl") if "reward" in r]
    evals = read_jsonl(run / "eval.jsonl")
    steps = [r["step"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r.get("sampled_reward", r["reward"]) for r in recs], label="all sampled")
    axes[0].plot(steps, [r["reward"] for r in recs], label="kept groups")
    axes[0].set(xlabel="GRPO step", ylabel="reward", title="reward: accuracy + format")
    axes[0].legend()
    for key in ("format", "accuracy"):
        axes[1].plot(steps, [100 * r[key] for r in recs], label=f"{key} (rollouts)")
        axes[1].plot([e["step"] for e in evals], [100 * e[key] for e in evals], "o-",
                     label=f"{key} (held-out pass@1)")  # fmt: skip
    axes[1].set(xlabel="GRPO step", ylabel="%", title="does it emerge?")
    axes[1].legend()
    axes[2].plot(steps, [r["length"] for r in recs], label="rollouts")
    axes[2].plot([e["step"] for e in evals], [e["length"] for e in evals], "o-", label="held-out")
    axes[2].set(xlabel="GRPO step", ylabel="tokens", title="response length")
    axes[2].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def run_zero(
    out_dir: str | os.PathLike = "runs/demo-zero",
    *,
    seed: int = 0,
    fast: bool = False,
    easy: bool = False,
    settings: DemoSettings | None = None,
    transcripts: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """R1-Zero into ``out_dir``: data, tokenizer, pretrain, GRPO from the base; writes
    ``zero.json``, ``zero.png`` and ``zero.md`` and returns the summary. ``easy``: the
    `ZERO_EASY` settings, with `EASY_TRANSCRIPTS` transcripts added to the pretraining text
    (``fast`` keeps its tiny settings, adding a tenth as many). ``settings`` / ``transcripts``
    replace the chosen settings / number of transcripts (experiments)."""
    from lmforge.io import atomic_write_text
    from lmforge.tokenizer import load_tokenizer

    s = ZERO_FAST if fast else ZERO_EASY if easy else ZERO_FULL
    s = settings or s
    if transcripts is None:
        transcripts = (EASY_TRANSCRIPTS // 10 if fast else EASY_TRANSCRIPTS) if easy else 0
    console = console or Console()
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    threads = torch.get_num_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        data = write_demo_data(out / "data", s, seed)
        if transcripts:
            extra = transcript_docs(transcripts, seed, s.digits)
            with open(data["pretrain"], "a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"text": t}) + "\n" for t in extra))
        console.rule("[bold]1. tokenizer")
        train_demo_tokenizer(data["pretrain"], out / "tokenizer", console)
        tok = load_tokenizer(out / "tokenizer")
        tok.chat_template = R1_ZERO_TEMPLATE
        tok.save(out / "tokenizer-r1zero")
        console.rule("[bold]2. pretrain")
        pretrain = stages(out, s, seed, data)["pretrain"]
        train_stage(pretrain, console)
        console.rule("[bold]3. GRPO from the base (R1-Zero)")
        grpo = zero_stage(out, s, seed, data)
        train_stage(grpo, console)
    finally:
        torch.set_num_threads(threads)
    history = read_jsonl(out / "grpo" / "eval.jsonl")
    summary = {
        "settings": dataclasses.asdict(s),
        "transcripts": transcripts,
        "seed": seed,
        "template": R1_ZERO_TEMPLATE,
        "evaluations": history,
        "emergence": emergence(history),
        "commands": {"pretrain": pretrain.command(), "grpo": grpo.command()},
        "total_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "machine": machine_info(),
        "run_dir": str(out),
    }
    summary["plot"] = str(plot_zero(out / "grpo", out / "zero.png"))
    atomic_write_text(out / "zero.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "zero.md", zero_markdown(summary))
    e = summary["emergence"]
    for key in ("format", "accuracy"):
        verdict = "emerged" if e[key]["emerged"] else "did not emerge"
        console.print(f"{key}: {100 * e[key]['start']:.1f}% → {100 * e[key]['end']:.1f}% "
                      f"(best {100 * e[key]['best']:.1f}%): {verdict}", highlight=False)  # fmt: skip
    console.print(
        f"response length {e['length']['start']:.1f} → {e['length']['end']:.1f} tokens\n"
        f"report {out / 'zero.md'}\n"
        f"RESULT demo_zero format={100 * e['format']['end']:.1f} "
        f"accuracy={100 * e['accuracy']['end']:.1f} length={e['length']['end']:.1f}",
        highlight=False,
        soft_wrap=True,
    )
    return summary


def zero_markdown(summary: dict[str, Any]) -> str:
    """``zero.md``: what ran, the held-out rates over the run, the verdicts, the commands."""
    s, e, m = summary["settings"], summary["emergence"], summary["machine"]
    n = summary.get("transcripts", 0)
    transcripts = f", with {n} R1-Zero transcripts in its text" if n else ""
    lines = [
        "# lmforge demo --zero: DeepSeek-R1-Zero (GRPO from the base, no SFT)",
        "",
        f"Task: {s['digits']}-digit addition. Base: {s['pretrain_steps']} pretraining steps"
        f"{transcripts}. "
        f"Reward: accuracy + {s['format_weight']} × format. "
        f"{s['grpo_steps']} GRPO steps at lr {s['grpo_lr']}, rollouts at temperature "
        f"{s['grpo_temperature']}. Held-out pass@1 over {s['eval_samples']} samples on "
        f"{s['eval_problems']} test problems. Seed {summary['seed']}; {summary['total_s']:.0f} s "
        f"wall, {summary['cpu_s']:.0f} s CPU on {m['cpu']} ({m['cores']} cores).",
        "",
        "| GRPO step | accuracy | format | length (tokens) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {h['step']} | {100 * h['accuracy']:.1f}% | {100 * h['format']:.1f}% | "
              f"{h['length']:.1f} |" for h in summary["evaluations"]]  # fmt: skip
    lines.append("")
    for key in ("format", "accuracy"):
        verdict = "emerged" if e[key]["emerged"] else "did not emerge"
        lines.append(f"- {key}: {100 * e[key]['start']:.1f}% → {100 * e[key]['end']:.1f}% — "
                     f"{verdict}")  # fmt: skip
    lines += [f"- response length: {e['length']['start']:.1f} → {e['length']['end']:.1f} tokens",
              "", "![curves](zero.png)", "", "## Rerun a stage alone", ""]  # fmt: skip
    lines += [f"    {cmd}" for cmd in summary["commands"].values()]
    return "\n".join(lines) + "\n"
