"""Supervised fine-tuning from a `RunConfig`: an HF-format model (``model.init_from``) on
chat / instruction data, packed, through the one `Trainer` (``lmforge sft``).

    config = load_config("recipes/sft-tiny.yaml", ['model.init_from="ckpt/"',
                                                   'data.paths=["chat.jsonl"]'])
    summary = train_sft(config)                                  # all weights
    summary = train_sft(config, peft=PeftSettings(method="lora"))  # the adapter only

Data: JSONL / Parquet with 'messages' (chat), 'prompt'/'completion', or Alpaca
'instruction'/'input'/'output' records; the model folder's chat template formats them.
Without ``data.paths`` the run uses built-in synthetic chats (`synthetic_chats_file`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.data.formats import load_sft_examples
from lmforge.data.loader import SFTLoader
from lmforge.io import atomic_write_text
from lmforge.models.hf import load_model
from lmforge.peft.settings import PeftSettings, apply_peft
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import DataSection, RunConfig
from lmforge.train.distributed import DistInfo, barrier
from lmforge.train.pretrain import train_language_model
from lmforge.train.run import check_resumable, check_vocab, init_model_dir, training_run


def train_sft(
    config: RunConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model.init_from`` on ``data.paths`` (the synthetic chats when empty; the
    list is then set to that file); with ``peft`` only the adapter trains and is saved.
    Returns the Trainer's summary with ``model_dir``."""
    model_dir = init_model_dir(config, "sft")
    with training_run(config, dist, console) as (dist, console):
        if not config.data.paths:  # built-in synthetic chats (lmforge.data.tasks.chat)
            config.data.paths = [synthetic_chats_file(config, Path(config.out_dir), dist)]
            console.print(
                f"[bold]data[/]: {config.data.synthetic_docs} synthetic chats (no --data)"
            )
        check_resumable(config)  # another run in this folder: refuse before loading data
        d, t = config.data, config.train
        tokenizer = load_tokenizer(d.tokenizer or model_dir)
        max_len = None if d.split_long else d.seq_len

        def load(paths):
            return load_sft_examples(
                paths, tokenizer, format=d.format, assistant_only=d.assistant_only,
                skip_bad=d.skip_bad, max_len=max_len, too_long=d.too_long,
            )  # fmt: skip

        examples, val_examples = train_and_validation(load, d, t.seed, console, "examples")
        model = load_model(model_dir, dtype=torch.float32)
        apply_peft(model, peft, str(model_dir))  # only the adapter trains
        check_vocab(model_dir, tokenizer, model.config.vocab_size)
        pad = tokenizer.pad_token_id or 0
        kwargs = dict(seed=t.seed, rank=dist.rank, world_size=dist.world_size,
                      split_long=d.split_long, pad_id=pad)  # fmt: skip
        loader = SFTLoader(examples, d.seq_len, t.batch_size, **kwargs)
        console.print(
            f"[bold]packing[/]: {len(examples)} train / {len(val_examples)} validation examples; "
            f"{loader.report.summary()}"
        )
        val = SFTLoader(val_examples, d.seq_len, t.batch_size, **kwargs) if val_examples else None
        summary = train_language_model(config, model, tokenizer, loader, val, dist, console)
    return summary


def synthetic_chats_file(config: RunConfig, run_dir: Path, dist: DistInfo | None = None) -> str:
    """``data.synthetic_docs`` synthetic chats (`lmforge.data.tasks.chat`, seeded by
    ``train.seed``) as ``run_dir/data/synthetic-chat.jsonl``, written by the main rank (or
    the one process, ``dist=None``) when changed; returns its path."""
    from lmforge.data.tasks.chat import synthetic_chats

    path = Path(run_dir) / "data" / "synthetic-chat.jsonl"
    if dist is None or dist.is_main:
        chats = synthetic_chats(config.data.synthetic_docs, config.train.seed)
        text = "".join(json.dumps({"messages": m}) + "\n" for m in chats)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    barrier()
    return str(path)


def train_and_validation(
    load: Callable[[list[str]], tuple[list, Any]],
    data: DataSection,
    seed: int,
    console: Console,
    what: str,
) -> tuple[list, list]:
    """Training and validation items: ``load(data.paths)`` (its report printed), then
    ``load(data.val_paths)`` or a seeded ``data.val_fraction`` held out (`split_validation`);
    `ValueError` naming the files when no training ``what`` are left."""
    items, report = load(data.paths)
    paths = ", ".join(data.paths)
    console.print(f"[bold]data[/]: {paths}: " + report.summary().replace("\n", "; "))
    if data.val_paths:
        val, _ = load(data.val_paths)
    else:
        items, val = split_validation(items, data.val_fraction, seed)
    if not items:
        raise ValueError(f"{paths}: no training {what} left")
    return items, val


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``examples`` (``data.val_fraction``): which part is the first
    ``max(1, round(fraction × N))`` indices of a ``random.Random(seed)`` shuffle of
    ``range(N)`` — a random sample, the same for the same seed and N, kept in input order.
    N counts the items kept after loading (records skipped or dropped do not count); with
    ``fraction`` 0 or fewer than two items nothing is held out. SFT, DPO and RM split this
    way when no ``data.val_paths`` are given."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(examples)))
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]
