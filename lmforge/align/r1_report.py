"""The R1 pipeline's report (`lmforge.align.r1_pipeline`): one PNG of the curves of every
stage (loss, GRPO reward, accuracy, response length), ``report.md`` (accuracy per stage,
timings, the commands that rerun each stage, samples) and the console summary ending in
``RESULT demo sft_acc=<a> grpo_acc=<b>``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_report(out: Path, path: Path) -> Path:
    """One PNG: pretrain/SFT loss, GRPO reward, accuracy (rollouts and held-out) and
    response length per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.io import atomic_path

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for stage in ("pretrain", "sft"):
        recs = [r for r in read_jsonl(out / stage / "metrics.jsonl") if "loss" in r]
        axes[0].plot([r["step"] for r in recs], [r["loss"] for r in recs], label=stage)
    axes[0].set(xlabel="step", ylabel="loss", title="next-token loss", yscale="log")
    axes[0].legend()
    grpo = [r for r in read_jsonl(out / "grpo" / "metrics.jsonl") if "reward" in r]
    steps = [r["step"] for r in grpo]
    axes[1].plot(steps, [r.get("sampled_reward", r["reward"]) for r in grpo], label="all sampled")
    axes[1].plot(steps, [r["reward"] for r in grpo], label="kept groups (trained on)")
    axes[1].set(xlabel="GRPO step", ylabel="mean reward", title="GRPO reward (rollouts)")
    axes[1].legend()
    axes[2].plot(steps, [100 * r["accuracy"] for r in grpo], label="rollouts (sampled)")
    evals = read_jsonl(out / "grpo" / "eval.jsonl")
    axes[2].plot([e["step"] for e in evals], [100 * e["accuracy"] for e in evals], "o-",
                 label="held-out (pass@1)")  # fmt: skip
    axes[2].set(xlabel="GRPO step", ylabel="accuracy (%)", title="accuracy")
    axes[2].legend()
    axes[3].plot(steps, [r["length"] for r in grpo])
    axes[3].set(xlabel="GRPO step", ylabel="tokens", title="response length")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def write_report(out: Path, summary: dict[str, Any], tokenizer_vocab: int) -> Path:
    """``report.md``: settings, accuracy per stage, timings, commands (the tokenizer's with
    ``--vocab-size tokenizer_vocab``) and samples."""
    from lmforge.io import atomic_write_text

    acc = summary["accuracy"]
    lines = [
        "# lmforge demo: tokenizer → pretrain → SFT (R1 format) → GRPO",
        "",
        f"Task: {summary['settings']['digits']}-digit addition with worked reasoning. "
        f"Held-out accuracy on the same {summary['settings']['eval_problems']} test-split "
        "problems after every stage, as DeepSeek-R1 reports pass@1: "
        f"{summary['settings']['eval_samples']} samples per problem at temperature "
        f"{summary['settings']['eval_temperature']}, top-p {summary['settings']['eval_top_p']}, "
        "averaged (greedy accuracy alongside). Seed "
        f"{summary['seed']}; total {summary['total_s']:.0f} s.",
        "",
        "| stage | held-out pass@1 | greedy | R1 format | mean length (tokens) | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for stage in ("pretrain", "sft", "grpo"):
        a = acc[stage]
        lines.append(
            f"| {stage} | {100 * a['accuracy']:.1f}% | {100 * a['greedy']:.1f}% | "
            f"{100 * a['format']:.1f}% | "
            f"{a['length']:.1f} | {summary['times_s'][stage]:.0f} |"
        )
    lines += ["", "![curves](curves.png)", "", "## Rerun a stage alone", ""]
    lines.append(f"    lmforge tokenizer train --input {Path(summary['run_dir']) / 'data'}"
                 f"/pretrain.jsonl --vocab-size {tokenizer_vocab} --out ...")  # fmt: skip
    lines += [f"    {cmd}" for cmd in summary["commands"].values()]
    lines += ["", "## Samples after GRPO (held-out)", ""]
    for sample in summary["samples"]:
        mark = "✓" if sample["correct"] else "✗"
        lines.append(f"- {mark} `{sample['prompt']}` → `{sample['completion']}`")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The per-stage table and the ``RESULT demo sft_acc=… grpo_acc=…`` line."""
    console.rule("[bold]summary")
    rows = [("stage", "pass@1", "greedy", "format", "length", "time")]
    for stage in ("pretrain", "sft", "grpo"):
        a = summary["accuracy"][stage]
        rows.append((stage, f"{100 * a['accuracy']:.1f}%", f"{100 * a['greedy']:.1f}%",
                     f"{100 * a['format']:.1f}%",
                     f"{a['length']:.1f}", f"{summary['times_s'][stage]:.0f} s"))  # fmt: skip
    for row in rows:
        console.print("  ".join(f"{cell:<13}" for cell in row).rstrip(), highlight=False)
    console.print(f"report {summary['report']}\nmodel  {summary['model_dir']}", highlight=False)
    console.print(
        f"RESULT demo sft_acc={summary['sft_acc']:.1f} grpo_acc={summary['grpo_acc']:.1f}",
        highlight=False,
        soft_wrap=True,
    )
