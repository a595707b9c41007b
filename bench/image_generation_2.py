"""Image generation II, the master table (issue "Image generation II", item 6): GANs here,
the VQGAN + prior section from ``image_generation_2_vq.py`` and latent text-to-image from
``image_generation_2_t2i.py``; by default all three, in one invocation, into ``--out``.

**Resume.** What a finished part measured is kept in its folder under ``--out``, and a part
whose results file exists is *not* trained or measured again (the script says so, with the
file's time and the CPU minutes it recorded): each GAN run's ``gan/<method>-seed<k>/eval.json``
(reused only when it was made with the same steps / batch / n_critic), the VQ section's
``vq/result.json`` and the text-to-image section's ``t2i/result.json``. ``--rerun gan,vq,t2i``
measures those parts again. So a budget too small for one sitting can fill the parts in
several invocations (e.g. ``--only gan --methods wgan-gp`` in parallel processes), and one
last plain invocation prints the combined line from the completed parts.

GAN section: the non-saturating GAN (``nsgan``), WGAN (clipping + RMSProp) and WGAN-GP —
class-conditional DCGAN networks of the same size, the recipes ``gan-*-digits.yaml`` — on
the same 16×16 rendered digits, each over 3 seeds, through ``lmforge.generative.gan_training``
(the one Trainer). Every final generator is scored by one evaluation classifier (trained
once on the real training images, `lmforge.vision.classifier`) on ``--eval-samples`` samples
(classes in turn): conditional accuracy, coverage, within-class diversity, Fréchet distance
in classifier features (real-vs-real floor printed) and **collapse**, defined in
`lmforge.generative.gan_diagnostics`: coverage < 0.8 (fewer than 8 of 10 digits drawn at
least half as often as uniform) or diversity < 0.5, or a run that diverged. Stability = the
share of seeds that collapse.

    nice -n 10 python bench/image_generation_2.py            # all three sections
    nice -n 10 python bench/image_generation_2.py --only gan
    nice -n 10 python bench/image_generation_2.py --only gan --gan-steps 900 --seeds 3

Cost at the recipes' sizes, one thread on the 2-core EPYC (BENCHMARKS.md): GANs ≈ 11
CPU-min (nine runs), VQGAN + prior ≈ 6, text-to-image ≈ 20 (≈ 37 CPU-min in all).

Last line: ``RESULT image_generation_2 wgangp_acc=<a> vqgan_psnr=<p> vq_prior_acc=<b>
t2i_prompt_acc=<c> t2i_prompt_acc_nocfg=<d>``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.generative.gan_diagnostics import evaluate_generator
from lmforge.generative.gan_training import GANConfig, train_gan
from lmforge.train.config import load_config
from lmforge.train.loop import TrainingDiverged
from lmforge.vision.classifier import load_classifier, train_classifier
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.metrics import classifier_frechet_distance

RECIPES = Path(__file__).resolve().parents[1] / "lmforge" / "recipes"
GAN_RECIPES = {"nsgan": "gan-nsgan-digits.yaml", "wgan": "gan-wgan-digits.yaml",
               "wgan-gp": "gan-wgangp-digits.yaml"}  # fmt: skip
NAN = float("nan")


def gan_run(args: argparse.Namespace, method: str, seed: int, out: Path) -> dict[str, Any]:
    """One training run; its final generator (or the diverged state) is scored later."""
    overrides = [
        f"out_dir={json.dumps(str(out))}", f"train.seed={seed}", "train.resume=false",
        "gan.classifier_steps=0", "train.eval_every=0", "log.progress=false",
        f"train.cpu_threads={args.threads}", "log.plot=false",
    ]  # fmt: skip
    if args.gan_steps:
        overrides += [f"train.max_steps={args.gan_steps}", f"train.save_every={args.gan_steps}"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.n_critic and method != "nsgan":
        overrides.append(f"gan.n_critic={args.n_critic}")
    config = load_config(RECIPES / GAN_RECIPES[method], overrides, GANConfig)
    cpu0 = time.process_time()
    try:
        summary = train_gan(config)
        return {"model_dir": summary["model_dir"], "diverged": False,
                "cpu_s": time.process_time() - cpu0, "steps": summary["step"]}  # fmt: skip
    except TrainingDiverged as exc:
        print(f"{method} seed {seed}: diverged ({exc})")
        return {"model_dir": None, "diverged": True, "cpu_s": time.process_time() - cpu0}


def seed_mean(runs: list[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the seeds that have it (a diverged run has no accuracy)."""
    vals = [r[key] for r in runs if not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else NAN


def read_json_file(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json_file(path: Path, data: dict[str, Any]) -> None:
    from lmforge.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def mtime(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))


def rerun(args: argparse.Namespace) -> set[str]:
    return {x for x in (getattr(args, "rerun", "") or "").split(",") if x}


def gan_run_metrics(
    args: argparse.Namespace,
    method: str,
    seed: int,
    run_dir: Path,
    classifier: Any,
    eval_set: Any,
) -> dict[str, Any]:
    """Train one run and score its final generator (a diverged run: collapsed, no figures);
    the last sample grid is kept as ``final-grid.png``."""
    from lmforge.generative.gan_models import load_gan

    run = gan_run(args, method, seed, run_dir)
    if run["diverged"]:
        metrics: dict[str, Any] = {"diverged": True, "collapsed": True, "accuracy": NAN,
                                   "coverage": NAN, "diversity": NAN,
                                   "frechet_classifier": NAN}  # fmt: skip
    else:
        pair, _ = load_gan(run["model_dir"])
        metrics = evaluate_generator(pair.generator, classifier, eval_set,
                                     args.eval_samples, seed=1000 + seed)  # fmt: skip
        metrics["diverged"] = False
        grids = sorted((run_dir / "samples").glob("step-*.png"))
        if grids:
            shutil.copy(grids[-1], run_dir / "final-grid.png")
    metrics["cpu_s"] = run["cpu_s"]
    return metrics


def gan_section(args: argparse.Namespace) -> dict[str, Any]:
    cpu0 = time.process_time()
    torch.set_num_threads(args.threads)
    out = Path(args.out) / "gan"
    out.mkdir(parents=True, exist_ok=True)
    probe = load_config(RECIPES / GAN_RECIPES["wgan-gp"], [], GANConfig).gan
    train_set = load_image_dataset(probe.dataset, probe.image_size, probe.num_train,
                                   probe.data_seed, "train", probe.channels)  # fmt: skip
    eval_set = load_image_dataset(probe.dataset, probe.image_size, probe.num_eval,
                                  probe.data_seed, "test", probe.channels)  # fmt: skip
    clf_dir = out / "classifier"
    if (clf_dir / "classifier.json").is_file():
        classifier = load_classifier(clf_dir)
    else:
        with torch.random.fork_rng(devices=[]):
            classifier = train_classifier(train_set, steps=args.classifier_steps)
        classifier.save(clf_dir)
    real_acc = float(
        (classifier.predict(eval_set.images)["label"] == eval_set.labels).float().mean()
    )
    floor = classifier_frechet_distance(
        classifier, eval_set.images, train_set.images[: len(eval_set)]
    )
    print(f"evaluation classifier: accuracy on real test digits {real_acc:.3f}; "
          f"real-vs-real Fréchet floor {floor:.1f}")  # fmt: skip
    rows: dict[str, list[dict[str, Any]]] = {}
    settings = {"steps": args.gan_steps, "batch_size": args.batch_size, "n_critic": args.n_critic}
    for method in args.methods.split(","):
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            run_dir = out / f"{method}-seed{seed}"
            saved = read_json_file(run_dir / "eval.json")
            if saved is not None and saved.get("settings") == settings and "gan" not in rerun(args):
                metrics = saved["metrics"]
                print(f"{method} seed {seed}: reusing {run_dir / 'eval.json'} (written "
                      f"{mtime(run_dir / 'eval.json')}; not retrained)")  # fmt: skip
            else:
                metrics = gan_run_metrics(args, method, seed, run_dir, classifier, eval_set)
                write_json_file(run_dir / "eval.json", {"settings": settings, "metrics": metrics})
            grid = run_dir / "final-grid.png"
            if grid.is_file():
                shutil.copy(grid, out / f"grid-{method}-seed{seed}.png")
            rows.setdefault(method, []).append(metrics)
            print(f"{method} seed {seed}: accuracy {metrics['accuracy']:.3f}, coverage "
                  f"{metrics['coverage']:.2f}, diversity {metrics['diversity']:.2f}, Fréchet "
                  f"{metrics['frechet_classifier']:.1f}, collapsed {metrics['collapsed']}, "
                  f"{metrics['cpu_s']:.0f} CPU-s", flush=True)  # fmt: skip
    table = ["| method | accuracy | coverage | diversity | Fréchet (classifier) | collapsed seeds | CPU-s / run |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    summary: dict[str, Any] = {"gan_real_acc": real_acc, "gan_frechet_floor": floor}
    for method, runs in rows.items():
        avg = functools.partial(seed_mean, runs)
        collapsed = sum(bool(r["collapsed"]) for r in runs)
        table.append(
            f"| {method} | {avg('accuracy'):.3f} | {avg('coverage'):.2f} | {avg('diversity'):.2f} "
            f"| {avg('frechet_classifier'):.1f} | {collapsed}/{len(runs)} | {avg('cpu_s'):.0f} |"
        )
        key = method.replace("-", "")
        summary[f"{key}_acc"] = avg("accuracy")
        summary[f"{key}_collapse"] = collapsed / len(runs)
        summary[f"{key}_frechet"] = avg("frechet_classifier")
    summary["gan_cpu_min"] = sum(r["cpu_s"] for runs in rows.values() for r in runs) / 60
    text = "\n".join(table)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    (out / "result.json").write_text(json.dumps({"rows": rows, "summary": summary}, default=str))
    print(text)
    print(f"GAN section: {(time.process_time() - cpu0) / 60:.1f} CPU-min (this process); its "
          f"{sum(map(len, rows.values()))} runs took {summary['gan_cpu_min']:.1f} CPU-min")  # fmt: skip
    return summary


def peer_section(name: str, function: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """``bench/<name>.py``'s ``function(args)``, or None (said) when the file is missing."""
    here = Path(__file__).resolve().parent
    if not (here / f"{name}.py").is_file():
        print(f"section {name}: bench/{name}.py is missing; its figures are nan")
        return None
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    return getattr(importlib.import_module(name), function)(args)


SECTION_RESULTS = {"vq": "vq/result.json", "t2i": "t2i/result.json"}  # (GANs: per run)
SECTION_COST = {"gan": "gan_cpu_min", "vq": "vq_cpu_min", "t2i": "t2i_train_cpu_s"}


def section_cost(name: str, figures: dict[str, Any]) -> str:
    value = figures.get(SECTION_COST[name])
    if value is None:
        return "cost not recorded"
    minutes = value / 60 if SECTION_COST[name].endswith("_s") else value
    what = "training" if name == "t2i" else "in all"
    return f"{minutes:.1f} CPU-min {what} when it ran"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("gan", "vq", "t2i"), help="run one section")
    p.add_argument("--out", default="runs/bench-image-generation-2")
    p.add_argument("--rerun", default="", help="parts to measure again even when their "
                   "results exist: a comma list of gan, vq, t2i")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the sections' smaller budgets")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-start", type=int, default=0, help="first seed (runs split by seed)")
    p.add_argument("--methods", default="nsgan,wgan,wgan-gp")
    p.add_argument("--gan-steps", type=int, help="player updates per run (default: recipes')")
    p.add_argument("--batch-size", type=int, help="default: the recipes'")
    p.add_argument("--n-critic", type=int, help="wgan / wgan-gp critic steps (default: recipes' 5)")
    p.add_argument("--classifier-steps", type=int, default=300)
    p.add_argument("--eval-samples", type=int, default=500)
    args = p.parse_args()
    unknown = rerun(args) - {"gan", "vq", "t2i"}
    if unknown:
        p.error(f"--rerun {args.rerun}: unknown part(s) {', '.join(sorted(unknown))}")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results: dict[str, Any] = {}
    sections = {"gan": lambda: gan_section(args),
                "vq": lambda: peer_section("image_generation_2_vq", "vq_section", args),
                "t2i": lambda: peer_section("image_generation_2_t2i", "t2i_section", args)}  # fmt: skip
    for name, run in sections.items():
        if args.only and args.only != name:
            continue
        path = Path(args.out) / SECTION_RESULTS[name] if name in SECTION_RESULTS else None
        if path is not None and path.is_file() and name not in rerun(args):
            got = json.loads(path.read_text(encoding="utf-8"))
            print(f"section {name}: reusing {path} (written {mtime(path)}; "
                  f"{section_cost(name, got)}) — not retrained; --rerun {name} measures it again")  # fmt: skip
        else:
            start = time.perf_counter()
            got = run()
            print(f"section {name}: {time.perf_counter() - start:.0f} s wall")
            if got and path is not None:
                write_json_file(path, got)
        if got and name != "gan":
            print(f"section {name}: " + ", ".join(
                f"{k}={got[k]:.3f}" for k in ("vqgan_psnr", "vq_prior_acc", "vq_prior_acc_cfg",
                                             "t2i_prompt_acc", "t2i_prompt_acc_nocfg") if k in got))  # fmt: skip
        results.update(got or {})
    keys = ("wgangp_acc", "vqgan_psnr", "vq_prior_acc", "t2i_prompt_acc", "t2i_prompt_acc_nocfg")
    missing = [k for k in keys if k not in results]
    if missing:
        print(f"not measured in this run: {', '.join(missing)} (nan)")
    print(f"this invocation: {(time.process_time() - cpu0) / 60:.1f} CPU-min, "
          f"{time.perf_counter() - wall0:.0f} s wall")  # fmt: skip
    print("RESULT image_generation_2 " + " ".join(
        f"{k}={float(results.get(k, NAN)):.3f}" for k in keys))  # fmt: skip


if __name__ == "__main__":
    main()
