"""The CPC and margin runs train through the Trainer: report, metrics, figures, checkpoints,
and a killed command that is run again resumes to the uninterrupted run's weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.representation.runs import run_cpc, run_margin
from lmforge.train.loop import Trainer


def kill_at(monkeypatch, step):
    """Trainer.train_step raises before optimizer step ``step`` (a killed process)."""
    original = Trainer.train_step

    def train_step(self, batches):
        if self.step + 1 == step:
            raise KeyboardInterrupt("killed")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_cpc_run_writes_report_curves_and_checkpoints(tmp_path, capsys):
    report = run_cpc(tmp_path, steps=3, probe_samples=32, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report and 0 <= report["probe_acc"] <= 1 and "mi_bound_k1" in report
    assert 0 <= report["supervised_probe_acc"] <= 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for run in (tmp_path, tmp_path / "supervised"):
        assert (run / "checkpoints/step-00000003/model.safetensors").is_file()
    # the same command again: both trainings resume at their last step, the report is the same
    assert run_cpc(tmp_path, steps=3, probe_samples=32, progress=False) == report
    assert capsys.readouterr().out.count("resumed from") == 2


def test_margin_run_compares_losses(tmp_path):
    report = run_margin(tmp_path, losses=("softmax", "arcface"), steps=5, progress=False)
    assert set(report) >= {"softmax", "arcface", "best"}
    assert 0.0 <= report["arcface"]["tar_at_far"] <= 1.0
    assert (tmp_path / "angles.png").is_file() and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "arcface/checkpoints/step-00000005").is_dir()
    best = report["best"]
    assert (tmp_path / "metrics.jsonl").read_text() == (
        tmp_path / best / "metrics.jsonl"
    ).read_text()


def test_killed_margin_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    kw = dict(losses=("cosface",), steps=6, save_every=2, progress=False)
    whole = run_margin(tmp_path / "whole", **kw)
    with monkeypatch.context() as m:
        kill_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run_margin(tmp_path / "killed", **kw)
    assert not (tmp_path / "killed/report.json").exists()
    assert run_margin(tmp_path / "killed", **kw) == whole
    final = "cosface/checkpoints/step-00000006/model.safetensors"
    a, b = load_file(tmp_path / "whole" / final), load_file(tmp_path / "killed" / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
