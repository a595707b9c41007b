"""The R1 pipeline's report (`lmforge.align.r1_pipeline`): one PNG of the curves of every
stage (loss, GRPO reward, accuracy, response length), ``report.md`` (accuracy per stage,
timings, the commands that rerun each stage, samples) and the console summary ending in
``RESULT demo sft_acc=<a> grpo_acc=<b>``; over several seeds (``lmforge demo --seeds 0,1,2``)
the per-seed table, the mean and the gain check (`aggregate_seeds`, ``seeds.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = [
    "MIN_MEAN_GAIN",
    "MIN_SEED_GAIN",
    "aggregate_seeds",
    "cold_start_lines",
    "plot_report",
    "print_seeds",
    "print_summary",
    "read_jsonl",
    "write_report",
    "write_seeds_report",
]

MIN_MEAN_GAIN = 10.0  # points of pass@1, GRPO − SFT, averaged over the seeds (the demo's bar)
MIN_SEED_GAIN = 5.0  # points, every seed


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file ([] when it does not exist)."""
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
        f"{summary['seed']}; total {summary['total_s']:.0f} s wall, "
        f"{summary.get('cpu_s', 0.0):.0f} s CPU, measured on {_machine(summary)}.",
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
    lines += cold_start_lines(summary)
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


def cold_start_lines(summary: dict[str, Any]) -> list[str]:
    """The gated cold start's chunks as a markdown table (none when SFT ran a fixed number of
    steps): SFT steps so far and greedy accuracy on train-split problems after each chunk."""
    chunks = summary.get("cold_start") or []
    if not chunks:
        return []
    s = summary["settings"]
    reached = chunks[-1]["accuracy"] >= s["cold_start_acc"]
    lines = ["", "## Cold start (accuracy-gated SFT)", "",
             f"SFT at a constant lr in chunks of {s['cold_start_chunk']} steps (one run, resumed "
             f"each chunk) until greedy accuracy on {s['cold_start_problems']} train-split "
             f"problems reached {100 * s['cold_start_acc']:.0f}% or "
             f"{s['cold_start_max_steps']} steps: stopped at step {chunks[-1]['steps']:.0f} "
             f"({'target reached' if reached else 'step cap, target not reached'}).", "",
             "| SFT steps | greedy accuracy (train problems) |", "|---|---|"]  # fmt: skip
    lines += [f"| {c['steps']:.0f} | {100 * c['accuracy']:.1f}% |" for c in chunks]
    return lines


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


def _machine(summary: dict[str, Any]) -> str:
    m = summary.get("machine") or {}
    return f"{m.get('cpu', 'an unknown CPU')} ({m.get('cores', '?')} cores, torch {m.get('torch', '?')})"


def aggregate_seeds(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed SFT and GRPO pass@1 (points), their gains, the means over the seeds and the
    demo's check: mean gain ≥ `MIN_MEAN_GAIN` and every seed's gain ≥ `MIN_SEED_GAIN`."""
    if not summaries:
        raise ValueError("no seed summaries to aggregate")
    rows = [{"seed": s["seed"], "sft_acc": s["sft_acc"], "grpo_acc": s["grpo_acc"],
             "gain": s["grpo_acc"] - s["sft_acc"],
             "sft_greedy": 100 * s["accuracy"]["sft"]["greedy"],
             "grpo_greedy": 100 * s["accuracy"]["grpo"]["greedy"],
             "total_s": s["total_s"], "cpu_s": s.get("cpu_s", 0.0)}
            for s in summaries]  # fmt: skip
    n = len(rows)
    mean = {k: sum(r[k] for r in rows) / n for k in ("sft_acc", "grpo_acc", "gain")}
    return {
        "seeds": rows,
        "mean": mean,
        "min_gain": min(r["gain"] for r in rows),
        "passed": mean["gain"] >= MIN_MEAN_GAIN and all(r["gain"] >= MIN_SEED_GAIN for r in rows),
        "sft_acc": mean["sft_acc"],
        "grpo_acc": mean["grpo_acc"],
    }


def write_seeds_report(out: Path, result: dict[str, Any]) -> Path:
    """``seeds.json`` and ``seeds.md``: one row per seed, the mean, the check, the machine."""
    from lmforge.io import atomic_write_text

    atomic_write_text(out / "seeds.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "# lmforge demo over seeds",
        "",
        f"Measured on {_machine(result)}: {result['total_s']:.0f} s wall, "
        f"{result['cpu_s']:.0f} s CPU in all ({result['jobs']} seed(s) at a time).",
        "",
        "| seed | SFT pass@1 | GRPO pass@1 | gain (points) | SFT greedy | GRPO greedy | wall (s) | CPU (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["seeds"]:
        lines.append(f"| {r['seed']} | {r['sft_acc']:.1f}% | {r['grpo_acc']:.1f}% | "
                     f"{r['gain']:+.1f} | {r['sft_greedy']:.1f}% | {r['grpo_greedy']:.1f}% | "
                     f"{r['total_s']:.0f} | {r['cpu_s']:.0f} |")  # fmt: skip
    m = result["mean"]
    lines += [f"| mean | {m['sft_acc']:.1f}% | {m['grpo_acc']:.1f}% | {m['gain']:+.1f} | | | | |",
              "", f"Check (mean gain ≥ {MIN_MEAN_GAIN:g}, every seed ≥ {MIN_SEED_GAIN:g}): "
              + ("passed" if result["passed"] else "FAILED"),
              "", "Each seed's run folder (seed-<s>/) has its report.md and curves."]  # fmt: skip
    path = out / "seeds.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def print_seeds(result: dict[str, Any], console: Console) -> None:
    """The per-seed table, the mean, the check and the ``RESULT`` line (means over seeds)."""
    console.rule("[bold]seeds")
    console.print("seed  SFT      GRPO     gain", highlight=False)
    for r in result["seeds"]:
        console.print(f"{r['seed']:<5} {r['sft_acc']:5.1f}%   {r['grpo_acc']:5.1f}%   "
                      f"{r['gain']:+.1f}", highlight=False)  # fmt: skip
    m = result["mean"]
    console.print(f"mean  {m['sft_acc']:5.1f}%   {m['grpo_acc']:5.1f}%   {m['gain']:+.1f}   "
                  f"(check: mean gain ≥ {MIN_MEAN_GAIN:g}, every seed ≥ {MIN_SEED_GAIN:g}: "
                  f"{'passed' if result['passed'] else 'FAILED'})", highlight=False)  # fmt: skip
    console.print(f"machine {_machine(result)}; report {Path(result['run_dir']) / 'seeds.md'}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    console.print(f"RESULT demo sft_acc={result['sft_acc']:.1f} grpo_acc={result['grpo_acc']:.1f}",
                  highlight=False, soft_wrap=True)  # fmt: skip
