"""`lmforge vqgan train|prior|sample`: a VQGAN (VQ autoencoder + PatchGAN, perceptual loss on
the evaluation classifier's features) trained on an offline image dataset
(`lmforge.generative.vqgan_training.train_vqgan`), a transformer prior over its codes — an
lmforge `CausalLM`, trained with the one Trainer (`lmforge.generative.code_prior_training`)
— and samples from the prior decoded to pixels (`lmforge.generative.code_prior`).

    lmforge vqgan train --config recipes/vqgan-digits.yaml
    lmforge vqgan prior --vqgan runs/vqgan-digits/model --config recipes/vqgan-prior-digits.yaml
    lmforge vqgan sample --prior runs/vqgan-prior-digits/model --class 3 --num 16 --top-k 20 \
        --cfg 2 --out threes.png
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from lmforge.commands.common import CommandError, add_recipe_arguments, run_config, subparser


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("vqgan", help="train VQGANs and transformer priors over codes")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = subparser(
        actions,
        "train",
        "train a VQGAN (VQ autoencoder, perceptual loss, patch discriminator) on images",
        "  lmforge vqgan train --config recipes/vqgan-digits.yaml\n"
        "  lmforge vqgan train --config recipes/vqgan-digits.yaml vqgan.disc_weight=0  # VQ-VAE",
    )
    add_recipe_arguments(t, "vqgan")
    t.set_defaults(run=run_train, command="vqgan train")
    p = subparser(
        actions,
        "prior",
        "train a class-conditional transformer prior (an lmforge LM) over a VQGAN's codes",
        "  lmforge vqgan prior --vqgan runs/vqgan-digits/model --config "
        "recipes/vqgan-prior-digits.yaml\n"
        "  lmforge vqgan prior --vqgan DIR --out runs/prior model.preset=demo",
    )
    p.add_argument("--vqgan", required=True, metavar="DIR", help="a trained VQGAN folder")
    add_recipe_arguments(p, "vqgan-prior")
    p.set_defaults(run=run_prior, command="vqgan prior")
    s = subparser(
        actions,
        "sample",
        "sample codes from a prior with the inference engine and decode them to a PNG grid",
        "  lmforge vqgan sample --prior runs/vqgan-prior-digits/model --class 3 --num 16\n"
        "  lmforge vqgan sample --prior DIR --top-k 20 --top-p 0.9 --cfg 2.0 --out grid.png\n"
        "  lmforge vqgan sample --prior runs/caption-prior/model --caption 'the digit 3' --cfg 2",
    )
    s.add_argument("--prior", required=True, metavar="DIR", help="a trained prior folder")
    s.add_argument(
        "--class", dest="class_id", metavar="ID", help="class id or name (default: every class)"
    )
    s.add_argument(
        "--caption", metavar="TEXT",
        help="the caption, for a caption prior (one trained with prior.condition=caption)",
    )  # fmt: skip
    s.add_argument("--num", type=int, default=16, metavar="N", help="images (default: 16)")
    s.add_argument("--temperature", type=float, default=1.0, help="default: 1")
    s.add_argument("--top-k", type=int, default=0, metavar="K", help="default: 0 (off)")
    s.add_argument("--top-p", type=float, default=1.0, metavar="P", help="default: 1 (off)")
    s.add_argument(
        "--cfg", type=float, default=1.0, metavar="W",
        help="classifier-free guidance scale (default: 1, no guidance: the engine samples)",
    )  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", metavar="PNG", help="default: samples.png")
    s.set_defaults(run=run_sample, command="vqgan sample")


def run_train(args: argparse.Namespace) -> int:
    from lmforge.generative.vqgan_training import VQGANRunConfig, train_vqgan

    train_vqgan(run_config(args, VQGANRunConfig))
    return 0


def run_prior(args: argparse.Namespace) -> int:
    from lmforge.generative.code_prior_training import PriorRunConfig, train_code_prior
    from lmforge.generative.vqgan import is_vqgan_folder

    config = run_config(args, PriorRunConfig, [f"prior.vqgan={json.dumps(args.vqgan)}"])
    if not is_vqgan_folder(args.vqgan):
        raise CommandError(
            f"--vqgan {args.vqgan}: not a VQGAN folder (lmforge vqgan train's model/)"
        )
    train_code_prior(config)
    return 0


def class_labels(class_id: str | None, names: list[str], num: int) -> torch.Tensor:
    """``--class`` (an id or a name) repeated, else every class in turn."""
    if class_id is None:
        return torch.arange(num) % len(names)
    if class_id in names:
        index = names.index(class_id)
    elif class_id.isdigit() and int(class_id) < len(names):
        index = int(class_id)
    else:
        raise CommandError(f"--class {class_id}: expected an id < {len(names)} or one of {names}")
    return torch.full((num,), index)


def prior_conditions(args: argparse.Namespace, info: dict[str, Any]) -> torch.Tensor:
    """Class labels for a class prior (``--class``); caption ids for a caption prior
    (``--caption``, required: captions are the dataset's own words)."""
    from lmforge.generative.code_prior import caption_conditions

    if "caption_tokenizer" not in info:
        if args.caption is not None:
            raise CommandError(
                f"--caption: {args.prior} is a class prior (trained with prior.condition=class);"
                " use --class"
            )
        return class_labels(args.class_id, info["class_names"], args.num)
    if args.caption is None or args.class_id is not None:
        raise CommandError(
            f"{args.prior} is a caption prior (prior.condition=caption): give --caption TEXT, "
            "not --class"
        )
    try:
        return caption_conditions(info, [args.caption] * args.num)
    except ValueError as e:
        raise CommandError(f"--caption {args.caption!r}: {e}") from None


def run_sample(args: argparse.Namespace) -> int:
    from lmforge.generative.code_prior import decode_prior_samples, load_prior, sample_codes
    from lmforge.vision.grid import save_grid

    if args.num < 1:
        raise CommandError("--num must be ≥ 1")
    model, vqgan, layout, info = load_prior(args.prior)
    conditions = prior_conditions(args, info)
    codes = sample_codes(
        model, layout, conditions, args.num, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, cfg_scale=args.cfg, seed=args.seed,
    )  # fmt: skip
    path = save_grid(decode_prior_samples(vqgan, codes), args.out)
    how = "engine" if args.cfg == 1.0 else f"guidance {args.cfg:g}"
    print(f"{args.num} samples ({layout.length} codes each, {how}) -> {path}")
    return 0
