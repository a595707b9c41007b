"""Data parallelism through ``torch.distributed``: launched by ``torchrun``, DDP or FSDP2.

    torchrun --nproc_per_node 8 -m lmforge pretrain --config recipes/pretrain-tiny.yaml

`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and starts the process group (NCCL on GPUs, gloo on CPU). `wrap_model` applies
``DistributedDataParallel`` (every rank holds the full model; gradients are averaged) or
FSDP2's ``fully_shard`` per decoder block and then at the root (parameters, gradients and
optimizer state sharded across ranks; Zhao et al. 2023, "PyTorch FSDP"). Both average
gradients over ranks, which the loop's token weighting accounts for.

Expert parallelism (``train.expert_parallel``, DeepSeek-V3 §3.2.2) with DDP: `shard_experts`
leaves each rank E/W routed experts per MoE layer (tokens reach them by all-to-all,
`lmforge.nn.moe`). Their gradients already sum every rank's tokens, so DDP ignores them (the
loop divides them by W instead of averaging) and `clip_expert_parallel_grads` adds their
squared norms over ranks; `gather_expert_state` / `gather_expert_optimizer_state` complete a
checkpoint with all ranks' experts and `keep_own_experts` picks a rank's share on loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmforge.config import ConfigError
from lmforge.nn.moe import DeepSeekMoE


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


def shard_experts(model: nn.Module, info: DistInfo) -> list[str]:
    """Expert parallelism (``train.expert_parallel``): every MoE layer of ``model`` keeps
    only this rank's ``n_routed_experts / world_size`` routed experts
    (`lmforge.nn.moe.DeepSeekMoE.shard_experts`; tokens reach them by all-to-all). Returns
    the names of the parameters this rank now owns alone (`expert_parameter_names`)."""
    for name, module in model.named_modules():
        if isinstance(module, DeepSeekMoE):
            if module.num_experts % info.world_size:
                raise ConfigError(
                    f"train.expert_parallel: {name} has n_routed_experts={module.num_experts},"
                    f" not divisible by the world size {info.world_size}"
                )
            module.shard_experts(info.rank, info.world_size)
    return expert_parameter_names(model)


def sharded_moe_layers(model: nn.Module) -> list[tuple[str, DeepSeekMoE]]:
    """The MoE layers of ``model`` whose experts are sharded over ranks."""
    return [
        (name, m)
        for name, m in unwrap(model).named_modules()
        if isinstance(m, DeepSeekMoE) and m.expert_group is not None
    ]


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Names of the routed-expert parameters of sharded MoE layers (this rank's own)."""
    prefixes = tuple(f"{name}.experts." for name, _ in sharded_moe_layers(model))
    if not prefixes:
        return []
    return [n for n, _ in unwrap(model).named_parameters() if n.startswith(prefixes)]


def expert_load_buffers(model: nn.Module) -> list[str]:
    """Names of MoE ``expert_load`` buffers: per-rank token counts that DDP must not
    broadcast from rank 0 (the balancing step sums them over ranks itself)."""
    return [n for n, _ in model.named_buffers() if n.endswith(".expert_load")]


def gather_expert_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``state`` (this rank's model state dict) completed with every rank's routed experts
    (collective; identity without sharded experts), so a saved checkpoint holds them all."""
    if not sharded_moe_layers(model):
        return state
    own = {n: state[n].detach().cpu() for n in expert_parameter_names(model) if n in state}
    full = dict(state)
    for part in all_gather_objects(own):
        full.update(part)
    return full


def keep_own_experts(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` (of a full, unsharded checkpoint) without the routed experts other ranks
    own: what this rank's sharded ``model`` loads (all of them when nothing is sharded)."""
    prefixes = tuple(f"{name}.experts." for name, _ in sharded_moe_layers(model))
    if not prefixes:
        return list(names)
    own = set(expert_parameter_names(model))
    return [n for n in names if n in own or not n.startswith(prefixes)]


def gather_expert_optimizer_state(model: nn.Module, osd: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state (``{"state", "param_groups"}``) completed with every
    rank's routed-expert entries (collective), each group's names in the order of the
    unsharded model (a layer's experts, rank by rank, where this rank's own stood)."""
    if not sharded_moe_layers(model):
        return osd
    own = set(expert_parameter_names(model))
    local = {
        "state": {
            n: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
            for n, e in osd["state"].items()
            if n in own
        },
        "groups": [[n for n in g["params"] if n in own] for g in osd["param_groups"]],
    }
    parts = all_gather_objects(local)
    state = dict(osd["state"])
    for part in parts:
        state.update(part["state"])
    groups = []
    for i, group in enumerate(osd["param_groups"]):
        names, done = [], set()
        for n in group["params"]:
            if n not in own:
                names.append(n)
                continue
            layer = n[: n.index(".experts.") + len(".experts.")]
            if layer not in done:
                done.add(layer)
                names += [m for part in parts for m in part["groups"][i] if m.startswith(layer)]
        groups.append({**group, "params": names})
    return {"state": state, "param_groups": groups}


def clip_expert_parallel_grads(
    shared: list[torch.Tensor], experts: list[torch.Tensor], max_norm: float
) -> torch.Tensor:
    """``clip_grad_norm_`` over the whole model when ``experts`` (this rank's routed-expert
    parameters) differ per rank and ``shared`` are replicated: ‖g‖² = ‖g_shared‖² +
    Σ_ranks ‖g_experts,r‖². Returns the total norm (as torch, coefficient max_norm/(‖g‖+1e-6)
    capped at 1)."""

    def squares(params: list[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad.detach().double().pow(2).sum() for p in params if p.grad is not None]
        return torch.stack(grads).sum() if grads else torch.zeros((), dtype=torch.float64)

    device = (shared or experts)[0].device
    total = squares(shared).to(device) + all_reduce_sum(squares(experts).to(device))
    norm = total.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in [*shared, *experts]:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))
    return norm.float()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """``none`` → as is; ``ddp`` → DistributedDataParallel (without the ranks' own expert
    parameters and expert-load counters); ``fsdp`` → FSDP2 per block + root."""
    if strategy == "none" or not info.enabled:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        ignore = expert_parameter_names(model) + expert_load_buffers(model)
        if ignore:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, ignore
            )
        # replicated routed experts may receive no token on a rank in a step
        replicated_experts = any(
            isinstance(m, DeepSeekMoE) and m.expert_group is None for m in model.modules()
        )
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=replicated_experts
        )
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
