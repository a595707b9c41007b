"""`lmforge text2image train|sample`: both stages' run folders (metrics, curves, grids,
checkpoints), a model folder sampled from a prompt, exact resume, one-line errors."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

TINY = [
    "text2image.num_train=48", "text2image.num_eval=16", "text2image.autoencoder_steps=4",
    "text2image.grid_prompts=2", "text2image.sample_steps=2", "train.batch_size=8",
    "train.max_steps=4", "train.eval_every=2", "train.save_every=2", "train.eval_batches=1",
    "train.keep_last=2", "log.progress=false", "log.plot=false",
    "text2image.classifier_steps=3", "text2image.eval_samples=4",
    "text2image.autoencoder_batch_size=4",
]  # fmt: skip


def test_train_sample_and_resume_exactly(tmp_path, run):
    full, half = tmp_path / "full", tmp_path / "half"
    code, text, err = run("text2image", "train", "--out", str(full), *TINY)
    assert code == 0, err
    assert "stage 1: KL autoencoder" in text and "jointly" in text
    for stage in (full / "autoencoder", full):
        assert (stage / "metrics.jsonl").is_file()
        assert (stage / "checkpoints" / "step-00000004" / "model.safetensors").is_file()
    assert (full / "samples" / "step-00000002.png").is_file()
    ae_rows = [json.loads(line) for line in (full / "autoencoder" / "metrics.jsonl").open()]
    ae_batches = {r["loss_tokens"] for r in ae_rows if "loss_tokens" in r}
    assert ae_batches == {4}  # text2image.autoencoder_batch_size, not train.batch_size (8)
    assert (full / "model" / "text2image.json").is_file()
    scored = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scored] == [2, 4] and 0 <= scored[-1]["joint_acc"] <= 1
    # an interrupted run: the finished autoencoder stage and stage 2's step-2 checkpoint
    shutil.copytree(full / "autoencoder", half / "autoencoder")
    (half / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000002", half / "checkpoints" / "step-00000002")
    (half / "checkpoints" / "latest").write_text("step-00000002\n")
    code, text, err = run("text2image", "train", "--out", str(half), *TINY)
    assert code == 0, err
    assert "resumed from" in text and "stage 1" not in text
    a = load_file(str(full / "checkpoints" / "step-00000004" / "model.safetensors"))
    b = load_file(str(half / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    png = tmp_path / "t2i.png"
    prompt = "a large blue circle at the bottom right"
    code, text, err = run("text2image", "sample", "--model", str(full / "model"), "--prompt",
                          prompt, "--steps", "3", "--cfg", "4", "--num", "2", "--out", str(png))  # fmt: skip
    assert code == 0, err
    assert png.is_file() and "ddim, 3 steps, cfg 4.0" in text
    code, _, err = run("text2image", "sample", "--model", str(full / "model"), "--prompt",
                       "a purple circle")  # fmt: skip
    assert code == 2 and "purple" in err and err.count("\n") == 1
    code, _, err = run("text2image", "sample", "--model", str(tmp_path), "--prompt", prompt)
    assert code == 2 and "not a text2image model folder" in err
