"""Evaluation results as a markdown table, models side by side (one column per checkpoint,
one row per metric; sampled metrics as ``value [low, high]`` with their bootstrap
interval), and as JSON.

    results = {"runs/a/model": evaluate_checkpoint(...), "runs/b/model": ...}
    print(markdown_table(results))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmforge.io import atomic_write_json, atomic_write_text

__all__ = ["markdown_table", "metric_rows", "write_results"]


def format_metric(metric: Any) -> str:
    """``0.750 [0.620, 0.860]`` for ``{value, ci_low, ci_high}``, ``12.34`` for a number."""
    if isinstance(metric, Mapping):
        return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"
    if isinstance(metric, float):
        return f"{metric:.4g}"
    return str(metric)


def metric_rows(result: Mapping[str, Any]) -> dict[str, Any]:
    """``{row label: metric}`` of one checkpoint's result (`evaluate_checkpoint`)."""
    rows: dict[str, Any] = {}
    ppl = result.get("perplexity")
    if ppl:
        rows["perplexity (all files)"] = ppl["perplexity"]
        for path, per_file in ppl["files"].items():
            if len(ppl["files"]) > 1:
                rows[f"perplexity ({Path(path).name})"] = per_file["perplexity"]
    for task, task_result in result.get("tasks", {}).items():
        for name, metric in task_result["metrics"].items():
            rows[f"{task} {name}"] = metric
    return rows


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One markdown table: a row per metric, a column per model (``results`` keyed by
    model name); a metric a model lacks is ``–``."""
    per_model = {name: metric_rows(r) for name, r in results.items()}
    labels: list[str] = []
    for rows in per_model.values():
        labels.extend(label for label in rows if label not in labels)
    lines = [
        "| metric | " + " | ".join(f"`{name}`" for name in per_model) + " |",
        "|---|" + "---|" * len(per_model),
    ]
    for label in labels:
        cells = [
            format_metric(rows[label]) if label in rows else "–" for rows in per_model.values()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, results: Mapping[str, Mapping[str, Any]]) -> Path:
    """``results.json`` (everything, per-problem samples included) and ``results.md`` (the
    table) into ``out_dir``, atomically; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", dict(results))
    atomic_write_text(out / "results.md", markdown_table(results))
    return out
