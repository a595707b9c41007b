"""`lmforge gan train|sample`: a GAN (``gan.method``: gan | nsgan | wgan | wgan-gp; DCGAN-style
networks, class-conditional, optional spectral norm) trained through the one Trainer
(`lmforge.generative.gan_training.train_gan`), and sampled into a PNG grid.

    lmforge gan train --config recipes/gan-wgangp-digits.yaml
    lmforge gan train --config recipes/gan-nsgan-digits.yaml gan.method=gan   # minimax G loss
    lmforge gan sample --model runs/gan-wgangp-digits/model --class 7 --num 16 --out sevens.png
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from lmforge.commands.common import CommandError, add_recipe_arguments, run_config, subparser


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("gan", help="train and sample GANs (GAN, WGAN, WGAN-GP)")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "train",
        "train a GAN on an offline image dataset through the one Trainer",
        "  lmforge gan train                                            # recipes/gan-tiny.yaml\n"
        "  lmforge gan train --config recipes/gan-nsgan-digits.yaml     # non-saturating GAN\n"
        "  lmforge gan train --config recipes/gan-nsgan-digits.yaml gan.method=gan  # minimax\n"
        "  lmforge gan train --config recipes/gan-wgan-digits.yaml      # clipping + RMSProp\n"
        "  lmforge gan train --config recipes/gan-wgangp-digits.yaml    # gradient penalty\n"
        "  lmforge gan train --config recipes/gan-nsgan-digits.yaml gan.spectral_norm=true",
    )
    add_recipe_arguments(p, "gan")
    p.set_defaults(run=run_train, command="gan train")
    s = subparser(
        actions,
        "sample",
        "sample a trained GAN's generator into a PNG grid",
        "  lmforge gan sample --model runs/gan-wgangp-digits/model --num 64\n"
        "  lmforge gan sample --model DIR --class 3 --num 16 --seed 1 --out threes.png",
    )
    s.add_argument("--model", required=True, metavar="DIR", help="a trained model (or checkpoint)")
    s.add_argument(
        "--class", dest="class_id", metavar="ID",
        help="class id or name (conditional models; default: every class in turn)",
    )  # fmt: skip
    s.add_argument("--num", type=int, default=16, metavar="N", help="images (default: 16)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", metavar="PNG", help="default: samples.png")
    s.set_defaults(run=run_sample, command="gan sample")


def run_train(args: argparse.Namespace) -> int:
    from lmforge.generative.gan_training import GANConfig, train_gan

    train_gan(run_config(args, GANConfig))
    return 0


def class_labels(class_id: str | None, class_names: list[str], num: int) -> torch.Tensor:
    """``--class`` (an id or a name) as ``num`` labels; every class in turn without it."""
    if class_id is None:
        return torch.arange(num) % len(class_names)
    cid: Any = class_names.index(class_id) if class_id in class_names else class_id
    try:
        cid = int(cid)
    except ValueError:
        raise CommandError(f"--class {class_id!r}: not a class of {class_names}") from None
    if not 0 <= cid < len(class_names):
        raise CommandError(f"--class {cid}: expected 0..{len(class_names) - 1}")
    return torch.full((num,), cid)


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.generative.gan_diagnostics import generate
    from lmforge.generative.gan_models import load_gan
    from lmforge.vision.grid import save_grid

    if args.num < 1:
        raise CommandError("--num must be ≥ 1")
    pair, meta = load_gan(args.model)
    labels = None
    if pair.config.conditional:
        names = meta.get("class_names") or [str(i) for i in range(pair.config.num_classes)]
        labels = class_labels(args.class_id, names, args.num)
    elif args.class_id is not None:
        raise CommandError(f"{args.model}: an unconditional GAN takes no --class")
    images, _ = generate(pair.generator, args.num, args.seed, labels)
    path = save_grid(images, args.out)
    print(f"{args.num} samples ({meta.get('method', 'gan')} generator) -> {path}")
    return 0
