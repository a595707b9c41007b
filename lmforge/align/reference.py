"""The reference policy π_ref of KL-regularised objectives — one implementation for DPO / IPO,
PPO and GRPO.

    reference = make_reference(policy, kl_coef)           # before any step changes the policy
    with reference_model(reference, policy, device) as ref:
        ref_logps = policy_logprobs(ref, batch)          # or sequence_logps(ref, batch)

A reference is one of:

- a module: a frozen copy of the initial policy (`frozen_copy`: eval mode, no gradients);
- ``"adapter"`` (`ADAPTER`): the policy itself with its PEFT adapters disabled
  (`lmforge.peft.disable_adapters`) — the base model, no second copy in memory;
- None: no reference — the loss needs none (KL weight 0, SimPO, ORPO), or its log-probs were
  computed once up front and ride in the batches (DPO: `precompute_reference_logps`; PPO and
  GRPO compute theirs once per rollout).

`reference_model` is the one place that turns a reference into the module to run: the frozen
copy (moved onto the batch's device when the loop moved the policy), or the policy inside
`disable_adapters`. What the module computes (token or sequence log-probs, train/eval mode)
is the caller's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypeAlias

import torch
from torch import nn

from lmforge.align.sequence_logps import sequence_logps

__all__ = [
    "ADAPTER",
    "Reference",
    "check_reference",
    "frozen_copy",
    "make_reference",
    "precompute_reference_logps",
    "reference_model",
]

ADAPTER = "adapter"
Reference: TypeAlias = "nn.Module | Literal['adapter'] | None"


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off (a reference policy)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def check_reference(reference: object) -> None:
    """Raise `ValueError` unless ``reference`` is a module, ``"adapter"`` or None."""
    if isinstance(reference, str) and reference != ADAPTER:
        raise ValueError(f"reference={reference!r}: pass a module, {ADAPTER!r} or None")
    if not (reference is None or isinstance(reference, (str, nn.Module))):
        raise TypeError(f"reference: expected a module, {ADAPTER!r} or None, got {reference!r}")


def make_reference(policy: nn.Module, kl_coef: float = 1.0) -> Reference:
    """The KL reference of ``policy`` as it is now (build it before any step or resume changes
    the weights): None for ``kl_coef`` = 0, ``"adapter"`` for a policy with PEFT adapters (its
    base), else a `frozen_copy`."""
    if not kl_coef:
        return None
    from lmforge.peft.state import tuner_layers

    if tuner_layers(policy):
        return ADAPTER
    return frozen_copy(policy)


@contextmanager
def reference_model(
    reference: Reference, policy: nn.Module | None = None, device: torch.device | None = None
) -> Iterator[nn.Module]:
    """The module that computes π_ref inside the block: ``policy`` with its adapters disabled
    for ``"adapter"``, else the frozen module, moved to ``device`` first if it is elsewhere."""
    check_reference(reference)
    if reference is None:
        raise ValueError("no reference policy (None): build one with make_reference")
    if isinstance(reference, str):
        from lmforge.peft import disable_adapters

        if policy is None:
            raise ValueError("an 'adapter' reference needs the policy (its adapters are disabled)")
        with disable_adapters(policy):
            yield policy
        return
    if device is not None and next(reference.parameters()).device != device:
        reference.to(device)  # the loop moved the policy after the reference was made
    yield reference


@torch.no_grad()
def precompute_reference_logps(
    reference: nn.Module | None,
    loader,
    *,
    policy: nn.Module | None = None,
    batch_pairs: int = 16,
) -> torch.Tensor:
    """``[len(loader.pairs), 2]`` reference log-probs (chosen, rejected) of every pair of a
    `lmforge.align.preference_data.PreferenceLoader`, computed once (TRL's
    ``precompute_ref_log_probs``). ``reference`` is a frozen module, or None to use ``policy``
    with its adapters disabled. Set the result as ``loader.reference_logps``."""
    if reference is None and policy is None:
        raise ValueError("pass a reference module or a PEFT policy")
    with reference_model(ADAPTER if reference is None else reference, policy) as model:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = torch.zeros(len(loader.pairs), 2, dtype=torch.float32)
        try:
            for start in range(0, len(loader.pairs), batch_pairs):
                ids = list(range(start, min(start + batch_pairs, len(loader.pairs))))
                batch = {k: v.to(device) for k, v in loader.collate(ids).items()}
                batch.pop("ref_logps", None)
                logps, _ = sequence_logps(model, batch)
                out[ids] = logps.view(-1, 2).float().cpu()
        finally:
            model.train(was_training)
    return out
