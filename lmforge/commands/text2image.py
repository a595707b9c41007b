"""`lmforge text2image train|sample`: latent text-to-image in miniature — a KL autoencoder, a
text encoder (an lmforge LM body) and a cross-attention DiT trained through the one Trainer
(`lmforge.diffusion.text2image.train_text2image`), sampled from a prompt with any ε sampler
and classifier-free guidance (`lmforge.diffusion.text2image_pipeline`).

    lmforge text2image train --config recipes/text2image-shapes.yaml
    lmforge text2image sample --model runs/text2image-shapes/model \
        --prompt "a large blue circle at the bottom right" --steps 30 --cfg 4 --num 8
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import CommandError, add_recipe_arguments, run_config, subparser

SAMPLERS = ("ddpm", "ddim", "euler", "dpm++")


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("text2image", help="latent text-to-image: train and sample")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "train",
        "train the KL autoencoder, then text encoder + cross-attention DiT on its latents",
        "  lmforge text2image train --config recipes/text2image-shapes.yaml\n"
        "  lmforge text2image train --config recipes/text2image-tiny.yaml train.max_steps=50",
    )
    add_recipe_arguments(p, "text2image")
    p.set_defaults(run=run_train, command="text2image train")
    s = subparser(
        actions,
        "sample",
        "images for a prompt into a PNG grid",
        '  lmforge text2image sample --model runs/text2image-shapes/model --prompt "a large blue '
        'circle at the bottom right" --steps 30 --cfg 4\n'
        '  lmforge text2image sample --model DIR --prompt "a small red cross at the top" '
        "--sampler dpm++ --steps 20 --num 16",
    )
    s.add_argument("--model", required=True, metavar="DIR", help="a trained text2image folder")
    s.add_argument("--prompt", required=True, help="a caption in the training vocabulary")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default: ddim")
    s.add_argument("--steps", type=int, default=30, metavar="N", help="default: 30")
    s.add_argument(
        "--cfg", type=float, default=4.0, metavar="W",
        help="classifier-free guidance scale (default: 4; 1 = no guidance)",
    )  # fmt: skip
    s.add_argument("--num", type=int, default=8, metavar="N", help="images (default: 8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="text2image.png", metavar="PNG", help="default: text2image.png")
    s.set_defaults(run=run_sample, command="text2image sample")


def run_train(args: argparse.Namespace) -> int:
    from lmforge.diffusion.text2image import Text2ImageConfig, train_text2image

    train_text2image(run_config(args, Text2ImageConfig))
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.diffusion.text2image_pipeline import (
        is_text2image_folder,
        load_text2image,
        sample_text2image,
    )
    from lmforge.vision.grid import save_grid

    if args.steps < 1 or args.num < 1:
        raise CommandError("--steps and --num must be ≥ 1")
    if not is_text2image_folder(args.model):
        raise CommandError(f"{args.model}: not a text2image model folder (text2image.json)")
    pipe = load_text2image(args.model)
    images = sample_text2image(
        pipe, [args.prompt] * args.num, args.sampler, args.steps, args.cfg, seed=args.seed
    )
    path = save_grid(images, args.out)
    print(
        f"{args.num} images for {args.prompt!r} ({args.sampler}, {args.steps} steps, cfg {args.cfg}) -> {path}"
    )
    return 0
