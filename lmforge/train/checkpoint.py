"""Training checkpoints: HF-format weights plus ``trainer_state/``, written atomically.
(This file is long because saving, finding and loading a checkpoint share its layout and
its full-state-dict helpers; they read best side by side.)

    <run>/checkpoints/
        step-00000050/                 an HF model folder (loads in transformers / lmforge) ...
            config.json  model.safetensors  generation_config.json  tokenizer.json ...
            trainer_state/
                optimizer.safetensors  optimizer state tensors, keyed state/<param name>/<key>
                optimizer.json         param groups (hyperparameters, parameter names)
                state.json             step, tokens, elapsed time, schedule, config,
                                       per-rank data-loader position and RNG states
            manifest.json              size + SHA-256 of every file above, written last
        step-00000100/ ...
        latest                          name of the newest complete checkpoint, written last

A checkpoint is assembled in ``.tmp-step-…/`` (every file fsynced, ``manifest.json`` last),
renamed into place in one ``rename``, and only then does ``latest`` move to it; the oldest
beyond ``keep_last`` are deleted afterwards. A process killed at any point leaves the
previous checkpoint complete and ``latest`` pointing at a complete checkpoint. Nothing is
pickled (safetensors + JSON).

A checkpoint is complete only when its manifest verifies (`lmforge.train.manifest`).
`find_resumable` hashes the candidates newest first and returns the first that verifies
together with what was wrong with each newer one (file and problem), so a resume never
loads flipped bits, a truncated file or a checkpoint without its ``trainer_state/``.

Under FSDP the full (unsharded) model and optimizer state is gathered to rank 0, so a
checkpoint saved by N processes loads in one, and vice versa. With expert parallelism the
ranks' routed experts (weights and optimizer state) are gathered the same way, and each rank
loads back only its own (`lmforge.train.distributed.keep_own_experts`). The weights are then
written from the gathered state as it is (`gathered_export`): every parameter the model has,
a critic's or a score head's as much as a `CausalLM`'s, so such a checkpoint resumes too.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json, atomic_write_text, fsync_dir, read_json
from lmforge.models.hf import save_model, weight_files
from lmforge.models.weights_check import read_checked_weights
from lmforge.train import distributed as D
from lmforge.train.manifest import CheckpointCorrupt, check_present, verify_manifest, write_manifest
from lmforge.train.rng import rng_state, set_rng_state

LATEST = "latest"
STATE_DIR = "trainer_state"
_STEP_RE = re.compile(r"^step-(\d{8})$")
# Test hook: when set to a step number, saving that step pauses for a minute half-way through
# (after the weights, before the trainer state) and creates <tmp dir>/PAUSED, so a test can
# SIGKILL the process mid-save.
PAUSE_ENV = "LMFORGE_TEST_PAUSE_SAVE_AT"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: str | os.PathLike) -> int | None:
    """The step of a ``step-XXXXXXXX`` checkpoint folder (None for other names)."""
    match = _STEP_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------- full state dicts
def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict (gathered on every rank's CPU under FSDP: collective)."""
    if D.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(D.unwrap(model), options=_options(cpu_offload=True))
    return D.gather_expert_state(model, D.unwrap(model).state_dict())  # all ranks' experts


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (collective under FSDP)."""
    if D.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(
            D.unwrap(model), optimizer, options=_options(cpu_offload=True)
        )
    names = _optimizer_param_names(D.unwrap(model), optimizer)
    sd = optimizer.state_dict()
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    osd = {"state": {names[i]: v for i, v in sd["state"].items()}, "param_groups": groups}
    return D.gather_expert_optimizer_state(model, osd)  # all ranks' experts (collective)


def _set_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    if D.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(D.unwrap(model), optimizer, osd, options=_options())
        return
    index = {n: i for i, n in enumerate(_optimizer_param_names(D.unwrap(model), optimizer))}
    saved = {n for g in osd["param_groups"] for n in g["params"]} | set(osd["state"])
    unknown = sorted(saved - set(index))
    if unknown:
        raise ValueError(f"optimizer state for parameters the model lacks: {unknown[:5]}")
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    optimizer.load_state_dict(
        {"state": {index[n]: v for n, v in osd["state"].items()}, "param_groups": groups}
    )


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (index i = state key i)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _split_optimizer_state(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pname, entries in osd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pname}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(pname, {})[key] = value
    groups = [dict(g) for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, rest = key.split("/", 1)
        pname, name = rest.rsplit("/", 1)
        state.setdefault(pname, {})[name] = value
    for pname, entries in meta.get("scalar_state", {}).items():
        state.setdefault(pname, {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------- save
def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    tokenizer: Any = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; return its folder.

    Collective: every rank calls it. ``state`` (step, tokens, config, ...) is written as
    given from rank 0, plus ``loader`` and ``rng`` lists with one entry per rank (each rank's
    ``state["loader"]`` and its RNG states).
    """
    root = Path(root)
    per_rank = D.all_gather_objects({"loader": state.get("loader"), "rng": rng_state()})
    model_state = full_model_state(model)
    optim_state = full_optimizer_state(model, optimizer)
    final = root / checkpoint_name(step)
    if D.rank_and_world()[0] == 0:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{final.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        write_weights(model, model_state, tmp, tokenizer)
        if os.environ.get(PAUSE_ENV) == str(step):
            (tmp / "PAUSED").touch()
            time.sleep(60)
        tensors, meta = _split_optimizer_state(optim_state)
        with atomic_path(tmp / STATE_DIR / "optimizer.safetensors") as path:
            save_file(tensors, str(path), metadata={"format": "pt"})
        atomic_write_json(tmp / STATE_DIR / "optimizer.json", meta)
        full = {
            **{k: v for k, v in state.items() if k != "loader"},
            "step": step,
            "loader": [r["loader"] for r in per_rank],
            "rng": [r["rng"] for r in per_rank],
        }
        atomic_write_json(tmp / STATE_DIR / "state.json", full)
        write_manifest(tmp, step)  # last: the checkpoint is complete when this verifies
        fsync_dir(tmp / STATE_DIR)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (a resumed run): swap, then drop the old copy
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / LATEST, final.name + "\n")
        prune_checkpoints(root, keep_last)
    D.barrier()
    return final


def write_weights(
    model: nn.Module, state: dict[str, torch.Tensor], folder: Path, tokenizer: Any = None
) -> None:
    """Save ``model`` as an HF folder; under FSDP from ``state`` (the gathered full state)."""
    inner = D.unwrap(model)
    if getattr(inner, "peft_config", None):  # PEFT: the checkpoint holds only the adapter
        from lmforge.peft.io import save_training_adapter

        save_training_adapter(inner, folder, tokenizer)
        return
    if hasattr(inner, "save_weights_folder"):  # not a transformer (a denoiser): config.json
        return inner.save_weights_folder(folder)  # + model.safetensors, written by the model
    if not D.is_fsdp(model) and not D.sharded_moe_layers(model):
        save_model(inner, folder, tokenizer=tokenizer)
        return
    # FSDP or sharded experts: save a CPU module holding exactly the gathered full state.
    save_model(gathered_export(model, state), folder, tokenizer=tokenizer)


class WeightTree(nn.Module):
    """Tensors under their dotted names and nothing else: a module tree with no forward,
    built by `gathered_export` (``len`` = the number of children, as `save_model` asks of
    ``mtp``)."""

    def __len__(self) -> int:
        return len(self._modules)

    def __bool__(self) -> bool:  # a module is true, whatever its length
        return True


def gathered_export(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """What `save_model` writes for a sharded ``model`` (FSDP2, or experts spread over ranks):
    a CPU `WeightTree` holding exactly ``state`` (the gathered full state dict, every key of
    the model's own state dict — the policy's, a critic's, a score head's …) under the same
    names, with the model's ``config``, ``generation_config`` and ``quantization_config``.

    ``save_model(gathered_export(m, full_model_state(m)), …)`` writes the same files as
    ``save_model(m, …)`` would for the unsharded ``m``. A key of the model missing from
    ``state``, a key of ``state`` the model lacks (other than other ranks' routed experts),
    or a name that cannot be placed in a module tree is a `ValueError` naming it.
    """
    inner = D.unwrap(model)
    own = list(inner.state_dict())
    state = dict(state)
    tied = getattr(inner.config, "tie_word_embeddings", False)
    if tied and "lm_head.weight" in own and "lm_head.weight" not in state:
        state["lm_head.weight"] = state.get("model.embed_tokens.weight")  # one tensor, two names
    missing = [k for k in own if state.get(k) is None]
    expert_prefixes = tuple(f"{name}.experts." for name, _ in D.sharded_moe_layers(model))
    known = set(own)
    unknown = [k for k in state if k not in known and not k.startswith(expert_prefixes)]
    if missing or unknown:
        raise ValueError(
            f"cannot save the gathered weights of {type(inner).__name__}: "
            + "; ".join(
                f"{what} {names[:5]}{' …' if len(names) > 5 else ''}"
                for what, names in (("missing from the gathered state:", missing),
                                    ("not parameters of the model:", unknown))
                if names
            )
        )  # fmt: skip
    export = WeightTree()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        node = export
        try:
            for part in path:
                child = node._modules.get(part)
                if child is None:
                    child = WeightTree()
                    node.add_module(part, child)
                node = child
            node.register_buffer(leaf, tensor.detach().to("cpu"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"cannot place the gathered tensor {key!r} in a module tree "
                             f"({exc})") from exc  # fmt: skip
    export.config = inner.config
    export.generation_config = dict(getattr(inner, "generation_config", {}))
    quantization = getattr(inner, "quantization_config", None)
    if quantization is not None:
        export.quantization_config = quantization
    return export


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    root = Path(root)
    latest = _read_latest_name(root)
    found = list_checkpoints(root)
    removed = []
    for path in found[: max(0, len(found) - keep_last)]:
        if path.name != latest:
            shutil.rmtree(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------- find / load
def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """``step-*`` folders under ``root``, oldest first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name))


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds weights, a config, the full trainer state and a manifest
    listing files that are all present with their sizes (`check_present`; no hashing)."""
    try:
        check_present(path)
    except CheckpointCorrupt:
        return False
    model_config = "config.json"
    try:
        weight_files(path)
    except (ValueError, OSError):
        if not (path / "adapter_training.safetensors").is_file():  # a PEFT checkpoint
            return False
        model_config = "adapter_config.json"
    need = [model_config, f"{STATE_DIR}/state.json", f"{STATE_DIR}/optimizer.json"]
    need.append(f"{STATE_DIR}/optimizer.safetensors")
    return all((path / n).is_file() for n in need)


def _read_latest_name(root: Path) -> str | None:
    try:
        return (root / LATEST).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names if complete, else the newest complete one, else None."""
    root = Path(root)
    name = _read_latest_name(root)
    if name and is_complete(root / name):
        return root / name
    for path in reversed(list_checkpoints(root)):
        if is_complete(path):
            return path
    return None


def find_resumable(root: str | os.PathLike) -> tuple[Path | None, list[CheckpointCorrupt]]:
    """The newest checkpoint under ``root`` whose manifest verifies (SHA-256 of every file),
    and the problems of the candidates tried before it (newest first, the one ``latest``
    names first): ``(None, problems)`` when none verifies, ``(None, [])`` when there is none.
    """
    root = Path(root)
    found = list(reversed(list_checkpoints(root)))
    name = _read_latest_name(root)
    if name and (root / name) in found:
        found.remove(root / name)
        found.insert(0, root / name)
    problems: list[CheckpointCorrupt] = []
    for path in found:
        try:
            verify_manifest(path)
        except CheckpointCorrupt as exc:
            problems.append(exc)
            continue
        if is_complete(path):
            return path, problems
        problems.append(CheckpointCorrupt(path, "the manifest lacks weights or trainer state"))
    return None, problems


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a bad checkpoint ``step-N`` to ``bad-step-N[-k]`` (kept for inspection, no
    longer a candidate for resuming or pruning); return the new path."""
    path = Path(path)
    target = path.with_name(f"bad-{path.name}")
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"bad-{path.name}-{k}")
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state/state.json`` of a checkpoint (step, tokens, config, loaders, RNG)."""
    return read_json(Path(path) / STATE_DIR / "state.json", "trainer state")


def rank_loader_state(state: dict[str, Any], path: str | os.PathLike) -> Any:
    """This rank's saved data-loader position from ``state`` (None if none was saved); an
    error when the checkpoint was saved by a different number of processes."""
    rank, world = D.rank_and_world()
    loaders = state.get("loader") or [None]
    saved_world = len(state.get("rng", [])) or 1
    if saved_world != world and loaders[0] is not None:
        raise ValueError(
            f"{path}: saved by {saved_world} process(es), resumed with {world}; the data "
            "position cannot be split differently (resume with the same world size, or "
            "start a new run from the weights with model.init_from)"
        )
    return loaders[rank % len(loaders)]


def remove_partial(root: str | os.PathLike) -> None:
    """Delete ``.tmp-*`` / ``.old-*`` leftovers of a save that was killed."""
    root = Path(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and path.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
    restore_data: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer state) into ``model`` in place; return the trainer state.

    Works for a plain model, DDP, and FSDP2 (each rank reads the full state and keeps its
    shard). With ``restore_rng`` this rank's RNG states are restored too. The returned
    state's ``loader`` is this rank's data-loader state (None without ``restore_data``; a
    data position saved by a different number of processes is an error unless
    ``restore_data=False``).
    """
    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path}: not a complete training checkpoint")
    state = read_trainer_state(path)
    inner = D.unwrap(model)
    if getattr(inner, "peft_config", None):  # PEFT: restore the adapter; the base is as loaded
        from lmforge.peft.io import load_training_adapter

        load_training_adapter(inner, path)
        weights = {}
    else:
        weights = read_checked_weights(weight_files(path))
    if weights and getattr(inner.config, "tie_word_embeddings", False):
        weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    weights = {k: weights[k] for k in D.keep_own_experts(model, list(weights))}
    buffers = {k: v for k, v in inner.state_dict().items() if k not in weights}
    if D.is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(inner, {**buffers, **weights}, options=_options())
    else:
        inner.load_state_dict({**buffers, **weights})
    if optimizer is not None:
        tensors = load_file(str(path / STATE_DIR / "optimizer.safetensors"))
        meta = read_json(path / STATE_DIR / "optimizer.json", "optimizer state")
        osd = _join_optimizer_state(tensors, meta)
        own = set(D.keep_own_experts(model, list(osd["state"])))  # expert parallel: this rank's
        osd["state"] = {n: v for n, v in osd["state"].items() if n in own}
        for group in osd["param_groups"]:
            group["params"] = D.keep_own_experts(model, group["params"])
        _set_optimizer_state(model, optimizer, osd)
    rank = D.rank_and_world()[0]
    saved_world = len(state.get("rng", [])) or 1
    if restore_rng and state.get("rng"):
        set_rng_state(state["rng"][rank % saved_world])
    state["loader"] = rank_loader_state(state, path) if restore_data else None
    return state
