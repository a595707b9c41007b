"""A checkpoint folder → the inference `Engine` that ``lmforge serve`` and ``lmforge chat``
run, with its tokenizer and context length.

    engine, tok, folder, context = load_engine("runs/demo/model", adapter="runs/sft-lora/model")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmforge.infer.engine import Engine
from lmforge.models.hf import CheckpointError, checkpoint_dir, load_model
from lmforge.peft.merging import load_merged
from lmforge.tokenizer import Tokenizer, load_tokenizer


def load_engine(
    model_dir: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    max_num_seqs: int = 64,
) -> tuple[Engine, Tokenizer, Path, int]:
    """`Engine`, tokenizer, folder and context length (max positions) for ``model_dir``,
    checked like every command's checkpoint; a LoRA ``adapter`` is merged into the weights
    at load (full engine speed)."""
    folder = checkpoint_dir(model_dir)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json (the server needs the tokenizer)")
    tok = load_tokenizer(folder)
    model: Any
    if adapter:
        model = load_merged(folder, Path(adapter), dtype=dtype).to(device).eval()
    else:
        model = load_model(folder, dtype=dtype, device=device).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size} (vocab_size in config.json)"
        )
    engine = Engine(model, tok, max_num_seqs=max_num_seqs)
    return engine, tok, folder, model.config.max_position_embeddings
