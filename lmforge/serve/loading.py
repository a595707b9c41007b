"""A checkpoint folder → the inference `Engine` that ``lmforge serve`` and ``lmforge chat``
run, with its tokenizer and context length.

    engine, tok, folder, context = load_engine("runs/demo/model", adapter="runs/sft-lora/model")
    engine, tok, folder, context = load_engine("base/", loras={"sql": "runs/sql-lora/model"})
    engine, tok, folder, context = load_engine("Qwen/Qwen2.5-0.5B")  # in the local HF cache
    engine, tok, folder, context = load_engine(None, adapter="runs/sft-lora/model")  # its base

The device defaults to CUDA when present, as training does (`resolve_device`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmforge.infer.engine import Engine
from lmforge.models.hf import CheckpointError, checkpoint_dir, load_model
from lmforge.models.hub import resolve_model_path
from lmforge.models.info import check_weight_dtypes
from lmforge.peft.merging import adapter_base, load_merged
from lmforge.peft.multi_lora import load_lora_router
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.distributed import resolve_device


def load_engine(
    model_dir: str | os.PathLike | None,
    *,
    adapter: str | os.PathLike | None = None,
    loras: Mapping[str, str | os.PathLike] | None = None,
    device: str = "auto",
    dtype: str | None = None,
    max_num_seqs: int = 64,
    speculative: dict | None = None,
    compile_decode: bool | str = False,
) -> tuple[Engine, Tokenizer, Path, int]:
    """`Engine`, tokenizer, folder and context length (max positions) for ``model_dir``,
    checked like every command's checkpoint. A LoRA ``adapter`` is merged into the weights
    at load (full engine speed); ``loras`` (name → adapter folder) stay unmerged and are
    chosen per request inside one batch (`lmforge.peft.multi_lora`; the engine's router is
    ``engine.adapters``, adapter i + 1 being the i-th name). ``device="auto"``: CUDA when
    present, else the CPU. ``model_dir`` may be a Hub id in the local Hugging Face cache, or
    None with an ``adapter``: the base the adapter records (``base_model_name_or_path``).
    The tokenizer is the adapter folder's when it has one (as saved by SFT), else the model's.
    ``speculative``: keyword arguments of `lmforge.infer.self_drafters.speculative_config`
    (``method`` and its drafter) for draft-and-verify decoding. ``compile_decode``: the
    engine's option (`Engine`: the decode step as one function per shape bucket, replayed
    as CUDA graphs on a GPU)."""
    if model_dir is None:
        if not adapter:
            raise CheckpointError("name the model: a checkpoint folder, or an adapter with a base")
        model_dir = adapter_base(adapter)
    folder = checkpoint_dir(resolve_model_path(model_dir))
    check_weight_dtypes(folder)
    tok_folder = (
        Path(adapter) if adapter and (Path(adapter) / "tokenizer.json").is_file() else folder
    )
    if not (tok_folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer.json (the server needs the tokenizer)")
    tok = load_tokenizer(tok_folder)
    where = resolve_device(device)
    model: Any
    if adapter:
        model = load_merged(folder, Path(adapter), dtype=dtype).to(where).eval()
    else:
        model = load_model(folder, dtype=dtype, device=where).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size} (vocab_size in config.json)"
        )
    router = None
    if loras:
        router = load_lora_router(model, loras)
        model.to(where).eval()
    spec = None
    if speculative:
        from lmforge.infer.self_drafters import speculative_config

        spec = speculative_config(target=model, **speculative)
    engine = Engine(
        model, tok, max_num_seqs=max_num_seqs, adapters=router, speculative=spec,
        compile_decode=compile_decode,
    )  # fmt: skip
    return engine, tok, folder, model.config.max_position_embeddings
