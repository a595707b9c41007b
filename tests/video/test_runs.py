"""The OadTR run trains both detectors through the Trainer: per-frame mAP, metrics, curves,
checkpoints, and a run killed mid-way that resumes when run again."""

import json

import pytest

from lmforge.train.loop import Trainer
from lmforge.video.oadtr import OadTRSettings
from lmforge.video.runs import detector_loader, run_oadtr


def test_oadtr_loader_batches_depend_only_on_position():
    s = OadTRSettings()
    a, b = detector_loader("oadtr", s, streams=2), detector_loader("oadtr", s, streams=2)
    it = iter(a)
    next(it)
    second = next(it)
    b.load_state_dict({"position": 1})
    assert (next(iter(b))["windows"] == second["windows"]).all()


def test_oadtr_run_writes_report_and_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    original = Trainer.train_step

    def killed_at_step_2(self, batches):
        if self.step == 1:
            raise KeyboardInterrupt("killed")
        return original(self, batches)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", killed_at_step_2)
        with pytest.raises(KeyboardInterrupt):
            run_oadtr(tmp_path, steps=2, save_every=1, progress=False)
    assert (tmp_path / "checkpoints/step-00000001").is_dir()
    report = run_oadtr(tmp_path, steps=2, save_every=1, progress=False)
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert 0 < report["oadtr_map"] <= 1 and 0 < report["gru_map"] <= 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "curves.png").is_file()
    assert (tmp_path / "gru/checkpoints/step-00000002/model.safetensors").is_file()
