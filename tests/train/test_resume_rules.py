"""Resume never trains the wrong run: each case of `lmforge.train.resume_rules`, unit and
through the `Trainer` (same config → resume from the step; model / data / objective →
refused naming the difference and the ways out; optimiser → only with ``force``, logged)."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train.config import RunConfig
from lmforge.train.loop import Trainer
from lmforge.train.resume_rules import (
    ResumeRefused,
    check_resume,
    classify,
    config_changes,
    regroup_batch_changes,
)

CKPT = "runs/x/checkpoints/step-00000050"


def _dict(**changes) -> dict:
    config = RunConfig(out_dir="runs/x").to_dict()
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


@pytest.mark.parametrize(
    ("key", "kind"),
    [("model.init_from", "model"), ("model.overrides", "model"), ("data.paths", "data"),
     ("data.seq_len", "data"), ("train.seed", "data"), ("dpo.beta", "objective"),
     ("optim.lr", "optimiser"), ("optim.schedule", "optimiser"), ("train.grad_accum", "optimiser"),
     ("train.max_steps", "stopping"), ("train.epochs", "stopping"), ("train.save_every", "other"),
     ("log.progress", "other"), ("data.num_workers", "other"), ("out_dir", "other")],
)  # fmt: skip
def test_classify(key, kind):
    assert classify(key) == kind


def test_same_config_has_no_changes_and_equal_paths_are_equal(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = _dict(model__init_from="m", data__paths=["./a.jsonl"])
    now = _dict(model__init_from=str(tmp_path / "m"), data__paths=[str(tmp_path / "a.jsonl")])
    assert config_changes(saved, now) == []
    assert check_resume([], True, CKPT) == []


def test_different_model_is_refused_with_both_ways_out():
    changes = config_changes(_dict(model__init_from="base-a"), _dict(model__init_from="base-b"))
    with pytest.raises(ResumeRefused) as err:
        check_resume(changes, "force", CKPT)  # force does not cover another model
    text = str(err.value)
    assert "different model" in text and "model.init_from: 'base-a' -> 'base-b'" in text
    assert "--out NEW_DIR" in text and "train.resume=false" in text


def test_different_data_is_refused_and_suggests_the_fix():
    changes = config_changes(_dict(data__paths=["a.jsonl"]), _dict(data__paths=["b.jsonl"]))
    with pytest.raises(ResumeRefused, match="different data") as err:
        check_resume(changes, True, CKPT)
    assert f"model.init_from={CKPT}" in str(err.value)  # continue the weights on new data


def test_different_objective_is_refused():
    saved = {**_dict(), "dpo": {"beta": 0.1}}
    with pytest.raises(
        ResumeRefused, match=r"different objective(.|\n)*dpo.beta: 0.1 -> \(absent\)"
    ):
        check_resume(config_changes(saved, _dict()), True, CKPT)


def test_optimiser_changes_need_force_and_are_reported():
    changes = config_changes(_dict(optim__lr=3e-3), _dict(optim__lr=1e-3))
    with pytest.raises(ResumeRefused, match=r"optim.lr: 0.003 -> 0.001(.|\n)*train.resume=force"):
        check_resume(changes, True, CKPT)
    assert check_resume(changes, "force", CKPT) == [
        "changed with train.resume=force: optim.lr: 0.003 -> 0.001"
    ]


def test_longer_runs_and_settings_of_other_versions_are_allowed_with_a_note():
    saved = _dict(train__max_steps=100)
    del saved["train"]["save_every"]  # a key an older version did not have
    notes = check_resume(config_changes(saved, _dict(train__max_steps=200)), True, CKPT)
    assert notes == ["stopping condition changed: train.max_steps: 100 -> 200",
                     "changed: train.save_every: (absent) -> 50"]  # fmt: skip


def test_same_global_batch_on_other_process_counts_is_not_an_optimiser_change():
    saved, now = _dict(train__batch_size=2, train__grad_accum=2), _dict(train__batch_size=8)
    changes = config_changes(saved, now)
    assert check_resume(regroup_batch_changes(changes, saved, now, 2, 1), True, CKPT)
    with pytest.raises(ResumeRefused):  # 2·2·1 rows per step → 8: a different optimisation
        check_resume(regroup_batch_changes(changes, saved, now, 1, 1), True, CKPT)


# ---------------------------------------------------------------------- through the Trainer
def _run(tmp_path, toy_loader, make_model, config, **kwargs):
    trainer = Trainer(make_model(), toy_loader(**kwargs), config, run_dir=tmp_path)
    return trainer, trainer.fit()


def test_trainer_resumes_the_same_run_and_says_from_which_step(tmp_path, toy_loader, make_model,
                                                               make_config, capsys):  # fmt: skip
    _run(tmp_path, toy_loader, make_model, make_config(max_steps=2))
    trainer, summary = _run(tmp_path, toy_loader, make_model, make_config(max_steps=3))
    out = capsys.readouterr().out
    assert "resumed from" in out and "(step 2)" in out and summary["step"] == 3
    assert "stopping condition changed: train.max_steps: 2 -> 3" in out


def test_trainer_refuses_another_model_before_touching_anything(tmp_path, toy_loader, make_model,
                                                                make_config):  # fmt: skip
    _run(tmp_path, toy_loader, make_model, make_config(max_steps=2))
    config = make_config(max_steps=3)
    config.model.init_from = "another-model"  # same shape: loading alone would not notice
    model = make_model()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ResumeRefused, match="model.init_from: None -> 'another-model'"):
        Trainer(model, toy_loader(), config, run_dir=tmp_path).fit()
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_trainer_lr_change_needs_force_and_is_logged(tmp_path, toy_loader, make_model,
                                                     make_config):  # fmt: skip
    _run(tmp_path, toy_loader, make_model, make_config(max_steps=2))
    config = make_config(max_steps=3)
    config.optim.lr = 5e-3
    with pytest.raises(ResumeRefused, match="optim.lr: 0.01 -> 0.005"):
        _run(tmp_path, toy_loader, make_model, config)
    config.train.resume = "force"
    config.optim.weight_decay, config.optim.beta2 = 0.05, 0.99
    trainer, summary = _run(tmp_path, toy_loader, make_model, config)
    assert trainer.resumed_from.name == "step-00000002" and summary["step"] == 3
    groups = trainer.optimizer.param_groups  # the new settings, not the saved ones
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and groups[0]["betas"][1] == 0.99
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (event,) = [r for r in records if r.get("event") == "resume"]
    assert event["step"] == 2 and any("optim.lr: 0.01 -> 0.005" in c for c in event["changes"])


class FingerprintedLoader:
    """A ToyLoader whose saved position carries a fingerprint of its data (as the real
    loaders' does) and refuses a position saved over other data."""

    def __init__(self, toy, data_id: str):
        self.toy, self.data_id = toy, data_id

    def __iter__(self):
        return iter(self.toy)

    def state_dict(self):
        return {**self.toy.state_dict(), "data": self.data_id}

    def load_state_dict(self, state):
        if state["data"] != self.data_id:
            raise ValueError(f"data: saved {state['data']!r}, now {self.data_id!r}")
        self.toy.load_state_dict(state)


def test_trainer_refuses_changed_data_content_and_suggests_the_fix(tmp_path, toy_loader,
                                                                   make_model, make_config):  # fmt: skip
    config = make_config(max_steps=2)
    Trainer(make_model(), FingerprintedLoader(toy_loader(), "v1"), config, run_dir=tmp_path).fit()
    again = Trainer(make_model(), FingerprintedLoader(toy_loader(), "v2"), make_config(max_steps=3),
                    run_dir=tmp_path)  # fmt: skip
    with pytest.raises(ResumeRefused, match="training data differs") as err:
        again.fit()
    assert "model.init_from=" in str(err.value) and "step-00000002" in str(err.value)
