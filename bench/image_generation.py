"""Image generation on the offline 16×16 rendered digits: one class-conditional UNet
(ε-prediction, classifier-free guidance) trained once and sampled with DDPM (1000, 100
steps), DDIM (50, 20, 10), DPM-Solver++ 2M (20, 10) and Euler (20); a rectified-flow model
(same UNet, velocity target) with Euler (50, 10) and, after reflow, one step; NICE and
RealNVP by maximum likelihood; the diffusion model's bits/dim through the probability-flow
ODE (VP SDE equivalent of its linear β table, Dormand–Prince, Hutchinson trace).

Columns: conditional accuracy (the evaluation classifier, trained here on real digits, on
samples asked for class k), Fréchet distance in that classifier's feature space (not
Inception FID; the real-vs-real row is the floor), bits/dim where defined, sampling seconds
per image. Every row's grid is written to ``<out>/grids/<row>.png``; the table to
``<out>/table.md``. Every model is trained by the real command line, in-process:
``lmforge diffusion train --config recipes/{diffusion,flow,nice,realnvp}-digits.yaml`` and
``lmforge diffusion reflow --model <out>/flow/model`` (run folders under ``<out>``); the
bench only sets the step budgets and measures the saved model folders.

    nice -n 10 python bench/image_generation.py                 # the issue's sizes
    nice -n 10 python bench/image_generation.py --quick         # a smaller budget

Last line: ``RESULT image_generation ddim50_acc=<a> ddpm1000_acc=<b> rf1_acc=<c>
realnvp_bpd=<d> nice_bpd=<e> pfode_bpd=<f>``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmforge.cli import main as lmforge_main
from lmforge.diffusion.denoiser_io import load_denoiser
from lmforge.diffusion.pf_ode import ode_likelihood
from lmforge.diffusion.rectified_flow import flow_trajectory, straightness
from lmforge.diffusion.sde import VPSDE
from lmforge.diffusion.training import evaluate_samples
from lmforge.generative.flow_training import BIN_WIDTH, flow_bits_per_dim, load_flow, sample_flow
from lmforge.vision.classifier import train_classifier
from lmforge.vision.datasets import load_image_dataset
from lmforge.vision.grid import save_grid
from lmforge.vision.metrics import bits_per_dim, classifier_frechet_distance

RECIPES = Path(__file__).resolve().parents[1] / "lmforge" / "recipes"


def sizes(quick: bool, smoke: bool = False) -> dict:
    if smoke:  # a crash test of the script, not a measurement (sampler steps capped at 3)
        return dict(
            train=200,
            diff_steps=2,
            flow_steps=2,
            reflow_pairs=20,
            reflow_steps=2,
            flow_like_steps=3,
            n_eval=10,
            n_ddpm=10,
            n_ode=1,
            clf_steps=5,
            cap=3,
        )
    if quick:  # what a shared 2-core CPU affords in half an hour (targets need the full size)
        return dict(
            train=3000,
            diff_steps=400,
            flow_steps=400,
            reflow_pairs=500,
            reflow_steps=150,
            flow_like_steps=300,
            n_eval=50,
            n_ddpm=20,
            n_ode=4,
            clf_steps=300,
        )
    # ≈ 20 CPU-minutes of training at the 0.63 s per UNet step measured on the 2-core box
    return dict(
        train=6000,
        diff_steps=1000,
        flow_steps=800,
        reflow_pairs=2000,
        reflow_steps=300,
        flow_like_steps=1500,
        n_eval=200,
        n_ddpm=200,
        n_ode=32,
        clf_steps=400,
    )


def lmforge(*argv: str) -> None:
    """Run an ``lmforge`` command line in-process (the real command path)."""
    code = lmforge_main(list(argv))
    if code:
        raise SystemExit(f"lmforge {' '.join(argv)}: exit status {code}")


def train_command(
    action: str, recipe: str, out: Path, steps: int, extra: list[str], *more: str
) -> None:
    """``lmforge diffusion <action> --config recipes/<recipe> --out <out>`` with the bench's
    step budget (evaluation halfway and at the end; no per-run classifier)."""
    lmforge(
        "diffusion",
        action,
        *more,
        "--config",
        str(RECIPES / recipe),
        "--out",
        str(out),
        f"train.max_steps={steps}",
        "diffusion.classifier_steps=0",
        f"train.eval_every={max(steps // 2, 1)}",
        f"train.save_every={steps}",
        "log.progress=false",
        f"train.cpu_threads={torch.get_num_threads()}",
        *extra,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-image-generation")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = sizes(args.quick, args.smoke)
    out = Path(args.out)
    grids = out / "grids"
    t_start = time.perf_counter()
    extra = ["diffusion.samples_per_class=1", "diffusion.sample_steps=2"] if args.smoke else []
    ode_steps = min(20, s.get("cap", 20))

    train = load_image_dataset("digits", 16, s["train"], 0, "train")
    test = load_image_dataset("digits", 16, 1000, 0, "test")
    other = load_image_dataset("digits", 16, 1000, 1, "test")
    clf = train_classifier(train, steps=s["clf_steps"])
    clf.save(out / "classifier")
    real_acc = float((clf.predict(test.images)["label"] == test.labels).float().mean())
    rows = [
        (
            "real vs real (floor)",
            real_acc,
            classifier_frechet_distance(clf, test.images, other.images),
            None,
            None,
        )
    ]
    save_grid(test.images[:80], grids / "real.png", nrow=10)
    print(f"classifier: test accuracy {real_acc:.3f}", flush=True)

    def score(name: str, den, sampler: str, steps: int, n: int) -> tuple[float, float]:
        steps = min(steps, s.get("cap", steps))
        images, labels, m = evaluate_samples(den, sampler, steps, clf, test, n, args.cfg, seed=1)
        save_grid(
            images[torch.argsort(labels * 1000 + torch.arange(n))][: 10 * (n // 10)],
            grids / f"{name}.png",
            nrow=n // 10,
        )
        rows.append(
            (name, m.get("cond_accuracy"), m["frechet_classifier"], None, m["seconds_per_image"])
        )
        print(f"{name}: {m}", flush=True)
        return m.get("cond_accuracy", float("nan")), m["frechet_classifier"]

    # ---- the diffusion model
    t0 = time.perf_counter()
    data = [f"diffusion.num_train={s['train']}"]
    train_command(
        "train", "diffusion-digits.yaml", out / "diffusion", s["diff_steps"], data + extra
    )
    train_time = {"diffusion": time.perf_counter() - t0}
    den = load_denoiser(out / "diffusion" / "model")
    acc = {}
    for sampler, steps in [
        ("ddim", 50),
        ("ddim", 20),
        ("ddim", 10),
        ("dpm++", 20),
        ("dpm++", 10),
        ("euler", 20),
        ("ddpm", 100),
        ("ddpm", 1000),
    ]:
        if args.smoke and f"{sampler}{steps}" not in ("ddim50", "ddpm1000"):
            continue  # the smoke test runs the rows the RESULT line needs
        n = s["n_ddpm"] if sampler == "ddpm" else s["n_eval"]
        acc[f"{sampler}{steps}"] = score(f"{sampler}-{steps}", den, sampler, steps, n)[0]

    # PF-ODE bits/dim: the VP SDE with β(t) = 0.1 + 19.9 t is the T → ∞ limit of the linear
    # 1e-4..0.02 table over T = 1000 steps; score = −ε(x, 999 t) / s(t).
    sde = VPSDE(0.1, 20.0)
    model = den.model.double()

    def vp_score(x, t):
        _, std = sde.marginal(t)
        eps = model(x, t * 999, None)  # unconditional ("no class") density
        return -eps / std.view(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    xs = test.images[: s["n_ode"]].double()
    xs = xs + BIN_WIDTH * torch.rand(xs.shape, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    tol = 1e-2 if args.smoke else 1e-4
    logp, _, nfe = ode_likelihood(
        vp_score, sde, xs, eps=1e-3 if args.smoke else 1e-5, rtol=tol, atol=tol, generator=g
    )
    pfode_bpd = bits_per_dim(-logp, 256, BIN_WIDTH)
    rows.append(
        (
            "diffusion, PF-ODE likelihood",
            None,
            None,
            pfode_bpd,
            (time.perf_counter() - t0) / len(xs),
        )
    )
    print(f"pf-ode: {pfode_bpd:.3f} bits/dim ({nfe} evaluations)", flush=True)
    den.model.float()

    # ---- rectified flow, then reflow and one step
    t0 = time.perf_counter()
    train_command("train", "flow-digits.yaml", out / "flow", s["flow_steps"], data + extra)
    train_time["flow"] = time.perf_counter() - t0
    flow = load_denoiser(out / "flow" / "model")
    score("rf-euler-50", flow, "flow", 50, s["n_eval"])
    score("rf-euler-10", flow, "flow", 10, s["n_eval"])
    rf1_before = score("rf-euler-1 (before reflow)", flow, "flow", 1, s["n_eval"])[0]
    z = torch.randn((64, 1, 16, 16), generator=torch.Generator().manual_seed(7))
    zlabels = torch.arange(64) % 10
    x, vs = flow_trajectory(flow.model, z, ode_steps, zlabels, args.cfg)
    s_before = straightness(z, x, vs)
    t0 = time.perf_counter()
    train_command(
        "reflow",
        "flow-reflow-digits.yaml",
        out / "reflow",
        s["reflow_steps"],
        [
            f"diffusion.reflow_pairs={s['reflow_pairs']}",
            f"diffusion.reflow_steps={ode_steps}",
            f"diffusion.reflow_guidance={args.cfg}",
            "optim.lr=3e-4",
            "optim.warmup_steps=20",
            *extra,
        ],
        "--model",
        str(out / "flow" / "model"),
    )
    train_time["reflow"] = time.perf_counter() - t0
    reflowed = load_denoiser(out / "reflow" / "model")
    x, vs = flow_trajectory(reflowed.model, z, ode_steps, zlabels, 1.0)
    s_after = straightness(z, x, vs)
    rf1 = score("rf-reflow-1", reflowed, "flow", 1, s["n_eval"])[0]
    print(f"straightness before reflow {s_before:.4f}, after {s_after:.4f}", flush=True)

    # ---- normalizing flows (``lmforge diffusion train`` with diffusion.method=nice|realnvp)
    bpd = {}
    for name, recipe, net_keys in [
        (
            "nice",
            "nice-digits.yaml",
            ["diffusion.nice.hidden=512", "diffusion.nice.hidden_layers=4"],
        ),
        ("realnvp", "realnvp-digits.yaml", ["diffusion.realnvp.hidden=64"]),
    ]:
        t0 = time.perf_counter()
        train_command(
            "train",
            recipe,
            out / name,
            s["flow_like_steps"],
            [*data, *net_keys, "optim.grad_clip=10"],
        )
        train_time[name] = time.perf_counter() - t0
        net, _ = load_flow(out / name / "model")
        bpd[name] = flow_bits_per_dim(net, test.images)
        t0 = time.perf_counter()
        imgs = sample_flow(net, s["n_eval"], seed=0)
        dt = (time.perf_counter() - t0) / s["n_eval"]
        save_grid(imgs[:80], grids / f"{name}.png", nrow=10)
        rows.append(
            (name, None, classifier_frechet_distance(clf, test.images, imgs), bpd[name], dt)
        )
        print(f"{name}: {bpd[name]:.3f} bits/dim", flush=True)

    lines = [
        "| model / sampler | cond. accuracy | Fréchet (classifier feats) | bits/dim | s/image |",
        "|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for name, a, fd, b, sec in rows:
        lines.append(
            f"| {name} | {fmt(a, '.3f')} | {fmt(fd, '.2f')} | {fmt(b, '.3f')} | {fmt(sec, '.4f')} |"
        )
    lines.append("")
    lines.append(
        f"straightness (rectified flow, {ode_steps} Euler steps): {s_before:.4f} → {s_after:.4f} "
        f"after reflow; rf 1-step accuracy {rf1_before:.3f} → {rf1:.3f}"
    )
    lines.append(
        "training seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in train_time.items())
        + f"; total {time.perf_counter() - t_start:.0f} s"
    )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "result.json").write_text(json.dumps({"rows": rows, "train_s": train_time}, default=str))
    print(table)
    print(
        f"RESULT image_generation ddim50_acc={acc['ddim50']:.3f} ddpm1000_acc={acc['ddpm1000']:.3f} "
        f"rf1_acc={rf1:.3f} realnvp_bpd={bpd['realnvp']:.3f} nice_bpd={bpd['nice']:.3f} "
        f"pfode_bpd={pfode_bpd:.3f}"
    )


if __name__ == "__main__":
    main()
