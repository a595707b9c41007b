"""lmforge/eval/report.py: the side-by-side markdown table and the written files."""

from __future__ import annotations

import json

from lmforge.eval.report import markdown_table, metric_rows, write_results

A = {"perplexity": {"perplexity": 12.5, "files": {"a.txt": {"perplexity": 12.5}}},
     "tasks": {"arithmetic": {"metrics": {"pass@1": {"value": 0.5, "ci_low": 0.25,
                                                    "ci_high": 0.75}}}}}  # fmt: skip
B = {"tasks": {"arithmetic": {"metrics": {"pass@1": {"value": 1.0, "ci_low": 1.0,
                                                    "ci_high": 1.0}}}}}  # fmt: skip


def test_table_has_a_column_per_model_and_a_row_per_metric(tmp_path):
    assert metric_rows(A) == {"perplexity (all files)": 12.5,
                              "arithmetic pass@1": A["tasks"]["arithmetic"]["metrics"]["pass@1"]}  # fmt: skip
    table = markdown_table({"runs/a": A, "runs/b": B})
    assert table.splitlines() == [
        "| metric | `runs/a` | `runs/b` |",
        "|---|---|---|",
        "| perplexity (all files) | 12.5 | – |",
        "| arithmetic pass@1 | 0.500 [0.250, 0.750] | 1.000 [1.000, 1.000] |",
    ]
    out = write_results(tmp_path / "eval", {"runs/a": A, "runs/b": B})
    assert json.loads((out / "results.json").read_text())["runs/b"] == B
    assert (out / "results.md").read_text() == table
