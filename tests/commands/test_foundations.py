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
