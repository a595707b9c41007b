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
    # validation reports the MSE loss, not a perplexity (the objective's validation_metrics)
    assert "perplexity" not in text and "val loss" in text
    evals = [r for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())
             if "val_loss" in r]  # fmt: skip
    assert [r["step"] for r in evals] == [2, 4] and all("val_ppl" not in r for r in evals)
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
    png.unlink()  # without --sampler a flow-target model samples with the flow sampler
    code, text, err = run("diffusion", "sample", "--model", str(out / "model"), "--steps", "2",
                          "--num", "2", "--out", str(png))  # fmt: skip
    assert code == 0 and "(flow, 2 steps)" in text and png.is_file(), err


FLOW = [
    "diffusion.num_train=32", "diffusion.num_eval=16", "diffusion.image_size=8",
    "diffusion.samples_per_class=1", "train.batch_size=8", "train.max_steps=4",
    "train.eval_every=2", "train.save_every=2", "train.eval_batches=1", "train.keep_last=2",
    "log.progress=false", "log.plot=false", "optim.warmup_steps=0", "train.cpu_threads=1",
]  # fmt: skip


def test_normalizing_flows_train_resume_exactly_and_sample(tmp_path, run):
    for method, net in (("realnvp", "diffusion.realnvp={hidden: 8, couplings_per_stage: 1}"),
                        ("nice", "diffusion.nice={hidden: 16, hidden_layers: 1}")):  # fmt: skip
        full, half = tmp_path / f"{method}-full", tmp_path / f"{method}-half"
        args = ("diffusion", "train", "--config", f"recipes/{method}-digits.yaml", *FLOW, net,
                "diffusion.classifier_steps=3", "diffusion.eval_samples=10")  # fmt: skip
        code, text, err = run(*args, "--out", str(full))
        assert code == 0, err
        assert "exact likelihood" in text and "perplexity" not in text
        records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "val_loss" in r]
        assert [r["step"] for r in evals] == [2, 4]
        assert all(0 < r["val_bits_per_dim"] < 20 and "val_ppl" not in r for r in evals)
        assert (full / "samples" / "step-00000002.png").is_file()
        assert (full / "samples" / "step-00000004.png").is_file()
        scored = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
        assert [r["step"] for r in scored] == [2, 4] and scored[-1]["frechet_classifier"] >= 0
        config = json.loads((full / "model" / "config.json").read_text())
        assert config["lmforge_flow"] == method and config["shape"] == [1, 8, 8]
        # interrupted after step 2: resume gives the straight run's weights bit for bit
        (half / "checkpoints").mkdir(parents=True)
        shutil.copytree(full / "checkpoints" / "step-00000002",
                        half / "checkpoints" / "step-00000002")  # fmt: skip
        (half / "checkpoints" / "latest").write_text("step-00000002\n")
        code, text, err = run(*args, "--out", str(half))
        assert code == 0, err
        assert "resumed from" in text
        a = load_file(str(full / "checkpoints" / "step-00000004" / "model.safetensors"))
        b = load_file(str(half / "model" / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (method, k)
        png = tmp_path / f"{method}.png"
        code, text, err = run("diffusion", "sample", "--model", str(half / "model"), "--num", "4",
                              "--out", str(png))  # fmt: skip
        assert code == 0, err
        assert png.is_file() and method in text
        code, _, err = run("diffusion", "sample", "--model", str(half / "model"), "--class", "3")
        assert code == 2 and "unconditional" in err
        code, _, err = run("diffusion", "sample", "--model", str(half / "model"), "--steps", "9")
        assert code == 2 and "exact inverse" in err  # not silently ignored


def test_reflow_then_one_step_sampling(tmp_path, run):
    teacher, reflowed = tmp_path / "rf", tmp_path / "reflow"
    code, _, err = run("diffusion", "train", "--out", str(teacher), *TINY, "train.max_steps=2",
                       "diffusion.target=flow", "diffusion.sampler=flow")  # fmt: skip
    assert code == 0, err
    args = ("diffusion", "reflow", "--model", str(teacher / "model"), *TINY,
            "diffusion.classifier_steps=0", "optim.warmup_steps=0", "train.cpu_threads=1",
            "train.keep_last=2", "diffusion.reflow_pairs=8", "diffusion.reflow_steps=2",
            "diffusion.sample_steps=1")  # fmt: skip
    code, text, err = run(*args, "--out", str(reflowed))
    assert code == 0, err
    assert "reflow" in text and "target flow" in text
    pairs = load_file(str(reflowed / "reflow_pairs.safetensors"))
    assert pairs["noise"].shape == pairs["samples"].shape == (8, 1, 8, 8)
    assert pairs["labels"].tolist() == [i % 10 for i in range(8)]
    # the couplings are the teacher's own 2-step guided Euler ODE from that noise
    from lmforge.diffusion.denoiser_io import load_denoiser
    from lmforge.diffusion.rectified_flow import flow_trajectory

    t = load_denoiser(teacher / "model")
    expect = flow_trajectory(t.model, pairs["noise"], 2, pairs["labels"], 2.0)[0]  # the recipe's
    assert torch.allclose(expect, pairs["samples"], atol=1e-5)
    assert json.loads((reflowed / "model" / "denoiser.json").read_text())["target"] == "flow"
    png = tmp_path / "one-step.png"
    code, _, err = run("diffusion", "sample", "--model", str(reflowed / "model"), "--sampler",
                       "flow", "--steps", "1", "--class", "3", "--num", "2", "--out", str(png))  # fmt: skip
    assert code == 0, err
    assert png.is_file()
    # interrupted after step 2: the resumed run reuses the couplings and ends bit for bit equal
    half = tmp_path / "half"
    (half / "checkpoints").mkdir(parents=True)
    shutil.copytree(reflowed / "checkpoints" / "step-00000002",
                    half / "checkpoints" / "step-00000002")  # fmt: skip
    (half / "checkpoints" / "latest").write_text("step-00000002\n")
    shutil.copy(reflowed / "reflow_pairs.safetensors", half / "reflow_pairs.safetensors")
    code, text, err = run(*args, "--out", str(half))
    assert code == 0, err
    assert "resumed from" in text and "drawing" not in text
    a = load_file(str(reflowed / "checkpoints" / "step-00000004" / "model.safetensors"))
    b = load_file(str(half / "checkpoints" / "step-00000004" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    code, _, err = run("diffusion", "reflow", "--model", str(tmp_path / "nothing"), *TINY)
    assert code == 2 and "denoiser.json" in err
