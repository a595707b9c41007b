"""Weights in transparent huge pages (2 MB) for CPU decoding.

A batch-1 decode step streams every weight once, front to back. With 4 KB pages that stream
crosses a page every 4 KB — 31,000 pages for a 30m model's 126 MB of fp32 weights per token —
and each new page costs a TLB miss (a page walk) that the data TLB (a few thousand entries)
cannot hide when the weights are larger than it covers. With 2 MB pages the same weights span
63 pages. Linux gives an anonymous mapping huge pages when it is advised to
(``madvise(MADV_HUGEPAGE)``; ``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``
or ``always``); torch's allocator does not advise it (``THP_MEM_ALLOC_ENABLE=1`` would, for
every allocation ≥ 2 MB, but only when set before torch's first allocation).

`move_to_huge_pages` copies a module's large parameters and buffers into one 2 MB-aligned,
advised anonymous mapping and points each tensor at its copy (``tensor.data = copy``: the
``Parameter`` objects stay the same, so optimizers, tied weights and in-place updates are
unaffected). Each copy is its own storage (``torch.frombuffer`` at its own offset), 64-byte
aligned, so safetensors saves them as separate tensors. Tensors are copied one at a time:
the peak extra memory is one tensor. `copy_to_huge_pages` makes such copies of loose tensors
(the engine's runner keeps its panel-packed weights, `lmforge.nn.panel_gemm`, there).

Measured (2-core AMD EPYC, Zen 4, THP ``madvise``; all 33 one-row products of a 30m token,
lmforge's C++ ops, medians of 21 rounds alternated in one process, another job on the
second core): fp32 4.38–5.06 → 4.09–4.39 ms (29 → 31 GB/s), int8 × int8 1 thread 1.44–1.47 →
1.32–1.43 ms, 2 threads 1.62 → 1.38 ms.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "HUGE_PAGE",
    "copy_to_huge_pages",
    "huge_pages_supported",
    "move_to_huge_pages",
    "zeros_in_huge_pages",
]

HUGE_PAGE = 2 << 20  # bytes: x86-64's transparent huge page
_ALIGN = 64  # each tensor starts on a cache line (int8 kernels need 64-byte alignment)
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_supported() -> bool:
    """Whether this process can get transparent huge pages by advising a mapping: Linux,
    ``mmap.MADV_HUGEPAGE``, THP not ``never`` (``LMFORGE_HUGE_PAGES=0`` turns it off)."""
    if os.environ.get("LMFORGE_HUGE_PAGES", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = _THP.read_text()
    except OSError:
        return False
    return "[never]" not in mode


def _movable(t: torch.Tensor | None, min_bytes: int) -> bool:
    return (
        t is not None
        and type(t) in (torch.Tensor, nn.Parameter)
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.is_contiguous()
        and t.numel() * t.element_size() >= min_bytes
        # its storage alone: moving a view of a shared storage would silently end the sharing
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        and not _in_arena(t)
    )


def _in_arena(t: torch.Tensor) -> bool:
    """Moved already: its data lies in the mapping recorded when it was moved (a deep copy
    carries the mark but not the memory)."""
    start, end = getattr(t, "_lmforge_huge_page", (0, 0))
    return start <= t.data_ptr() < end


def move_to_huge_pages(module: nn.Module, min_bytes: int = 256 << 10) -> int:
    """Move ``module``'s CPU parameters and buffers of at least ``min_bytes`` (contiguous,
    plain tensors that own their whole storage — views of a shared storage stay — each once
    however often the module holds it) into one huge-page mapping, in
    place (``t.data = copy``); returns the bytes moved (0 where huge pages are unsupported,
    or when the tensors together are smaller than one huge page). Values are unchanged;
    tensors already moved are skipped."""
    if not huge_pages_supported():
        return 0
    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for sub in module.modules():
        for t in (*sub._parameters.values(), *sub._buffers.values()):
            if id(t) not in seen and _movable(t, min_bytes):
                seen.add(id(t))
                tensors.append(t)
    copies = copy_to_huge_pages(tensors)
    if copies is None:
        return 0
    with torch.no_grad():
        for t, copy in zip(tensors, copies):
            t.data = copy
            t._lmforge_huge_page = copy._lmforge_huge_page
    return sum(_padded(t) for t in tensors)


def _padded(t: torch.Tensor) -> int:
    return _padded_bytes(t.numel(), t.element_size())


def _padded_bytes(numel: int, itemsize: int) -> int:
    return -(-numel * itemsize // _ALIGN) * _ALIGN


def _arena(nbytes: int) -> tuple[mmap.mmap, int, int] | None:
    """An advised anonymous mapping with room for ``nbytes`` from a 2 MB boundary (zeros
    until written; the OS backs it as it is touched): the mapping, its address and the
    offset of that boundary in it; None where it is refused."""
    try:
        arena = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        arena.madvise(mmap.MADV_HUGEPAGE)  # before any page is touched
    except OSError:  # no room for the mapping, or a kernel that refuses the advice
        return None
    base = torch.frombuffer(arena, dtype=torch.uint8, count=1).data_ptr()
    return arena, base, -base % HUGE_PAGE


def _carve(arena: mmap.mmap, base: int, offset: int, shape: Sequence[int], dtype: torch.dtype):
    """A tensor of ``shape`` at ``offset`` in the mapping (it keeps the mapping alive)."""
    t = torch.frombuffer(arena, dtype=dtype, count=math.prod(shape), offset=offset).view(*shape)
    t._lmforge_huge_page = (base, base + len(arena))
    return t


def copy_to_huge_pages(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Copies of contiguous CPU ``tensors`` in one advised huge-page mapping, each on its own
    64-byte-aligned stretch (the mapping lives as long as any copy); None where huge pages
    are unsupported, the tensors together are smaller than one huge page, or the mapping
    is refused. The engine's runner keeps its packed weight copies there."""
    if not huge_pages_supported() or not tensors:
        return None
    sizes = [_padded(t) for t in tensors]
    if sum(sizes) < HUGE_PAGE or (mapped := _arena(sum(sizes))) is None:
        return None
    arena, base, offset = mapped
    copies = []
    with torch.no_grad():
        for t, size in zip(tensors, sizes):
            copies.append(_carve(arena, base, offset, t.shape, t.dtype).copy_(t))
            offset += size
    return copies


def zeros_in_huge_pages(
    count: int, shape: Sequence[int], dtype: torch.dtype
) -> list[torch.Tensor] | None:
    """``count`` zero CPU tensors of ``shape`` and ``dtype`` in one advised huge-page mapping
    (each 64-byte aligned), backed by memory only as they are written (2 MB at a time):
    the engine's paged KV pool, whose blocks a decode step reads from anywhere in the pool
    (with 4 KB pages every block costs TLB misses and restarts the hardware prefetcher).
    None where huge pages are unsupported, the tensors together are smaller than one huge
    page, or the mapping is refused."""
    if not huge_pages_supported() or count < 1:
        return None
    padded = _padded_bytes(math.prod(shape), torch.empty((), dtype=dtype).element_size())
    if count * padded < HUGE_PAGE or (mapped := _arena(count * padded)) is None:
        return None
    arena, base, offset = mapped
    return [_carve(arena, base, offset + i * padded, shape, dtype) for i in range(count)]
