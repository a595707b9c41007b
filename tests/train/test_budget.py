"""Run length and schedule progress in steps (`lmforge.train.budget`), and the Trainer's
epoch stop and time-budget warnings."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from lmforge.train import budget
from lmforge.train import checkpoint as ckpt
from lmforge.train.interrupt import TrainingInterrupted
from lmforge.train.loop import Trainer
from lmforge.train.metrics import format_summary


class Epochs:
    """A loader's epoch facts: 100 rows per epoch, 8 rows per yield (all ranks)."""

    rows_per_epoch, global_batch_size = 100, 8


def test_epoch_steps_round_up_and_count_accumulation():
    assert budget.epoch_steps(Epochs(), 1, 1) == 13  # ceil(100 / 8)
    assert budget.epoch_steps(Epochs(), 2, 2) == 13  # ceil(200 / 16)
    assert budget.epoch_steps(Epochs(), 0.5, 1) == 7
    assert budget.epoch_steps(object(), 1, 1) is None and budget.epoch_steps(Epochs(), 0, 1) is None


def test_schedule_length_and_progress_are_in_steps():
    assert budget.schedule_length(0, 200, None) == 200
    assert budget.schedule_length(0, 200, 13) == 13
    assert budget.schedule_length(50, 200, 13) == 50  # declared wins
    assert budget.schedule_length(0, 0, None) == 0
    assert budget.schedule_progress(5, 0, 20, 0) == 0.25
    assert budget.schedule_progress(5, 900, 20, 1000) == 0.9  # the furthest of the two
    assert budget.schedule_progress(5, 900, 20, 1000, declared=True) == 0.25
    assert budget.schedule_progress(5, 0, 0, 0) == 0.0


def test_time_budget_warning_only_when_it_binds():
    text = budget.time_budget_warning(75, 10, 3, 0.5, 200)
    assert text.startswith("train.max_time_s=75 will stop this run after 75 s, about 133 of 200")
    assert budget.time_budget_warning(75, 10, 3, 0.1, 200) is None  # 3 + 650 ≥ 200
    assert "at step 40 of 200" in budget.stop_note("max_time_s", 40, 200, 75)
    assert budget.stop_note("max_steps", 200, 200, 75) is None


# ---------------------------------------------------------------------- through the Trainer
class ToyEpochs:
    """ToyLoader with epoch facts: ``rows`` rows per epoch."""

    def __init__(self, toy, rows):
        self.toy, self.rows_per_epoch, self.global_batch_size = toy, rows, toy.global_batch

    def __iter__(self):
        return iter(self.toy)


def test_trainer_stops_after_epochs_and_sizes_the_schedule_by_them(toy_loader, make_model,
                                                                   make_config, capsys):  # fmt: skip
    config = make_config(max_steps=100, epochs=2)
    trainer = Trainer(make_model(), ToyEpochs(toy_loader(), rows=20), config)
    summary = trainer.fit()
    assert summary["stop_reason"] == "epochs" and summary["step"] == 5  # ceil(2·20 / 8)
    assert trainer.schedule_steps == 5
    assert "train.epochs=2: 5 steps" in capsys.readouterr().out
    config = make_config(max_steps=3, epochs=2)
    assert Trainer(make_model(), ToyEpochs(toy_loader(), 20), config).fit()["stop_reason"] == (
        "max_steps"
    )
    assert "train.max_steps=3 stops this run before train.epochs=2" in capsys.readouterr().out


def test_epochs_need_data_with_epochs(toy_loader, make_model, make_config):
    with pytest.raises(ValueError, match="train.epochs=1: this run's data .* has no epochs"):
        Trainer(make_model(), toy_loader(), make_config(epochs=1))


def test_time_budget_is_announced_and_reported_when_it_binds(tmp_path, toy_loader, make_model,
                                                             make_config, capsys):  # fmt: skip
    config = make_config(max_steps=100_000, max_time_s=1.0)
    summary = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path).fit()
    out = " ".join(capsys.readouterr().out.split())
    assert summary["stop_reason"] == "max_time_s" and summary["step"] < 100_000
    assert "train.max_time_s=1 stops this run after 1 s even if step 100000" in out
    assert "will stop this run after 1 s, about" in out and "of 100000 steps" in out
    assert summary["note"].startswith(f"stopped by train.max_time_s=1 at step {summary['step']}")
    assert "note: stopped by train.max_time_s=1" in format_summary(summary)


def test_sigint_saves_at_the_step_boundary_and_resumes_bit_exact(tmp_path, toy_loader, make_model,
                                                                 make_config, capsys):  # fmt: skip
    config = make_config(max_steps=8)

    def interrupt_at_3(trainer, record):
        if trainer.step == 3:
            signal.raise_signal(signal.SIGINT)

    first = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path / "b",
                    callbacks=[interrupt_at_3])  # fmt: skip
    with pytest.raises(TrainingInterrupted) as err:
        first.fit()
    assert first.step == 4 and err.value.checkpoint.name == "step-00000004"  # the next boundary
    out = " ".join(capsys.readouterr().out.split())
    assert "SIGINT: training stopped at step 4" in out and "resume from step 4" in out
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000004"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    resumed = Trainer(make_model(seed=9), toy_loader(), config, run_dir=tmp_path / "b")
    assert resumed.fit()["step"] == 8 and resumed.resumed_from.name == "step-00000004"
    straight = Trainer(make_model(), toy_loader(), config)
    straight.fit()
    for p, q in zip(straight.raw_model.parameters(), resumed.raw_model.parameters(), strict=True):
        assert torch.equal(p, q)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_a_second_sigint_stops_at_once_without_saving(tmp_path, toy_loader, make_model,
                                                      make_config):  # fmt: skip
    def interrupt_twice(trainer, record):
        if trainer.step == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    trainer = Trainer(make_model(), toy_loader(), make_config(max_steps=8), run_dir=tmp_path,
                      callbacks=[interrupt_twice])  # fmt: skip
    with pytest.raises(KeyboardInterrupt) as err:
        trainer.fit()
    assert not isinstance(err.value, TrainingInterrupted) and trainer.step == 2
    assert ckpt.list_checkpoints(tmp_path / "checkpoints") == []
