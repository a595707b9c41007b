"""Data parallelism through ``torch.distributed``: launched by ``torchrun``, DDP or FSDP2.

    torchrun --nproc_per_node 8 -m lmforge pretrain --config recipes/pretrain-tiny.yaml

`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and starts the process group (NCCL on GPUs, gloo on CPU). `wrap_model` applies
``DistributedDataParallel`` (every rank holds the full model; gradients are averaged) or
FSDP2's ``fully_shard`` per decoder block and then at the root (parameters, gradients and
optimizer state sharded across ranks; Zhao et al. 2023, "PyTorch FSDP"). Both average
gradients over ranks, which the loop's token weighting accounts for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group when run under torchrun (idempotent); else a single process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """``none`` → as is; ``ddp`` → DistributedDataParallel; ``fsdp`` → FSDP2 per block + root."""
    if strategy == "none" or not info.enabled:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)  # embeddings, final norm and the (possibly tied) head
        return model
    raise ValueError(f"unknown distributed strategy {strategy!r} (none, ddp, fsdp)")


def unwrap(model: nn.Module) -> nn.Module:
    """The `CausalLM` under DDP / torch.compile wrappers (FSDP2 shards in place)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def ddp_module(model: nn.Module) -> nn.parallel.DistributedDataParallel:
    """The DDP wrapper inside ``model`` (which may be a torch.compile wrapper around it)."""
    while not isinstance(model, nn.parallel.DistributedDataParallel):
        model = model._orig_mod
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj):
    """``[obj from rank 0, rank 1, ...]`` (``[obj]`` in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
