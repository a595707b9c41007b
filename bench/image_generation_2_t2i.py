"""Latent text-to-image prompt accuracy ("Stable Diffusion in miniature") on 32×32 captioned
shapes: ``lmforge text2image train`` with ``recipes/text2image-shapes.yaml`` (KL autoencoder
32×32×3 → 8×8×4, then a text encoder — an lmforge LM body — trained jointly with a
cross-attention DiT on the latents, 10% caption dropout), then DDIM samples for held-out
captions ("a large blue circle at the bottom right") with and without classifier-free
guidance (and a small guidance sweep), judged by the metric classifier (trained here on real
shapes, 800 steps, cached in ``<out>/t2i/classifier-800``): colour, shape, position each,
and all three jointly. Two ceiling rows: the classifier on real test images, and on the
autoencoder's reconstructions of the prompts' real images (what stage 2 can reach at best).

    nice -n 10 python bench/image_generation_2_t2i.py            # the recipe's sizes
    nice -n 10 python bench/image_generation_2_t2i.py --quick    # a smaller budget

``bench/image_generation_2.py`` imports `t2i_section` (one dict of figures); standalone, the
last line is ``RESULT image_generation_2_t2i t2i_prompt_acc=<a> t2i_prompt_acc_nocfg=<b> …``.
Target: joint prompt accuracy ≥ 0.70 with CFG and clearly above without.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.cli import main as lmforge_main
from lmforge.diffusion.text2image import Text2ImageConfig
from lmforge.diffusion.text2image_pipeline import (
    load_text2image,
    prompt_accuracy,
    sample_text2image,
)
from lmforge.train.config import load_config
from lmforge.vision.classifier import ImageClassifier, load_classifier, train_classifier
from lmforge.vision.datasets import ImageDataset, load_image_dataset
from lmforge.vision.grid import save_grid

RECIPE = Path(__file__).resolve().parents[1] / "lmforge" / "recipes" / "text2image-shapes.yaml"


def sizes(quick: bool, smoke: bool) -> dict[str, Any]:
    """Overrides of the recipe (none for the full run) and the evaluation's sizes."""
    if smoke:  # a crash test of the script, not a measurement
        return dict(prompts=10, clf_steps=5, sample_steps=2, overrides=[
            "text2image.image_size=16", "text2image.num_train=128",
            "text2image.autoencoder_steps=3", "train.max_steps=3", "train.eval_every=3",
            "text2image.autoencoder={channels: 8, latent_channels: 4, downsample: 1}",
            "text2image.denoiser={hidden_size: 32, depth: 1, num_heads: 2, patch_size: 2}"])  # fmt: skip
    if quick:
        return dict(prompts=100, clf_steps=600, sample_steps=30, overrides=[
            "text2image.num_train=4000", "text2image.autoencoder_steps=800",
            "train.max_steps=2000", "train.eval_every=2000"])  # fmt: skip
    return dict(prompts=200, clf_steps=800, sample_steps=30, overrides=[])


def metric_classifier(train: ImageDataset, steps: int, folder: Path) -> ImageClassifier:
    """The metric classifier (trained on real training shapes), cached in ``folder``."""
    if (folder / "classifier.json").is_file():
        return load_classifier(folder)
    with torch.random.fork_rng(devices=[]):
        clf = train_classifier(train, steps=steps)
    clf.save(folder)
    return clf


def t2i_section(args: argparse.Namespace) -> dict[str, float]:
    """Train (through the command) and measure; returns ``t2i_prompt_acc``,
    ``t2i_prompt_acc_nocfg`` and the per-attribute figures (``..._colour`` etc.), the
    classifier's real-image ceiling (``t2i_real_*``), the autoencoder's reconstruction
    ceiling (``t2i_recon_*``), a guidance sweep (``t2i_prompt_acc_cfg<w>``), training CPU
    seconds and sampling seconds. Reads ``args.out``, ``args.quick``, ``args.smoke``,
    ``args.t2i_cfg``, ``args.t2i_cfg_sweep``, ``args.threads`` when present."""
    quick, smoke = getattr(args, "quick", False), getattr(args, "smoke", False)
    s = sizes(quick, smoke)
    cfg = float(getattr(args, "t2i_cfg", 4.0))
    sweep = [float(w) for w in str(getattr(args, "t2i_cfg_sweep", "") or "").split(",") if w]
    out = Path(getattr(args, "out", "runs/bench-image-generation-2")) / "t2i"
    overrides = [*s["overrides"], "text2image.classifier_steps=0", "log.progress=false",
                 f"text2image.sample_steps={s['sample_steps']}",
                 f"train.cpu_threads={getattr(args, 'threads', 1)}"]  # fmt: skip
    recipe = load_config(RECIPE, overrides, Text2ImageConfig)
    steps = recipe.train.max_steps
    overrides += [f"train.eval_every={steps}", f"train.save_every={max(steps // 4, 1)}"]
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = lmforge_main(["text2image", "train", "--config", str(RECIPE), "--out", str(out),
                         *overrides])  # fmt: skip
    if code:
        raise SystemExit(f"lmforge text2image train: exit status {code}")
    figures: dict[str, float] = {"t2i_train_s": time.perf_counter() - t0,
                                 "t2i_train_cpu_s": time.process_time() - cpu0}  # fmt: skip
    r = recipe.text2image
    train = load_image_dataset(r.dataset, r.image_size, r.num_train, r.data_seed, "train")
    test = load_image_dataset(r.dataset, r.image_size, 1000, r.data_seed, "test")
    clf = metric_classifier(train, s["clf_steps"], out / f"classifier-{s['clf_steps']}")
    pipe = load_text2image(out / "model")
    asked = test.subset(slice(0, s["prompts"]))
    recon = pipe.autoencoder.images(pipe.autoencoder.latents(asked.images))
    rows = {"real": prompt_accuracy(clf, test.images, test),
            "recon": prompt_accuracy(clf, recon, asked)}  # fmt: skip
    grids = {"real": asked.images, "recon": recon}
    for name, w in (("cfg", cfg), ("nocfg", 1.0), *((f"cfg{w:g}", w) for w in sweep)):
        t0 = time.perf_counter()
        images = sample_text2image(pipe, asked.captions, "ddim", s["sample_steps"], w, seed=1)
        figures[f"t2i_sample_s_per_image_{name}"] = (time.perf_counter() - t0) / len(asked)
        rows[name] = prompt_accuracy(clf, images, asked)
        grids[name] = images
    for name, images in grids.items():
        save_grid(images[:64], out / "grids" / f"prompts-{name}.png", nrow=8)
    (out / "grids" / "prompts.txt").write_text("\n".join(asked.captions[:64]) + "\n")
    for name, acc in rows.items():
        prefix = {"cfg": "t2i", "nocfg": "t2i"}.get(name, f"t2i_{name}")
        suffix = "_nocfg" if name == "nocfg" else ""
        for k in ("colour", "shape", "position", "size"):
            figures[f"{prefix}_{k}_acc{suffix}"] = acc[f"{k}_acc"]
        key = "t2i_prompt_acc" if name in ("cfg", "nocfg") else f"t2i_{name}_joint_acc"
        figures[key + suffix] = acc["joint_acc"]
    figures.update(t2i_cfg=cfg, t2i_prompts=float(len(asked)), t2i_image_size=float(r.image_size))
    return figures


def table_rows(f: dict[str, float]) -> list[tuple[str, str, str]]:
    """(row title, per-attribute key pattern, joint key) for the figures present."""
    rows = [("real test images (classifier ceiling)", "t2i_real_{}_acc", "t2i_real_joint_acc"),
            ("autoencoder reconstructions (stage-1 ceiling)", "t2i_recon_{}_acc",
             "t2i_recon_joint_acc"),
            (f"latent DiT, DDIM, CFG {f['t2i_cfg']:g}", "t2i_{}_acc", "t2i_prompt_acc"),
            ("latent DiT, DDIM, no guidance", "t2i_{}_acc_nocfg", "t2i_prompt_acc_nocfg")]  # fmt: skip
    for key in sorted(k for k in f if k.startswith("t2i_cfg") and k.endswith("_joint_acc")):
        w = key[len("t2i_cfg") : -len("_joint_acc")]
        rows.append((f"latent DiT, DDIM, CFG {w}", f"t2i_cfg{w}_{{}}_acc", key))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-image-generation-2")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t2i-cfg", type=float, default=4.0, help="guidance scale (default 4)")
    p.add_argument("--t2i-cfg-sweep", default="2,7", help="more guidance scales to score")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    f = t2i_section(args)
    lines = [
        "| samples | colour | shape | position | size | joint (colour+shape+position) |",
        "|---|---|---|---|---|---|",
    ]
    for name, pattern, joint in table_rows(f):
        v = [f[pattern.format(k)] for k in ("colour", "shape", "position", "size")] + [f[joint]]
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    table = "\n".join(lines)
    out = Path(args.out) / "t2i"
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "result.json").write_text(json.dumps(f, indent=1))
    print(table)
    print(
        f"{f['t2i_image_size']:.0f} px; training {f['t2i_train_s']:.0f} s wall, "
        f"{f['t2i_train_cpu_s'] / 60:.1f} CPU-min; sampling "
        f"{f['t2i_sample_s_per_image_cfg']:.4f} s/image (CFG), "
        f"{f['t2i_sample_s_per_image_nocfg']:.4f} (none); {f['t2i_prompts']:.0f} prompts"
    )
    print(
        f"RESULT image_generation_2_t2i t2i_prompt_acc={f['t2i_prompt_acc']:.3f} "
        f"t2i_prompt_acc_nocfg={f['t2i_prompt_acc_nocfg']:.3f} "
        f"t2i_shape_acc={f['t2i_shape_acc']:.3f} t2i_colour_acc={f['t2i_colour_acc']:.3f} "
        f"t2i_real_joint_acc={f['t2i_real_joint_acc']:.3f} "
        f"t2i_recon_joint_acc={f['t2i_recon_joint_acc']:.3f}"
    )


if __name__ == "__main__":
    main()
