"""VQGAN and its transformer prior on the offline 16×16 rendered digits (issue "Image
generation II", items 2–3): a VQGAN (4×4 codes of a 64-entry EMA codebook, L1 + perceptual
loss on the evaluation classifier's features — no downloaded VGG — and a hinge PatchGAN with
the adaptive weight) trained with ``recipes/vqgan-digits.yaml``, then a class-conditional
lmforge `CausalLM` prior over its raster-ordered codes (``recipes/vqgan-prior-digits.yaml``),
both through the one Trainer.

Figures: held-out reconstruction PSNR (dB), codebook usage (share of codes the test images
use) and code perplexity; the evaluation classifier's accuracy on the real test images (the
ceiling), on their reconstructions, and on class-conditional prior samples decoded to pixels
(the engine: temperature 1, no top-k; and with classifier-free guidance). Runs go under
``<out>/vqgan`` and ``<out>/prior``; grids under ``<out>/grids``.

    nice -n 10 python bench/image_generation_2_vq.py            # the recipes' sizes
    nice -n 10 python bench/image_generation_2_vq.py --quick    # a smaller budget

``vq_section(args) -> dict`` is what ``bench/image_generation_2.py`` calls (keys
``vqgan_psnr``, ``vq_prior_acc``, ``codebook_usage``, …; ``args`` needs none of this
script's options: missing ones take their defaults; ``args.smoke`` runs a few steps). Last line:
``RESULT image_generation_2_vq vqgan_psnr=<p> codebook_usage=<u> vq_prior_acc=<a> …``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.generative.code_prior import encode_codes, load_prior, unraster_codes
from lmforge.generative.code_prior_training import (
    PriorRunConfig,
    evaluate_prior,
    train_code_prior,
)
from lmforge.generative.vqgan import load_vqgan
from lmforge.generative.vqgan_training import VQGANRunConfig, train_vqgan
from lmforge.train.config import load_config
from lmforge.vision.classifier import load_classifier
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.metrics import conditional_accuracy

RECIPES = Path(__file__).resolve().parents[1] / "lmforge" / "recipes"
DEFAULTS = {
    "out": "runs/bench-image-generation-2",
    "quick": False,
    "threads": 1,
    "vq_steps": None,  # None: the recipe's (quick: 400)
    "prior_steps": None,  # None: the recipe's (quick: 400)
    "vq_cfg": 2.0,
    "vq_samples": 500,
}


def option(args: Any, name: str) -> Any:
    return getattr(args, name, None) if getattr(args, name, None) is not None else DEFAULTS[name]


def vq_section(args: Any) -> dict[str, float]:
    """Train (or resume a finished run of) the VQGAN and the prior; measure. Returns the
    figures of the module docstring (and the CPU minutes the section took)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = Path(option(args, "out"))
    quick = bool(option(args, "quick"))
    threads = int(option(args, "threads"))
    torch.set_num_threads(threads)
    smoke = bool(getattr(args, "smoke", False))  # a seconds-long run of every code path
    vq_steps = option(args, "vq_steps") or (6 if smoke else 400 if quick else None)
    prior_steps = option(args, "prior_steps") or (4 if smoke else 400 if quick else None)
    common = ["log.progress=false", f"train.cpu_threads={threads}"]
    vq_over = [f"out_dir={out / 'vqgan'}", *common]
    if smoke:
        vq_over += ["vqgan.num_train=256", "vqgan.num_eval=64", "vqgan.classifier_steps=20"]
    if vq_steps:
        vq_over += [f"train.max_steps={vq_steps}", f"vqgan.disc_start={vq_steps // 2}",
                    f"train.eval_every={vq_steps}", f"train.save_every={vq_steps}"]  # fmt: skip
    vq_config = load_config(RECIPES / "vqgan-digits.yaml", vq_over, VQGANRunConfig)
    vq_summary = train_vqgan(vq_config)
    vq_cpu = time.process_time() - cpu0
    prior_over = [f"out_dir={out / 'prior'}", f"prior.vqgan={vq_summary['model_dir']}", *common]
    if smoke:
        prior_over += ["prior.num_train=256", "prior.num_eval=64", "prior.eval_samples=20"]
    if prior_steps:
        prior_over += [f"train.max_steps={prior_steps}", f"train.eval_every={prior_steps}",
                       f"train.save_every={prior_steps}"]  # fmt: skip
    prior_config = load_config(RECIPES / "vqgan-prior-digits.yaml", prior_over, PriorRunConfig)
    clf = out / "vqgan" / "classifier"  # the same data and seed would train the same network
    if clf.is_dir() and not (out / "prior" / "classifier").exists():
        shutil.copytree(clf, out / "prior" / "classifier")
    prior_summary = train_code_prior(prior_config)
    prior_cpu = time.process_time() - cpu0 - vq_cpu

    vqgan = load_vqgan(vq_summary["model_dir"])
    classifier = load_classifier(out / "prior" / "classifier")
    v, p = vq_config.vqgan, prior_config.prior
    test = load_image_dataset(v.dataset, v.image_size, v.num_eval, v.data_seed, "test", v.channels)
    with torch.no_grad():
        grid = vqgan.config.grid
        recon = vqgan.decode_codes(unraster_codes(encode_codes(vqgan, test.images), grid))
    recon = recon.clamp(-1, 1)
    model, _, layout, _ = load_prior(prior_summary["model_dir"])
    n = 20 if smoke else int(option(args, "vq_samples"))
    figures: dict[str, float] = {
        "vqgan_psnr": vq_summary["psnr"],
        "codebook_usage": vq_summary["codebook_usage"],
        "code_perplexity": vq_summary["code_perplexity"],
        "vq_real_acc": conditional_accuracy(classifier, test.images, test.labels),
        "vq_recon_acc": conditional_accuracy(classifier, recon, test.labels),
    }
    grids = out / "grids"
    save_grid(
        torch.cat([test.images[:10], recon[:10]]), grids / "vqgan-reconstructions.png", nrow=10
    )
    for name, cfg in (("vq_prior_acc", 1.0), ("vq_prior_acc_cfg", float(option(args, "vq_cfg")))):
        p.cfg_scale, p.top_k, p.top_p, p.temperature = cfg, 0, 1.0, 1.0
        start = time.perf_counter()
        images, labels, metrics = evaluate_prior(model, vqgan, layout, p, classifier, n, seed=1)
        figures[name] = metrics["cond_accuracy"]
        figures[name.replace("acc", "seconds_per_image")] = (time.perf_counter() - start) / n
        k = min(80, n)
        order = torch.argsort(labels[:k] * 10_000 + torch.arange(k), stable=True)
        save_grid(images[:k][order], grids / f"{name}.png", nrow=8)
    if prior_summary.get("val_loss") is not None:  # (None when a finished run was resumed)
        figures["vq_prior_val_loss"] = prior_summary["val_loss"]
    figures["vqgan_cpu_min"] = vq_cpu / 60
    figures["prior_cpu_min"] = prior_cpu / 60
    figures["vq_cpu_min"] = (time.process_time() - cpu0) / 60
    figures["vq_wall_min"] = (time.perf_counter() - wall0) / 60
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULTS["out"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--vq-steps", type=int, help="VQGAN optimizer steps (default: the recipe's)")
    p.add_argument("--prior-steps", type=int, help="prior optimizer steps (default: the recipe's)")
    p.add_argument("--vq-cfg", type=float, default=DEFAULTS["vq_cfg"], help="guidance scale")
    p.add_argument("--vq-samples", type=int, default=DEFAULTS["vq_samples"])
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    figures = vq_section(args)
    for key, value in figures.items():
        print(f"{key:28s} {value:.4f}")
    print("RESULT image_generation_2_vq " + " ".join(f"{k}={v:.4g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
