"""Hugging Face format import/export: ``config.json`` + (sharded) ``model.safetensors``.

Parameter names are identical to HF's for every supported family, so the mapping is the
identity, with two special cases: a tied ``lm_head.weight``, which HF omits, and DeepSeek-V3's
multi-token-prediction modules, stored as DeepSeek ships them — extra layers after the last
decoder layer, ``model.layers.{N + k}.*`` (lmforge: ``mtp.{k}.*``, the block under
``mtp.{k}.block.*``), each with copies of the shared embedding and head. A DeepSeek-V3 folder
loads with or without those layers. The MoE gate and its correction bias stay fp32 in every
saved dtype.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmforge.config import ModelConfig, hf_architecture
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.models.quantize import (
    prepare_quantized,
    quantization_config_of,
    read_quantized_weights,
    without_quantization_config,
)
from lmforge.models.transformer import CausalLM, rotary_embedding
from lmforge.models.vlm import VisionLanguageModel, VLMConfig, language_rotary
from lmforge.models.vlm_hf import (
    VLM_MODEL_TYPES,
    vlm_config_from_hf,
    vlm_config_to_hf,
    vlm_state_from_hf,
    vlm_state_to_hf,
)
from lmforge.models.weights_check import read_checked_weights

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# Tensors stored in fp32 whatever the model dtype, as DeepSeek-V3 and transformers keep them:
# the MoE gate and its selection-only correction bias (routing is precision-sensitive).
FP32_TENSORS = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder that does not match the model; the message lists every problem."""


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r} (use one of {sorted(_DTYPES)})")
    return _DTYPES[name]


def checkpoint_dir(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, checked to exist and to hold a ``config.json`` (the first check
    of every command and entry point that reads a checkpoint)."""
    path = Path(folder)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected an HF checkpoint folder)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (no config.json)")
    return path


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder (one file, or every shard of the index)."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = read_json(folder / INDEX_FILE, "safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{folder / INDEX_FILE}: missing 'weight_map' object")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{folder / INDEX_FILE}: shard files not found: {missing}")
        return [folder / f for f in files]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise CheckpointError(
        f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (expected a Hugging Face checkpoint folder)"
    )


def read_state_dict(folder: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(Path(folder)):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                state[key] = f.get_tensor(key)
    return state


@contextlib.contextmanager
def _no_init():
    """Skip ``torch.nn.init`` while building a model whose weights are loaded next: drawing
    random values on the meta device is pointless, and its first call imports torch's
    compiler stack (seconds per process)."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "trunc_normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def load_model(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    allow_non_finite: bool = False,
) -> CausalLM:
    """Load an HF-format folder (Llama / Qwen2 / Qwen3 / Mistral / DeepSeek-V3) as an lmforge
    `CausalLM` (DeepSeek-V3's MTP layers when the folder has them).

    ``dtype=None`` keeps the dtype stored in the checkpoint. Missing or unexpected tensors
    and shape mismatches raise one `CheckpointError` listing all offending names.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory (expected an HF checkpoint folder)")
    raw = _config_dict(folder)
    if raw.get("model_type") in VLM_MODEL_TYPES:
        return load_vlm(folder, raw, dtype, device, allow_non_finite)
    # a weight-only quantised folder (lmforge.models.quantize) comes back quantised
    quant = (
        quantization_config_of(raw, str(folder / "config.json")) if isinstance(raw, dict) else None
    )
    if quant is None:
        config = ModelConfig.from_pretrained(folder)
    else:
        config = ModelConfig.from_hf_dict(
            without_quantization_config(raw), str(folder / "config.json")
        )
    target_dtype = _parse_dtype(dtype)
    # each file and tensor checked (lmforge.models.weights_check): damaged files, unsupported
    # dtypes and NaN/inf weights are errors naming file and tensor
    if quant is None:
        state = read_checked_weights(weight_files(folder), allow_non_finite=allow_non_finite)
    else:
        state = read_quantized_weights(weight_files(folder), quant, allow_non_finite)

    n = config.num_hidden_layers
    with_mtp = any(k.startswith(f"model.layers.{n}.") for k in state)
    state = {lmforge_name(k, n): v for k, v in state.items() if not _is_mtp_copy(k, n)}
    with torch.device("meta"), _no_init():
        model = CausalLM(config, with_mtp=with_mtp)
        if quant is not None:
            prepare_quantized(model, quant)
    _check_state_dict(model, state, folder)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    model.model.rotary_emb = rotary_embedding(config)
    materialize_state_buffers(model)
    model.tie_weights()
    if (folder / "generation_config.json").is_file():
        gen = read_json(folder / "generation_config.json", "generation config")
        if not isinstance(gen, dict):
            raise CheckpointError(f"{folder / 'generation_config.json'}: expected a JSON object")
        model.generation_config = gen
    if target_dtype is not None:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    return model


def _config_dict(folder: Path) -> dict:
    """``config.json`` as a dict, or {} when absent or unreadable (`ModelConfig.from_pretrained`
    then reports the problem with file, line and column)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_vlm(
    folder: Path,
    raw: dict,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    allow_non_finite: bool = False,
) -> VisionLanguageModel:
    """Load a vision-language checkpoint (``qwen2_vl``) as a `VisionLanguageModel`, with the
    same checks as `load_model` (arguments as there)."""
    config = vlm_config_from_hf(raw, str(folder / "config.json"))
    target_dtype = _parse_dtype(dtype)
    weights = read_checked_weights(weight_files(folder), allow_non_finite=allow_non_finite)
    state = vlm_state_from_hf(weights, config)
    with torch.device("meta"), _no_init():
        model = VisionLanguageModel(config)
    _check_state_dict(model, state, folder)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    model.model.rotary_emb = language_rotary(config)
    materialize_state_buffers(model)
    model.tie_weights()
    if (folder / "generation_config.json").is_file():
        model.generation_config = read_json(folder / "generation_config.json", "generation config")
    if target_dtype is not None:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    return model


def materialize_state_buffers(model: torch.nn.Module) -> None:
    """Zero-fill the buffers a checkpoint does not hold (non-persistent running statistics,
    e.g. the MoE ``expert_load``) that are still on the meta device after loading."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)


_MTP_OWN = ("enorm.", "hnorm.", "eh_proj.", "shared_head.norm.")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def lmforge_name(hf_name: str, num_hidden_layers: int) -> str:
    """lmforge's name of a checkpoint tensor: the HF name, except MTP layers
    (``model.layers.{N + k}.X`` → ``mtp.{k}.X`` or ``mtp.{k}.block.X``)."""
    m = _LAYER_RE.match(hf_name)
    if m is None or int(m.group(1)) < num_hidden_layers:
        return hf_name
    k, rest = int(m.group(1)) - num_hidden_layers, m.group(2)
    return f"mtp.{k}.{rest}" if rest.startswith(_MTP_OWN) else f"mtp.{k}.block.{rest}"


def hf_name(name: str, num_hidden_layers: int) -> str:
    """The checkpoint name of an lmforge tensor (inverse of `lmforge_name`)."""
    if not name.startswith("mtp."):
        return name
    _, k, rest = name.split(".", 2)
    layer = num_hidden_layers + int(k)
    return f"model.layers.{layer}.{rest.removeprefix('block.')}"


def _is_mtp_copy(hf_key: str, num_hidden_layers: int) -> bool:
    """An MTP layer's copy of the shared embedding / head (DeepSeek ships them; lmforge
    shares the model's own)."""
    m = _LAYER_RE.match(hf_key)
    return (
        m is not None
        and int(m.group(1)) >= num_hidden_layers
        and m.group(2) in ("embed_tokens.weight", "shared_head.head.weight")
    )


def _check_state_dict(model: CausalLM, state: dict[str, torch.Tensor], folder: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    missing = sorted(k for k in expected if k not in state and not (tied and k == "lm_head.weight"))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(expected)
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if problems:
        raise CheckpointError(
            f"{folder}: checkpoint does not match config.json — " + "; ".join(problems)
        )


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"bad shard size {size!r} (e.g. 2GB, 500MB, 1000000)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(float(m.group(1)) * mult[unit])


def _export_state(model: CausalLM, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = {}
    n = model.config.num_hidden_layers
    items = list(model.state_dict().items())
    for k in range(len(model.mtp) if getattr(model, "mtp", None) is not None else 0):
        items.append((f"mtp.{k}.embed_tokens.weight", model.model.embed_tokens.weight.clone()))
        items.append((f"mtp.{k}.shared_head.head.weight", model.lm_head.weight.clone()))
    for k, v in items:
        k = hf_name(k, n)
        if model.config.tie_word_embeddings and k == "lm_head.weight":
            continue
        v = v.detach()
        if dtype is not None and v.is_floating_point() and not k.endswith(FP32_TENSORS):
            v = v.to(dtype)
        state[k] = v.to("cpu").contiguous()
    return state


def save_model(
    model: CausalLM,
    path: str | os.PathLike,
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write ``model`` as an HF folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    Writes ``config.json``, ``generation_config.json`` and ``model.safetensors`` (or shards of
    at most ``max_shard_size`` plus ``model.safetensors.index.json``), each atomically; stale
    weight files of an earlier save in the same folder are removed afterwards. ``tokenizer``
    (an lmforge `Tokenizer`, or anything with ``save``/``save_pretrained``) is saved beside.
    """
    folder = Path(path)
    target = _parse_dtype(dtype)  # validate arguments before touching the disk
    limit = _parse_size(max_shard_size)
    is_vlm = isinstance(model.config, VLMConfig)
    cfg = vlm_config_to_hf(model.config) if is_vlm else model.config.to_hf_dict()
    state = _export_state(model, target)
    if is_vlm:
        state = vlm_state_to_hf(state, model.config)
    stored_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    shards = _plan_shards(state, limit)
    folder.mkdir(parents=True, exist_ok=True)

    written: set[str] = set()
    if len(shards) == 1:
        _save_safetensors(shards[0], folder / SINGLE_FILE)
        written.add(SINGLE_FILE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _save_safetensors(shard, folder / name)
            written.add(name)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_json(folder / INDEX_FILE, index)
        written.add(INDEX_FILE)
    for stale in folder.iterdir():
        is_weights = stale.name in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.match(stale.name)
        if is_weights and stale.name not in written:
            stale.unlink()

    if "architectures" not in cfg:
        cfg["architectures"] = [hf_architecture(model.config.model_type)]
    dtype_name = str(stored_dtype).removeprefix("torch.")
    cfg["torch_dtype" if "torch_dtype" in cfg else "dtype"] = dtype_name
    if getattr(model, "quantization_config", None) is not None:  # lmforge.models.quantize
        cfg["quantization_config"] = model.quantization_config.to_hf()
    atomic_write_json(folder / "config.json", cfg)
    gen = {**generation_config(model.config), **getattr(model, "generation_config", {})}
    atomic_write_json(folder / "generation_config.json", gen)
    if tokenizer is not None:
        (tokenizer.save if hasattr(tokenizer, "save") else tokenizer.save_pretrained)(folder)
    return folder


def generation_config(config: ModelConfig) -> dict[str, Any]:
    """The ``generation_config.json`` HF writes for a model config: its special token ids."""
    out: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, key)
        if value is not None:
            out[key] = value
    return out


def _plan_shards(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


__all__ = [
    "CheckpointError",
    "load_model",
    "read_state_dict",
    "save_model",
    "weight_files",
]
