"""Pretraining from a `RunConfig`: text files (or the built-in synthetic corpus) → a
tokenizer → token files → a model → `Trainer` → a run folder (``lmforge pretrain``).

    config = load_config("recipes/pretrain-tiny.yaml", ["train.max_steps=500"])
    summary = train_pretrain(config)           # summary["model_dir"]: the HF-format model

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``training.png``, ``checkpoints/``
(resumable: running the same config again continues from the latest checkpoint) and
``model/`` (the final HF-format model with its tokenizer). Without ``data.paths`` the run
uses the built-in synthetic corpus, so it runs offline with no data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.data.loader import PretrainLoader
from lmforge.data.tokens import TokenFileInfo, build_token_file
from lmforge.models.hf import load_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo, barrier
from lmforge.train.loop import Trainer
from lmforge.train.run import check_resumable, fit_and_export, print_summary, training_run


def train_pretrain(
    config: RunConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Pretrain (or continue pretraining ``model.init_from``) as ``config`` says; returns
    the Trainer's summary with ``model_dir``. Without ``dist`` the process is set up (and
    the process group left at the end) here."""
    with training_run(config, dist, console) as (dist, console):
        run_dir = Path(config.out_dir)
        data = config.data
        if data.paths:
            train_paths, val_paths = list(data.paths), list(data.val_paths)
        else:
            train_paths, val_paths = synthetic_corpus_files(config, run_dir, dist)
            console.print(
                f"[bold]data[/]: synthetic corpus, {data.synthetic_docs} train / "
                f"{data.val_docs} validation documents"
            )
        check_resumable(config)  # another run in this folder: refuse before tokenizing
        tokenizer = pretrain_tokenizer(config, run_dir, train_paths, dist, console)
        train_tokens = token_file(config, tokenizer, train_paths, run_dir / "data" / "train", dist)
        val_tokens = None
        if val_paths:
            val_tokens = token_file(config, tokenizer, val_paths, run_dir / "data" / "val", dist)
        val_note = f", {val_tokens.num_tokens:,} validation" if val_tokens else ""
        data_report = train_tokens.report.summary().replace("\n", "; ")  # skips, peak memory
        console.print(
            f"[bold]tokens[/]: {train_tokens.num_tokens:,} train in {train_tokens.num_docs:,} "
            f"documents{val_note} ({data_report})"
        )
        model = pretrain_model(config, tokenizer)
        seed, t = config.train.seed, config.train
        pad = tokenizer.pad_token_id or 0
        loader = PretrainLoader(train_tokens.path, data.seq_len, t.batch_size, seed=seed,
                                rank=dist.rank, world_size=dist.world_size, pad_id=pad)  # fmt: skip
        val = None
        if val_tokens is not None:
            val = PretrainLoader(
                val_tokens.path, data.seq_len, t.batch_size, seed=seed, rank=dist.rank,
                world_size=dist.world_size, pad_id=pad,
            )  # fmt: skip
        summary = train_language_model(config, model, tokenizer, loader, val, dist, console)
    return summary


def train_language_model(config: RunConfig, model, tokenizer, loader, val, dist: DistInfo,
                         console: Console) -> dict[str, Any]:  # fmt: skip
    """The next-token `Trainer` on ``loader`` (pretraining and SFT): train, export
    ``model/`` into the run folder and print the summary."""
    run_dir = Path(config.out_dir)
    console.print(
        f"[bold]model[/]: {model.num_parameters():,} parameters; "
        f"{dist.world_size} process(es) on {dist.device}; run folder {run_dir}"
    )
    trainer = Trainer(model, loader, config, val_data=val, tokenizer=tokenizer,
                      run_dir=run_dir, dist=dist, console=console)  # fmt: skip
    summary = fit_and_export(trainer, run_dir)
    print_summary(summary, console)
    return summary


def synthetic_corpus_files(config: RunConfig, run_dir: Path, dist: DistInfo) -> tuple[list, list]:
    """The built-in synthetic corpus as ``data/synthetic-{train,val}.jsonl`` in the run
    folder (rewritten only when changed); returns (train paths, validation paths)."""
    from lmforge.data.tasks import synthetic_corpus
    from lmforge.io import atomic_write_text

    folder = run_dir / "data"
    train, val = folder / "synthetic-train.jsonl", folder / "synthetic-val.jsonl"
    if dist.is_main:
        d = config.data
        docs = synthetic_corpus(d.val_docs + d.synthetic_docs, config.train.seed)
        for path, part in ((val, docs[: d.val_docs]), (train, docs[d.val_docs :])):
            text = "".join(json.dumps({"text": doc}) + "\n" for doc in part)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                atomic_write_text(path, text)  # unchanged files keep the token cache valid
    barrier()
    return [str(train)], ([str(val)] if config.data.val_docs else [])


def pretrain_tokenizer(config: RunConfig, run_dir: Path, paths, dist: DistInfo, console):
    """``data.tokenizer``, else the init model's, else one trained on the data — cached in
    ``run_dir/tokenizer`` under a fingerprint of the data and settings
    (`lmforge.data.tokenizer_training.cached_tokenizer`), never reused for other data."""
    source = config.data.tokenizer or config.model.init_from
    if source:
        return load_tokenizer(source)
    folder = run_dir / "tokenizer"
    if dist.is_main:
        from lmforge.data.tokenizer_training import cached_tokenizer

        d = config.data
        tok, reused, report = cached_tokenizer(paths, folder, d.vocab_size, schema="text",
                                               text_field=d.text_field, skip_bad=d.skip_bad)  # fmt: skip
        what = "reused (same data and settings)" if reused else "trained"
        summary = "; ".join(report.summary().splitlines()[1:])  # skips, documents, memory
        console.print(f"[bold]tokenizer[/]: {what}, {tok.vocab_size} ids -> {folder}"
                      + (f" ({summary})" if summary else ""))  # fmt: skip
    barrier()
    return load_tokenizer(folder)


def token_file(config: RunConfig, tokenizer, paths, out: Path, dist: DistInfo) -> TokenFileInfo:
    """``paths`` tokenized into a token file at ``out`` (built by rank 0, cached)."""
    info = None
    if dist.is_main:
        info = build_token_file(
            paths,
            tokenizer,
            out,
            num_workers=config.data.num_workers,
            text_field=config.data.text_field,
            skip_bad=config.data.skip_bad,
        )
    barrier()
    if info is None:  # other ranks: the cache rank 0 just wrote
        info = build_token_file(paths, tokenizer, out, num_workers=0,
                                text_field=config.data.text_field,
                                skip_bad=config.data.skip_bad)  # fmt: skip
    if info.num_tokens == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no tokens (no documents found)")
    return info


def pretrain_model(config: RunConfig, tokenizer) -> CausalLM:
    """``model.init_from`` in fp32, else a fresh ``model.preset`` sized to the tokenizer
    (seeded by ``train.seed``)."""
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
