"""`lmforge pretrain` and `lmforge sft`: a YAML recipe + ``key=value`` overrides → a run folder.

    lmforge pretrain --config recipes/pretrain-tiny.yaml train.max_steps=500
    lmforge sft --config recipes/sft-tiny.yaml --model runs/pretrain-tiny/model --data chat.jsonl
    torchrun --nproc_per_node 8 -m lmforge pretrain --config ...      # DDP / FSDP2

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``training.png``, ``checkpoints/``
(resumable: running the same command again continues from the latest checkpoint) and
``model/`` (the final HF-format model with its tokenizer). Pretraining without
``data.paths`` uses the built-in synthetic corpus, so it runs offline with no data.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.train.config import RunConfig, load_config
from lmforge.train.distributed import DistInfo, barrier, init_distributed

_EXAMPLES_PRETRAIN = (
    "  lmforge pretrain --config recipes/pretrain-tiny.yaml\n"
    "  lmforge pretrain --config recipes/pretrain-tiny.yaml --out runs/p2 optim.lr=1e-3 "
    "train.max_steps=500\n"
    "  lmforge pretrain --config recipes/pretrain-tiny.yaml data.paths=[corpus/] "
    "data.vocab_size=4096\n\n"
    "Overrides are section.key=value (values in YAML syntax). Running the same command again\n"
    "resumes from the run folder's latest checkpoint (use a new --out to start over)."
)
_EXAMPLES_SFT = (
    "  lmforge sft --config recipes/sft-tiny.yaml --model runs/pretrain-tiny/model "
    "--data chat.jsonl\n"
    "  lmforge sft --config recipes/sft-tiny.yaml --model ckpt/ --data a.jsonl b.parquet "
    "data.assistant_only=false\n\n"
    "Data: JSONL / Parquet with 'messages' (chat), 'prompt'/'completion', or Alpaca\n"
    "'instruction'/'input'/'output' records; the model folder's chat template formats them."
)


def add_train_commands(commands, subparser) -> None:
    """Register ``pretrain`` and ``sft`` (``subparser(commands, name, help, examples)``)."""
    p = subparser(
        commands,
        "pretrain",
        "pretrain a language model from a YAML recipe (synthetic corpus when no data is given)",
        _EXAMPLES_PRETRAIN,
    )
    _common(p)
    p.set_defaults(run=run_pretrain)
    p = subparser(
        commands,
        "sft",
        "supervised fine-tuning of an HF-format model on chat / instruction data",
        _EXAMPLES_SFT,
    )
    _common(p)
    p.add_argument("--model", metavar="DIR", help="HF checkpoint folder (model.init_from)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="training data (data.paths)")
    from lmforge.peft.commands import add_peft_arguments

    add_peft_arguments(p)
    p.set_defaults(run=run_sft)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3")


def _config(
    args: argparse.Namespace, extra: list[str], cls: type[RunConfig] = RunConfig
) -> RunConfig:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    return load_config(args.config, overrides + extra, cls)


def _console(info: DistInfo) -> Console:
    return Console(quiet=not info.is_main)


def _setup(config: RunConfig) -> tuple[DistInfo, Console]:
    if config.train.cpu_threads:
        torch.set_num_threads(config.train.cpu_threads)
    info = init_distributed(config.train.device)
    return info, _console(info)


# ---------------------------------------------------------------------- pretrain
def run_pretrain(args: argparse.Namespace) -> int:
    config = _config(args, [])
    info, console = _setup(config)
    run_dir = Path(config.out_dir)
    data = config.data
    if data.paths:
        train_paths, val_paths = list(data.paths), list(data.val_paths)
    else:
        train_paths, val_paths = _synthetic_corpus(config, run_dir, info)
        console.print(
            f"[bold]data[/]: synthetic corpus, {data.synthetic_docs} train / "
            f"{data.val_docs} validation documents"
        )
    tokenizer = _pretrain_tokenizer(config, run_dir, train_paths, info, console)
    train_tokens = _token_file(config, tokenizer, train_paths, run_dir / "data" / "train", info)
    val_tokens = None
    if val_paths:
        val_tokens = _token_file(config, tokenizer, val_paths, run_dir / "data" / "val", info)
    console.print(
        f"[bold]tokens[/]: {train_tokens.num_tokens:,} train in {train_tokens.num_docs:,} "
        f"documents" + (f", {val_tokens.num_tokens:,} validation" if val_tokens else "")
    )
    model = _pretrain_model(config, tokenizer)
    from lmforge.data.loader import PretrainLoader

    seed, t = config.train.seed, config.train
    pad = tokenizer.pad_token_id or 0
    loader = PretrainLoader(train_tokens.path, data.seq_len, t.batch_size, seed=seed,
                            rank=info.rank, world_size=info.world_size, pad_id=pad)  # fmt: skip
    val = None
    if val_tokens is not None:
        val = PretrainLoader(val_tokens.path, data.seq_len, t.batch_size, seed=seed,
                             rank=info.rank, world_size=info.world_size, pad_id=pad)  # fmt: skip
    return _train(config, model, tokenizer, loader, val, run_dir, info, console)


def _synthetic_corpus(config: RunConfig, run_dir: Path, info: DistInfo) -> tuple[list, list]:
    from lmforge.data.tasks import synthetic_corpus
    from lmforge.io import atomic_write_text

    folder = run_dir / "data"
    train, val = folder / "synthetic-train.jsonl", folder / "synthetic-val.jsonl"
    if info.is_main:
        d = config.data
        docs = synthetic_corpus(d.val_docs + d.synthetic_docs, config.train.seed)
        for path, part in ((val, docs[: d.val_docs]), (train, docs[d.val_docs :])):
            text = "".join(json.dumps({"text": doc}) + "\n" for doc in part)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)  # unchanged files keep the token cache valid
    barrier()
    return [str(train)], ([str(val)] if config.data.val_docs else [])


def _synthetic_chats(config: RunConfig, run_dir: Path, info: DistInfo) -> str:
    from lmforge.data.tasks.chat import synthetic_chats
    from lmforge.io import atomic_write_text

    path = run_dir / "data" / "synthetic-chat.jsonl"
    if info.is_main:
        chats = synthetic_chats(config.data.synthetic_docs, config.train.seed)
        text = "".join(json.dumps({"messages": m}) + "\n" for m in chats)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    barrier()
    return str(path)


def _pretrain_tokenizer(config: RunConfig, run_dir: Path, paths, info: DistInfo, console):
    """``data.tokenizer``, else the init model's, else one trained on the data (once per run)."""
    from lmforge.tokenizer import Tokenizer, load_tokenizer

    source = config.data.tokenizer or config.model.init_from
    if source:
        return load_tokenizer(source)
    folder = run_dir / "tokenizer"
    if info.is_main and not (folder / "tokenizer.json").is_file():
        from lmforge.data.sources import iter_texts, read_records

        records = read_records(paths, schema="text", text_field=config.data.text_field,
                               skip_bad=config.data.skip_bad)  # fmt: skip
        tok = Tokenizer.train(iter_texts(records), vocab_size=config.data.vocab_size)
        tok.save(folder)
        console.print(f"[bold]tokenizer[/]: trained, {tok.vocab_size} ids -> {folder}")
    barrier()
    return load_tokenizer(folder)


def _token_file(config: RunConfig, tokenizer, paths, out: Path, info: DistInfo):
    from lmforge.data.tokens import build_token_file

    info_main = None
    if info.is_main:
        info_main = build_token_file(
            paths,
            tokenizer,
            out,
            num_workers=config.data.num_workers,
            text_field=config.data.text_field,
            skip_bad=config.data.skip_bad,
        )
    barrier()
    if info_main is None:  # other ranks: the cache rank 0 just wrote
        info_main = build_token_file(paths, tokenizer, out, num_workers=0,
                                     text_field=config.data.text_field,
                                     skip_bad=config.data.skip_bad)  # fmt: skip
    if info_main.num_tokens == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no tokens (no documents found)")
    return info_main


def _pretrain_model(config: RunConfig, tokenizer):
    from lmforge.models.hf import load_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    if config.model.init_from:
        return load_model(config.model.init_from, dtype=torch.float32)
    overrides: dict[str, Any] = {
        "vocab_size": -(-tokenizer.vocab_size // 64) * 64,  # a multiple of 64 runs faster
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **config.model.overrides,
    }
    model_config = preset_config(config.model.preset, **overrides)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(
            f"model.overrides.vocab_size={model_config.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size} ids"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return CausalLM(model_config)


# ---------------------------------------------------------------------- sft
def run_sft(args: argparse.Namespace) -> int:
    extra = []
    if args.model:
        extra.append(f"model.init_from={json.dumps(args.model)}")
    if args.data:
        extra.append(f"data.paths={json.dumps(args.data)}")
    config = _config(args, extra)
    if not config.model.init_from:
        raise ValueError("sft needs a model: --model DIR (or model.init_from in the config)")
    from lmforge.cli import checkpoint_dir
    from lmforge.data.formats import load_sft_examples
    from lmforge.data.loader import SFTLoader
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    info, console = _setup(config)
    if not config.data.paths:  # built-in synthetic chats (lmforge.data.tasks.chat)
        config.data.paths = [_synthetic_chats(config, Path(config.out_dir), info)]
        console.print(f"[bold]data[/]: {config.data.synthetic_docs} synthetic chats (no --data)")
    d, t = config.data, config.train
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(d.tokenizer or model_dir)
    max_len = None if d.split_long else d.seq_len

    def load(paths):
        return load_sft_examples(paths, tokenizer, format=d.format, assistant_only=d.assistant_only,
                                 skip_bad=d.skip_bad, max_len=max_len, too_long=d.too_long)  # fmt: skip

    examples, report = load(d.paths)
    console.print(f"[bold]data[/]: {', '.join(d.paths)}: " + report.summary().replace("\n", "; "))
    if d.val_paths:
        val_examples, _ = load(d.val_paths)
    else:
        examples, val_examples = split_validation(examples, d.val_fraction, t.seed)
    if not examples:
        raise ValueError(f"{', '.join(d.paths)}: no training examples left")
    model = load_model(model_dir, dtype=torch.float32)
    from lmforge.peft.commands import apply_peft_from_args

    apply_peft_from_args(model, args, str(model_dir))  # --peft: only the adapter trains
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}"
        )
    pad = tokenizer.pad_token_id or 0
    kwargs = dict(seed=t.seed, rank=info.rank, world_size=info.world_size,
                  split_long=d.split_long, pad_id=pad)  # fmt: skip
    loader = SFTLoader(examples, d.seq_len, t.batch_size, **kwargs)
    console.print(
        f"[bold]packing[/]: {len(examples)} train / {len(val_examples)} validation examples; "
        f"{loader.report.summary()}"
    )
    val = SFTLoader(val_examples, d.seq_len, t.batch_size, **kwargs) if val_examples else None
    return _train(config, model, tokenizer, loader, val, Path(config.out_dir), info, console)


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``examples`` (a seeded shuffle; at least one when > 0)."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(examples)))
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


# ---------------------------------------------------------------------- shared
def _train(config, model, tokenizer, loader, val, run_dir: Path, info, console) -> int:
    from lmforge.train.loop import Trainer
    from lmforge.train.metrics import format_summary

    console.print(
        f"[bold]model[/]: {model.num_parameters():,} parameters; "
        f"{info.world_size} process(es) on {info.device}; run folder {run_dir}"
    )
    trainer = Trainer(model, loader, config, val_data=val, tokenizer=tokenizer,
                      run_dir=run_dir, dist=info, console=console)  # fmt: skip
    summary = trainer.fit()
    summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
    console.rule("[bold]summary")
    console.print(format_summary(summary), highlight=False)
    if info.enabled:
        torch.distributed.destroy_process_group()
    return 0
