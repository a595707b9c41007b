"""`lmforge sft`: supervised fine-tuning of an HF-format model (`lmforge.train.sft.train_sft`).

lmforge sft --config recipes/sft-tiny.yaml --model runs/pretrain/model --data chat.jsonl
lmforge sft ... --peft lora --lora-r 16 --lora-targets q_proj,v_proj   # the adapter only
lmforge sft --model Qwen/Qwen2.5-0.5B --data chat.jsonl --print-config   # cached Hub id
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import (
    add_model_and_data_arguments,
    add_peft_arguments,
    add_recipe_arguments,
    model_folder,
    peft_settings,
    run_config,
    subparser,
)
from lmforge.train.sft import train_sft

EXAMPLES = (
    "  lmforge sft --config recipes/sft-tiny.yaml --model runs/pretrain-tiny/model "
    "--data chat.jsonl\n"
    "  lmforge sft --config recipes/sft-tiny.yaml --model ckpt/ --data a.jsonl b.parquet "
    "data.assistant_only=false\n"
    "  lmforge sft --model ckpt/ --data chat.jsonl --peft lora --lora-r 8 train.max_steps=50 "
    "--print-config\n"
    "  lmforge sft --model ckpt/ --data alpaca_data.json data.format=raw   # no chat template\n\n"
    "Without --config the built-in recipes/sft-tiny.yaml is used. --model may be a Hub id\n"
    "(Org/Name) already in the local Hugging Face cache.\n"
    "Data: .jsonl, .parquet or .json (one JSON array of records, like Alpaca's original\n"
    "file) with chat 'messages', 'prompt'/'completion' or Alpaca 'instruction'/'input'/\n"
    "'output' records. By default (data.format=auto) all three are rendered through the\n"
    "model folder's chat template (prompt / instruction + input as the user turn, completion\n"
    "/ output as the assistant turn) and trained on the assistant part, so chat, serve and\n"
    "the web page see what training saw. data.format=raw keeps prompt/completion and Alpaca\n"
    "as plain text (<bos> prompt completion <eos>, Alpaca's original prompt) for base models\n"
    "used through /v1/completions; 'text' records (and .txt files) train on every token."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "sft",
        "supervised fine-tuning of an HF-format model on chat / instruction data",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(p, "training data (data.paths)")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = run_config(args)
    if not config.model.init_from:
        raise ValueError("sft needs a model: --model DIR (or model.init_from in the config)")
    model_folder(config.model.init_from)  # a clean error for a bad folder, before any work
    train_sft(config, peft=peft_settings(args))
    return 0
