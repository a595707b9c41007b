"""`lmforge rm`: flags → config → a reward-model run folder, and one-line errors."""

from __future__ import annotations

import torch

TINY = ["data.synthetic_docs=40", "data.seq_len=96", "train.batch_size=4", "train.max_steps=2",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=0", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


def test_rm_writes_a_reward_model(preference_model_dir, tmp_path, run):
    from lmforge.align.preference_objective import load_reward_model

    out = tmp_path / "rm"
    code, text, err = run("rm", "--config", "recipes/rm-tiny.yaml", "--model", str(preference_model_dir),
                          "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, err
    assert "Bradley-Terry" in text and "reward accuracy" in text
    assert load_reward_model(out / "model")(torch.tensor([[5, 6, 7]])).shape == (1,)


def test_rm_needs_a_model(tmp_path, run):
    code, _, err = run("rm", "--config", "recipes/rm-tiny.yaml", "--out", str(tmp_path))
    assert code == 2 and "rm needs a model: --model DIR" in err
    assert "--peft" in run("dpo", "--help")[1] and "--peft" not in run("rm", "--help")[1]
