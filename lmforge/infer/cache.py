"""Paged KV cache (PagedAttention, Kwon et al. 2023, "Efficient Memory Management for Large
Language Model Serving with PagedAttention"): K/V live in fixed-size blocks of
``block_size`` token slots, and each sequence owns a *block table* — the list of its blocks
in order. Token ``i`` of a sequence lives in slot ``block_table[i // bs] * bs + i % bs``.

    BlockAllocator     which blocks are free, shared, cached (prefix caching, ref counts, LRU)
    PagedKVCache       the storage: per layer ``[num_blocks * block_size, H_kv, D]`` K and V
                       (K only for MLA: its cached latent is both, see ``key_only``)
    PagedBatch         one forward's view of it: a flattened ragged batch ``[1, N]`` of
                       sequences, each a chunk of new tokens after its cached context;
                       attention layers call `PagedBatch.attention`.

Prefix caching (as in vLLM's automatic prefix caching): a *full* block is identified by the
tokens it holds chained with its parent block's key, so equal prefixes map to equal keys
and a new request reuses the already-computed blocks of any earlier request. Blocks whose
reference count drops to zero stay cached but become evictable, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.infer.paged_attention import (
    paged_attention_supported,
    paged_decode_attention,
    paged_kv_supported,
)
from lmforge.nn.huge_pages import zeros_in_huge_pages

BlockKey = tuple  # (parent hash, token ids) or (parent hash, token ids, image hashes)


def block_key(
    parent_hash: int | None, tokens: Sequence[int], images: Sequence[str] = ()
) -> BlockKey:
    """Identity of a full block: its tokens plus the hash of everything before it, and the
    content hashes of the images whose placeholder tokens it holds (if any).

    Tokens and image hashes are compared exactly (the key itself is the dict key); only the
    parent's chain is summarised by a hash, so two different prefixes collide only on a
    64-bit hash collision.
    """
    if images:
        return (parent_hash, tuple(tokens), tuple(images))
    return (parent_hash, tuple(tokens))


class BlockAllocator:
    """Hands out block ids with reference counts; remembers full blocks for prefix reuse.

    Free blocks sit in one LRU queue (oldest first). `allocate` takes the oldest; if that
    block still holds a cached prefix, its cache entry is evicted. A cached block that is
    free can be revived by `lookup` (moved out of the queue, ref count 1).
    """

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks} must be ≥ 1")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[BlockKey, int] = {}  # key → block id
        self.block_keys: dict[int, BlockKey] = {}  # block id → key (inverse of `cached`)
        self.hits = 0
        self.queries = 0
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks that `allocate` can hand out (cached-but-free ones included)."""
        return len(self.free_queue)

    def allocate(self) -> int:
        if not self.free_queue:
            raise RuntimeError("no free KV-cache blocks")
        block, _ = self.free_queue.popitem(last=False)
        key = self.block_keys.pop(block, None)
        if key is not None:
            del self.cached[key]
            self.evictions += 1
        self.ref_counts[block] = 1
        return block

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block, tail first, so a sequence's last blocks are
        evicted before its (more shareable) first ones."""
        for block in reversed(blocks):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            if self.ref_counts[block] == 0:
                self.free_queue[block] = None

    def lookup(self, key: BlockKey) -> int | None:
        """The cached block holding ``key`` with one more reference, or None."""
        if not self.enable_prefix_caching:
            return None
        self.queries += 1
        block = self.cached.get(key)
        if block is None:
            return None
        self.hits += 1
        if self.ref_counts[block] == 0:
            del self.free_queue[block]
        self.ref_counts[block] += 1
        return block

    def forget_prefixes(self) -> None:
        """Drop every prefix-cache entry (e.g. after the weights changed: cached K/V is stale).
        Blocks in use stay with their sequences; free ones just lose their key."""
        self.cached.clear()
        self.block_keys.clear()

    def register(self, block: int, key: BlockKey) -> None:
        """Record that full block ``block`` holds ``key`` (first writer wins)."""
        if self.enable_prefix_caching and key not in self.cached and block not in self.block_keys:
            self.cached[key] = block
            self.block_keys[block] = key


class PagedKVCache:
    """K/V storage for all layers: ``keys[l]``/``values[l]`` are ``[num_slots, H_kv, D]``
    with ``num_slots = num_blocks * block_size``, of ``dtype`` (may differ from the model's:
    `PagedBatch.attend` rounds K/V to it when writing and widens them when reading). Memory is allocated lazily by the OS
    (``torch.empty``), so an oversized pool costs address space, not RAM, until used.

    ``key_only``: there are no value blocks (``values`` is empty) and every slot's value is
    its key. That is multi-head latent attention's cache (DeepSeek-V2 §2.1.2, absorbed
    form): one shared "head" ``[c_KV ; k_R]`` per token whose value is the latent itself
    (`lmforge.nn.mla.MultiHeadLatentAttention` keeps its first ``kv_lora_rank`` dims), so
    a token costs ``(kv_lora_rank + qk_rope_head_dim) · itemsize`` bytes per layer, not
    twice that.

    ``spare_blocks``: blocks stored after the ``num_blocks`` allocatable ones (ids
    ``num_blocks`` …), zeroed, never handed out by a `BlockAllocator` of ``num_blocks``: a
    compiled decode step (`lmforge.infer.decode_step`) writes its padding rows there.

    ``huge_pages``: on a CPU, the pool is one transparent-huge-page mapping
    (`lmforge.nn.huge_pages.zeros_in_huge_pages`): with 4 KB pages each block read costs TLB
    misses and a restarted prefetcher (30m, 16 rows, fp16: attention 2.2 → 1.7 ms / step)."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        key_only: bool = False,
        spare_blocks: int = 0,
        huge_pages: bool = True,
    ) -> None:
        shape = ((num_blocks + spare_blocks) * block_size, num_kv_heads, head_dim)
        self.key_only = key_only
        planes = num_layers * (1 if key_only else 2)
        cpu = torch.empty(0, device=device).device.type == "cpu"
        pool = zeros_in_huge_pages(planes, shape, dtype) if huge_pages and cpu else None
        if pool is None:
            pool = [torch.empty(shape, dtype=dtype, device=device) for _ in range(planes)]
        self.keys, self.values = pool[:num_layers], pool[num_layers:]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.spare_blocks = spare_blocks
        for buf in (*self.keys, *self.values):
            buf[num_blocks * block_size :].zero_()
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        # Scratch for gathered K/V, reused by every layer and step (no per-step allocation).
        self._scratch_k = torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device)
        self._scratch_v = torch.empty(0, num_kv_heads, head_dim, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype, key_only: bool = False) -> int:  # fmt: skip
        itemsize = torch.empty(0, dtype=dtype).element_size()
        planes = 1 if key_only else 2  # K and V, or K alone
        return planes * num_layers * block_size * num_kv_heads * head_dim * itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool (all layers, K and V blocks, spare ones included)."""
        return sum(t.nbytes for t in (*self.keys, *self.values))

    @property
    def bytes_per_token(self) -> int:
        """Pool bytes per token slot, all layers together (÷ layers: per token and layer)."""
        return self.nbytes // ((self.num_blocks + self.spare_blocks) * self.block_size)

    def zero_blocks(self, blocks: Sequence[int]) -> None:
        """Clear freshly allocated blocks. Unwritten slots of a sequence's last block are
        masked out of attention, but masked garbage can be NaN/inf and 0·NaN = NaN."""
        if not blocks:
            return
        index = torch.tensor(blocks, device=self.keys[0].device)
        for buf in (*self.keys, *self.values):
            buf.view(self.num_blocks + self.spare_blocks, -1).index_fill_(0, index, 0)

    def gather(self, layer_idx: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V ``[len(slots), H_kv, D]`` of the given slots, in reused scratch memory
        (``key_only``: the same tensor twice)."""
        k, v = self._scratch(slots.numel())
        torch.index_select(self.keys[layer_idx], 0, slots, out=k)
        if self.key_only:
            return k, k
        torch.index_select(self.values[layer_idx], 0, slots, out=v)
        return k, v

    def gather_blocks(
        self, layer_idx: int, blocks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V ``[len(blocks) * block_size, H_kv, D]`` of whole blocks: one row copy per
        block instead of one per slot (≈1.4× faster than `gather` on CPU)."""
        k, v = self._scratch(blocks.numel() * self.block_size)
        rows = lambda t: t.view(-1, self.block_size * self.num_kv_heads * self.head_dim)  # noqa: E731
        torch.index_select(rows(self.keys[layer_idx]), 0, blocks, out=rows(k))
        if self.key_only:
            return k, k
        torch.index_select(rows(self.values[layer_idx]), 0, blocks, out=rows(v))
        return k, v

    def _scratch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._scratch_k.shape[0] < n:
            grow = max(n, 2 * self._scratch_k.shape[0])
            shape = (grow, self.num_kv_heads, self.head_dim)
            self._scratch_k = torch.empty(shape, dtype=self.dtype, device=self.device)
            if not self.key_only:  # key-only pools gather no values
                self._scratch_v = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self._scratch_k[:n], self._scratch_v[:n]


@dataclass
class PrefillChunk:
    """``length`` new tokens at flat offset ``start`` whose sequence already has ``past``
    cached tokens; ``slots`` ``[past + length]`` are all its context slots (None when
    ``past`` is 0: attention then uses the fresh K/V directly)."""

    start: int
    length: int
    past: int
    slots: torch.Tensor | None


@dataclass
class PagedBatch:
    """A flattened ragged batch of ``N`` tokens and where their K/V go and come from.

    The first ``num_decode`` tokens are single-token chunks (decoding, or a last prefill
    token): their attention runs as a padded SDPA over the sequences' gathered blocks, one
    per group of rows of similar context length (``decode_groups``), so the padding — a
    masked-out copy and score/value products, never GEMM rows — stays bounded; a group of
    one row attends its exact context without a mask. Longer chunks follow, one SDPA each. ``slot_mapping`` ``[N]`` says where each new
    token's K/V is written.
    """

    cache: PagedKVCache
    slot_mapping: torch.Tensor
    num_decode: int = 0
    decode_blocks: torch.Tensor | None = None  # [num_decode, max_blocks] block ids
    decode_lens: torch.Tensor | None = None  # [num_decode] context lengths (incl. new token)
    decode_positions: torch.Tensor | None = None  # [num_decode] position of the new token
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Decode rows attend in groups ``(first_row, end_row, width_in_blocks, max_context_len)``
    # of similar context length, so short rows are not padded to the longest one (rows
    # sorted by width; see `decode_groups`). Empty: one group of all rows, no length known.
    decode_groups: list[tuple[int, int, int, int]] = field(default_factory=list)
    paged = True  # tells the model to take positions from position_ids, not a cache length
    _masks: dict = field(default_factory=dict)
    _group_inputs: list = field(default_factory=list)
    _inplace: tuple | None = None  # int64 (tables, lengths) of all decode rows, for the C++ op
    step_rows: tuple | None = None  # int64 (tables [N, W], lengths [N]): `inplace_decode`

    def _groups(self) -> list[tuple[int, int, int, int]]:
        if not self.decode_groups:
            self.decode_groups = [(0, self.num_decode, self.decode_blocks.shape[1], 0)]
        return self.decode_groups

    def _group_tensors(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables ``[n, width]`` and positions ``[n]`` of decode group ``g``."""
        if not self._group_inputs:
            self._group_inputs = [
                (self.decode_blocks[a:b, :w], self.decode_positions[a:b])
                for a, b, w, _ in self._groups()
            ]
        return self._group_inputs[g]

    def _decode_mask(self, g: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """``[n, 1, 1, T]`` additive mask (``dtype``: the queries') of decode group ``g``: key
        slot j of row s is visible iff j ≤ position_s (and within the sliding window); built
        once per step."""
        if (g, window) not in self._masks:
            blocks, positions = self._group_tensors(g)
            j = torch.arange(blocks.shape[1] * self.cache.block_size, device=blocks.device)
            visible = j[None, :] <= positions[:, None]
            if window is not None:
                visible &= positions[:, None] - j[None, :] < window
            bias = torch.zeros(visible.shape, dtype=dtype, device=blocks.device)
            self._masks[g, window] = bias.masked_fill_(~visible, float("-inf"))[:, None, None]
        return self._masks[g, window]

    def _prefill_mask(self, chunk: PrefillChunk, window: int | None) -> torch.Tensor | None:
        """``[L, past + L]`` causal mask offset by ``past`` (None: plain causal suffices)."""
        total = chunk.past + chunk.length
        if chunk.past == 0 and (window is None or window >= total):
            return None
        q = torch.arange(chunk.past, total, device=self.slot_mapping.device)
        k = torch.arange(total, device=self.slot_mapping.device)
        visible = k[None, :] <= q[:, None]
        if window is not None:
            visible &= q[:, None] - k[None, :] < window
        return visible

    def attention(
        self,
        layer_idx: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        window: int | None = None,
    ) -> torch.Tensor:
        """`attend` in the model's layout: ``q`` ``[1, H, N, D]``, ``k``/``v``
        ``[1, H_kv, N, D]``; returns ``[1, H, N, D]``."""
        flat = lambda z: z[0].transpose(0, 1)  # noqa: E731 - [N, heads, D]
        return self.attend(layer_idx, flat(q), flat(k), flat(v), window).transpose(0, 1)[None]

    def attend(
        self,
        layer_idx: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        window: int | None = None,
    ) -> torch.Tensor:
        """Write this step's ``k``/``v`` ``[N, H_kv, D]`` into their slots, then attend
        ``q`` ``[N, H, D]`` over each sequence's cached context; returns ``[N, H, D]``.
        Token-major, as a fused QKV projection produces them (no transposes). A
        ``key_only`` cache stores ``k`` alone: ``v`` must then be the same tensor (MLA's
        latent), checked by storage address."""
        cache = self.cache
        if cache.key_only and (v.data_ptr() != k.data_ptr() or v.shape != k.shape):
            raise ValueError(
                "a key_only PagedKVCache stores no values: attend(k, v) needs v to be k "
                "(MLA's cached latent is its own value)"
            )
        # a cache of another dtype (fp16 K/V beside fp32 activations) stores them rounded
        cache.keys[layer_idx].index_copy_(0, self.slot_mapping, k.to(cache.dtype))
        if not cache.key_only:
            cache.values[layer_idx].index_copy_(0, self.slot_mapping, v.to(cache.dtype))
        gqa = q.shape[1] != k.shape[1]
        parts = []
        if self.num_decode and paged_attention_supported(q, cache.keys[layer_idx]):
            parts.append(self._attend_decode_inplace(layer_idx, q[: self.num_decode], window))
        elif self.num_decode:
            for g, (start, end, _, max_len) in enumerate(self._groups()):
                parts.append(self._attend_decode(layer_idx, g, q[start:end], max_len, window))
        for chunk in self.prefills:
            rows = slice(chunk.start, chunk.start + chunk.length)
            qc = q[rows].transpose(0, 1)[None]  # [1, H, L, D]
            if chunk.slots is None:
                kc, vc = k[rows], v[rows]
            else:
                kc, vc = cache.gather(layer_idx, chunk.slots)
                kc, vc = kc.to(q.dtype), vc.to(q.dtype)
            kc, vc = kc.transpose(0, 1)[None], vc.transpose(0, 1)[None]
            mask = self._prefill_mask(chunk, window)
            if mask is None:
                out = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=gqa)
            else:
                out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, enable_gqa=gqa)
            parts.append(out[0].transpose(0, 1))  # [L, H, D]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _inplace_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 block tables ``[num_decode, W]`` and visible lengths ``[num_decode]`` of the
        decode rows, as the C++ op takes them (made once per step)."""
        if self._inplace is None:
            lengths = (
                self.decode_lens if self.decode_lens is not None else self.decode_positions + 1
            )
            self._inplace = (self.decode_blocks.to(torch.int64).contiguous(),
                             lengths.to(torch.int64).contiguous())  # fmt: skip
        return self._inplace

    def inplace_decode(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(slots, tables, lengths)`` (int64) when every token of this step is a row whose
        attention the C++ op reads in place (a CPU cache with values): all decode rows, or
        ``step_rows`` (a prefill token at position p: a row of p + 1 tokens, K/V written
        first). The step then runs as one `lmforge.nn.decode_layer.decode_layers` call."""
        cache = self.cache
        n = self.slot_mapping.shape[0]
        if n == 0 or cache.key_only or not paged_kv_supported(cache.keys[0]):
            return None  # (the caller's queries are fp32)
        if self.step_rows is None and (self.prefills or self.num_decode != n):
            return None
        rows = self.step_rows if self.step_rows is not None else self._inplace_tensors()
        return (self.slot_mapping.to(torch.int64).contiguous(), *rows)

    def _attend_decode_inplace(
        self, layer_idx: int, q: torch.Tensor, window: int | None
    ) -> torch.Tensor:
        """All decode rows in one call of the C++ op that reads each row's blocks in place
        (`lmforge.infer.paged_attention`): no gathered copy, no mask, no groups."""
        cache = self.cache
        tables, lengths = self._inplace_tensors()
        keys = cache.keys[layer_idx]
        values = keys if cache.key_only else cache.values[layer_idx]
        return paged_decode_attention(q, keys, values, tables, lengths, cache.block_size, window)

    def _attend_decode(
        self, layer_idx: int, g: int, q: torch.Tensor, max_len: int, window: int | None
    ) -> torch.Tensor:
        """Decode group ``g``: queries ``[n, H, D]`` (one per sequence) → ``[n, H, D]``."""
        cache = self.cache
        blocks, positions = self._group_tensors(g)
        n = q.shape[0]
        kk, vv = cache.gather_blocks(layer_idx, blocks.flatten())
        kk, vv = kk.to(q.dtype), vv.to(q.dtype)
        kk = kk.view(n, -1, *kk.shape[1:]).transpose(1, 2)  # [n, H_kv, T, D]
        vv = vv.view(n, -1, *vv.shape[1:]).transpose(1, 2)
        if n == 1 and max_len:  # one sequence: its exact context, no mask needed
            lo = 0 if window is None else max(0, max_len - window)
            kk, vv, mask = kk[:, :, lo:max_len], vv[:, :, lo:max_len], None
        else:
            mask = self._decode_mask(g, window, q.dtype)
        out = F.scaled_dot_product_attention(
            q[:, :, None], kk, vv, attn_mask=mask, enable_gqa=q.shape[1] != kk.shape[1]
        )
        return out.squeeze(2)


def decode_groups(widths: Sequence[int], lengths: Sequence[int], max_padding: int = 16):
    """Split decode rows, sorted by ``widths`` (blocks in their tables), into the groups of
    `PagedBatch.decode_groups`: a row starts a new group when adding it would pad the
    group's rows by more than ``max_padding`` blocks in total (padding costs a copy and
    attention work per block; each group costs a few small ops)."""
    groups, start = [], 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or (widths[i] - widths[start]) * (i - start) > max_padding:
            groups.append((start, i, widths[i - 1], max(lengths[start:i])))
            start = i
    return groups
