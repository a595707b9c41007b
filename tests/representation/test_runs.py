"""The CPC and margin runs write their report, metrics and figures."""

import json

from lmforge.representation.runs import run_cpc, run_margin


def test_cpc_run_writes_report_and_curves(tmp_path):
    report = run_cpc(tmp_path, steps=3, probe_samples=32)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report and 0 <= report["probe_acc"] <= 1 and "mi_bound_k1" in report
    assert 0 <= report["supervised_probe_acc"] <= 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_margin_run_compares_losses(tmp_path):
    report = run_margin(tmp_path, losses=("softmax", "arcface"), steps=5)
    assert set(report) >= {"softmax", "arcface", "best"}
    assert 0.0 <= report["arcface"]["tar_at_far"] <= 1.0
    assert (tmp_path / "angles.png").is_file() and (tmp_path / "curves.png").is_file()
