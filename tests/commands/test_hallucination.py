"""lmforge/commands/hallucination.py: ``lmforge hallucination run`` on a tiny world."""

from __future__ import annotations

import json


def test_run_prints_the_table_and_writes_results(tmp_path, run):
    code, out, err = run("hallucination", "run", "--out", str(tmp_path / "h"), "--people", "6",
                         "--steps", "3", "--samples", "2")  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "h" / "result.json").read_text())
    assert "| questions | 18 |" in out
    assert f"| answer rate, trained abstention | {result['answer_rate_after']:.3f} |" in out
    assert (tmp_path / "h" / "abstain" / "run" / "model").is_dir()
    code, _, err = run("hallucination", "run", "--out", str(tmp_path / "x"), "--people", "2")
    assert code == 2 and "--people" in err
