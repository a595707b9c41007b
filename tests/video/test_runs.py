"""The OadTR run writes per-frame mAP of OadTR and the GRU, metrics and curves."""

import json

from lmforge.video.runs import run_oadtr


def test_oadtr_run_writes_report(tmp_path):
    report = run_oadtr(tmp_path, steps=2)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert 0 < report["oadtr_map"] <= 1 and 0 < report["gru_map"] <= 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "curves.png").is_file()
