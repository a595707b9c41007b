"""Reading safetensors weights with checks: every error names the file and the tensor.

    state = read_checked_weights(files)                          # dict name -> tensor
    state = read_checked_weights(files, allow_non_finite=True)   # inspect a broken model

`load_model` (and resuming a training checkpoint) read weights through here, so that

- a truncated file or a damaged header is a `WeightsError` naming the file (safetensors'
  own message names none);
- a tensor of a dtype the model cannot hold (``int32``, ``bool``, …) is a `WeightsError`
  naming file, tensor and dtype, not a traceback deep inside a matmul;
- a tensor with NaN or ±inf values is a `WeightsError` naming file and tensor, with how
  many values are bad and where the first one is (random bytes written over a weight file
  decode to such values; a model loaded from them trains or answers nonsense silently).
  ``allow_non_finite=True`` loads them anyway, for inspection.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

# dtypes a model parameter may be stored in (float8 for FP8 checkpoints, dequantised later).
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file (and the tensor)."""


def check_tensor(name: str, tensor: torch.Tensor, file: str | os.PathLike,
                 allow_non_finite: bool = False) -> None:  # fmt: skip
    """Raise `WeightsError` for an unsupported dtype or (unless allowed) non-finite values."""
    if tensor.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise WeightsError(
            f"{file}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
            f"which a model weight cannot have (supported: {names}); the file was not "
            "written for this model or was converted wrongly"
        )
    if allow_non_finite or tensor.numel() == 0:
        return
    values = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
    raise WeightsError(
        f"{file}: tensor {name!r} has {bad} non-finite value(s) (NaN/inf) of {tensor.numel()}, "
        f"the first at index {list(first)} = {values[first].item()}; the weights are corrupt "
        "(load with allow_non_finite=True to inspect them anyway)"
    )


def read_checked_weights(
    files: Iterable[str | os.PathLike],
    *,
    allow_non_finite: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """All tensors of ``files`` (a checkpoint's safetensors files), each checked with
    `check_tensor`; a file safetensors cannot parse is a `WeightsError` naming it."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        file = Path(file)
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                    tensor = handle.get_tensor(key)
                    check_tensor(key, tensor, file, allow_non_finite)
                    state[key] = tensor
        except (SafetensorError, OSError) as exc:
            size = file.stat().st_size if file.is_file() else 0
            raise WeightsError(
                f"{file}: not a readable safetensors file ({size:,} bytes; {exc}); it is "
                "truncated or its header is damaged — re-save or re-download it"
            ) from exc
    return state


__all__ = ["SUPPORTED_DTYPES", "WeightsError", "check_tensor", "read_checked_weights"]
