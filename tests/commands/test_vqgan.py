"""`lmforge vqgan train|prior|sample`: run folders (metrics with both players, grids,
checkpoints), exact resume of the two-player run, the prior as an HF folder, sampling with
the engine and with guidance, one-line errors."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

QUIET = ["log.progress=false", "log.plot=false"]


def test_train_prior_sample(tmp_path, run):
    vq, prior = tmp_path / "vq", tmp_path / "prior"
    code, text, err = run("vqgan", "train", "--out", str(vq), "log.progress=false")
    assert code == 0, err
    assert (vq / "vqgan_curves.png").is_file() and (vq / "training.png").is_file()
    assert "2×2 codes of 16" in text and "held-out reconstruction PSNR" in text
    records = [json.loads(line) for line in (vq / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert "d_loss" not in steps[1] and {"d_loss", "g_loss", "adaptive_weight"} <= set(steps[2])
    assert all("code_perplexity" in r and "perceptual" in r for r in steps)
    assert (vq / "reconstructions" / "step-00000004.png").is_file()
    assert (vq / "classifier" / "classifier.json").is_file()
    assert json.loads((vq / "model" / "config.json").read_text())["meta"]["dataset"] == "digits"

    code, text, err = run(
        "vqgan", "prior", "--vqgan", str(vq / "model"), "--out", str(prior), *QUIET
    )
    assert code == 0, err
    info = json.loads((prior / "model" / "prior.json").read_text())
    assert info["num_codes"] == 16 and info["grid"] == [2, 2] and info["num_classes"] == 10
    assert json.loads((prior / "model" / "config.json").read_text())["vocab_size"] == 27
    scored = [json.loads(line) for line in (prior / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scored] == [2, 4] and 0 <= scored[-1]["cond_accuracy"] <= 1
    assert (prior / "samples" / "step-00000004.png").is_file()

    for extra in (["--class", "3", "--top-k", "4"], ["--cfg", "2.0", "--top-p", "0.9"]):
        png = tmp_path / f"s{len(extra)}{extra[1]}.png"
        code, text, err = run("vqgan", "sample", "--prior", str(prior / "model"), "--num", "3",
                              "--out", str(png), *extra)  # fmt: skip
        assert code == 0, err
        assert png.is_file()
    code, _, err = run("vqgan", "sample", "--prior", str(prior / "model"), "--class", "x")
    assert code == 2 and "--class x" in err
    code, _, err = run("vqgan", "sample", "--prior", str(prior / "model"), "--caption", "a 3")
    assert code == 2 and "is a class prior" in err

    captioned = tmp_path / "caption-prior"
    code, text, err = run("vqgan", "prior", "--vqgan", str(vq / "model"), "--out",
                          str(captioned), *QUIET, "prior.condition=caption")  # fmt: skip
    assert code == 0, err
    png = tmp_path / "threes.png"
    code, text, err = run("vqgan", "sample", "--prior", str(captioned / "model"), "--num", "2",
                          "--caption", "the digit 3", "--cfg", "2", "--out", str(png))  # fmt: skip
    assert code == 0 and png.is_file(), err
    for bad, message in ((["--caption", "the cat"], "never saw: cat"),
                         (["--class", "3"], "give --caption")):  # fmt: skip
        code, _, err = run("vqgan", "sample", "--prior", str(captioned / "model"), *bad)
        assert code == 2 and message in err, err
    code, _, err = run("vqgan", "prior", "--vqgan", str(tmp_path), *QUIET)
    assert code == 2 and "not a VQGAN folder" in err


def test_resume_is_exact(tmp_path, run):
    full, half = tmp_path / "full", tmp_path / "half"
    assert run("vqgan", "train", "--out", str(full), *QUIET)[0] == 0
    (half / "checkpoints").mkdir(parents=True)  # a run stopped after step 2
    shutil.copytree(full / "checkpoints" / "step-00000002", half / "checkpoints" / "step-00000002")
    (half / "checkpoints" / "latest").write_text("step-00000002\n")
    code, text, err = run("vqgan", "train", "--out", str(half), *QUIET)
    assert code == 0, err
    assert "resumed from" in text
    a = load_file(str(full / "checkpoints" / "step-00000004" / "model.safetensors"))
    b = load_file(str(half / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert any(k.startswith("discriminator.") for k in a) and "quantizer.usage" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_settings_are_one_line(tmp_path, run):
    code, _, err = run("vqgan", "train", "--out", str(tmp_path), *QUIET, "vqgan.classifier_steps=0")
    assert code == 2 and "vqgan.perceptual_weight=1.0 needs vqgan.classifier_steps > 0" in err
    code, _, err = run(
        "vqgan", "train", "--out", str(tmp_path), *QUIET, "vqgan.network={hidden: [8, 8, 8, 8]}"
    )
    assert code == 2 and "not divisible" in err
