"""`lmforge foundations cpc|margin|oadtr`: tiny runs write their reports; bad flags are
one-line errors."""

import json

import pytest


@pytest.mark.parametrize("action,extra", [("cpc", ["--context", "transformer"]),
                                          ("margin", ["--loss", "cosface"]), ("oadtr", [])])  # fmt: skip
def test_tiny_runs_write_reports(run, tmp_path, action, extra):
    out = tmp_path / action
    code, stdout, err = run("foundations", action, "--steps", "2", "--out", str(out), *extra)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["steps"] == 2
    assert "wrote" in stdout


def test_bad_steps_is_a_clean_error(run, tmp_path):
    code, _, err = run("foundations", "oadtr", "--steps", "0", "--out", str(tmp_path))
    assert code == 2 and "--steps must be ≥ 1" in err


def test_thread_count_is_restored(run, tmp_path):
    import torch

    before = torch.get_num_threads()
    assert run("foundations", "margin", "--loss", "softmax", "--steps", "1", "--out",
               str(tmp_path))[0] == 0  # fmt: skip
    assert torch.get_num_threads() == before


def test_checkpoints_and_the_same_command_resumes(run, tmp_path):
    argv = ("foundations", "margin", "--loss", "softmax", "--steps", "3", "--save-every", "2",
            "--out", str(tmp_path))  # fmt: skip
    code, stdout, err = run(*argv)
    assert code == 0, err
    assert "resumed" not in stdout
    steps = sorted(p.name for p in (tmp_path / "softmax/checkpoints").glob("step-*"))
    assert steps == ["step-00000002", "step-00000003"]
    report = json.loads((tmp_path / "report.json").read_text())
    code, stdout, err = run(*argv)
    assert code == 0, err
    assert "resumed from" in stdout and json.loads((tmp_path / "report.json").read_text()) == report


def test_bad_save_every_is_a_clean_error(run, tmp_path):
    code, _, err = run("foundations", "cpc", "--save-every", "-1", "--out", str(tmp_path))
    assert code == 2 and "--save-every must be ≥ 0" in err
