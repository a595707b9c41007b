"""The engine's decode step as one function of tensors, compiled once per shape bucket.

This file is long because the step's one pure function, the kernels it picks per projection
(row products, oneDNN-packed, int8) and the per-bucket compiled graphs and CUDA graphs share
one set of inputs that must stay consistent.

A decode step runs one new token per sequence. Eagerly (`InferenceRunner`) it is ≈ 60
aten ops per layer plus the engine's bookkeeping — on the CPU each op costs a few µs of
dispatch, so for small models the step is bound by op count, not by weight reads. Here
the whole step — embedding, every layer, the LM head — is one pure function of tensors
(`decode_logits`), and `CompiledDecode` runs it through ``torch.compile`` (inductor: the
pointwise work of a layer fuses into a few generated loops, the GEMMs stay library calls).

Paged attention reads K/V **in place**: the function indexes the cache through each
sequence's block table (``keys.view(blocks, block_size, …)[tables]``) and writes the scores
and the value sum as products and sums, so inductor fuses gather, scores, softmax and
values into one generated loop nest per layer that loads each cached block through the
table (no gathered copy, no batched GEMM); eager PyTorch (`decode_logits` run uncompiled,
as the tests do) materialises the gather and the products instead.
On the CPU the attention is lmforge's C++ op instead (`lmforge.infer.paged_attention`,
``attention_op``; ``CompiledDecode(attention_op=False)`` keeps inductor's loop): it streams
each row's blocks once for all its heads, where inductor's loop nest ran per head and over
the whole padded table. One thread, 30m preset, batch 1, 128 tokens after 32, alternated
in one process (identical tokens): int8 370 → 420 tok/s, fp32 144 → 159 tok/s; GRPO
rollouts (5m, 32 rows): 1.17 → 0.99 s per GRPO step.
The new K/V are written with ``index_copy_`` on the cache tensors themselves.

**Static shapes per bucket.** The batch is padded to the next power of two of sequences
and the block tables to the next power of two of blocks, so the graph sees a handful of
shapes (compiled once each, ``dynamic=False``): padding rows decode token 0 at position 0
into a spare block the allocator never hands out (`PagedKVCache`'s ``spare_blocks``, zeroed
at creation), and padded table entries point at that block behind the length mask (masked
slots must hold finite values: 0 · NaN would leak into the output).

**Known buckets bypass dynamo** (CPU). A bucket's first step goes through ``torch.compile``
(dynamo traces, guards and compiles, or picks a graph compiled before); its compiled graph
— inductor's wrapper around the generated kernels — records which argument elements its
inputs are (`_Backend`), and later steps of the bucket call it directly with the same fixed
inputs (weights, caches, rope tables) and the step's four tensors (`_Direct`): no frame
evaluation, guard checks or stance switch per step. What dynamo's guards checked stays
true: the fixed inputs are the very objects it accepted until the runner rebuilds its
copies (`_inputs`: a new generation, whose first step goes through dynamo again), the
step's tensors have the bucket's shapes, their dtypes are in the key, and non-contiguous
ones take the dynamo path. With the engine's lighter inputs for these steps
(`Engine._compiled_forward`: Python lists, one tensor each, tables already padded to
their bucket) and a cheaper weight check (`InferenceRunner.sync`), batch 1, 1 thread,
256 greedy tokens after a 32-token prompt, CPU time per token, medians of 7–9 rounds
alternated in one process with the previous code on a loaded 2-core machine (identical
tokens): 5m fp32 2.27 → 1.82 ms (×1.28; another run 2.66 → 2.13), 5m int8 2.26 → 1.51 ms,
30m fp32 11.2 → 11.0 ms, 30m int8 7.6 → 6.7 ms. Inductor's own wrapper (≈ 100 buffer
allocations per 5m step; its size asserts are off, `STORE_INPUTS`) remains: ``cpp_wrapper``
and ``memory_planning`` were no faster within that machine's noise.

**CUDA graphs.** On a GPU a small model's decode step is bound by kernel launches (≈ 400 of
them for the 30m preset, ≈ 5 ms per token from Python on an H200), not by the GPU. There the
step of each bucket is captured once as a CUDA graph (``torch.cuda.CUDAGraph``) over static
input buffers — the compiled function or the eager one (``compile=False``) alike — and each
later step copies its ids/positions/tables/slots into those buffers and replays the graph:
one launch per step. A graph bakes in the addresses of the weights and of the cache; they
are re-captured when the runner rebuilds its weight copies (`InferenceRunner.sync`).

**One-row steps on the CPU stream each weight once** (`_row_product`). Batch-1 decoding is
bound by reading the weights; MKL's GEMV reads a 30m model's 126 MB at ≈ 15 GB/s from one
core, while the same product written as a reduction over ``W``'s contiguous rows
(``y_n = Σ_k W_nk x_k``) becomes, under inductor, one vectorised loop per projection at ≈
26 GB/s (30m preset, one thread: 8.1 → 4.9 ms per token's projections, measured with the
whole model's weights in one compiled function). It reads the model's own ``[out, in]``
weights (no copy); q/k/v and gate/up are separate products concatenated. Steps of several
rows keep a GEMM (the reduction form would read ``W`` once per row): on the CPU in fp32 the
runner's oneDNN-packed copy through `lmforge.infer.packed_gemm.packed_linear_op` (MKL's
``x @ Wᵀ`` re-packs the weight per call: 30m, 16 requests, 441 → ≈ 620 tok/s), else its
fused ``Wᵀ``.

**int8** (`lmforge.nn.quant.Int8Linear`, from ``quantize_model(model, "int8")``) runs here
too. A one-row product is weight-only: it widens the int8 codes in registers and applies
the per-channel scale (30m projections alone: 1.9 ms per token against 3.0 ms through
``torch._weight_int8pack_mm``), with fp32 activations where the kernel rounds them to bf16.
Inductor writes that reduction with one vector accumulator per output row (each 16 codes
wait for the previous add), so where it builds, lmforge's own C++ op runs these products
instead (`lmforge.nn.int8_gemv`: 8 accumulators, prefetch, the parts of a fused
projection in one call; same fp32 sums in another order): 30m int8, 1 thread, step alone
2.70 → 2.40 ms, 128 greedy tokens 3.14 → 2.66 ms per token (318 → 376 tok/s), alternated
in one process on a shared machine (more runs and their noise there; 5m: no gain).
``LMFORGE_INT8_GEMV=0`` (or ``int8_gemv=False``) keeps the row products. With
``int8_gemm`` on (the default) and AVX-512 VNNI (or AVX2: ``VPMADDUBSW``), the op multiplies
int8 × int8 instead
(`lmforge.nn.int8_gemv.int8_gemv_q8_parts`: the row's activations quantised once per
product, as the multi-row path below does, then ``VPDPBUSD``, 64 products per instruction):
all 57 int8 products of a 30m token 2.95–3.16 → 2.47–2.52 ms on a loaded machine, whole
generation 3.38 → 3.11 ms per token (median of 7 alternated rounds, same 129 greedy tokens).
Steps of 2 to ``KERNEL_MAX_ROWS`` rows on the CPU multiply int8 by int8
(`lmforge.infer.int8_gemm.int8_linear_rows`: activations quantised per row, fbgemm over a
packed copy of the runner's codes reached by handle, shared by its engines): 30m int8, 1
thread, 16 concurrent requests (64-token prompts, 64 new tokens) 360 → 440 tok/s (median
of 5 alternated rounds on a busy machine; two earlier runs 359 → 472, 388 → 435; 5m 1876 →
1984, within noise), 4 requests 360 → 356 (no gain); greedy tokens and log-probs differ
from the weight-only step about as much as weight-only int8 differs from fp32
(`lmforge.infer.int8_gemm`).
``LMFORGE_INT8_GEMM=0`` (or ``int8_gemm=False``) keeps the weight-only kernel of the
eager path, ``torch._weight_int8pack_mm``; above ``KERNEL_MAX_ROWS`` rows the weight is
dequantised into one GEMM. One-row steps do not use fbgemm: its int8 × int8 (or
``torch._int_mm``) was no faster there with the weights cold (`lmforge.infer.int8_gemm`).

**Inputs of the row products are stored, not recomputed.** Inductor inlines a cheap
pointwise producer into its consumer; into a row reduction that means recomputing the
input vector (say the embedding lookup and the RMSNorm) for every output row — 1,376 times
for a 30m ``down`` projection. On the CPU the step is compiled with inductor's
``realize_reads_threshold`` and ``realize_opcount_threshold`` at 1, which stores every such
intermediate once (30m int8 step, 1 thread, idle machine: 4.47 → 2.83 ms; fp32 steps were
within noise of each other, 5.6–6.6 vs 5.8–7.5 ms).

What it covers: `InferenceRunner`'s models with dense (fp32/bf16) or int8 projections, with
or without biases, no per-head q/k norm, any sliding window; anything else (int4, mixed
kinds in a fused projection) keeps the eager runner (`CompiledDecode.unsupported_reason`).
Numerics: the same arithmetic as the eager path in a different order (fused loops, softmax
written out), equal within float rounding (tests: logits vs the eager runner, tokens vs
``model.forward``), except int8 steps of several rows, whose activations are rounded to
8 bits (see above).
"""

from __future__ import annotations

import math
import threading
import weakref
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from lmforge.infer.cache import PagedKVCache
from lmforge.infer.int8_gemm import int8_enabled, int8_linear_rows, prepack_int8
from lmforge.infer.packed_gemm import new_handles, packed_linear_op, register_packed
from lmforge.infer.paged_attention import paged_attention_supported, paged_decode_attention
from lmforge.nn.dense_gemv import dense_gemv_available, dense_gemv_parts
from lmforge.nn.int8_gemv import (
    int8_gemv_available,
    int8_gemv_parts,
    int8_gemv_q8_parts,
    int8_gemv_q8_supported,
)
from lmforge.nn.panel_gemm import panel_gemm
from lmforge.nn.quant import KERNEL_MAX_ROWS, Int8Linear
from lmforge.nn.rope import rotate

__all__ = ["CompiledDecode", "bucket", "decode_logits"]

SKIP_GUARDS = True
DIRECT_CALLS = True  # known buckets call their compiled graph directly (module docstring)
# inductor options on the CPU: store the row products' inputs; no size asserts in the
# wrapper (≈ 195 per 30m step; a bucket's inputs are fixed, its step tensors checked in
# `__call__`): 30m int8 386 → 399 tok/s, 5m fp32 610 → 624 (one thread, alternated)
STORE_INPUTS = {
    "realize_reads_threshold": 1,
    "realize_opcount_threshold": 1,
    "size_asserts": False,
}


_BACKENDS: dict = {}


def _backend(options: dict | None) -> _Backend | None:
    """One `_Backend` per options (dynamo shares compiled graphs between equal backends);
    None on a torch without the inductor wrapper it extends (plain ``torch.compile`` then)."""
    if _Backend is None:
        return None
    key = tuple(sorted((options or {}).items()))
    if key not in _BACKENDS:
        _BACKENDS[key] = _Backend("default", options, False)
    return _BACKENDS[key]


def bucket(n: int) -> int:
    """The padded size of a dimension of ``n``: the next power of two (1, 2, 4, …)."""
    return 1 << max(0, n - 1).bit_length()


def _paged_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    visible: torch.Tensor,
    block_size: int,
) -> torch.Tensor:
    """softmax(q Kᵀ/√d + mask) V (Vaswani et al. 2017, eq. 1) of one query per sequence over
    its paged context. ``q`` ``[B, H, D]``; ``keys``/``values`` the layer's cache
    ``[slots, H_kv, D]``; ``tables`` ``[B, W]`` block ids; ``visible`` ``[B, W·bs]`` bool.
    GQA: query head ``h`` reads K/V head ``h // (H / H_kv)``. Returns ``[B, H, D]``."""
    b, h, d = q.shape
    hkv = keys.shape[1]
    k = keys.view(-1, block_size, hkv, d)[tables].view(b, -1, hkv, d)  # [B, T, H_kv, D]
    v = values.view(-1, block_size, hkv, d)[tables].view(b, -1, hkv, d)
    k, v = k.permute(0, 2, 1, 3)[:, :, None], v.permute(0, 2, 1, 3)[:, :, None]  # [B,Hkv,1,T,D]
    qg = q.view(b, hkv, h // hkv, 1, d)
    # Products and sums, not einsum: a batched GEMM would need the gathered K/V copied into
    # a contiguous operand; written out, inductor fuses gather, scores, softmax and the value
    # sum into one loop nest that loads each block through the table (one query per row, so
    # there is no GEMM to lose).
    scores = (qg * k).sum(-1) * (1.0 / math.sqrt(d))  # [B, H_kv, G, T]
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return (probs[..., None] * v).sum(-2).reshape(b, h, d)


def _row_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x Wᵀ`` of ONE row ``x [1, K]`` written as a reduction over ``W``'s contiguous rows,
    ``y_n = Σ_k W_nk x_k`` (int8: ``y_n = s_n Σ_k q_nk x_k``, Jacob et al. 2018 eq. 1 with a
    zero offset): inductor turns it into one loop streaming ``W`` once with vector FMAs, an
    int8 ``W`` widened in registers. fp32 products and sums whatever the dtypes (the eager
    int8 kernel rounds activations and outputs to bf16: results agree within that)."""
    y = (weight.float() * x.float()).sum(-1)
    return (y if scale is None else y * scale).to(x.dtype)[None]


def _project(x: torch.Tensor, proj: tuple) -> torch.Tensor:
    """``x Wᵀ + b`` of one (fused) projection ``proj = (rows, kernel, bias)`` (see
    `decode_logits`): where ``rows`` is given (one row), `_row_product` of each part, or
    for ``rows = ("gemv", (q, …), (s, …))`` lmforge's int8 op over the parts
    (`lmforge.nn.int8_gemv.int8_gemv_parts`, outputs concatenated), for ``("dense", (W, …))``
    (bf16 weights) lmforge's dense op (`lmforge.nn.dense_gemv.dense_gemv_parts`); else
    ``kernel``: ``Wᵀ`` (dense GEMM), ``("packed", handle, out)`` of the runner's
    oneDNN-packed copy (`lmforge.infer.packed_gemm.packed_linear_op`), ``("panels", P, out)``
    of its panel-packed copy (`lmforge.nn.panel_gemm.panel_gemm`), ``("int8", handle,
    out, q, s)``: int8 × int8 through fbgemm's packed copy up to ``KERNEL_MAX_ROWS`` rows
    (`lmforge.infer.int8_gemm.int8_linear_rows`), the dequantised ``q`` above, or the
    weight-only int8 kernel form ``(q, s_bf16)``."""
    rows, kernel, bias = proj
    if rows is not None and x.shape[0] == 1 and rows[0] == "dense":  # ("dense", (W, …))
        y = dense_gemv_parts(x.float(), rows[1]).to(x.dtype)
    elif rows is not None and x.shape[0] == 1 and isinstance(rows[0], str):  # ("gemv", q, s)
        product = int8_gemv_q8_parts if rows[0] == "gemv_q8" else int8_gemv_parts
        y = product(x.float(), rows[1], [s.float() for s in rows[2]]).to(x.dtype)
    elif rows is not None and x.shape[0] == 1:
        parts = [_row_product(x, w, scale) for w, scale in rows]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
    elif isinstance(kernel, torch.Tensor):
        y = x @ kernel
    elif kernel[0] == "packed":  # the runner's oneDNN-packed copy
        return packed_linear_op(x, bias, kernel[1], kernel[2])
    elif kernel[0] == "panels":  # the runner's panel-packed copy (AVX2 CPUs)
        y = panel_gemm(x, kernel[1], kernel[2])
    elif kernel[0] == "int8" and x.shape[0] <= KERNEL_MAX_ROWS:  # fbgemm, rows normalised
        y = int8_linear_rows(x, kernel[1], kernel[2])
    elif kernel[0] == "int8":  # more rows: as `Int8Linear`, dequantise, one GEMM
        weight, scale = kernel[3], kernel[4]
        y = x @ (weight.to(x.dtype) * scale.to(x.dtype)[:, None]).t()
    elif x.shape[0] <= KERNEL_MAX_ROWS:
        weight, scale = kernel
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), weight, scale).to(x.dtype)
    else:  # as `Int8Linear` above the kernel's rows: dequantise, one GEMM
        weight, scale = kernel
        y = x @ (weight.to(x.dtype) * scale.float().to(x.dtype)[:, None]).t()
    return y if bias is None else y + bias.to(y.dtype)


def decode_logits(
    ids: torch.Tensor,
    positions: torch.Tensor,
    tables: torch.Tensor,
    slots: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    embed: torch.Tensor,
    layers: list[tuple],
    final_norm: torch.Tensor,
    head: tuple,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    shape: tuple[int, int, int, int, int],
    eps: float,
    windows: list[int | None],
    attention_op: bool = False,
) -> torch.Tensor:
    """Logits ``[B, V]`` of one decode step (a Llama-style decoder, as `CausalLM`).

    ``ids``/``positions``/``slots`` ``[B]``: each sequence's new token, its position and the
    cache slot its K/V go to; ``tables`` ``[B, W]`` block tables; ``rope`` the cos/sin
    tables ``[P, D]``; ``layers`` per layer ``(input norm w, qkv, o, post-attention norm w,
    gate‖up, down)``, each projection (and ``head``) a triple ``(rows, kernel, bias)``:
    ``rows`` the parts' own ``(W [out, in], int8 scale or None)`` for one-row steps on the
    CPU, or ``("gemv", codes, scales)`` of int8 parts for lmforge's op (None: use
    ``kernel``), ``kernel`` otherwise (`_project`): the fused ``Wᵀ``, a pre-packed copy's
    handle, an int8 × int8 form or the int8 kernel form ``(q, s_bf16)``;
    ``shape`` = (heads, KV heads, head dim, intermediate size, block size)."""
    h, hkv, d, inter, block_size = shape
    b = ids.shape[0]
    x = F.embedding(ids, embed)
    cos, sin = rope[0][positions][:, None], rope[1][positions][:, None]
    t = torch.arange(tables.shape[1] * block_size, device=ids.device)
    causal = t[None, :] <= positions[:, None]
    for i, (n1, qkv_proj, o_proj, n2, gate_up_proj, down_proj) in enumerate(layers):
        qkv = _project(F.rms_norm(x, n1.shape, n1, eps), qkv_proj).view(b, h + 2 * hkv, d)
        qk = rotate(qkv[:, : h + hkv], cos, sin)
        keys[i].index_copy_(0, slots, qk[:, h:])
        values[i].index_copy_(0, slots, qkv[:, h + hkv :])
        if attention_op:  # lmforge's C++ op reads the blocks in place (several rows)
            out = paged_decode_attention(
                qk[:, :h], keys[i], values[i], tables, positions + 1, block_size, windows[i]
            )
        else:
            visible = causal
            if windows[i] is not None:
                visible = causal & (positions[:, None] - t[None, :] < windows[i])
            out = _paged_attention(qk[:, :h], keys[i], values[i], tables, visible, block_size)
        x = x + _project(out.reshape(b, h * d), o_proj)
        gate_up = _project(F.rms_norm(x, n2.shape, n2, eps), gate_up_proj)
        x = x + _project(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], down_proj)
    return _project(F.rms_norm(x, final_norm.shape, final_norm, eps), head)


_HANDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # runner → first handle
_INT8_PACKED: dict[int, list] = {}  # handle → the runner copies (`layers`) its fbgemm copy is of


def _free_handles(base: int, count: int) -> None:
    for handle in range(base, base + count):
        register_packed(handle, None)
        _INT8_PACKED.pop(handle, None)


_CALLED = threading.local()  # the compiled graphs `_Backend` ran during one dynamo call


class _Backend(getattr(torch, "_TorchCompileInductorWrapper", object)):
    """``torch.compile``'s inductor backend (same options, same compiled code) whose compiled
    graphs record, when dynamo calls them, themselves, their inputs' sources (``L['ids']``,
    ``L['layers'][0][1][0][0][0]``, …) and their outputs: `CompiledDecode` then calls a
    bucket's graph directly, without dynamo's frame and guard machinery."""

    def __call__(self, model_, inputs_, **kwargs):
        compiled = super().__call__(model_, inputs_, **kwargs)
        args = [n.meta.get("grapharg") for n in model_.graph.find_nodes(op="placeholder")]
        sources = [getattr(a, "source", None) for a in args]

        def run(*args):
            out = compiled(*args)
            calls = getattr(_CALLED, "calls", None)
            if calls is not None:
                calls.append((compiled, sources, out))
            return out

        return run


if not hasattr(torch, "_TorchCompileInductorWrapper"):  # another torch: no direct calls
    _Backend = None  # type: ignore[assignment,misc]


class _Direct:
    """A bucket's compiled graph called directly: its fixed inputs (weights, cache, rope
    tables) in the graph's order, the step's four tensors put in at ``slots``."""

    __slots__ = ("fn", "args", "slots", "rope", "keys")

    def __init__(self, fn, args: list, slots: tuple[int, int, int, int], rope, keys) -> None:
        self.fn, self.args, self.slots, self.rope, self.keys = fn, args, slots, rope, keys

    def __call__(self, ids, positions, tables, slots) -> torch.Tensor:
        args = self.args.copy()
        i, p, t, s = self.slots
        args[i], args[p], args[t], args[s] = ids, positions, tables, slots
        return self.fn(*args)[0]


class _Graph:
    """One bucket's captured step: the static inputs it reads and the logits it writes."""

    def __init__(self, graph, inputs: tuple[torch.Tensor, ...], logits: torch.Tensor) -> None:
        self.graph, self.inputs, self.logits = graph, inputs, logits

    def replay(self, *inputs: torch.Tensor) -> torch.Tensor:
        for static, value in zip(self.inputs, inputs):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.logits


class CompiledDecode:
    """`decode_logits` over an `InferenceRunner`'s weights and a `PagedKVCache`, compiled
    per (batch, width) bucket; ``compile=False`` runs it eagerly (tests, debugging).
    ``cuda_graphs`` (default: when the cache is on a CUDA device) captures each bucket's
    step as a CUDA graph and replays it (module docstring)."""

    def __init__(
        self,
        runner,
        cache: PagedKVCache,
        compile: bool = True,
        cuda_graphs: bool | None = None,
        row_products: bool | None = None,
        int8_gemm: bool | None = None,
        int8_gemv: bool = True,
        attention_op: bool = True,
    ) -> None:
        reason = self.unsupported_reason(runner, cache)
        if reason:
            raise ValueError(f"CompiledDecode cannot run this model: {reason}")
        if cuda_graphs is None:
            cuda_graphs = cache.device.type == "cuda"
        if cuda_graphs and cache.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the KV cache on a CUDA device, not {cache.device}")
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, _Graph] = {}  # emptied with the inputs (new addresses)
        self._graph_pool = None
        self.runner, self.cache = runner, cache
        self.spare_block = cache.num_blocks  # the first block after the allocatable ones
        self.spare_slot = self.spare_block * cache.block_size
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._known: set[tuple] = set()
        if row_products is None:
            row_products = cache.device.type == "cpu"
        self.row_products = row_products
        if int8_gemm is None:
            int8_gemm = cache.device.type == "cpu" and int8_enabled()
        self.int8_gemm = int8_gemm  # int8 projections as int8 × int8 products (module doc)
        # one-row int8 products through lmforge's op where it builds (`_projection`)
        self.int8_gemv = int8_gemv
        self.attention_op = attention_op
        self._inputs_for: object = None  # the runner's weight copies `_inputs` was built from
        self._cached_inputs: dict = {}
        self._generation = 0
        if compile:
            # one graph per bucket: room for every (batch, width) pair up to 64 × 128
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # store the row products' inputs once instead of recomputing them per output row
        options = STORE_INPUTS if self.row_products else None
        backend = _backend(options)
        if not compile:
            self.fn = decode_logits
        elif backend is None:
            self.fn = torch.compile(decode_logits, dynamic=False, options=options)
        else:
            self.fn = torch.compile(decode_logits, dynamic=False, backend=backend)
        self._direct: dict[tuple, _Direct] = {}  # bucket → its graph, called directly
        self.buckets: set[tuple[int, int]] = set()  # shapes seen (each compiled once)

    @staticmethod
    def unsupported_reason(runner, cache: PagedKVCache) -> str | None:
        """Why `decode_logits` would not compute what the runner does (None: it would)."""
        model = runner.model
        if cache.key_only or getattr(cache, "spare_blocks", 0) < 1:
            return "the KV cache has no spare block for padding rows"
        if cache.dtype != next(model.parameters()).dtype:
            return "the KV cache's dtype is not the model's"
        for i, layer in enumerate(model.model.layers):
            if layer.self_attn.q_norm is not None:
                return f"layer {i} has per-head q/k norms"
        if not runner.layers or runner.head is None:
            return "the runner has not been synced"
        for proj in [runner.head] + [p for w in runner.layers for p in vars(w).values()]:
            if hasattr(proj, "weight_t"):
                continue
            if type(getattr(proj, "module", None)) is not Int8Linear:
                return "a projection is int4 or mixes kinds (the eager runner calls its kernel)"
            if cache.device.type != "cpu":
                return "int8 projections off the CPU (their kernel is the CPU's)"
        return None

    def _handle(self, slot: int) -> int:
        """The packed-weight handle of projection ``slot`` of this runner: one block per
        runner (shared by its engines, so their compiled graphs are too), freed with it."""
        base = _HANDLES.get(self.runner)
        if base is None:
            count = 4 * len(self.runner.layers) + 1
            base = _HANDLES[self.runner] = new_handles(count)
            weakref.finalize(self.runner, _free_handles, base, count)
        return base + slot

    def _projection(self, proj, modules: tuple, one_row: bool, slot: int) -> tuple:
        """``(rows, kernel, bias)`` of one runner projection (`decode_logits`): for one-row
        steps with ``row_products`` the model's own tensors (no copy) as ``rows``, else the
        runner's fused copy as ``kernel`` (only what the bucket reads is passed: fewer
        inputs for the compiled function to check). fp32 with the runner's panel copy
        (AVX2 CPUs): that copy for every row count (one row: 30m, 1 thread, 143 tok/s
        against 129 through inductor's row loop). int8 with ``int8_gemm``, several rows:
        ``("int8", handle, out, q, s)``, fbgemm's packed copy of the runner's (stacked)
        codes behind ``handle``, packed once per runner and weights (engines share it).
        int8, one row: ``("gemv", codes, scales)`` where lmforge's op runs (`_gemv`)."""
        dense = hasattr(proj, "weight_t")
        if not dense and self.int8_gemm and not (one_row and self.row_products):
            m = proj.module
            handle = self._handle(slot)
            if _INT8_PACKED.get(handle) is not self.runner.layers:  # rebuilt with the runner's
                packed = proj.int8_packed()  # the runner's (its int8 prefill uses it too)
                if packed is None:
                    packed = prepack_int8(m.weight, m.weight_scale)
                register_packed(handle, packed)
                _INT8_PACKED[handle] = self.runner.layers
            return None, ("int8", handle, m.out_features, m.weight, m.weight_scale), m.bias
        if one_row and self.row_products and not dense and self._gemv(modules):
            codes = tuple(m.weight for m in modules)
            kind = "gemv_q8" if self.int8_gemm and int8_gemv_q8_supported() else "gemv"
            return (kind, codes, tuple(m.weight_scale for m in modules)), None, proj.module.bias
        if dense and proj.panels is not None:  # AVX2 CPU fp32: lmforge's GEMM, any rows
            return None, ("panels", proj.panels, proj.out_features), proj.bias
        if one_row and self.row_products and dense and self._dense_gemv(modules):
            return ("dense", tuple(m.weight for m in modules)), None, proj.bias
        if one_row and self.row_products:
            rows = tuple((m.weight, None if dense else m.weight_scale) for m in modules)
            return rows, None, proj.bias if dense else proj.module.bias
        if dense and proj.packed is not None:  # CPU fp32: no re-packing per call
            register_packed(self._handle(slot), proj.packed)
            _INT8_PACKED.pop(self._handle(slot), None)
            return None, ("packed", self._handle(slot), proj.out_features), proj.bias
        if dense:
            return None, proj.weight_t, proj.bias
        if not proj.module.uses_kernel:  # torch's int8 kernel is wrong there: dequantise
            return None, proj.module.dequantized_weight().t(), proj.module.bias
        return None, proj.module.kernel_form(), proj.module.bias

    def _attention_op_runs(self) -> bool:
        """Whether multi-row buckets' attention goes through lmforge's paged op."""
        q = torch.empty(0, dtype=self.cache.dtype, device=self.cache.device)
        return paged_attention_supported(q, self.cache.keys[0])

    def _gemv(self, modules: tuple) -> bool:
        """Whether the int8 one-row products of ``modules`` go through lmforge's op
        (`lmforge.nn.int8_gemv`: built on first use; off with ``int8_gemv=False`` or
        ``LMFORGE_INT8_GEMV=0``, or where it does not build)."""
        if not self.int8_gemv or any(m.weight.device.type != "cpu" for m in modules):
            return False
        return all(type(m) is Int8Linear for m in modules) and int8_gemv_available()

    def _dense_gemv(self, modules: tuple) -> bool:
        """Whether the one-row products of bf16 ``modules`` go through lmforge's dense op
        (`lmforge.nn.dense_gemv`: bf16 widened in registers, 8 accumulators; 30m bf16, 1
        thread, 128 greedy tokens: 303 → 358 tok/s against inductor's loop). fp32 ones keep
        inductor's loop, which was as fast or faster there (227 vs 213 tok/s)."""
        weights = [m.weight for m in modules]
        if any(w.device.type != "cpu" or w.dtype != torch.bfloat16 for w in weights):
            return False
        return self.int8_gemv and dense_gemv_available()

    def _inputs(self, one_row: bool) -> dict:
        """The step's weights for one-row or multi-row buckets, rebuilt (and the CUDA graphs
        that baked in the old addresses dropped) when the runner rebuilt its copies."""
        runner, lm = self.runner, self.runner.model.model
        if self._inputs_for is not runner.layers:
            self._cached_inputs, self._graphs, self._direct = {}, {}, {}
            self._inputs_for = runner.layers  # held: its identity stays unique
            self._generation += 1
        if one_row in self._cached_inputs:
            return self._cached_inputs[one_row]
        layers = []
        for i, (layer, w) in enumerate(zip(lm.layers, runner.layers)):
            a, m = layer.self_attn, layer.mlp
            layers.append((
                layer.input_layernorm.weight,
                self._projection(w.qkv, (a.q_proj, a.k_proj, a.v_proj), one_row, 4 * i),
                self._projection(w.o, (a.o_proj,), one_row, 4 * i + 1),
                layer.post_attention_layernorm.weight,
                self._projection(w.gate_up, (m.gate_proj, m.up_proj), one_row, 4 * i + 2),
                self._projection(w.down, (m.down_proj,), one_row, 4 * i + 3),
            ))  # fmt: skip
        self._cached_inputs[one_row] = dict(
            embed=lm.embed_tokens.weight,
            layers=layers,
            final_norm=lm.norm.weight,
            head=self._projection(runner.head, (runner.model.lm_head,), one_row, 4 * len(layers)),
            shape=(
                runner.num_heads,
                runner.num_kv_heads,
                runner.head_dim,
                runner.intermediate,
                self.cache.block_size,
            ),  # fmt: skip
            eps=lm.norm.eps,
            windows=[layer.self_attn.window for layer in lm.layers],
            attention_op=self.attention_op and self._attention_op_runs(),
        )
        return self._cached_inputs[one_row]

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[max_position_embeddings, D]`` from the model's own `RotaryEmbedding`
        (one fixed shape: a growing table would change the compiled graph's inputs)."""
        if self._rope is None or self._rope[0].dtype != self.cache.dtype:
            model = self.runner.model
            table = torch.arange(model.config.max_position_embeddings, device=self.cache.device)
            cos, sin = model.model.rotary_emb(table[None], self.cache.dtype)
            self._rope = (cos[0], sin[0])
        return self._rope

    @torch.inference_mode()
    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, V]`` of ``B`` decoding sequences (``tables`` ``[B, W]``), the batch and
        the tables padded to their bucket inside. Call ``runner.sync()`` first."""
        b, w = tables.shape
        pb, pw = bucket(b), bucket(w)
        direct = self._direct.get((pb, pw, ids.dtype, positions.dtype, tables.dtype, slots.dtype))
        if (
            direct is not None
            and direct.keys is self.cache.keys
            and direct.rope is self._rope
            and self._inputs_for is self.runner.layers
            and ids.is_contiguous()
            and positions.is_contiguous()
            and tables.is_contiguous()
            and slots.is_contiguous()
        ):
            if (pb, pw) != (b, w):
                ids, positions, tables, slots = self._pad(ids, positions, tables, slots, pb, pw)
            return direct(ids, positions, tables, slots)[:b]
        if (pb, pw) != (b, w):
            ids, positions, tables, slots = self._pad(ids, positions, tables, slots, pb, pw)
        inputs = self._inputs(pb == 1)
        key = (pb, pw, self._generation)
        if self.cuda_graphs:
            logits = self._replay(key, (ids, positions, tables, slots), inputs)
            self.buckets.add((pb, pw))
            return logits[:b]
        # A bucket this instance has run before: let dynamo check only the guards that tell
        # its compiled graphs apart (shapes), not every input's (≈ 40 tensors) metadata.
        known = key in self._known and SKIP_GUARDS and self.fn is not decode_logits
        step = dict(ids=ids, positions=positions, tables=tables, slots=slots)
        env = dict(step, rope=self.rope_tables(), keys=self.cache.keys, values=self.cache.values)
        env.update(inputs)
        _CALLED.calls = []
        try:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True) if known else nullcontext():
                logits = self.fn(**env)
            calls = _CALLED.calls
        finally:
            _CALLED.calls = None
        self._known.add(key)
        self.buckets.add((pb, pw))
        # exactly one graph ran and returned the logits alone: nothing else for dynamo to do
        single = len(calls) == 1 and len(calls[0][2]) == 1 and calls[0][2][0] is logits
        if DIRECT_CALLS and single and all(t.is_contiguous() for t in step.values()):
            direct = self._direct_call(*calls[0][:2], env, list(step))
            if direct is not None:
                dtypes = tuple(t.dtype for t in step.values())
                self._direct[(pb, pw, *dtypes)] = direct
        return logits[:b]

    def _pad(self, ids, positions, tables, slots, pb: int, pw: int) -> tuple:
        """The step's inputs padded to the bucket ``(pb, pw)``: padding rows decode token 0
        at position 0 into the spare slot, padded table entries point at the spare block."""
        b, w = tables.shape
        if pb != b:
            ids, positions = F.pad(ids, (0, pb - b)), F.pad(positions, (0, pb - b))
            slots = F.pad(slots, (0, pb - b), value=self.spare_slot)
        tables = F.pad(tables, (0, pw - w, 0, pb - b), value=self.spare_block)
        return ids, positions, tables, slots

    def _direct_call(self, fn, sources: list, env: dict, step: list[str]) -> _Direct | None:
        """The graph that dynamo ran for this bucket as a `_Direct`: each input resolved from
        its source, an argument (``L['ids']``) or an element of one (``L['layers'][0][1]…``);
        None (keep dynamo) when a source is anything else or a step tensor is not an input."""
        try:  # dynamo's internals: another torch may name them differently
            from torch._dynamo.source import GetItemSource, LocalSource
        except ImportError:
            return None

        args, slots = [], {}
        for i, source in enumerate(sources):
            path = []
            while type(source) is GetItemSource and not source.index_is_slice:
                path.append(source.index)
                source = source.base
            if type(source) is not LocalSource or source.local_name not in env:
                return None
            value = env[source.local_name]
            try:
                for index in reversed(path):
                    value = value[index]
            except (IndexError, KeyError, TypeError):
                return None
            if not path and source.local_name in step:
                slots[source.local_name] = i
            args.append(value)
        if len(slots) != len(step):
            return None
        order = tuple(slots[name] for name in step)
        return _Direct(fn, args, order, env["rope"], env["keys"])  # type: ignore[arg-type]

    def _replay(self, key: tuple, step: tuple[torch.Tensor, ...], inputs: dict) -> torch.Tensor:
        """The step through the bucket's CUDA graph (captured on its first use; `_inputs`
        drops the graphs when the runner rebuilds its copies)."""
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._capture(step, inputs)
        return graph.replay(*step)

    def _capture(self, step: tuple[torch.Tensor, ...], inputs: dict) -> _Graph:
        """Capture ``self.fn`` on static copies of ``step``. The warm-up runs (compilation,
        allocator and cuBLAS workspaces) compute this very step, so the K/V they write are
        the ones the replay writes again."""
        static = tuple(t.clone() for t in step)

        def run() -> torch.Tensor:
            return self.fn(
                *static, self.rope_tables(), keys=self.cache.keys, values=self.cache.values,
                **inputs,
            )  # fmt: skip

        side = torch.cuda.Stream(device=self.cache.device)
        side.wait_stream(torch.cuda.current_stream(self.cache.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream(self.cache.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a server captures on its engine thread while other threads run
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            logits = run()
        self._graph_pool = graph.pool()  # buckets share one memory pool (replays never overlap)
        return _Graph(graph, static, logits)
