"""A contiguous, preallocated KV cache for incremental decoding.

The inference-engine issue adds a paged cache with the same `update` protocol.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K/V buffers ``[B, H_kv, max_len, D]`` filled left to right (values
    ``[B, H_kv, max_len, value_dim]`` when ``value_dim`` is given: 0 for MLA's latent).

    `update` writes this step's keys/values after the ``length`` slots already cached and
    returns views of everything cached so far; the model calls `advance` once all layers
    have written.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        value_dim: int | None = None,
    ) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        v_shape = shape if value_dim is None else (*shape[:3], value_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(v_shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int) -> KVCache:
        """A cache sized for ``model`` (an lmforge `CausalLM`), in its dtype and device.
        For multi-head latent attention the keys hold the latent ``[c_KV ; k_R]`` (one
        shared head of ``head_dim`` = kv_lora_rank + qk_rope_head_dim) and the values are
        empty: the latent is all MLA needs."""
        cfg = model.config
        p = next(model.parameters())
        return cls(
            cfg.num_hidden_layers,
            batch_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            max_len,
            dtype=p.dtype,
            device=p.device,
            value_dim=0 if cfg.use_mla else None,
        )

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len={self.max_len}")
        self.keys[layer_idx][:, :, self.length : end] = k
        self.values[layer_idx][:, :, self.length : end] = v
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def crop(self, length: int) -> None:
        """Roll back to the first ``length`` cached positions (e.g. drop rejected draft
        tokens in speculative decoding); later writes overwrite the stale slots."""
        if not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"crop length={length!r} must be an integer in [0, {self.length}]")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (e.g. surviving beams) in place."""
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                buffers[i] = buf.index_select(0, index.to(buf.device))
