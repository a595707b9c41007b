"""Latent text-to-image prompt accuracy ("Stable Diffusion in miniature") on 16×16 captioned
shapes: ``lmforge text2image train`` (KL autoencoder, then a text encoder — an lmforge LM
body — trained jointly with a cross-attention DiT on the latents, 10% caption dropout), then
DDIM samples for held-out captions ("a large blue circle at the bottom right") with and
without classifier-free guidance, judged by the metric classifier (trained here on real
shapes): colour, shape, position each, and all three jointly. The classifier's accuracy on
real test images is the ceiling row.

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
from lmforge.diffusion.text2image_pipeline import (
    load_text2image,
    prompt_accuracy,
    sample_text2image,
)
from lmforge.vision.classifier import train_classifier
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid

RECIPE = Path(__file__).resolve().parents[1] / "lmforge" / "recipes" / "text2image-shapes.yaml"


def sizes(quick: bool, smoke: bool) -> dict[str, Any]:
    if smoke:  # a crash test of the script, not a measurement
        return dict(train=128, ae_steps=3, steps=3, prompts=10, clf_steps=5, sample_steps=2,
                    net=["text2image.denoiser={hidden_size: 32, depth: 1, num_heads: 2}"])  # fmt: skip
    if quick:
        return dict(train=4000, ae_steps=500, steps=1500, prompts=100, clf_steps=400,
                    sample_steps=30, net=[])  # fmt: skip
    return dict(train=8000, ae_steps=800, steps=3000, prompts=200, clf_steps=600,
                sample_steps=30, net=[])  # fmt: skip


def t2i_section(args: argparse.Namespace) -> dict[str, float]:
    """Train (through the command) and measure; returns ``t2i_prompt_acc``,
    ``t2i_prompt_acc_nocfg`` and the per-attribute figures (``..._colour`` etc.), the
    classifier's real-image ceiling, training and sampling seconds. Reads ``args.out``,
    ``args.quick``, ``args.smoke``, ``args.t2i_cfg`` when present."""
    quick, smoke = getattr(args, "quick", False), getattr(args, "smoke", False)
    s = sizes(quick, smoke)
    cfg = float(getattr(args, "t2i_cfg", 4.0))
    out = Path(getattr(args, "out", "runs/bench-image-generation-2")) / "t2i"
    t0 = time.perf_counter()
    code = lmforge_main(
        [
            "text2image", "train", "--config", str(RECIPE), "--out", str(out),
            f"text2image.num_train={s['train']}", f"text2image.autoencoder_steps={s['ae_steps']}",
            f"train.max_steps={s['steps']}", f"train.eval_every={s['steps']}",
            f"train.save_every={max(s['steps'] // 4, 1)}", "text2image.classifier_steps=0",
            f"text2image.sample_steps={s['sample_steps']}", "log.progress=false", *s["net"],
            f"train.cpu_threads={getattr(args, 'threads', 2)}",
        ]
    )  # fmt: skip
    if code:
        raise SystemExit(f"lmforge text2image train: exit status {code}")
    train_s = time.perf_counter() - t0
    train = load_image_dataset("shapes", 16, s["train"], 0, "train")
    test = load_image_dataset("shapes", 16, 1000, 0, "test")
    clf = train_classifier(train, steps=s["clf_steps"])
    ceiling = prompt_accuracy(clf, test.images, test)
    pipe = load_text2image(out / "model")
    asked = test.subset(slice(0, s["prompts"]))
    figures: dict[str, float] = {"t2i_train_s": train_s}
    for name, w in (("cfg", cfg), ("nocfg", 1.0)):
        t0 = time.perf_counter()
        images = sample_text2image(pipe, asked.captions, "ddim", s["sample_steps"], w, seed=1)
        figures[f"t2i_sample_s_per_image_{name}"] = (time.perf_counter() - t0) / len(asked)
        acc = prompt_accuracy(clf, images, asked)
        suffix = "" if name == "cfg" else "_nocfg"
        figures[f"t2i_prompt_acc{suffix}"] = acc["joint_acc"]
        for k in ("colour", "shape", "position", "size"):
            figures[f"t2i_{k}_acc{suffix}"] = acc[f"{k}_acc"]
        save_grid(images[:64], out / "grids" / f"prompts-{name}.png", nrow=8)
    save_grid(asked.images[:64], out / "grids" / "prompts-real.png", nrow=8)
    (out / "grids" / "prompts.txt").write_text("\n".join(asked.captions[:64]) + "\n")
    for k, v in ceiling.items():
        figures[f"t2i_real_{k}"] = v
    figures["t2i_cfg"] = cfg
    figures["t2i_prompts"] = float(len(asked))
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-image-generation-2")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t2i-cfg", type=float, default=4.0, help="guidance scale (default 4)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    f = t2i_section(args)
    rows = [
        ("real test images (classifier ceiling)", "real"),
        (f"latent DiT, DDIM, CFG {f['t2i_cfg']:g}", ""),
        ("latent DiT, DDIM, no guidance", "_nocfg"),
    ]
    lines = [
        "| samples | colour | shape | position | size | joint (colour+shape+position) |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in rows:
        if key == "real":
            v = [
                f.get(f"t2i_real_{k}_acc", float("nan"))
                for k in ("colour", "shape", "position", "size", "joint")
            ]
        else:
            v = [f[f"t2i_{k}_acc{key}"] for k in ("colour", "shape", "position", "size")]
            v.append(f[f"t2i_prompt_acc{key}"])
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    table = "\n".join(lines)
    out = Path(args.out) / "t2i"
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "result.json").write_text(json.dumps(f, indent=1))
    print(table)
    print(
        f"training {f['t2i_train_s']:.0f} s; sampling {f['t2i_sample_s_per_image_cfg']:.4f} s/image "
        f"(CFG), {f['t2i_sample_s_per_image_nocfg']:.4f} (none); {f['t2i_prompts']:.0f} prompts"
    )
    print(
        f"RESULT image_generation_2_t2i t2i_prompt_acc={f['t2i_prompt_acc']:.3f} "
        f"t2i_prompt_acc_nocfg={f['t2i_prompt_acc_nocfg']:.3f}"
    )


if __name__ == "__main__":
    main()
