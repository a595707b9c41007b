"""`lmforge diffusion train|reflow|sample`: a denoiser (UNet or DiT; ε / v / x₀ / flow
target) trained on an offline image dataset (`lmforge.diffusion.training.train_diffusion`),
and sampled with any scheduler, with classifier-free guidance (`lmforge.diffusion.sampling`);
``diffusion.method: nice | realnvp`` trains a normalizing flow instead
(`lmforge.generative.flow_training.train_flow`); ``reflow`` straightens a rectified-flow
model on its own couplings (one-step sampling after it).

    lmforge diffusion train --config recipes/diffusion-digits.yaml
    lmforge diffusion sample --model runs/diffusion-digits/model --sampler ddim --steps 50 \
        --class 3 --cfg 3.0 --num 16 --out digits3.png
    lmforge diffusion train --config recipes/realnvp-digits.yaml
    lmforge diffusion reflow --model runs/flow-digits/model
    lmforge diffusion sample --model runs/reflow-digits/model --sampler flow --steps 1
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from lmforge.commands.common import CommandError, add_recipe_arguments, run_config, subparser

SAMPLERS = ("ddpm", "ddim", "euler", "dpm++", "flow")
REFLOW_RECIPE = "recipes/flow-reflow-digits.yaml"


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("diffusion", help="train and sample image denoisers")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "train",
        "train a denoiser on an offline image dataset through the one Trainer",
        "  lmforge diffusion train --config recipes/diffusion-digits.yaml\n"
        "  lmforge diffusion train --config recipes/diffusion-tiny.yaml diffusion.target=v_prediction\n"
        "  lmforge diffusion train --config recipes/flow-digits.yaml     # rectified flow\n"
        "  lmforge diffusion train --config recipes/realnvp-digits.yaml  # normalizing flow\n"
        "  lmforge diffusion train --config recipes/nice-digits.yaml",
    )
    add_recipe_arguments(p, "diffusion")
    p.set_defaults(run=run_train, command="diffusion train")
    r = subparser(
        actions,
        "reflow",
        "reflow a rectified-flow model: train on its own noise → sample couplings",
        "  lmforge diffusion reflow --model runs/flow-digits/model   # recipes/flow-reflow-digits.yaml\n"
        "  lmforge diffusion reflow --model DIR --out runs/reflow diffusion.reflow_pairs=8000",
    )
    r.add_argument(
        "--model", required=True, dest="reflow_from", metavar="DIR",
        help="a trained flow-target model folder (diffusion.reflow_from)",
    )  # fmt: skip
    add_recipe_arguments(r, "diffusion")
    for action in r._actions:
        if action.dest == "config":
            action.help = f"YAML recipe (default: the built-in {REFLOW_RECIPE})"
    r.set_defaults(run=run_reflow, command="diffusion reflow", config=REFLOW_RECIPE)
    s = subparser(
        actions,
        "sample",
        "sample a trained denoiser (or normalizing flow) into a PNG grid",
        "  lmforge diffusion sample --model runs/diffusion-digits/model --sampler ddim --steps 50\n"
        "  lmforge diffusion sample --model DIR --sampler dpm++ --steps 20 --class 3 --cfg 3.0\n"
        "  lmforge diffusion sample --model runs/reflow-digits/model --sampler flow --steps 1\n"
        "  lmforge diffusion sample --model runs/realnvp-digits/model --num 64  # exact inverse",
    )
    s.add_argument("--model", required=True, metavar="DIR", help="a trained model folder")
    s.add_argument(
        "--sampler", choices=SAMPLERS, help="default: ddim (flow for a flow-target model)"
    )
    s.add_argument("--steps", type=int, metavar="N", help="default: 50")
    s.add_argument(
        "--class",
        dest="class_id",
        metavar="ID",
        help="class id or name (default: every class in turn)",
    )
    s.add_argument(
        "--cfg",
        type=float,
        default=1.0,
        metavar="W",
        help="classifier-free guidance scale (default: 1, no guidance)",
    )
    s.add_argument("--num", type=int, default=16, metavar="N", help="images (default: 16)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM η (default: 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", metavar="PNG", help="default: samples.png")
    s.set_defaults(run=run_sample, command="diffusion sample")


def run_train(args: argparse.Namespace) -> int:
    from lmforge.diffusion.training import DiffusionConfig, train_diffusion

    config = run_config(args, DiffusionConfig)
    if config.diffusion.method in ("nice", "realnvp"):
        from lmforge.generative.flow_training import train_flow

        train_flow(config)
    else:
        train_diffusion(config)
    return 0


def run_reflow(args: argparse.Namespace) -> int:
    from lmforge.diffusion.training import DiffusionConfig, train_diffusion

    extra = [f"diffusion.reflow_from={json.dumps(args.reflow_from)}", "diffusion.method=denoiser"]
    train_diffusion(run_config(args, DiffusionConfig, extra))
    return 0


def run_sample_flow(args: argparse.Namespace) -> int:
    from lmforge.generative.flow_training import load_flow, sample_flow
    from lmforge.vision.grid import save_grid

    if args.class_id is not None or args.cfg != 1.0:
        raise CommandError(f"{args.model}: a normalizing flow is unconditional (no --class/--cfg)")
    if args.sampler is not None or args.steps is not None:
        raise CommandError(
            f"{args.model}: a normalizing flow samples by its exact inverse (no --sampler/--steps)"
        )
    model, _ = load_flow(args.model)
    path = save_grid(sample_flow(model, args.num, args.seed), args.out)
    print(f"{args.num} samples ({model.kind}, exact inverse) -> {path}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.diffusion.denoiser_io import load_denoiser
    from lmforge.diffusion.sampling import sample_images
    from lmforge.diffusion.schedulers import load_scheduler
    from lmforge.generative.flow_io import is_flow_folder
    from lmforge.vision.grid import save_grid

    if (args.steps is not None and args.steps < 1) or args.num < 1:
        raise CommandError("--steps and --num must be ≥ 1")
    if is_flow_folder(args.model):
        return run_sample_flow(args)
    d = load_denoiser(args.model)
    args.sampler = args.sampler or ("flow" if d.target == "flow" else "ddim")
    args.steps = args.steps or 50
    if (d.target == "flow") != (args.sampler == "flow"):
        raise CommandError(
            f"{args.model}: a {d.target!r} model samples with "
            + ("--sampler flow" if d.target == "flow" else "ddpm, ddim, euler or dpm++")
        )
    labels = None
    if d.conditional:
        if args.class_id is None:
            labels = torch.arange(args.num) % len(d.class_names)
        else:
            cid = args.class_id
            if cid in d.class_names:
                cid = d.class_names.index(cid)
            try:
                cid = int(cid)
            except ValueError:
                msg = f"--class {args.class_id!r}: not a class of {d.class_names}"
                raise CommandError(msg) from None
            if not 0 <= cid < len(d.class_names):
                raise CommandError(f"--class {cid}: expected 0..{len(d.class_names) - 1}")
            labels = torch.full((args.num,), cid)
    elif args.class_id is not None or args.cfg != 1.0:
        raise CommandError(f"{args.model}: an unconditional model takes no --class / --cfg")
    kwargs = {"eta": args.eta} if args.sampler == "ddim" else {}
    sched = load_scheduler(args.sampler, base=d.scheduler, **kwargs)
    images = sample_images(
        d.model,
        sched,
        args.steps,
        labels=labels,
        num=args.num,
        shape=d.image_shape,
        guidance_scale=args.cfg,
        generator=torch.Generator().manual_seed(args.seed),
    )
    path = save_grid(images, args.out)
    print(f"{args.num} samples ({args.sampler}, {args.steps} steps) -> {path}")
    return 0
