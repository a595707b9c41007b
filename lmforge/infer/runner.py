"""The engine's forward pass over a paged batch: `CausalLM.forward`'s math with fewer,
larger GEMMs and fewer small ops.

This file is long because the projections' copies (fused, panel-packed, oneDNN-packed,
quantised), their rebuild when the model's weights change, and the forward's paths (PyTorch
ops; decode-sized steps through `lmforge.nn.decode_layer`'s ops) share one runner's state.

Decoding runs one token per sequence per step, so every projection is a GEMV and the step
is bound by weight reads and per-op overhead, not FLOPs. `InferenceRunner` keeps
inference copies of the linear weights, built once from the model:

* **fused**: ``[W_q; W_k; W_v]`` and ``[W_gate; W_up]`` concatenated, so each layer runs
  4 GEMMs instead of 7 (the output is split by views);
* **transposed** (``[in, out]``, contiguous): on CPU (MKL, 1 thread, one row) ``x @ Wᵀ``
  with a pre-transposed weight measured ≈1.15× faster than ``F.linear(x, W)`` for the
  layer shapes of the 5m preset and ≈1.9× for its LM head ``[8192, 256]``; from 32 rows
  on the two layouts are within ±5 %;
* **packed** (fp32 on the CPU): inputs of two rows or more (speculative verification,
  batched decoding, prefill) go through a second copy pre-packed for oneDNN
  (`lmforge.infer.packed_gemm`): MKL re-packs the weight on every multi-row call, which for
  the 30m preset made 4 rows cost 4.2× one row, against 1.3× pre-packed; on AVX2 CPUs
  without AVX-512 the copy is packed into 16-wide panels for lmforge's own GEMM instead
  (`lmforge.nn.panel_gemm`: 1.4× oneDNN's at 16 rows, 1.2× at 512 on the 30m shapes);
* RMSNorm runs as torch's fused ``F.rms_norm`` in fp32 (bit-identical there); a step of
  any size of an fp32 model with panels (one token for weight-only int8 codes) runs each layer
  as two C++ ops around its attention (`lmforge.nn.decode_layer`: norm, q/k/v, RoPE; o,
  norm, SwiGLU, residuals), and a step whose tokens are each a causal row of their sequence
  (any decode step; prefill steps where the engine sets `PagedBatch.step_rows`) runs all
  layers, their K/V writes and paged attention included, as one op (`decode_layers`: 30m
  batch 1, 1 thread, fp32 104 → 133 tok/s, int8 182 → 279; 5m fp32 400 → 594, int8 533 →
  1,226; equal to the PyTorch path within float rounding, no longer bit for bit), its last
  layer past the K/V writes for the ``logits_to_keep`` rows only; int8 layers with int8
  panels (below) take steps of several tokens too (30m int8, 16 requests: 344 → 602 tok/s);
* RoPE cos/sin come from a table indexed by position (built by the model's own
  `RotaryEmbedding`, so the values are the ones ``forward`` would compute), q and k are
  rotated in one op, and attention reads/writes K/V token-major (`PagedBatch.attend`).

Norms, the embedding, RoPE and attention are the model's own modules and functions; only the
layer wiring is restated here. The copies cost one extra set of the linear weights (the
tied LM head included), two with the packed copies (``LMFORGE_PACKED_GEMM=0`` turns those
off): `InferenceRunner.nbytes`. They follow the model: when any source
parameter is modified in place (optimizer step, ``load_state_dict``) or replaced, `sync`
(called by the engine once per step) rebuilds them (tensor version counters and storage
pointers); a projection replaced by another module type (an adapter) turns the runner off.
Models this runner does not cover (other module types, hooks, parametrizations, an LM head
bias) use ``model.forward``; see `InferenceRunner.unsupported_reason`.

**Quantised projections** (`lmforge.nn.quant.Int8Linear` / `Int4Linear`, from
`lmforge.models.quantize.quantize_model`) run through the same wiring: q/k/v and gate/up of
one scheme are stacked into one quantised layer (`lmforge.nn.quant.concat_quantized`: rows
with their own scales, so each output channel is computed exactly as by its own layer) and
o/down/the LM head call the model's quantised module itself (no copy of the module; see
the int8 panels below). Parts that cannot
be stacked bit-exactly run one by one and are concatenated. On AVX2 CPUs without AVX-512 an
int8 layer's codes are also packed into int8 panels for products of several rows
(`_ModuleProjection`: fp32 activations where ``Int8Linear.forward``'s several-row kernel
rounds them to bf16 — close to ``model.forward``, not bit-equal; ``LMFORGE_PANEL_GEMM=0`` turns
them off). Without them, steps of several tokens equal ``model.forward`` bit for bit;
one-token steps of int8 layers go through the layer ops, whose products are
``Int8Linear``'s own one-row kernel (bit-equal) but whose norms and RoPE round differently
(``LMFORGE_DECODE_LAYER=0`` keeps the bit-equal PyTorch path).
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lmforge.infer.int8_gemm import int8_enabled, prepack_int8
from lmforge.infer.int8_gemm import int8_rows as int8_rows_product
from lmforge.infer.packed_gemm import pack_weight, packed_linear, packing_enabled
from lmforge.models.transformer import CausalLM, DecoderLayer
from lmforge.nn.attention import Attention
from lmforge.nn.decode_layer import (
    StackWeights,
    Weight,
    decode_layer_available,
    decode_layers,
    decode_post,
    decode_pre,
)
from lmforge.nn.dense_gemv import dense_gemv_available, dense_gemv_parts
from lmforge.nn.huge_pages import copy_to_huge_pages
from lmforge.nn.int8_gemv import int8_gemv_available
from lmforge.nn.mlp import SwiGLU
from lmforge.nn.norm import RMSNorm
from lmforge.nn.panel_gemm import (
    int8_panel_gemm,
    pack_int8_panels,
    pack_panels,
    panel_gemm,
    panel_gemm_preferred,
)
from lmforge.nn.quant import KERNEL_MAX_ROWS, Int4Linear, Int8Linear, concat_quantized
from lmforge.nn.rope import rotate

_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_PROJECTION_TYPES = (nn.Linear, Int8Linear, Int4Linear)  # exact types the runner can call
# Steps of at most this many tokens run `lmforge.nn.decode_layer`'s ops where every
# projection has panels: every step, prefill too (its row loops run over torch's threads
# and reuse their scratch: 30m, 1 thread, a 512-token prefill 1,371 → 1,442 tok/s, 16
# requests 636 → 656; 2 threads 1,266 → 1,321 and 538 → 546; session 18, BENCHMARKS.md).
LAYER_OPS_MAX_TOKENS = 1 << 30


class _DenseProjection:
    """``x [W_1; …; W_n]ᵀ + b`` of plain `nn.Linear` layers through one pre-transposed
    ``[in, out]`` contiguous copy (one row: MKL's GEMV) and, for fp32 on the CPU, a copy
    pre-packed for oneDNN (`lmforge.infer.packed_gemm`) that runs inputs of two rows or more
    without MKL's per-call re-packing of the weight. One row of an fp32 or bf16 model on the
    CPU goes through lmforge's op over the layers' own weights instead (`lmforge.nn.dense_gemv`,
    ``rows``: each weight streamed once at ≈ 2× MKL's fp32 GEMV bandwidth, bf16 widened in
    registers; fp32 sums, equal within float rounding)."""

    __slots__ = ("weight_t", "bias", "packed", "panels", "rows", "out_features")

    def __init__(self, linears: tuple[nn.Linear, ...]) -> None:
        own = [lin.weight.detach() for lin in linears]
        weight = torch.cat(own)
        self.out_features = weight.shape[0]
        self.bias = _cat_bias(*linears)
        pack = packing_enabled(weight)
        # AVX2 CPUs without AVX-512: lmforge's panel GEMM instead of oneDNN's (faster there at
        # every row count measured, 2–512), in place of the oneDNN copy, not beside it
        self.panels = pack_panels(weight) if pack and panel_gemm_preferred() else None
        self.packed = pack_weight(weight) if pack and self.panels is None else None
        dtype = own[0].dtype
        fits = dtype in (torch.float32, torch.bfloat16) and all(
            w.device.type == "cpu" and w.dtype == dtype for w in own
        )
        self.rows = tuple(own) if fits and dense_gemv_available() else None
        # the transposed copy only where a call still needs it (one row and several are both
        # covered on a CPU with the op and oneDNN: no third copy of the weights)
        needed = (self.packed is None and self.panels is None) or self.rows is None
        self.weight_t = weight.t().contiguous() if needed else None

    def __call__(self, x: torch.Tensor, int8_rows: bool = False) -> torch.Tensor:
        if self.panels is not None:  # any rows, one too (4 panels at once: 1.5× the op below)
            y = panel_gemm(x, self.panels, self.out_features)
            return y if self.bias is None else y + self.bias
        if self.rows is not None and x.shape[0] == 1:  # one row: lmforge's op, even when
            y = dense_gemv_parts(x.float(), self.rows).to(x.dtype)  # oneDNN's copy exists
            return y if self.bias is None else y + self.bias
        several = x.shape[0] > 1 or self.weight_t is None
        if self.packed is not None and several:
            return packed_linear(x, self.packed, self.bias)
        return _linear(x, self.weight_t, self.bias)

    def owned_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.weight_t, self.bias, self.packed, self.panels


class _ModuleProjection:
    """A quantised layer: the model's module (``owned`` False, no copy) or a stack of
    several built by `concat_quantized` (``owned`` True). Decode-sized batches call its
    kernel directly (`rows_kernel`, bound at `InferenceRunner.sync`, which rebuilds it when
    the stored tensors change), others its ``forward`` (dequantised matmul) — or, for int8
    with ``int8_rows`` (engines with the compiled decode step), int8 × int8 through fbgemm
    (`lmforge.infer.int8_gemm.int8_rows` over `int8_packed`, the copy the compiled step's
    multi-row products use too). On AVX2 CPUs without AVX-512 (`panel_gemm_preferred`) an
    fp32-scaled int8 layer keeps its codes packed into int8 panels as well
    (`lmforge.nn.panel_gemm.int8_panel_gemm`, ``panels``: fp32 activations, the codes widened
    in registers) and runs products of several rows through them (decode steps, prefill):
    30m shapes, 1 thread, all 32 layer products 8.55 ms at 16 rows (87 GFLOP/s; the fp32
    panels 9.38), where torch's int8 kernel rounds the activations to bf16 — so these
    products are not bit-equal to ``model.forward``'s, but closer to exact. One row keeps the
    row-major kernel (from huge pages 1.74 ms against the panels' 1.85)."""

    __slots__ = ("module", "owned", "rows_kernel", "_int8_packed", "panels")

    def __init__(self, module: Int8Linear | Int4Linear, owned: bool) -> None:
        self.module, self.owned = module, owned
        self.rows_kernel = module.rows_kernel()
        self._int8_packed = None
        q, s = module.weight, getattr(module, "weight_scale", None)
        self.panels = (
            pack_int8_panels(q)
            if type(module) is Int8Linear
            and q.device.type == "cpu"
            and s.dtype == torch.float32
            and s.is_contiguous()
            and panel_gemm_preferred()
            else None
        )

    def int8_packed(self):
        """fbgemm's packed copy of an int8 layer's codes and scales (built on first use, with
        the runner's copies: `InferenceRunner.sync` rebuilds this object when they change);
        None for int4 or where fbgemm is unavailable."""
        m = self.module
        if self._int8_packed is None and type(m) is Int8Linear and int8_enabled(m.weight):
            self._int8_packed = prepack_int8(m.weight, m.weight_scale)
        return self._int8_packed

    def __call__(self, x: torch.Tensor, int8_rows: bool = False) -> torch.Tensor:
        if int8_rows and x.shape[0] > 1 and self.int8_packed() is not None:
            y = int8_rows_product(x, self._int8_packed)
            return y if self.module.bias is None else y + self.module.bias.to(y.dtype)
        if self.panels is not None and x.dtype == torch.float32 and x.shape[0] > 1:
            m = self.module  # (one row: the row-major op below is faster from huge pages)
            y = int8_panel_gemm(x, self.panels, m.weight_scale, m.out_features)
            return y if m.bias is None else y + m.bias.to(y.dtype)
        if self.rows_kernel is not None and 0 < x.shape[0] <= KERNEL_MAX_ROWS:
            return self.rows_kernel(x)
        return self.module.forward(x)

    def owned_tensors(self) -> tuple[torch.Tensor, ...]:
        panels = () if self.panels is None else (self.panels,)
        if not self.owned:
            return panels
        return (*self.module.buffers(), *self.module.parameters(), *panels)


class _ConcatProjection:
    """Parts that cannot be stacked exactly, run one by one: ``cat([p(x) for p], -1)``."""

    __slots__ = ("parts",)

    def __init__(self, parts: list) -> None:
        self.parts = parts

    def __call__(self, x: torch.Tensor, int8_rows: bool = False) -> torch.Tensor:
        return torch.cat([part(x, int8_rows) for part in self.parts], dim=-1)

    def owned_tensors(self) -> tuple[torch.Tensor | None, ...]:
        return tuple(t for part in self.parts for t in part.owned_tensors())


def _projection(*modules: nn.Module):
    """The fastest exact runner-side form of ``cat([m(x) for m in modules], -1)``."""
    if all(type(m) is nn.Linear for m in modules):
        return _DenseProjection(modules)
    if len(modules) == 1:
        return _ModuleProjection(modules[0], owned=False)
    fused = concat_quantized(list(modules))
    if fused is not None:
        return _ModuleProjection(fused, owned=True)
    return _ConcatProjection([_projection(m) for m in modules])


@dataclass
class _LayerWeights:
    """One decoder layer's projections: each maps ``[N, in]`` to ``[N, out]``."""

    qkv: _DenseProjection | _ModuleProjection | _ConcatProjection
    o: _DenseProjection | _ModuleProjection | _ConcatProjection
    gate_up: _DenseProjection | _ModuleProjection | _ConcatProjection
    down: _DenseProjection | _ModuleProjection | _ConcatProjection


def _norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`RMSNorm` through torch's fused kernel in fp32 (one op instead of six; bit-identical
    to ``RMSNorm.forward`` there, checked in tests), the module itself otherwise."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    return norm(x)


def _linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x @ weight_t if bias is None else torch.addmm(bias, x, weight_t)


def _op_weight(projection, rows: int) -> tuple[Weight, torch.Tensor | None] | None:
    """(`lmforge.nn.decode_layer.Weight`, bias) of a projection the layer ops can take for
    steps of ``rows`` tokens: fp32 panels; a CPU `Int8Linear` with fp32 scales (and bias):
    its codes for one row where the one-row op builds, else its int8 panels (the scales, bias
    and codes read at each call, so in-place edits count); None otherwise."""
    if type(projection) is _DenseProjection:
        return None if projection.panels is None else (projection.panels, projection.bias)
    m = projection.module if type(projection) is _ModuleProjection else None
    if type(m) is not Int8Linear:
        return None
    q, s, b = m.weight, m.weight_scale, m.bias
    if b is not None and b.dtype != torch.float32:
        return None
    codes = q.device.type == "cpu" and q.is_contiguous() and s.is_contiguous()
    if rows == 1 and codes and s.dtype == torch.float32 and int8_gemv_available():
        return (q, s), b
    return None if projection.panels is None else ((projection.panels, s), b)


def _projections(layer: DecoderLayer) -> tuple[nn.Module, ...]:
    a, m = layer.self_attn, layer.mlp
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj


def _cat_bias(*linears: nn.Linear) -> torch.Tensor | None:
    if linears[0].bias is None:
        return None
    return torch.cat([m.bias.detach() for m in linears]).contiguous()


class InferenceRunner:
    """Runs a `CausalLM` on a `lmforge.infer.cache.PagedBatch` (see module docstring)."""

    def __init__(self, model: CausalLM) -> None:
        reason = self.unsupported_reason(model)
        if reason:
            raise ValueError(f"InferenceRunner cannot run this model: {reason}")
        self._model = weakref.ref(model)  # `for_model`'s cache must not keep it alive
        cfg = model.config
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.intermediate = cfg.head_dim, cfg.intermediate_size
        self._watched: tuple | None = None  # `_watch` when the copies were made (None: none)
        self._cos = self._sin = None
        self.layers: list[_LayerWeights] = []
        self.head: _DenseProjection | _ModuleProjection | None = None
        self.layer_ops = 0  # steps of at most this many tokens run `lmforge.nn.decode_layer`
        # [one-token steps, steps of several tokens]: per layer (Weight, bias) of q/k/v, o,
        # gate/up, down, and all of them for `decode_layers` (see `_layer_ops_apply`)
        self._op_weights: list[list[tuple]] = [[], []]
        self._stacks: list[StackWeights | None] = [None, None]

    @property
    def model(self) -> CausalLM:
        return self._model()

    @classmethod
    def for_model(cls, model: CausalLM) -> InferenceRunner:
        """The runner of ``model``, shared by all engines on it (built on first use)."""
        runner = _RUNNERS.get(model)
        if runner is None:
            runner = _RUNNERS[model] = cls(model)
        return runner

    @staticmethod
    def unsupported_reason(model: nn.Module) -> str | None:
        """Why this runner would not compute exactly ``model.forward`` (None: it would)."""
        if type(model) is not CausalLM:
            return f"{type(model).__name__} is not a lmforge CausalLM"
        for name, module in model.named_modules():
            if module._forward_hooks or module._forward_pre_hooks:
                return f"module {name or 'model'} has forward hooks"
            if name.endswith("norm") and type(module) is not RMSNorm:
                return f"module {name} is a {type(module).__name__}, not an RMSNorm"
            if parametrize.is_parametrized(module):
                return f"module {name} is parametrized"
            if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
                return f"module {name} is a {type(module).__name__}, not a plain nn.Linear"
        for i, layer in enumerate(model.model.layers):
            kinds = (type(layer), type(layer.self_attn), type(layer.mlp))
            if kinds != (DecoderLayer, Attention, SwiGLU):
                return f"layer {i} is not DecoderLayer(Attention, SwiGLU)"
            for lin in _projections(layer):  # e.g. a LoRA wrapper: its delta would be lost
                if type(lin) not in _PROJECTION_TYPES:
                    return (
                        f"layer {i} has a {type(lin).__name__} projection, not nn.Linear, "
                        "Int8Linear or Int4Linear"
                    )
        if type(model.lm_head) not in _PROJECTION_TYPES or model.lm_head.bias is not None:
            return "lm_head is not a bias-free nn.Linear, Int8Linear or Int4Linear"
        if type(model.model.embed_tokens) is not nn.Embedding:
            return "embed_tokens is not an nn.Embedding"
        return None

    # ------------------------------------------------------------------ weights
    def _linears(self) -> list[nn.Module]:
        """The linear layers the copies come from (plain dict reads: ``nn.Module.__getattr__``
        would cost more than the check)."""
        model = self.model
        linears = [model._modules["lm_head"]]
        for layer in model._modules["model"]._modules["layers"]._modules.values():
            attn, mlp = layer._modules["self_attn"]._modules, layer._modules["mlp"]._modules
            linears += [attn[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            linears += [mlp[n] for n in ("gate_proj", "up_proj", "down_proj")]
        return linears

    def _watch(self) -> tuple:
        """The identity and version of every source the copies come from, as `_unchanged`
        compares it: the dicts that hold the path from the model to every
        source tensor (``_modules`` of the model, its body, the layer list, each layer and
        its attention and MLP; ``_parameters``/``_buffers`` of each linear layer), their sizes,
        the objects they held (compared by identity) and the source tensors with their
        storage pointers and versions."""
        model, linears = self.model, self._linears()
        body = model._modules["model"]
        layers = list(body._modules["layers"]._modules.values())
        dicts = [model._modules, body._modules, body._modules["layers"]._modules]
        for layer in layers:
            attn, mlp = layer._modules["self_attn"], layer._modules["mlp"]
            dicts += [layer._modules, attn._modules, mlp._modules]
        for lin in linears:
            dicts += [lin._parameters, lin._buffers]
        held = [v for d in dicts for v in d.values()]
        tensors = [
            t for lin in linears for t in (*lin._parameters.values(), *lin._buffers.values())
        ]
        tensors = [t for t in tensors if t is not None]
        ptrs, versions = [t.data_ptr() for t in tensors], [t._version for t in tensors]
        return dicts, list(map(len, dicts)), held, tensors, ptrs, versions

    def _unchanged(self) -> bool:
        """Nothing `_watch` covers changed since the copies were made (C-level iterations
        over the watched dicts and tensors: 30m preset 23 µs per step, against 34 µs for a
        list of (layer id, pointer, version) tuples)."""
        if self._watched is None:
            return False
        dicts, sizes, held, tensors, ptrs, versions = self._watched
        return (
            [t._version for t in tensors] == versions
            and list(map(len, dicts)) == sizes
            and all(map(operator.is_, chain.from_iterable(map(dict.values, dicts)), held))
            and [t.data_ptr() for t in tensors] == ptrs
        )

    def invalidate(self) -> None:
        """Forget the copies; the next `sync` rebuilds them from the live weights. Needed after
        in-place updates that do not bump version counters (torch's fused CPU AdamW,
        ``p.data.copy_(...)``); every new `Engine` calls it."""
        self.layers, self.head, self._watched = [], None, None
        self.layer_ops, self._op_weights, self._stacks = 0, [[], []], [None, None]

    def sync(self) -> bool:
        """Rebuild the copies if any source layer or parameter changed since they were made
        (once per engine step). False if the model has become unsupported (e.g. a projection
        was wrapped by an adapter): run ``model.forward`` instead."""
        if self._unchanged():
            return self.head is not None
        self.layers, self.head, self._watched = [], None, self._watch()
        if self.unsupported_reason(self.model) is not None:
            return False
        with torch.no_grad():
            self.layers = [self._layer_weights(layer) for layer in self.model.model.layers]
            self.head = _projection(self.model.lm_head)
            self._panels_to_huge_pages()
        self.layer_ops = self._layer_ops_apply()
        self._cos = self._sin = None  # dtype/device may have changed too
        return True

    def _layer_ops_apply(self) -> int:
        """The most tokens a step may have to run each layer as `lmforge.nn.decode_layer`'s two
        ops around the attention (0: never). Needs fp32 norms, no q/k norms (Qwen3), the ops
        built, and every projection either with panels (fp32 on an AVX2 CPU: steps of any
        size, `LAYER_OPS_MAX_TOKENS`; the 8-layer runner at hidden size 64, all overhead: 2.55
        → 1.31 ms per step; 30m batch 1: 108–114 → 125–131 tok/s) or weight-only int8: its
        int8 panels for steps of several tokens, its codes for one-token steps (lmforge's
        row-major one-row op: 1.74 ms for the 30m layers' 32 products from huge pages, the
        panels 1.85), or the codes alone (one-token steps: the op streams them once per row).
        The op weights of every layer are kept in ``_op_weights`` and ``_stacks``, one set
        for one-token steps and one for several."""
        self._op_weights, self._stacks = [[], []], [None, None]
        if not decode_layer_available():
            return 0
        for layer, w in zip(self.model.model.layers, self.layers):
            projections = (w.qkv, w.o, w.gate_up, w.down)
            one = [_op_weight(p, rows=1) for p in projections]
            several = [_op_weight(p, rows=2) for p in projections]
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if (
                any(op is None for op in one)
                or layer.self_attn.q_norm is not None
                or any(n.weight.dtype != torch.float32 for n in norms)
            ):
                self._op_weights = [[], []]
                return 0
            self._op_weights[0].append(tuple(one))
            self._op_weights[1].append(None if None in several else tuple(several))
        if not self.layers:
            return 0
        if None in self._op_weights[1]:  # int8 codes without panels: one-token steps only
            self._op_weights[1] = []
        for i, per_layer in enumerate(self._op_weights):
            if per_layer:
                self._stacks[i] = StackWeights.of([
                    (a.weight, a.eps, b.weight, b.eps, layer.self_attn.window, ops)
                    for layer, ops in zip(self.model.model.layers, per_layer)
                    for a, b in [(layer.input_layernorm, layer.post_attention_layernorm)]
                ])  # fmt: skip
        return LAYER_OPS_MAX_TOKENS if self._op_weights[1] else 1

    def _ops_layer(self, i: int, layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, batch) -> torch.Tensor:  # fmt: skip
        """Layer ``i`` (``layer``) for the step's tokens ``x [n, H]`` (``cos``/``sin``
        ``[n, head_dim]``): the fused norm + q/k/v + RoPE op, the engine's paged attention,
        the fused rest."""
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
        (qkv_w, qkv_b), o, gate_up, down = self._op_weights[x.shape[0] > 1][i]
        qkv = decode_pre(x, n1.weight, n1.eps, qkv_w, (h + 2 * hkv) * d, qkv_b, cos, sin,
                         h + hkv, d).view(-1, h + 2 * hkv, d)  # fmt: skip
        out = batch.attend(i, qkv[:, :h], qkv[:, h : h + hkv], qkv[:, h + hkv :],
                           layer.self_attn.window)  # fmt: skip
        return decode_post(x, out.reshape(-1, h * d), o, n2.weight, n2.eps, gate_up,
                           self.intermediate, down)  # fmt: skip

    def _panels_to_huge_pages(self) -> None:
        """The panel copies (`lmforge.nn.panel_gemm`; every decode step reads all of them)
        moved into one transparent-huge-page mapping (`lmforge.nn.huge_pages`, where
        supported): fewer TLB misses and page-bounded prefetch stops per streamed weight.
        30m, 1 thread, all 33 products of a token: one row 6.6 → 5.5 ms, 2 rows 8.5 → 6.9,
        16 rows 13.5 → 12.8. (Transiently both copies exist.)"""
        projections = [self.head] + [p for w in self.layers for p in vars(w).values()]
        kinds = (_DenseProjection, _ModuleProjection)  # fp32 and int8 panels
        dense = [p for p in projections if type(p) in kinds and p.panels is not None]
        copies = copy_to_huge_pages([p.panels for p in dense])
        for proj, copy in zip(dense, copies or ()):
            proj.panels = copy

    @staticmethod
    def _layer_weights(layer: DecoderLayer) -> _LayerWeights:
        a, m = layer.self_attn, layer.mlp
        return _LayerWeights(
            qkv=_projection(a.q_proj, a.k_proj, a.v_proj),
            o=_projection(a.o_proj),
            gate_up=_projection(m.gate_proj, m.up_proj),
            down=_projection(m.down_proj),
        )

    @property
    def nbytes(self) -> int:
        """Memory held by the inference copies (0 before the first `sync`; quantised
        projections the runner calls in place cost nothing)."""
        projections = [self.head] + [p for w in self.layers for p in vars(w).values()]
        tensors = [t for p in projections if p is not None for t in p.owned_tensors()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _rope(self, positions: torch.Tensor, max_position: int, dtype: torch.dtype):
        """cos/sin ``[N, 1, D]``; the table grows (doubling) to cover ``max_position``."""
        if self._cos is None or self._cos.shape[0] <= max_position or self._cos.dtype != dtype:
            size = 1 << max(max_position, 255).bit_length()
            table = torch.arange(size, device=positions.device)[None]
            cos, sin = self.model.model.rotary_emb(table, dtype)
            self._cos, self._sin = cos[0], sin[0]
        return self._cos[positions, None], self._sin[positions, None]

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        max_position: int,
        batch,
        logits_to_keep: torch.Tensor,
        return_hidden: bool = False,
        int8_rows: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[M, V]`` of the kept rows of a flattened ragged batch: ``input_ids`` and
        ``positions`` ``[N]``, ``batch`` a `PagedBatch`, ``logits_to_keep`` ``[M]`` row
        indices; ``max_position`` = ``positions.max()`` (known to the caller, no device
        sync). ``return_hidden``: also the final (normed) hidden states ``[N, H]`` of every
        row (self-speculative drafters read them). ``int8_rows``: int8 projections of two
        rows or more multiply int8 × int8 (activations quantised per row, as the compiled
        step's multi-row products do) instead of dequantising — no longer bit-equal to
        ``model.forward``. Call `sync` first (once per step)."""
        if self.head is None:
            raise RuntimeError("InferenceRunner: call sync() (and check it) before running")
        lm = self.model.model
        h, hkv, d, inter = self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate
        x = lm.embed_tokens(input_ids)  # [N, hidden]
        n = x.shape[0]
        cos, sin = self._rope(positions, max_position, x.dtype)
        ops = n <= self.layer_ops and x.dtype == torch.float32
        inplace = batch.inplace_decode() if ops else None
        normed = kept = False  # x already through the model's last norm / the kept rows only
        if inplace is not None:  # every layer (and the last norm) in one call
            shape = (h, hkv, d, inter)
            final = (lm.norm.weight, lm.norm.eps) if lm.norm.weight.dtype == x.dtype else None
            # the last layer's attention and MLP for the rows that give logits (a prefill's last)
            kept = not return_hidden and logits_to_keep.shape[0] < n
            keep = logits_to_keep.to(torch.int64).contiguous() if kept else None
            x = decode_layers(x, cos[:, 0], sin[:, 0], shape, self._stacks[n > 1],
                              batch.cache.keys, batch.cache.values, *inplace,
                              batch.cache.block_size, final, keep)  # fmt: skip
            normed = final is not None
        layers = zip(lm.layers, self.layers) if inplace is None else ()  # (done above)
        for i, (layer, w) in enumerate(layers):
            if ops:
                x = self._ops_layer(i, layer, x, cos[:, 0], sin[:, 0], batch)
                continue
            attn = layer.self_attn
            qkv = w.qkv(_norm(layer.input_layernorm, x), int8_rows)
            qkv = qkv.view(n, h + 2 * hkv, d)
            if attn.q_norm is None:
                qk = rotate(qkv[:, : h + hkv], cos, sin)
                q, k = qk[:, :h], qk[:, h:]
            else:  # Qwen3: per-head RMSNorm before RoPE
                q = rotate(_norm(attn.q_norm, qkv[:, :h]), cos, sin)
                k = rotate(_norm(attn.k_norm, qkv[:, h : h + hkv]), cos, sin)
            out = batch.attend(i, q, k, qkv[:, h + hkv :], attn.window)
            x = x + w.o(out.reshape(n, h * d), int8_rows)
            gate_up = w.gate_up(_norm(layer.post_attention_layernorm, x), int8_rows)
            x = x + w.down(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], int8_rows)
        if return_hidden:
            hidden = x if normed else _norm(lm.norm, x)
            return self.head(hidden[logits_to_keep], int8_rows), hidden
        rows = x if kept else x[logits_to_keep]
        return self.head(rows if normed else _norm(lm.norm, rows), int8_rows)
