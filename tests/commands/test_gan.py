"""`lmforge gan train|sample`: a run folder (both players' losses, curves, grids,
checkpoints, a model), sampling by class id or name, one-line errors."""

from __future__ import annotations

import json

TINY = [
    "gan.image_size=8", "gan.num_train=32", "gan.num_eval=16", "gan.width=4", "gan.z_dim=4",
    "gan.samples_per_class=1", "gan.n_critic=1", "train.batch_size=4", "train.max_steps=2",
    "train.eval_every=2", "train.save_every=2", "log.progress=false", "log.plot=false",
]  # fmt: skip


def test_train_then_sample(tmp_path, run):
    out = tmp_path / "g"
    code, text, err = run("gan", "train", "--config", "recipes/gan-wgangp-digits.yaml",
                          "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, err
    assert "wgan-gp" in text and "1 critic step(s) per generator step" in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["player"]) for r in records if "d_loss" in r] == [(1, 0.0), (2, 1.0)]
    assert (out / "gan_curves.png").is_file() and (out / "samples" / "step-00000002.png").is_file()
    for class_id in ("7", "3"):
        png = tmp_path / f"{class_id}.png"
        code, text, err = run("gan", "sample", "--model", str(out / "model"), "--class", class_id,
                              "--num", "4", "--out", str(png))  # fmt: skip
        assert code == 0, err
        assert png.is_file() and "wgan-gp generator" in text
    code, _, err = run("gan", "sample", "--model", str(out / "model"), "--class", "12")
    assert code == 2 and "--class 12" in err
    code, _, err = run("gan", "sample", "--model", str(tmp_path))
    assert code == 2 and "not a saved GAN" in err


def test_default_recipe_and_bad_method(tmp_path, run):
    code, text, err = run("gan", "train", "--out", str(tmp_path / "t"), *TINY)
    assert code == 0, err
    assert "nsgan" in text  # recipes/gan-tiny.yaml
    code, _, err = run("gan", "train", "--out", str(tmp_path / "u"), *TINY, "gan.method=lsgan")
    assert code == 2 and "gan.method='lsgan'" in err
