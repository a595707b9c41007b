"""lmforge/commands/hallucination.py: ``lmforge hallucination run`` on a tiny world."""

from __future__ import annotations

import json


def test_run_prints_the_table_and_writes_results(tmp_path, run):
    code, out, err = run("hallucination", "run", "--out", str(tmp_path / "h"), "--people", "6",
                         "--steps", "3", "--samples", "2", "--dpo-steps", "1", "--no-judge")  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "h" / "result.json").read_text())
    assert "| questions | 18 |" in out
    assert f"| answer rate, trained abstention | {result['answer_rate_after']:.3f} |" in out
    assert (tmp_path / "h" / "abstain" / "run" / "model").is_dir()
    for n in range(4):  # one DPO run per setting of DPO_GRID, --dpo-steps 1 each
        assert (tmp_path / "h" / "abstain-dpo" / str(n) / "run" / "model").is_dir()
    assert "1 steps |" in out and result["dpo_setting"]["steps"] == 1
    dpo = [result[f"dpo_{k}_after"] for k in ("halluc_rate", "answer_rate", "accuracy")]
    assert result["dpo_start"] == "sft"  # the default: SFT→DPO
    assert "| trained abstention (SFT→DPO) | " + " | ".join(f"{v:.3f}" for v in dpo) + " |" in out
    assert "| SelfCheck judge AUROC (wrong answers) | – |" in out  # --no-judge
    assert "judge" not in json.loads((tmp_path / "h" / "answers.jsonl").read_text().split("\n")[0])
    code, _, err = run("hallucination", "run", "--out", str(tmp_path / "x"), "--people", "2")
    assert code == 2 and "--people" in err
    code, _, err = run("hallucination", "run", "--out", str(tmp_path / "x"), "--dpo-from", "ref")
    assert code == 2 and "--dpo-from" in err
