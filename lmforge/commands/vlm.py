"""`lmforge vlm sft`: multimodal SFT of a vision-language model on synthetic visual questions
(`lmforge.train.vlm_sft.train_vlm_sft`), from scratch or from a ``qwen2_vl`` folder.

lmforge vlm sft --config recipes/vlm-tiny.yaml
lmforge vlm sft --config recipes/vlm-projector.yaml --model runs/vlm-tiny/model
lmforge vlm sft --model runs/vlm-tiny/model --peft lora vlm.tasks=[colour,count]
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import (
    add_peft_arguments,
    add_recipe_arguments,
    model_folder,
    peft_settings,
    run_config,
    subparser,
)
from lmforge.train.vlm_sft import VLMRunConfig, train_vlm_sft

EXAMPLES = (
    "  lmforge vlm sft --config recipes/vlm-tiny.yaml                 # a tiny VLM from scratch\n"
    "  lmforge vlm sft --config recipes/vlm-projector.yaml --model runs/vlm-tiny/model\n"
    "  lmforge vlm sft --model runs/vlm-tiny/model vlm.stage=joint --peft lora --lora-r 8\n\n"
    "Without --config the built-in recipes/vlm-tiny.yaml is used. Tasks (vlm.tasks): colour,\n"
    "shape, position, count, ocr, compare — images drawn offline, answers exact by\n"
    "construction; held-out accuracy per task is printed and written to\n"
    "heldout_accuracy.json. vlm.stage=projector trains only the patch merger / projector.\n"
    "The model folder is an HF qwen2_vl checkpoint (transformers' Qwen2VLForConditionalGeneration)."
)


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("vlm", help="train vision-language models")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "sft",
        "multimodal SFT (packed image-text examples, loss on answers) through the one Trainer",
        EXAMPLES,
    )
    add_recipe_arguments(p, "vlm")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="a qwen2_vl checkpoint folder to start from (model.init_from)",
    )
    add_peft_arguments(p)
    p.set_defaults(run=run, command="vlm sft")


def run(args: argparse.Namespace) -> int:
    config = run_config(args, VLMRunConfig)
    if config.model.init_from:
        model_folder(config.model.init_from)  # a clean error for a bad folder, before any work
    train_vlm_sft(config, peft=peft_settings(args))
    return 0
