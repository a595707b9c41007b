"""`lmforge diffusion train|sample`: a run folder (metrics, grids, checkpoints, a model
diffusers loads), exact resume, sampling with every sampler and guidance, one-line errors."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

TINY = [
    "diffusion.num_train=32", "diffusion.num_eval=16", "diffusion.image_size=8",
    "diffusion.unet={block_out_channels: [8, 16], attention_levels: [false, true], "
    "norm_num_groups: 4, attention_head_dim: 8}",
    "diffusion.sample_steps=3", "diffusion.samples_per_class=1", "train.batch_size=4",
    "train.max_steps=4", "train.eval_every=2", "train.save_every=2", "train.eval_batches=1",
    "log.progress=false", "log.plot=false",
]  # fmt: skip


def test_train_then_sample(tmp_path, run):
    out = tmp_path / "d"
    code, text, err = run("diffusion", "train", "--config", "recipes/diffusion-tiny.yaml",
                          "--out", str(out), *TINY, "diffusion.classifier_steps=3",
                          "diffusion.eval_samples=10")  # fmt: skip
    assert code == 0, err
    assert "target epsilon" in text
    scored = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scored] == [2, 4]
    assert 0 <= scored[-1]["cond_accuracy"] <= 1 and scored[-1]["frechet_classifier"] >= 0
    assert (out / "classifier" / "classifier.json").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert (out / "samples" / "step-00000002.png").is_file()
    assert (out / "samples" / "step-00000004.png").is_file()
    assert (out / "checkpoints" / "step-00000004" / "model.safetensors").is_file()
    assert json.loads((out / "model" / "denoiser.json").read_text())["target"] == "epsilon"
    for sampler in ("ddpm", "ddim", "euler", "dpm++"):
        png = tmp_path / f"{sampler}.png"
        code, text, err = run("diffusion", "sample", "--model", str(out / "model"), "--sampler",
                              sampler, "--steps", "3", "--class", "7", "--cfg", "2.0", "--num",
                              "2", "--out", str(png))  # fmt: skip
        assert code == 0, err
        assert png.is_file()
    code, _, err = run("diffusion", "sample", "--model", str(out / "model"), "--sampler", "flow")
    assert code == 2 and "samples with ddpm, ddim, euler or dpm++" in err
    code, _, err = run("diffusion", "sample", "--model", str(out / "model"), "--class", "12")
    assert code == 2 and "--class 12" in err


def test_resume_is_exact(tmp_path, run):
    full, half = tmp_path / "full", tmp_path / "half"
    assert run("diffusion", "train", "--out", str(full), *TINY, "train.keep_last=2")[0] == 0
    # a run interrupted after step 2: only that checkpoint on disk
    (half / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000002", half / "checkpoints" / "step-00000002")
    (half / "checkpoints" / "latest").write_text("step-00000002\n")
    code, text, err = run("diffusion", "train", "--out", str(half), *TINY, "train.keep_last=2")
    assert code == 0, err
    assert "resumed from" in text
    a = load_file(str(full / "checkpoints" / "step-00000004" / "model.safetensors"))
    b = load_file(str(half / "checkpoints" / "step-00000004" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_target_is_one_line(tmp_path, run):
    code, _, err = run("diffusion", "train", "--out", str(tmp_path), *TINY,
                       "diffusion.target=score")  # fmt: skip
    assert code == 2 and "diffusion.target='score'" in err


def test_dit_flow_model_trains_and_samples(tmp_path, run):
    out = tmp_path / "dit"
    dit = "diffusion.dit={patch_size: 4, hidden_size: 16, depth: 1, num_heads: 2}"
    code, text, err = run("diffusion", "train", "--out", str(out), *TINY, "train.max_steps=2",
                          "diffusion.denoiser=dit", dit, "diffusion.target=flow",
                          "diffusion.sampler=flow")  # fmt: skip
    assert code == 0, err
    assert "dit (" in text and (out / "model" / "dit" / "model.safetensors").is_file()
    assert not (out / "model" / "model_index.json").exists()  # not a DDPMPipeline
    png = tmp_path / "flow.png"
    code, _, err = run("diffusion", "sample", "--model", str(out / "model"), "--sampler", "flow",
                       "--steps", "2", "--num", "2", "--out", str(png))  # fmt: skip
    assert code == 0, err
    assert png.is_file()
